//! What only runs on the CPU: instructions and system registers.

pub mod exception;
pub mod smp;

use core::arch::asm;

pub mod insn {
    use core::arch::asm;

    #[inline(always)]
    pub fn dsb_ishst() {
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) }
    }

    #[inline(always)]
    pub fn dsb_ish_isb() {
        unsafe { asm!("dsb ish", "isb", options(nostack, preserves_flags)) }
    }

    /// The TLBI address operand is VA[55:12] whatever the granule.
    #[inline(always)]
    pub fn tlbi_vaale1is(va: u64) {
        unsafe {
            asm!("tlbi vaale1is, {}", in(reg) (va >> 12) & ((1 << 44) - 1), options(nostack, preserves_flags))
        }
    }

    #[inline(always)]
    pub fn tlbi_vaae1is(va: u64) {
        unsafe {
            asm!("tlbi vaae1is, {}", in(reg) (va >> 12) & ((1 << 44) - 1), options(nostack, preserves_flags))
        }
    }

    #[inline(always)]
    pub fn tlbi_vmalle1is() {
        unsafe { asm!("tlbi vmalle1is", options(nostack, preserves_flags)) }
    }
}

/// Installs `root` as the kernel's (TTBR1) table. The new table maps the
/// running image at the same addresses, so no break-before-make is needed
/// beyond invalidating everything cached from the old one.
pub fn switch_kernel_table(root: u64) {
    unsafe {
        asm!(
            "dsb ishst",
            "msr ttbr1_el1, {}",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            in(reg) root,
            options(nostack)
        )
    }
}

/// Drops the boot identity map: walks through TTBR0 fault from now on.
pub fn disable_user_table() {
    unsafe {
        asm!(
            "mrs {t}, tcr_el1",
            "orr {t}, {t}, #(1 << 7)",   // EPD0
            "msr tcr_el1, {t}",
            "msr ttbr0_el1, xzr",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            t = out(reg) _,
            options(nostack)
        )
    }
}

/// The generic timer's count and frequency.
pub fn counter() -> u64 {
    let v: u64;
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nostack)) };
    v
}

pub fn counter_freq() -> u64 {
    let v: u64;
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nostack)) };
    v
}

/// The virtual timer's interrupt (a PPI) on QEMU virt and every GIC system.
pub const TIMER_INTID: u32 = 27;

/// Makes the virtual timer fire (level, to wake `wfi`) in `ms` milliseconds.
pub fn arm_timer(ms: u64) {
    let ticks = ms * counter_freq() / 1000;
    unsafe {
        asm!("msr cntv_tval_el0, {}", "mov {t}, #1", "msr cntv_ctl_el0, {t}", "isb", in(reg) ticks, t = out(reg) _)
    }
}

/// Whether the armed timer has fired; firing disarms it (drops the line).
pub fn timer_fired() -> bool {
    let ctl: u64;
    unsafe { asm!("mrs {}, cntv_ctl_el0", out(reg) ctl) };
    let fired = ctl & 0b101 == 0b101;
    if fired {
        unsafe { asm!("msr cntv_ctl_el0, xzr", "isb") };
    }
    fired
}

/// Sleeps until an interrupt is pending. IRQs stay masked: the kernel
/// polls, and a pending interrupt ends `wfi` all the same.
pub fn wait_for_interrupt() {
    unsafe { asm!("wfi", options(nostack)) }
}

pub fn halt() -> ! {
    loop {
        unsafe { asm!("msr daifset, #0xf", "wfi", options(nostack)) }
    }
}
