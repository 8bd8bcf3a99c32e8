//! Secondary CPUs: started with PSCI `CPU_ON` through boot/entry.S, then
//! parked in `wfi` until CPU 0 hands them a job and wakes them with an SGI.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The interrupt controller as SMP needs it: waking parked CPUs. The GIC
/// driver implements it; the arch layer does not know which GIC it is.
pub trait Wakeup: Sync {
    /// Per-CPU set-up on the CPU itself.
    fn init_cpu(&self, cpu: usize);
    /// Acknowledges this CPU's pending wake-up, if any.
    fn ack(&self);
    /// Sends a wake-up to each CPU in `mask`.
    fn wake(&self, mask: u16);
}

pub const MAX_CPUS: usize = 16;

/// What a starting CPU reads, with its MMU off, at the physical address
/// PSCI passes it (layout known to boot/entry.S).
#[repr(C, align(64))]
pub struct SecondaryBoot {
    pub cpu: u64,
    pub ttbr1: u64,
    pub stack_top: u64,
    pub exception_stack_top: u64,
    /// Written by the CPU when it cannot run the kernel (`SECONDARY_*`),
    /// with its MMU off; 0 otherwise.
    pub status: u64,
    /// The boot CPU's `ID_AA64MMFR0_EL1.PARange`, capped at what the
    /// kernel's TCR uses: the least a secondary must have.
    pub pa_range: u64,
}

/// [`SecondaryBoot::status`]: the CPU lacks the kernel's granule.
pub const SECONDARY_NO_GRANULE: u64 = 1;
/// [`SecondaryBoot::status`]: the CPU reaches less physical memory than
/// the boot CPU.
pub const SECONDARY_SMALL_PA: u64 = 2;

/// Why a CPU did not come online.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    /// The firmware refused `CPU_ON`.
    Refused,
    /// The CPU reported [`SECONDARY_NO_GRANULE`] or [`SECONDARY_SMALL_PA`].
    Unfit(u64),
    /// It never arrived.
    Timeout,
}

struct BootSlots(core::cell::UnsafeCell<[SecondaryBoot; MAX_CPUS]>);

// SAFETY: each slot is written by CPU 0 before its CPU starts, then only read.
unsafe impl Sync for BootSlots {}

static BOOT: BootSlots = BootSlots(core::cell::UnsafeCell::new(
    [const {
        SecondaryBoot {
            cpu: 0,
            ttbr1: 0,
            stack_top: 0,
            exception_stack_top: 0,
            status: 0,
            pa_range: 0,
        }
    }; MAX_CPUS],
));

/// The boot record of `cpu`, in the kernel image (its physical address is
/// what PSCI passes).
///
/// # Safety
/// Only CPU 0, once per CPU, before starting it.
pub unsafe fn boot_slot(cpu: usize) -> &'static mut SecondaryBoot {
    // SAFETY: the caller is CPU 0 before `cpu` runs, so nothing else holds
    // a reference to this slot; an out-of-range `cpu` panics on the index.
    unsafe { &mut (*BOOT.0.get())[cpu] }
}

static ONLINE: AtomicU64 = AtomicU64::new(1);
static WAKEUP: spin::Once<&'static dyn Wakeup> = spin::Once::new();
/// A job per CPU (a `fn(usize)` as an address), 0 when idle.
static JOBS: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// CPUs running, bit n for CPU n (Linux's `cpu_online_mask`).
pub fn online_mask() -> u64 {
    ONLINE.load(Ordering::Acquire)
}

pub fn set_wakeup(w: &'static dyn Wakeup) {
    WAKEUP.call_once(|| w);
}

/// This CPU's index, kept in `TPIDR_EL1` (Linux keeps its per-CPU offset
/// there). A value out of range reads as CPU 0: per-CPU data guarded by
/// its own lock stays correct if two CPUs share an index, only slower.
pub fn cpu_id() -> usize {
    use aarch64_cpu::registers::{Readable, TPIDR_EL1};
    let id = TPIDR_EL1.get() as usize;
    if id < MAX_CPUS {
        id
    } else {
        0
    }
}

fn set_cpu_id(cpu: usize) {
    use aarch64_cpu::registers::{Writeable, TPIDR_EL1};
    TPIDR_EL1.set(cpu as u64);
}

/// Runs the cache maintenance `op` (by VA, to the point of coherency) on
/// every line of `[va, va + len)`: `dc_cvac` for a CPU that will read it
/// with its caches off, `dc_civac` to read what such a CPU wrote there.
fn to_poc(va: u64, len: u64, op: fn(u64)) {
    let mut line = va & !63;
    while line < va + len {
        op(line);
        line += 64;
    }
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
}

/// Starts CPU `cpu` with `boot` (at `boot_pa`; `pa_range` filled in)
/// through `cpu_on` (the firmware's call, given `boot_pa`), and waits for
/// it to come online or say why it cannot.
pub fn start_cpu(
    cpu: usize,
    boot: &mut SecondaryBoot,
    boot_pa: u64,
    cpu_on: impl FnOnce(u64) -> bool,
) -> Result<(), StartError> {
    // The boot CPU names itself before the first other CPU runs (its
    // reset value of TPIDR_EL1 is UNKNOWN).
    set_cpu_id(0);
    boot.cpu = cpu as u64;
    boot.status = 0;
    let (va, len) = (
        boot as *const _ as u64,
        core::mem::size_of::<SecondaryBoot>() as u64,
    );
    to_poc(va, len, super::insn::dc_cvac);
    if !cpu_on(boot_pa) {
        return Err(StartError::Refused);
    }
    // Bounded: a CPU that never arrives is reported, not waited for.
    for _ in 0..50_000_000u64 {
        if online_mask() & (1 << cpu) != 0 {
            return Ok(());
        }
        // What the CPU wrote with its MMU off is in memory: drop any line
        // of ours that could hide it (ours is clean: cleaned above).
        to_poc(va, len, super::insn::dc_civac);
        // SAFETY: a read of our own slot; the CPU writes it only before
        // it parks, with the MMU off.
        let status = unsafe { core::ptr::read_volatile(&boot.status) };
        if status != 0 {
            return Err(StartError::Unfit(status));
        }
        core::hint::spin_loop();
    }
    Err(StartError::Timeout)
}

/// Hands `job` to every CPU in `mask` and wakes them.
pub fn run_on(mask: u64, job: fn(usize)) {
    for (cpu, slot) in JOBS.iter().enumerate() {
        if mask & (1 << cpu) != 0 {
            slot.store(job as usize, Ordering::Release);
        }
    }
    if let Some(w) = WAKEUP.get() {
        w.wake(mask as u16);
    }
}

#[unsafe(no_mangle)]
extern "C" fn secondary_main(boot: *const SecondaryBoot) -> ! {
    // SAFETY: `boot` is the slot CPU 0 filled (and cleaned to the point of
    // coherency) before CPU_ON; the identity map still maps it, and goes
    // right after.
    let cpu = unsafe { (*boot).cpu } as usize;
    set_cpu_id(cpu);
    super::disable_user_table();
    let gic = WAKEUP.get().copied();
    if let Some(gic) = gic {
        gic.init_cpu(cpu);
    }
    ONLINE.fetch_or(1 << cpu, Ordering::AcqRel);
    loop {
        // Acknowledge first: a wake-up that arrives after the check below
        // stays pending and ends the `wfi`.
        if let Some(gic) = gic {
            gic.ack();
        }
        let job = JOBS[cpu].swap(0, Ordering::AcqRel);
        if job != 0 {
            // SAFETY: only `run_on` stores here, and only `fn(usize)`s.
            let job: fn(usize) = unsafe { core::mem::transmute(job) };
            job(cpu);
        } else if gic.is_some() {
            super::wait_for_interrupt();
        } else {
            core::hint::spin_loop();
        }
    }
}
