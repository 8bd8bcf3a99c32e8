//! Every value boot/entry.S writes to a system register or a descriptor,
//! and the numbers it needs to build its early map, in one place: built from
//! `aarch64-cpu`'s named register fields (and the walker's own descriptor
//! attributes) and handed to the assembly as `const` operands of
//! `global_asm!` (src/main.rs). Rust rather than a generated include: the
//! values then share the granule, the attribute indices and the field
//! definitions the Rust code uses, with no build step in between, and the
//! host tests check them. Where `aarch64-cpu` names no field (SCTLR_EL1's
//! and CPTR_EL2's RES1 bits, ID_AA64PFR0_EL1.GIC) the bit is named here.

use aarch64_cpu::registers::{
    CNTHCTL_EL2, CPACR_EL1, HCR_EL2, ICC_SRE_EL2, ID_AA64MMFR0_EL1, MAIR_EL1, SCTLR_EL1, SPSR_EL2,
    TCR_EL1,
};

use crate::mm::granule::{Granule, KernelGranule as G};
use crate::mm::layout::KIMAGE_VADDR;
use crate::mm::pgtable::{Attributes, MemType};

pub const PAGE_SIZE: u64 = G::PAGE_SIZE;

/// Early blocks: 1 GiB at level 1 for 4K, else the level-2 block.
const BLOCK_LEVEL: usize = if G::PAGE_SHIFT == 12 { 1 } else { 2 };
pub const BLOCK_SHIFT: u32 = G::PAGE_SHIFT + G::BITS_PER_LEVEL * (3 - BLOCK_LEVEL as u32);
pub const BLOCK_ENTRIES: u64 = 1 << G::BITS_PER_LEVEL;
/// Whether a table level sits between the root and the block table.
pub const MID_LEVEL: u64 = (BLOCK_LEVEL - G::START_LEVEL - 1) as u64;
/// The identity map has one table per level, the first entry of each above
/// the blocks: it reaches physical addresses below this (512 GiB with 4K,
/// 64 GiB with 16K, 4 TiB with 64K).
pub const IDMAP_LIMIT: u64 = BLOCK_ENTRIES << BLOCK_SHIFT;

const fn index(level: usize) -> u64 {
    let shift = G::PAGE_SHIFT + G::BITS_PER_LEVEL * (3 - level as u32);
    let bits = if level == G::START_LEVEL {
        48 - shift
    } else {
        G::BITS_PER_LEVEL
    };
    (KIMAGE_VADDR >> shift) & ((1 << bits) - 1)
}

pub const K_ROOT_INDEX: u64 = index(G::START_LEVEL);
pub const K_MID_INDEX: u64 = if MID_LEVEL == 1 {
    index(G::START_LEVEL + 1)
} else {
    0
};
pub const K_BLOCK_INDEX: u64 = index(BLOCK_LEVEL);

/// The `Image` header's flags: little-endian, the page size (1: 4K, 2: 16K,
/// 3: 64K), base 2 MiB aligned as close to the start of RAM as possible.
pub const IMAGE_FLAGS: u64 = match G::PAGE_SHIFT {
    12 => 1 << 1,
    14 => 2 << 1,
    _ => 3 << 1,
};

/// Early map descriptors: a next-level table; RAM as the walker maps it
/// (Normal, inner shareable, executable: the boot code runs from it); MMIO
/// as Device-nGnRE, never executable.
pub const TABLE: u64 = Attributes::VALID.bits() | Attributes::TABLE_OR_PAGE.bits();
pub const BLOCK_NORMAL: u64 = Attributes::VALID.bits()
    | Attributes::mem_type(MemType::Normal).bits()
    | Attributes::INNER_SHAREABLE.bits()
    | Attributes::ACCESSED.bits();
pub const BLOCK_DEVICE: u64 = Attributes::VALID.bits() | Attributes::DEVICE.bits();

/// MAIR_EL1, one attribute per [`MemType`] index: Device-nGnRE, Normal
/// write-back read/write-allocate, Normal non-cacheable. (Each field is
/// built at attribute 0's place, then moved to its index.)
pub const MAIR: u64 = {
    let device = MAIR_EL1::Attr0_Device::nonGathering_nonReordering_EarlyWriteAck.value;
    let normal = MAIR_EL1::Attr0_Normal_Outer::WriteBack_NonTransient_ReadWriteAlloc.value
        | MAIR_EL1::Attr0_Normal_Inner::WriteBack_NonTransient_ReadWriteAlloc.value;
    let normal_nc = MAIR_EL1::Attr0_Normal_Outer::NonCacheable.value
        | MAIR_EL1::Attr0_Normal_Inner::NonCacheable.value;
    (device << (8 * MemType::DeviceNgnre as u64))
        | (normal << (8 * MemType::Normal as u64))
        | (normal_nc << (8 * MemType::NormalNc as u64))
};

/// TCR_EL1 without IPS: 48-bit VA in both halves, write-back walks, inner
/// shareable, the granule in TG0/TG1 (whose encodings differ). The boot
/// code adds IPS from ID_AA64MMFR0_EL1.PARange, at most [`TCR_IPS_MAX`].
pub const TCR: u64 = {
    let (tg0, tg1) = match G::PAGE_SHIFT {
        12 => (TCR_EL1::TG0::KiB_4, TCR_EL1::TG1::KiB_4),
        14 => (TCR_EL1::TG0::KiB_16, TCR_EL1::TG1::KiB_16),
        _ => (TCR_EL1::TG0::KiB_64, TCR_EL1::TG1::KiB_64),
    };
    let t0sz = 64 - crate::mm::layout::VA_BITS as u64;
    TCR_EL1::T0SZ.val(t0sz).value
        | TCR_EL1::T1SZ.val(t0sz).value
        | TCR_EL1::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable.value
        | TCR_EL1::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable.value
        | TCR_EL1::SH0::Inner.value
        | TCR_EL1::IRGN1::WriteBack_ReadAlloc_WriteAlloc_Cacheable.value
        | TCR_EL1::ORGN1::WriteBack_ReadAlloc_WriteAlloc_Cacheable.value
        | TCR_EL1::SH1::Inner.value
        | tg0.value
        | tg1.value
};
pub const TCR_IPS_SHIFT: u64 = TCR_EL1::IPS.shift as u64;
/// Descriptors hold 48-bit output addresses: a larger PA range is capped.
pub const TCR_IPS_MAX: u64 = TCR_EL1::IPS::Bits_48.value >> TCR_IPS_SHIFT;
pub const PARANGE_SHIFT: u64 = ID_AA64MMFR0_EL1::PARange.shift as u64;

/// Where ID_AA64MMFR0_EL1 says whether the kernel's granule is supported,
/// and the values that mean yes (Linux's TGRAN*_SUPPORTED_MIN/MAX): TGran4
/// and TGran64 are signed, 0 and up (0xf: no); TGran16 is unsigned, 1 and up.
pub const TGRAN_SHIFT: u64 = match G::PAGE_SHIFT {
    12 => ID_AA64MMFR0_EL1::TGran4.shift,
    14 => ID_AA64MMFR0_EL1::TGran16.shift,
    _ => ID_AA64MMFR0_EL1::TGran64.shift,
} as u64;
pub const TGRAN_MIN: u64 = match G::PAGE_SHIFT {
    12 => ID_AA64MMFR0_EL1::TGran4::Supported.value >> TGRAN_SHIFT,
    14 => ID_AA64MMFR0_EL1::TGran16::Supported.value >> TGRAN_SHIFT,
    _ => ID_AA64MMFR0_EL1::TGran64::Supported.value >> TGRAN_SHIFT,
};
pub const TGRAN_MAX: u64 = match G::PAGE_SHIFT {
    14 => ID_AA64MMFR0_EL1::TGran16.mask,
    _ => ID_AA64MMFR0_EL1::TGran4.mask >> 1,
};

// SCTLR_EL1 bits that are RES1 on an Armv8.0 CPU (later extensions give
// them meanings whose RES1 setting is the old behaviour); aarch64-cpu does
// not name them. Linux's INIT_SCTLR_EL1_MMU_OFF sets the same.
const SCTLR_EOS: u64 = 1 << 11;
const SCTLR_TSCXT: u64 = 1 << 20;
const SCTLR_EIS: u64 = 1 << 22;
const SCTLR_SPAN: u64 = 1 << 23;
const SCTLR_NTLSMD: u64 = 1 << 28;
const SCTLR_LSMAOE: u64 = 1 << 29;

/// SCTLR_EL1 with the MMU and caches off, little-endian.
pub const SCTLR_EL1_MMU_OFF: u64 = SCTLR_EOS
    | SCTLR_TSCXT
    | SCTLR_EIS
    | SCTLR_SPAN
    | SCTLR_NTLSMD
    | SCTLR_LSMAOE
    | SCTLR_EL1::EE::LittleEndian.value
    | SCTLR_EL1::E0E::LittleEndian.value;
/// ... and on: translation, data and instruction caches.
pub const SCTLR_EL1_MMU_ON: u64 = SCTLR_EL1_MMU_OFF
    | SCTLR_EL1::M::Enable.value
    | SCTLR_EL1::C::Cacheable.value
    | SCTLR_EL1::I::Cacheable.value;

/// FP/SIMD not trapped at EL1 (the compiler may use the registers).
pub const CPACR_EL1_FPEN: u64 = CPACR_EL1::FPEN::TrapNothing.value;

/// Dropping from EL2: EL1 runs AArch64, with no other trap or redirection.
pub const HCR_EL2_EL1: u64 = HCR_EL2::RW::EL1IsAarch64.value;
/// EL1 may read the physical counter and use the physical timer.
pub const CNTHCTL_EL2_EL1_TIMERS: u64 =
    CNTHCTL_EL2::EL1PCTEN::SET.value | CNTHCTL_EL2::EL1PCEN::SET.value;
/// CPTR_EL2 (without E2H): RES1 bits 0-9, 12, 13; TFP (bit 10) clear, so
/// FP/SIMD is not trapped. aarch64-cpu names neither.
pub const CPTR_EL2_NO_TRAPS: u64 = 0x33ff;
/// GIC system registers at EL2 and EL1 (SRE), EL1's not trapped (Enable).
pub const ICC_SRE_EL2_EL1: u64 = ICC_SRE_EL2::SRE::SET.value | ICC_SRE_EL2::ENABLE::SET.value;
/// ID_AA64PFR0_EL1.GIC: non-zero when the GIC system registers exist.
pub const ID_AA64PFR0_GIC_SHIFT: u64 = 24;
/// The `eret` to EL1: EL1h (SP_EL1), every exception masked.
pub const SPSR_EL2_EL1H: u64 = SPSR_EL2::D::Masked.value
    | SPSR_EL2::A::Masked.value
    | SPSR_EL2::I::Masked.value
    | SPSR_EL2::F::Masked.value
    | SPSR_EL2::M::EL1h.value;

/// Before the device tree is read, a CPU without the kernel's granule says
/// so on QEMU virt's PL011 and powers off through PSCI: `hvc` when the
/// kernel was entered at EL1, `smc` at EL2 (QEMU's choice of conduit).
pub const EARLY_UART: u64 = 0x0900_0000;
pub const PSCI_SYSTEM_OFF: u64 = smccc::psci::PSCI_SYSTEM_OFF as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_4k_early_map_matches_the_linker_script() {
        if G::PAGE_SHIFT == 12 {
            assert_eq!(
                (K_ROOT_INDEX, K_BLOCK_INDEX, BLOCK_SHIFT, MID_LEVEL),
                (256, 2, 30, 0)
            );
        }
        // The image's offset in its early block is the same at its linked
        // and its load address (linker.ld).
        let (virt, phys) = (0xffff_8000_8020_0000u64, 0x4020_0000u64);
        assert_eq!(virt % (1 << BLOCK_SHIFT), phys % (1 << BLOCK_SHIFT));
    }

    /// The register values as the Arm ARM spells them, bit by bit.
    #[test]
    fn register_values_match_the_architecture() {
        let tg = match G::PAGE_SHIFT {
            12 => 0b10 << 30, // TG0 = 0b00
            14 => (0b01 << 30) | (0b10 << 14),
            _ => (0b11 << 30) | (0b01 << 14),
        };
        assert_eq!(TCR, 0x3510_3510 | tg);
        assert_eq!((TCR_IPS_SHIFT, TCR_IPS_MAX, PARANGE_SHIFT), (32, 5, 0));
        assert_eq!(MAIR, 0x44_ff_04);
        assert_eq!(SCTLR_EL1_MMU_OFF, 0x30d0_0800);
        assert_eq!(SCTLR_EL1_MMU_ON, 0x30d0_1805);
        assert_eq!(CPACR_EL1_FPEN, 3 << 20);
        assert_eq!(HCR_EL2_EL1, 1 << 31);
        assert_eq!(CNTHCTL_EL2_EL1_TIMERS, 3);
        assert_eq!(ICC_SRE_EL2_EL1, 0x9);
        assert_eq!(SPSR_EL2_EL1H, 0x3c5);
        assert_eq!((TABLE, BLOCK_NORMAL), (0x3, 0x705));
        assert_eq!(BLOCK_DEVICE, 0x0060_0000_0000_0401);
        assert_eq!(PSCI_SYSTEM_OFF, 0x8400_0008);
    }

    /// ID_AA64MMFR0_EL1 as cortex-a72 (4K and 64K, no 16K) and `max`
    /// (all three) report it: the check accepts exactly the granules each
    /// CPU has.
    #[test]
    fn the_granule_check_reads_the_right_field() {
        const CORTEX_A72: u64 = 0x0000_0000_0000_1124;
        const MAX: u64 = 0x0000_0000_0020_1125;
        let ok = |mmfr0: u64| {
            let v = (mmfr0 >> TGRAN_SHIFT) & 0xf;
            (TGRAN_MIN..=TGRAN_MAX).contains(&v)
        };
        assert!(ok(MAX));
        assert_eq!(ok(CORTEX_A72), G::PAGE_SHIFT != 14);
        // A CPU that reports "no 4K/64K granule" (0xf).
        assert_eq!(ok(0xff10_0000), G::PAGE_SHIFT == 14);
    }
}
