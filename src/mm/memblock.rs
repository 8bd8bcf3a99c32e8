//! Boot-time physical memory: what RAM there is and what is taken, before
//! struct pages and the buddy allocator exist (Linux's memblock, bottom-up).
//! Everything it allocates stays reserved for good; what is left goes to the
//! buddy allocator.

use super::addr::PhysRange;
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
        r: [PhysRange { base: 0, size: 0 }; MAX_REGIONS],
        n: 0,
    };

    pub fn as_slice(&self) -> &[PhysRange] {
        &self.r[..self.n]
    }

    /// Adds `[base, end)`, keeping the list sorted and merged.
    fn add(&mut self, base: u64, end: u64) {
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
                    out.push(PhysRange {
                        base,
                        size: end - base,
                    });
                    placed = true;
                }
                out.push(*r);
            } else {
                base = base.min(r.base);
                end = end.max(r.end());
            }
        }
        if !placed {
            out.push(PhysRange {
                base,
                size: end - base,
            });
        }
        *self = out;
    }

    /// Removes `[base, end)`, splitting ranges as needed.
    fn remove(&mut self, base: u64, end: u64) {
        let mut out = Self::EMPTY;
        for r in self.as_slice() {
            if r.end() <= base || r.base >= end {
                out.push(*r);
                continue;
            }
            if r.base < base {
                out.push(PhysRange {
                    base: r.base,
                    size: base - r.base,
                });
            }
            if r.end() > end {
                out.push(PhysRange {
                    base: end,
                    size: r.end() - end,
                });
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

    pub fn add_memory(&mut self, base: u64, size: u64) {
        self.memory.add(base, base + size);
    }

    pub fn reserve(&mut self, base: u64, size: u64) {
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

    /// `size` bytes aligned to `align`, lowest address first.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        for m in self.memory.as_slice() {
            let mut at = m.base.next_multiple_of(align);
            'scan: while at + size <= m.end() {
                for r in self.reserved.as_slice() {
                    if r.base < at + size && at < r.end() {
                        at = r.end().next_multiple_of(align);
                        continue 'scan;
                    }
                }
                self.reserve(at, size);
                return Some(at);
            }
        }
        None
    }

    /// Calls `f(start, end)` for every free (unreserved) part of memory.
    pub fn for_each_free(&self, mut f: impl FnMut(u64, u64)) {
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
    fn alloc_pages(&mut self, order: u32) -> Option<u64> {
        let size = 1u64 << (PAGE_SHIFT + order);
        self.alloc(size, size)
    }

    fn free_pages(&mut self, pa: u64, order: u32) {
        self.reserved
            .remove(pa, pa + (1u64 << (PAGE_SHIFT + order)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_around_reservations_and_reports_the_rest() {
        let mut m = Memblock::new();
        m.add_memory(0x4000_0000, 0x100_0000);
        m.reserve(0x4000_0000, 0x1000);
        m.reserve(0x4020_0000, 0x30000);
        assert_eq!(m.alloc(0x20_0000, 0x20_0000), Some(0x4040_0000));
        assert_eq!(m.alloc(0x1000, 0x1000), Some(0x4000_1000));
        let a = m.alloc_pages(0).unwrap();
        m.free_pages(a, 0);
        let mut free = Vec::new();
        m.for_each_free(|s, e| free.push((s, e)));
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
