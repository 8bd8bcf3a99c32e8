//! `vmem_altmap`: struct pages carved out of the memory they describe.
//!
//! Allocation follows Linux's `altmap_alloc_block_buf`: a bump pointer from
//! `base_pfn + reserve`, each request naturally aligned to the lowest set bit
//! of its page count, the padding counted in `align`.
//!
//! Linux's `vmem_altmap_free` only decrements `alloc`, trusting that the whole
//! range goes at once. Here frees name their pfns and may come in any order
//! and in any pieces, but every freed pfn must be one handed out and not yet
//! freed: anything else is refused with [`AltmapError`] and counted, and the
//! altmap is left untouched. Whenever the pfns at the top of the bump region
//! come back the bump pointer rewinds past them and past any padding below,
//! down to the highest pfn still allocated: undoing the latest allocations
//! (a rolled-back add) restores the altmap exactly, and an add/remove cycle
//! leaves it as it started. `align` always equals the pfns skipped below the
//! bump pointer (padding and holes), so Linux's `next_pfn` formula holds.

use alloc::vec::Vec;

use super::addr::Pfn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AltmapError {
    /// A pfn outside the altmap's allocatable range.
    OutOfRange { pfn: Pfn },
    /// A pfn that is not currently allocated (double or wild free).
    NotAllocated { pfn: Pfn },
}

impl From<AltmapError> for crate::error::Error {
    fn from(e: AltmapError) -> Self {
        match e {
            AltmapError::OutOfRange { pfn } => {
                crate::err!(ERANGE, "pfn {pfn:#x} is outside the altmap")
            }
            AltmapError::NotAllocated { pfn } => {
                crate::err!(EINVAL, "pfn {pfn:#x} was not allocated from the altmap")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmemAltmap {
    /// First pfn of the device or hot-added range.
    pub base_pfn: Pfn,
    /// One past the last pfn of the range.
    pub end_pfn: Pfn,
    /// Pfns at the start kept for the device's own use (never allocated).
    pub reserve: u64,
    /// Pfns available for struct pages after `reserve`.
    pub free: u64,
    /// Pfns skipped to align allocations.
    pub align: u64,
    /// Pfns handed out and not yet freed.
    pub alloc: u64,
    /// Bump offset from the first allocatable pfn (allocations, holes left
    /// by out-of-order frees, padding).
    high: u64,
    /// One bit per pfn of `free`: set while allocated.
    allocated: Vec<u64>,
    /// Refused frees, for `/proc/vmstat`.
    pub misuse: u64,
}

impl VmemAltmap {
    /// An altmap whose bitmap is allocated here: for tests; paths a user
    /// drives use [`try_new`](Self::try_new).
    pub fn new(base_pfn: Pfn, end_pfn: Pfn, reserve: u64, free: u64) -> Self {
        Self::try_new(base_pfn, end_pfn, reserve, free).expect("no memory for an altmap bitmap")
    }

    /// [`new`](Self::new), or `Err` when the heap has no room for its
    /// bitmap.
    pub fn try_new(
        base_pfn: Pfn,
        end_pfn: Pfn,
        reserve: u64,
        free: u64,
    ) -> Result<Self, alloc::collections::TryReserveError> {
        assert!(
            base_pfn + reserve + free <= end_pfn,
            "altmap larger than its range"
        );
        let words = free.div_ceil(64) as usize;
        let mut allocated = Vec::new();
        allocated.try_reserve_exact(words)?;
        allocated.resize(words, 0);
        Ok(Self {
            base_pfn,
            end_pfn,
            reserve,
            free,
            align: 0,
            alloc: 0,
            high: 0,
            allocated,
            misuse: 0,
        })
    }

    fn first_pfn(&self) -> Pfn {
        self.base_pfn + self.reserve
    }

    /// Linux's `vmem_altmap_next_pfn`.
    pub fn next_pfn(&self) -> Pfn {
        self.first_pfn() + self.high
    }

    /// Linux's `vmem_altmap_nr_free`.
    pub fn nr_free(&self) -> u64 {
        self.free - self.high
    }

    fn bit(&self, pfn: Pfn) -> bool {
        let i = pfn - self.first_pfn();
        self.allocated[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// A word at a time: a 2 MiB vmemmap block is 512 bits, and hot-add
    /// is meant to cost in proportion to blocks, not pages.
    fn set_bits(&mut self, pfn: Pfn, nr: u64, on: bool) {
        let (mut i, end) = (pfn - self.first_pfn(), pfn - self.first_pfn() + nr);
        while i < end {
            let (word, bit) = ((i / 64) as usize, i % 64);
            let n = (64 - bit).min(end - i);
            let mask = (u64::MAX >> (64 - n)) << bit;
            if on {
                self.allocated[word] |= mask;
            } else {
                self.allocated[word] &= !mask;
            }
            i += n;
        }
    }

    /// `nr_pfns` pfns aligned to the lowest set bit of `nr_pfns`, or `None`
    /// when the altmap cannot hold them (`altmap_alloc_block_buf`).
    pub fn alloc_pfns(&mut self, nr_pfns: u64) -> Option<Pfn> {
        if nr_pfns == 0 {
            return None;
        }
        let pfn = self.next_pfn();
        let align = 1u64 << nr_pfns.trailing_zeros();
        let pad = pfn.align_up(align) - pfn;
        if nr_pfns + pad > self.nr_free() {
            return None;
        }
        self.alloc += nr_pfns;
        self.align += pad;
        self.high += pad + nr_pfns;
        self.set_bits(pfn + pad, nr_pfns, true);
        Some(pfn + pad)
    }

    /// Give back `nr_pfns` pfns from `pfn` (`vmem_altmap_free`, checked).
    pub fn free_pfns(&mut self, pfn: Pfn, nr_pfns: u64) -> Result<(), AltmapError> {
        let range = self.first_pfn()..self.first_pfn() + self.free;
        for p in Pfn::range(pfn, pfn + nr_pfns) {
            if !range.contains(&p) {
                self.misuse += 1;
                return Err(AltmapError::OutOfRange { pfn: p });
            }
            if !self.bit(p) {
                self.misuse += 1;
                return Err(AltmapError::NotAllocated { pfn: p });
            }
        }
        self.set_bits(pfn, nr_pfns, false);
        self.alloc -= nr_pfns;
        while self.high > 0 && !self.bit(self.first_pfn() + self.high - 1) {
            self.high -= 1;
        }
        self.align = self.high - self.alloc;
        Ok(())
    }

    /// Whether `pfn` lies in this altmap's whole range.
    pub fn contains(&self, pfn: Pfn) -> bool {
        (self.base_pfn..self.end_pfn).contains(&pfn)
    }

    /// Whether `pfn` is one this altmap handed out and has not had back:
    /// only those back a vmemmap page. The rest of the range may be
    /// ordinary memory (a `memmap_on_memory` block once online).
    pub fn is_allocated(&self, pfn: Pfn) -> bool {
        (self.first_pfn()..self.first_pfn() + self.free).contains(&pfn) && self.bit(pfn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::addr::PhysAddr;

    /// The padding that aligns a request counts against what is left: a
    /// request that would fit only without its padding is refused, never
    /// placed past the end of the allocatable range.
    #[test]
    fn alignment_padding_counts_against_free_pfns() {
        let base = Pfn::down(PhysAddr::new(0x4000_0000));
        let mut altmap = VmemAltmap::new(base, base + 8, 0, 4);
        assert_eq!(altmap.alloc_pfns(1), Some(base));
        assert_eq!(altmap.nr_free(), 3);
        // 4 pfns align to 4: 3 of padding, 7 needed, 3 left.
        assert_eq!(altmap.alloc_pfns(4), None);
        assert_eq!(altmap.nr_free(), 3);
        assert!(!altmap.is_allocated(base + 4));
        // 2 pfns align to 2: 1 of padding, 3 needed, 3 left.
        assert_eq!(altmap.alloc_pfns(2), Some(base + 2));
        assert_eq!(altmap.nr_free(), 0);
    }

    /// A free of pfns the altmap did not hand out (the padding, or outside
    /// its range) is refused, counted once and changes nothing.
    #[test]
    fn bad_frees_are_refused_and_counted() {
        let base = Pfn::down(PhysAddr::new(0x4000_0000));
        let mut altmap = VmemAltmap::new(base, base + 8, 0, 4);
        assert_eq!(altmap.alloc_pfns(1), Some(base));
        assert_eq!(altmap.alloc_pfns(2), Some(base + 2));
        let before = altmap.clone();
        assert_eq!(
            altmap.free_pfns(base + 1, 1),
            Err(AltmapError::NotAllocated { pfn: base + 1 })
        );
        assert_eq!(altmap.misuse, 1);
        assert_eq!(
            altmap.free_pfns(base + 4, 1),
            Err(AltmapError::OutOfRange { pfn: base + 4 })
        );
        assert_eq!(altmap.misuse, 2);
        altmap.misuse = 0;
        assert_eq!(altmap, before);
        // Good frees, last first, take the altmap back to empty.
        altmap.free_pfns(base + 2, 2).unwrap();
        assert_eq!((altmap.alloc, altmap.align, altmap.nr_free()), (1, 0, 3));
        altmap.free_pfns(base, 1).unwrap();
        assert_eq!((altmap.alloc, altmap.align, altmap.nr_free()), (0, 0, 4));
        // Its whole range, reserve and unused tail included.
        assert!(altmap.contains(base) && altmap.contains(base + 7));
        assert!(!altmap.contains(base - 1) && !altmap.contains(base + 8));
    }
}
