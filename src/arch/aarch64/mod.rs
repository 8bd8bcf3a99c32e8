//! What only runs on the CPU: instructions and system registers, through
//! `aarch64-cpu` wherever it has them; `asm!` only for what it lacks (TLBI,
//! DC, the paired struct-page store).

pub mod exception;
pub mod smp;

use aarch64_cpu::asm::barrier::{self, dsb, isb};
use aarch64_cpu::registers::*;

pub mod insn {
    use aarch64_cpu::asm::barrier::{self, dsb, isb};
    use core::arch::asm;

    #[inline(always)]
    pub fn dsb_ishst() {
        dsb(barrier::ISHST);
    }

    #[inline(always)]
    pub fn dsb_ish_isb() {
        dsb(barrier::ISH);
        isb(barrier::SY);
    }

    /// The TLBI address operand is VA[55:12] whatever the granule.
    #[inline(always)]
    pub fn tlbi_vaale1is(va: u64) {
        // SAFETY: invalidating TLB entries only makes later walks read the
        // tables again; it cannot break memory safety.
        unsafe {
            asm!("tlbi vaale1is, {}", in(reg) (va >> 12) & ((1 << 44) - 1), options(nostack, preserves_flags))
        }
    }

    #[inline(always)]
    pub fn tlbi_vaae1is(va: u64) {
        // SAFETY: as above; this one also drops walk-cache entries.
        unsafe {
            asm!("tlbi vaae1is, {}", in(reg) (va >> 12) & ((1 << 44) - 1), options(nostack, preserves_flags))
        }
    }

    /// `TLBI RVAALE1IS` (`FEAT_TLBIRANGE`), as the generic `SYS` encoding
    /// (op1 0, C8, C2, op2 7) so that no assembler feature is needed.
    #[inline(always)]
    pub fn tlbi_rvaale1is(operand: u64) {
        // SAFETY: as above.
        unsafe {
            asm!("sys #0, c8, c2, #7, {}", in(reg) operand, options(nostack, preserves_flags))
        }
    }

    /// Whether the CPU has range invalidations: `ID_AA64ISAR0_EL1.TLB`
    /// (bits 59:56) is 2 (the crate names no such field). Every CPU of
    /// the machine is taken to match the boot CPU, as QEMU's do.
    #[inline(always)]
    pub fn has_tlbi_range() -> bool {
        use aarch64_cpu::registers::{Readable, ID_AA64ISAR0_EL1};
        (ID_AA64ISAR0_EL1.get() >> 56) & 0xf == 2
    }

    #[inline(always)]
    pub fn tlbi_vmalle1is() {
        // SAFETY: as above, for every entry of EL1 on every CPU.
        unsafe { asm!("tlbi vmalle1is", options(nostack, preserves_flags)) }
    }

    /// Invalidates this CPU's own EL1 TLB entries.
    #[inline(always)]
    pub fn tlbi_vmalle1() {
        // SAFETY: as above, for this CPU only.
        unsafe { asm!("tlbi vmalle1", options(nostack, preserves_flags)) }
    }

    /// Linux's `__cmpwait` (arm64 `smp_cond_load_*`): returns once `*word`
    /// may differ from `old`. `LDXR` arms the exclusive monitor on the word;
    /// a store to it by another CPU clears the monitor, which sends this CPU
    /// the event `WFE` waits for (so does any interrupt, hence "may").
    /// `SEVL; WFE` first clears a stale event.
    #[inline(always)]
    pub fn cmpwait(word: *const u32, old: u32) {
        // SAFETY: a load of an aligned u32 the caller's atomic owns, and
        // event waits; nothing is written.
        unsafe {
            asm!(
                "sevl",
                "wfe",
                "ldxr {tmp:w}, [{word}]",
                "eor {tmp:w}, {tmp:w}, {old:w}",
                "cbnz {tmp:w}, 2f",
                "wfe",
                "2:",
                word = in(reg) word,
                old = in(reg) old,
                tmp = out(reg) _,
                options(nostack, readonly, preserves_flags)
            )
        }
    }

    /// Cleans and invalidates the data cache line holding `va` to the
    /// point of coherency.
    #[inline(always)]
    pub fn dc_civac(va: u64) {
        // SAFETY: dirty data is written back first; contents are unchanged.
        unsafe { asm!("dc civac, {}", in(reg) va, options(nostack, preserves_flags)) }
    }

    /// Cleans the data cache line holding `va` to the point of coherency.
    #[inline(always)]
    pub fn dc_cvac(va: u64) {
        // SAFETY: cleaning writes dirty lines back; contents are unchanged.
        unsafe { asm!("dc cvac, {}", in(reg) va, options(nostack, preserves_flags)) }
    }
}

unsafe extern "C" {
    /// boot/entry.S: TTBR1 = its argument, by way of the reserved table.
    fn idmap_cpu_replace_ttbr1(ttbr1: u64);
}

/// Installs `root` as the kernel's (TTBR1) table as Linux's
/// `cpu_replace_ttbr1` does: from the identity map, with every exception
/// masked, TTBR1 goes to an empty table, the TLB is invalidated, then the
/// new table goes in. The boot map's blocks and the new tables' pages map
/// the same addresses: switching directly would let TLB entries of both
/// meet (a break-before-make violation, TLB conflict aborts on real CPUs).
///
/// # Safety
/// `root` maps the running kernel (image, stacks) at the addresses it runs
/// at; TTBR0 holds the boot identity map, which maps the image;
/// `image_pa(va)` is the physical address of the kernel image's `va`.
pub unsafe fn cpu_replace_ttbr1(root: u64, image_pa: impl FnOnce(u64) -> u64) {
    let replace_pa = image_pa(idmap_cpu_replace_ttbr1 as *const () as u64);
    // SAFETY: the identity map (TTBR0, the caller's promise) maps the image,
    // so `replace_pa` is the same code at its physical address, a plain
    // extern "C" function.
    let replace: unsafe extern "C" fn(u64) = unsafe { core::mem::transmute(replace_pa as usize) };
    // The new tables are complete before any walk may use them.
    dsb(barrier::ISHST);
    let daif = DAIF.get();
    DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
    // SAFETY: the callee touches no memory but the reserved table, and
    // returns to this kernel address once `root`, which maps it (the
    // caller's promise), is installed; nothing can interrupt in between.
    unsafe { replace(root) };
    DAIF.set(daif);
}

/// Drops the boot identity map: walks through TTBR0 fault from now on.
pub fn disable_user_table() {
    TCR_EL1.modify(TCR_EL1::EPD0::DisableTTBR0Walks);
    TTBR0_EL1.set(0);
    isb(barrier::SY);
    insn::tlbi_vmalle1();
    dsb(barrier::NSH);
    isb(barrier::SY);
}

/// `ID_AA64MMFR0_EL1.PARange` as the CPU reports it.
pub fn pa_range_field() -> u64 {
    ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange)
}

/// Physical address bits the CPU implements (`ID_AA64MMFR0_EL1.PARange`).
pub fn pa_bits() -> u32 {
    match ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange) {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

/// The generic timer's count (ordered after earlier instructions).
pub fn counter() -> u64 {
    isb(barrier::SY);
    CNTVCT_EL0.get()
}

/// The generic timer's frequency, in ticks per second.
pub fn counter_freq() -> u64 {
    CNTFRQ_EL0.get()
}

/// The virtual timer's interrupt (a PPI) on QEMU virt and every GIC system.
pub const TIMER_INTID: u32 = 27;

/// Makes the virtual timer fire (level, to wake `wfi`) in `ms` milliseconds.
pub fn arm_timer(ms: u64) {
    CNTV_TVAL_EL0.set(ms * counter_freq() / 1000);
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::SET);
    isb(barrier::SY);
}

/// Whether the armed timer has fired; firing disarms it (drops the line).
pub fn timer_fired() -> bool {
    let fired = CNTV_CTL_EL0.matches_all(CNTV_CTL_EL0::ENABLE::SET + CNTV_CTL_EL0::ISTATUS::SET);
    if fired {
        CNTV_CTL_EL0.set(0);
        isb(barrier::SY);
    }
    fired
}

/// Sleeps until an interrupt is pending. IRQs stay masked: the kernel
/// polls, and a pending interrupt ends `wfi` all the same.
pub fn wait_for_interrupt() {
    aarch64_cpu::asm::wfi();
}

/// Masks every exception and sleeps for good.
pub fn halt() -> ! {
    DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
    loop {
        aarch64_cpu::asm::wfi();
    }
}
