//! Translation granules: everything the walker needs to know about 4K, 16K and
//! 64K pages with a 48-bit virtual address, derived from the page shift.

/// One translation granule with a 48-bit VA.
pub trait Granule: Copy + 'static {
    const PAGE_SHIFT: u32;
    const NAME: &'static str;

    const PAGE_SIZE: u64 = 1 << Self::PAGE_SHIFT;
    /// Each table is one page of 8-byte descriptors.
    const BITS_PER_LEVEL: u32 = Self::PAGE_SHIFT - 3;
    const ENTRIES: usize = 1 << Self::BITS_PER_LEVEL;
    /// Levels needed to translate 48 bits: 4 for 4K and 16K, 3 for 64K.
    const LEVELS: usize = (48 - Self::PAGE_SHIFT).div_ceil(Self::BITS_PER_LEVEL) as usize;
    /// The architectural number of the first level (0 for 4K/16K, 1 for 64K).
    const START_LEVEL: usize = 4 - Self::LEVELS;

    /// log2 of the bytes one entry maps at `level` (3 is the page level).
    fn level_shift(level: usize) -> u32 {
        Self::PAGE_SHIFT + Self::BITS_PER_LEVEL * (3 - level) as u32
    }

    fn level_size(level: usize) -> u64 {
        1 << Self::level_shift(level)
    }

    /// Entries used in a table at `level`: the start level may resolve fewer
    /// bits than a full table (2 entries for 16K at level 0).
    fn entries_at(level: usize) -> usize {
        if level == Self::START_LEVEL {
            let bits = 48 - Self::level_shift(level);
            1 << bits
        } else {
            Self::ENTRIES
        }
    }

    fn index(va: u64, level: usize) -> usize {
        ((va >> Self::level_shift(level)) as usize) & (Self::entries_at(level) - 1)
    }

    /// Whether a block (non-table leaf) descriptor is architecturally allowed
    /// at `level` with a 48-bit output address (no FEAT_LPA2).
    fn block_allowed(level: usize) -> bool {
        match Self::PAGE_SHIFT {
            12 => level == 1 || level == 2,
            _ => level == 2,
        }
    }

    /// Entries that one contiguous-bit group spans at `level` (D8.6.1).
    fn contiguous_entries(level: usize) -> usize {
        match (Self::PAGE_SHIFT, level) {
            (12, _) => 16,
            (14, 2) => 32,
            (14, _) => 128,
            (16, _) => 32,
            _ => unreachable!(),
        }
    }

    /// Sparse section size (Linux's SECTION_SIZE_BITS): a memory block.
    const SECTION_SHIFT: u32 = if Self::PAGE_SHIFT == 16 { 29 } else { 27 };
}

#[derive(Clone, Copy, Debug)]
pub struct Granule4K;
#[derive(Clone, Copy, Debug)]
pub struct Granule16K;
#[derive(Clone, Copy, Debug)]
pub struct Granule64K;

impl Granule for Granule4K {
    const PAGE_SHIFT: u32 = 12;
    const NAME: &'static str = "4K";
}
impl Granule for Granule16K {
    const PAGE_SHIFT: u32 = 14;
    const NAME: &'static str = "16K";
}
impl Granule for Granule64K {
    const PAGE_SHIFT: u32 = 16;
    const NAME: &'static str = "64K";
}

#[cfg(feature = "granule-16k")]
pub type KernelGranule = Granule16K;
#[cfg(feature = "granule-64k")]
pub type KernelGranule = Granule64K;
#[cfg(not(any(feature = "granule-16k", feature = "granule-64k")))]
pub type KernelGranule = Granule4K;

#[cfg(test)]
mod tests {
    use super::*;

    fn check<G: Granule>(levels: usize, start: usize, section: u32) {
        assert_eq!(G::LEVELS, levels);
        assert_eq!(G::START_LEVEL, start);
        assert_eq!(G::SECTION_SHIFT, section);
        // The levels together resolve exactly 48 bits.
        let resolved: u32 = (G::START_LEVEL..4)
            .map(|l| G::entries_at(l).trailing_zeros())
            .sum::<u32>()
            + G::PAGE_SHIFT;
        assert_eq!(resolved, 48);
        assert_eq!(G::level_size(3), G::PAGE_SIZE);
    }

    #[test]
    fn level_arithmetic_for_every_granule() {
        check::<Granule4K>(4, 0, 27);
        check::<Granule16K>(4, 0, 27);
        check::<Granule64K>(3, 1, 29);
        assert_eq!(Granule4K::level_size(2), 2 << 20);
        assert_eq!(Granule4K::level_size(1), 1 << 30);
        assert_eq!(Granule16K::level_size(2), 32 << 20);
        assert_eq!(Granule16K::entries_at(0), 2);
        assert_eq!(Granule64K::level_size(2), 512 << 20);
        assert_eq!(Granule64K::entries_at(1), 64);
    }

    proptest::proptest! {
        #[test]
        fn indices_reassemble_the_address(va in 0u64..(1 << 48)) {
            fn rebuild<G: Granule>(va: u64) -> u64 {
                (G::START_LEVEL..4)
                    .map(|l| (G::index(va, l) as u64) << G::level_shift(l))
                    .sum::<u64>()
                    + (va & (G::PAGE_SIZE - 1))
            }
            proptest::prop_assert_eq!(rebuild::<Granule4K>(va), va);
            proptest::prop_assert_eq!(rebuild::<Granule16K>(va), va);
            proptest::prop_assert_eq!(rebuild::<Granule64K>(va), va);
        }
    }
}
