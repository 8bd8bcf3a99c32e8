//! The kernel binary: the assembly entry and the few items only a final
//! executable may define. Everything else is in the `hpk` library.
#![cfg_attr(target_os = "none", no_std, no_main)]

// The library's dependencies are linked through it, not used here.
#[path = "extern_deps.rs"]
mod extern_deps;

#[cfg(target_os = "none")]
mod kernel {
    use hpk::arch::aarch64::smp;
    use hpk::init::early_map as b;
    // Every number the assembly uses comes from early_map (see there).
    core::arch::global_asm!(
        include_str!("../boot/entry.S"),
        PAGE_SIZE = const b::PAGE_SIZE,
        BLOCK_SHIFT = const b::BLOCK_SHIFT,
        BLOCK_ENTRIES = const b::BLOCK_ENTRIES,
        MID_LEVEL = const b::MID_LEVEL,
        IDMAP_LIMIT = const b::IDMAP_LIMIT,
        K_ROOT_INDEX = const b::K_ROOT_INDEX,
        K_MID_INDEX = const b::K_MID_INDEX,
        K_BLOCK_INDEX = const b::K_BLOCK_INDEX,
        IMAGE_FLAGS = const b::IMAGE_FLAGS,
        TABLE = const b::TABLE,
        BLOCK_NORMAL = const b::BLOCK_NORMAL,
        BLOCK_DEVICE = const b::BLOCK_DEVICE,
        MAIR = const b::MAIR,
        TCR = const b::TCR,
        TCR_IPS_SHIFT = const b::TCR_IPS_SHIFT,
        TCR_IPS_MAX = const b::TCR_IPS_MAX,
        PARANGE_SHIFT = const b::PARANGE_SHIFT,
        TGRAN_SHIFT = const b::TGRAN_SHIFT,
        TGRAN_MIN = const b::TGRAN_MIN,
        TGRAN_MAX = const b::TGRAN_MAX,
        SCTLR_EL1_MMU_OFF = const b::SCTLR_EL1_MMU_OFF,
        SCTLR_EL1_MMU_ON = const b::SCTLR_EL1_MMU_ON,
        CPACR_EL1_FPEN = const b::CPACR_EL1_FPEN,
        HCR_EL2_EL1 = const b::HCR_EL2_EL1,
        CNTHCTL_EL2_EL1_TIMERS = const b::CNTHCTL_EL2_EL1_TIMERS,
        CPTR_EL2_NO_TRAPS = const b::CPTR_EL2_NO_TRAPS,
        ICC_SRE_EL2_EL1 = const b::ICC_SRE_EL2_EL1,
        ID_AA64PFR0_GIC_SHIFT = const b::ID_AA64PFR0_GIC_SHIFT,
        SPSR_EL2_EL1H = const b::SPSR_EL2_EL1H,
        EARLY_UART = const b::EARLY_UART,
        PSCI_SYSTEM_OFF = const b::PSCI_SYSTEM_OFF,
        SECONDARY_STATUS = const core::mem::offset_of!(smp::SecondaryBoot, status),
        SECONDARY_PA_RANGE = const core::mem::offset_of!(smp::SecondaryBoot, pa_range),
        SECONDARY_NO_GRANULE = const smp::SECONDARY_NO_GRANULE,
        SECONDARY_SMALL_PA = const smp::SECONDARY_SMALL_PA,
    );
    core::arch::global_asm!(include_str!("../boot/vectors.S"));

    #[global_allocator]
    static HEAP: hpk::mm::heap::Heap = hpk::mm::heap::Heap::empty();

    /// Called by boot/entry.S with the MMU on, at the linked address.
    #[unsafe(no_mangle)]
    extern "C" fn kmain(x0: u64, kernel_pa: u64) -> ! {
        hpk::init::start(x0, kernel_pa, &HEAP)
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        hpk::init::panic(info)
    }
}

#[cfg(not(target_os = "none"))]
use hpk as _;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the kernel runs under qemu-system-aarch64: use `cargo run`");
}
