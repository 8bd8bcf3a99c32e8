//! Synchronous exceptions: the one recoverable fault (a `probe_read`) and
//! the fatal report for every other.

use core::fmt::Write;

use crate::arch::esr;

/// Saved by boot/vectors.S.
#[repr(C)]
pub struct TrapFrame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    _pad: u64,
}

unsafe extern "C" {
    fn probe_read(va: u64) -> ProbeResult;
    fn probe_write(va: u64, value: u64) -> ProbeResult;
    static probe_read_insn: u8;
    static probe_write_insn: u8;
    static probe_read_fixup: u8;
    static __stack_guard: u8;
    static __boot_stack: u8;
}

#[repr(C)]
struct ProbeResult {
    faulted: u64,
    value: u64,
}

/// What the last recovered fault was, for the caller of [`probe`].
pub struct FaultInfo {
    pub esr: u64,
    pub far: u64,
}

/// What an oops needs from outside the CPU, given once by init: where the
/// report goes, how the machine stops, and where stack guard pages are (the
/// arch layer knows no console, firmware or memory layout).
pub struct OopsHooks {
    pub write: fn(&str),
    pub power_off: fn() -> !,
    /// A region holding only stacks and their unmapped guard pages.
    pub stacks: core::ops::Range<u64>,
}

static HOOKS: spin::Once<OopsHooks> = spin::Once::new();

pub fn set_oops_hooks(hooks: OopsHooks) {
    HOOKS.call_once(|| hooks);
}

/// The oops report's sink: the hook, or nowhere before init set one.
struct OopsWriter(Option<fn(&str)>);

impl Write for OopsWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if let Some(w) = self.0 {
            w(s);
        }
        Ok(())
    }
}

/// Linux's `migration_entry_wait`, given once by init (the arch layer
/// knows no page tables): whether a translation fault at an address was on
/// an entry under migration, now made again, so that the access is retried.
static FAULT_RETRY: spin::Once<fn(u64) -> bool> = spin::Once::new();

pub fn set_fault_retry_hook(hook: fn(u64) -> bool) {
    FAULT_RETRY.call_once(|| hook);
}

static LAST_FAULT: spin::Mutex<FaultInfo> = spin::Mutex::new(FaultInfo { esr: 0, far: 0 });

/// Reads the 64-bit word at `va`; a fault is reported, not fatal.
pub fn probe(va: u64) -> Result<u64, FaultInfo> {
    // SAFETY: `probe_read` is the one load the fault handler fixes up: a
    // fault at any address returns `faulted` instead of killing the kernel.
    probed(unsafe { probe_read(va) })
}

/// Writes the 64-bit word at `va`; a fault is reported, not fatal.
pub fn poke(va: u64, value: u64) -> Result<(), FaultInfo> {
    // SAFETY: as for `probe`; what the store does to mapped memory is the
    // user's `poke`, a debugging tool meant to write anywhere.
    probed(unsafe { probe_write(va, value) }).map(|_| ())
}

/// The value of a probe, or the fault the handler recorded for it.
fn probed(r: ProbeResult) -> Result<u64, FaultInfo> {
    if r.faulted == 0 {
        return Ok(r.value);
    }
    let f = LAST_FAULT.lock();
    Err(FaultInfo {
        esr: f.esr,
        far: f.far,
    })
}

fn read_esr_far() -> (u64, u64) {
    use aarch64_cpu::registers::{Readable, ESR_EL1, FAR_EL1};
    (ESR_EL1.get(), FAR_EL1.get())
}

const KINDS: [&str; 4] = ["Synchronous", "IRQ", "FIQ", "SError"];
const ORIGINS: [&str; 4] = ["EL1t", "EL1h", "EL0 (AArch64)", "EL0 (AArch32)"];

#[unsafe(no_mangle)]
extern "C" fn rust_exception(frame: &mut TrapFrame, kind: u64) {
    let (esr, far) = read_esr_far();
    let probes = [
        &raw const probe_read_insn as u64,
        &raw const probe_write_insn as u64,
    ];
    // The kernel runs at EL1t (kind 0); EL1h (kind 4) is the exception
    // stack itself. A data abort on a page under migration waits for it
    // and retries (returning re-executes the access).
    let translation = esr::ec(esr) == 0x25 && esr::fault_name(esr) == "translation fault";
    if (kind == 0 || kind == 4) && translation && FAULT_RETRY.get().is_some_and(|f| f(far)) {
        return;
    }
    if (kind == 0 || kind == 4) && probes.contains(&frame.elr) && esr::is_abort(esr) {
        *LAST_FAULT.lock() = FaultInfo { esr, far };
        frame.elr = &raw const probe_read_fixup as u64;
        return;
    }
    let hooks = HOOKS.get();
    let mut out = OopsWriter(hooks.map(|h| h.write));
    let _ = writeln!(
        out,
        "\nInternal error: Oops: {} exception from {}",
        KINDS[(kind & 3) as usize],
        ORIGINS[(kind >> 2) as usize]
    );
    if esr::is_abort(esr) {
        let _ = writeln!(
            out,
            "Unable to handle kernel paging request at virtual address {far:016x}"
        );
        let boot_guard = &raw const __stack_guard as u64..&raw const __boot_stack as u64;
        // Only guard pages are unmapped in the secondaries' stack region.
        let in_stacks = hooks.is_some_and(|h| h.stacks.contains(&far));
        if boot_guard.contains(&far) || in_stacks {
            let _ = writeln!(out, "Kernel stack overflow (guard page hit)");
        }
    }
    let _ = write!(out, "Mem abort info: ");
    let _ = esr::describe(esr, &mut out);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "FAR: {far:#018x}  ELR: {:#018x}  SPSR: {:#010x}",
        frame.elr, frame.spsr
    );
    for (i, pair) in frame.x.chunks(2).enumerate() {
        let _ = write!(out, "x{:<2}: {:016x} ", i * 2, pair[0]);
        if let Some(v) = pair.get(1) {
            let _ = write!(out, " x{:<2}: {:016x}", i * 2 + 1, v);
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "Kernel panic - not syncing: Oops: Fatal exception");
    match hooks {
        Some(h) => (h.power_off)(),
        None => super::halt(),
    }
}
