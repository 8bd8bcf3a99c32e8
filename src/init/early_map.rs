//! The numbers boot/entry.S needs to build its early map, derived from the
//! kernel's granule so that one assembly file serves 4K, 16K and 64K.

use crate::mm::granule::{Granule, KernelGranule as G};
use crate::mm::layout::KIMAGE_VADDR;

pub const PAGE_SIZE: u64 = G::PAGE_SIZE;

/// Early blocks: 1 GiB at level 1 for 4K, else the level-2 block.
const BLOCK_LEVEL: usize = if G::PAGE_SHIFT == 12 { 1 } else { 2 };
pub const BLOCK_SHIFT: u32 = G::PAGE_SHIFT + G::BITS_PER_LEVEL * (3 - BLOCK_LEVEL as u32);
pub const BLOCK_ENTRIES: u64 = 1 << G::BITS_PER_LEVEL;
/// Whether a table level sits between the root and the block table.
pub const MID_LEVEL: u64 = (BLOCK_LEVEL - G::START_LEVEL - 1) as u64;

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

/// TCR_EL1: T0SZ = T1SZ = 16 (48-bit VA), write-back caches, inner
/// shareable, and the granule in TG0/TG1 (whose encodings differ).
pub const TCR: u64 = {
    let (tg0, tg1) = match G::PAGE_SHIFT {
        12 => (0b00, 0b10),
        14 => (0b10, 0b01),
        _ => (0b01, 0b11),
    };
    0x3510_3510 | (tg0 << 14) | (tg1 << 30)
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_4k_early_map_matches_the_linker_script() {
        if G::PAGE_SHIFT == 12 {
            assert_eq!(TCR, 0xb510_3510);
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
}
