//! Boot-time physical memory: what RAM there is and what is taken, before
//! struct pages and the buddy allocator exist (Linux's memblock, bottom-up).
//! Everything it allocates stays reserved for good; what is left goes to the
//! buddy allocator.

use super::addr::{PhysAddr, PhysRange};
use super::frame::FrameAllocator;
use super::layout::PAGE_SHIFT;

const MAX_REGIONS: usize = 64;

/// A sorted, merged list of physical ranges (fixed size: no heap at boot).
#[derive(Clone, Copy)]
pub struct Regions {
    r: [PhysRange; MAX_REGIONS],
    n: usize,
}

impl Regions {
    const EMPTY: Self = Self {
        r: [PhysRange::new(PhysAddr::new(0), 0); MAX_REGIONS],
        n: 0,
    };

    pub fn as_slice(&self) -> &[PhysRange] {
        &self.r[..self.n]
    }

    /// Adds `[base, end)`, keeping the list sorted and merged.
    fn add(&mut self, base: PhysAddr, end: PhysAddr) {
        if base >= end {
            return;
        }
        let (mut base, mut end) = (base, end);
        let mut out = Self::EMPTY;
        let mut placed = false;
        for r in self.as_slice() {
            if r.end() < base {
                out.push(*r);
            } else if r.base > end {
                if !placed {
                    out.push(PhysRange::from_bounds(base, end));
                    placed = true;
                }
                out.push(*r);
            } else {
                base = base.min(r.base);
                end = end.max(r.end());
            }
        }
        if !placed {
            out.push(PhysRange::from_bounds(base, end));
        }
        *self = out;
    }

    /// Removes `[base, end)`, splitting ranges as needed.
    fn remove(&mut self, base: PhysAddr, end: PhysAddr) {
        let mut out = Self::EMPTY;
        for r in self.as_slice() {
            if r.end() <= base || r.base >= end {
                out.push(*r);
                continue;
            }
            if r.base < base {
                out.push(PhysRange::from_bounds(r.base, base));
            }
            if r.end() > end {
                out.push(PhysRange::from_bounds(end, r.end()));
            }
        }
        *self = out;
    }

    fn push(&mut self, r: PhysRange) {
        assert!(self.n < MAX_REGIONS, "memblock: too many regions");
        self.r[self.n] = r;
        self.n += 1;
    }
}

pub struct Memblock {
    memory: Regions,
    reserved: Regions,
}

impl Default for Memblock {
    fn default() -> Self {
        Self::new()
    }
}

impl Memblock {
    pub const fn new() -> Self {
        Self {
            memory: Regions::EMPTY,
            reserved: Regions::EMPTY,
        }
    }

    /// Linux's `memblock_add`.
    pub fn add_memory(&mut self, base: PhysAddr, size: u64) {
        self.memory.add(base, base + size);
    }

    /// Linux's `memblock_remove`: no longer RAM (carved out as device memory).
    pub fn remove(&mut self, base: PhysAddr, size: u64) {
        self.memory.remove(base, base + size);
    }

    /// Linux's `memblock_reserve`.
    pub fn reserve(&mut self, base: PhysAddr, size: u64) {
        self.reserved.add(base, base + size);
    }

    pub fn memory(&self) -> &[PhysRange] {
        self.memory.as_slice()
    }

    /// A copy of the memory list, to iterate while allocating.
    pub fn memory_regions(&self) -> Regions {
        self.memory
    }

    pub fn reserved(&self) -> &[PhysRange] {
        self.reserved.as_slice()
    }

    /// `size` bytes aligned to `align` (a power of two), lowest address
    /// first (Linux's `memblock_phys_alloc`).
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<PhysAddr> {
        for m in self.memory.as_slice() {
            let mut at = m.base.align_up(align);
            'scan: while at + size <= m.end() {
                for r in self.reserved.as_slice() {
                    if r.overlaps(&PhysRange::new(at, size)) {
                        at = r.end().align_up(align);
                        continue 'scan;
                    }
                }
                self.reserve(at, size);
                return Some(at);
            }
        }
        None
    }

    /// Calls `f(start, end)` for every free (unreserved) part of memory
    /// (Linux's `for_each_free_mem_range`).
    pub fn for_each_free(&self, mut f: impl FnMut(PhysAddr, PhysAddr)) {
        for m in self.memory.as_slice() {
            let mut at = m.base;
            for r in self.reserved.as_slice() {
                if r.end() <= at || r.base >= m.end() {
                    continue;
                }
                if r.base > at {
                    f(at, r.base);
                }
                at = r.end();
            }
            if at < m.end() {
                f(at, m.end());
            }
        }
    }
}

impl FrameAllocator for Memblock {
    fn alloc_pages(&mut self, order: u32) -> Option<PhysAddr> {
        let size = 1u64 << (PAGE_SHIFT + order);
        self.alloc(size, size)
    }

    fn free_pages(&mut self, pa: PhysAddr, order: u32) {
        self.reserved
            .remove(pa, pa + (1u64 << (PAGE_SHIFT + order)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pa(v: u64) -> PhysAddr {
        PhysAddr::new(v)
    }

    #[test]
    fn allocates_around_reservations_and_reports_the_rest() {
        let mut m = Memblock::new();
        m.add_memory(pa(0x4000_0000), 0x100_0000);
        m.reserve(pa(0x4000_0000), 0x1000);
        m.reserve(pa(0x4020_0000), 0x30000);
        assert_eq!(m.alloc(0x20_0000, 0x20_0000), Some(pa(0x4040_0000)));
        assert_eq!(m.alloc(0x1000, 0x1000), Some(pa(0x4000_1000)));
        let a = m.alloc_pages(0).unwrap();
        m.free_pages(a, 0);
        let mut free = Vec::new();
        m.for_each_free(|s, e| free.push((s.as_u64(), e.as_u64())));
        assert_eq!(
            free,
            [
                (0x4000_2000, 0x4020_0000),
                (0x4023_0000, 0x4040_0000),
                (0x4060_0000, 0x4100_0000)
            ]
        );
        assert_eq!(m.alloc(0x200_0000, 0x1000), None);
    }
}
