//! Boot-time physical memory: what RAM there is and what is taken, before
//! struct pages and the buddy allocator exist (Linux's memblock, bottom-up).
//! Everything it allocates stays reserved for good; what is left goes to the
//! buddy allocator.

use super::addr::{PhysAddr, PhysRange};
use super::frame::FrameAllocator;
use super::layout::PAGE_SHIFT;

const MAX_REGIONS: usize = 64;

/// A region list had no room for one more range: nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionsFull;

/// A sorted, merged list of physical ranges (fixed size: no heap at boot).
/// A change that needs more than [`MAX_REGIONS`] ranges is refused whole
/// (Linux's memblock doubles its arrays instead; a boot that needs more
/// than 64 separate ranges is a broken or hostile DT).
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
    fn add(&mut self, base: PhysAddr, end: PhysAddr) -> Result<(), RegionsFull> {
        if base >= end {
            return Ok(());
        }
        let (mut base, mut end) = (base, end);
        let mut out = Self::EMPTY;
        let mut placed = false;
        for r in self.as_slice() {
            if r.end() < base {
                out.push(*r)?;
            } else if r.base > end {
                if !placed {
                    out.push(PhysRange::from_bounds(base, end))?;
                    placed = true;
                }
                out.push(*r)?;
            } else {
                base = base.min(r.base);
                end = end.max(r.end());
            }
        }
        if !placed {
            out.push(PhysRange::from_bounds(base, end))?;
        }
        *self = out;
        Ok(())
    }

    /// [`add`](Self::add), or with the list full, the range and the gap to
    /// its nearest neighbour as one: for reservations, where covering more
    /// is safe and forgetting one is not. Whether it was exact.
    fn add_widening(&mut self, base: PhysAddr, end: PhysAddr) -> bool {
        if self.add(base, end).is_ok() {
            return true;
        }
        // Full and disjoint from every range: join the nearest, which
        // leaves the count as it was.
        let gap = |r: &PhysRange| {
            if r.end() <= base {
                base - r.end()
            } else {
                r.base - end
            }
        };
        let Some(near) = self.as_slice().iter().copied().min_by_key(gap) else {
            return false;
        };
        let (b, e) = (base.min(near.base), end.max(near.end()));
        // Overlapping `near`, the add merges into it: room is certain.
        let merged = self.add(b, e);
        // Forgetting a reservation would hand reserved memory out.
        assert!(merged.is_ok(), "memblock: a merging add found no room");
        false
    }

    /// Removes `[base, end)`, splitting ranges as needed.
    fn remove(&mut self, base: PhysAddr, end: PhysAddr) -> Result<(), RegionsFull> {
        let mut out = Self::EMPTY;
        for r in self.as_slice() {
            if r.end() <= base || r.base >= end {
                out.push(*r)?;
                continue;
            }
            if r.base < base {
                out.push(PhysRange::from_bounds(r.base, base))?;
            }
            if r.end() > end {
                out.push(PhysRange::from_bounds(end, r.end()))?;
            }
        }
        *self = out;
        Ok(())
    }

    fn push(&mut self, r: PhysRange) -> Result<(), RegionsFull> {
        let slot = self.r.get_mut(self.n).ok_or(RegionsFull)?;
        *slot = r;
        self.n += 1;
        Ok(())
    }
}

/// `pa` rounded up to `align` (a power of two), `None` past the top.
fn align_up(pa: PhysAddr, align: u64) -> Option<PhysAddr> {
    let up = pa.as_u64().checked_add(align - 1)? & !(align - 1);
    Some(PhysAddr::new(up))
}

/// `[base, base + size)` cut short at the top of the address space.
fn bounds(base: PhysAddr, size: u64) -> (PhysAddr, PhysAddr) {
    (
        base,
        base.checked_add(size).unwrap_or(PhysAddr::new(u64::MAX)),
    )
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

    /// Linux's `memblock_add`; refused whole when the list is full (the
    /// caller logs it: less RAM is safe).
    pub fn add_memory(&mut self, base: PhysAddr, size: u64) -> Result<(), RegionsFull> {
        let (base, end) = bounds(base, size);
        self.memory.add(base, end)
    }

    /// Linux's `memblock_remove`: no longer RAM (carved out as device
    /// memory, or `no-map`). Refused whole when splitting needs a range
    /// more than the list holds.
    pub fn remove(&mut self, base: PhysAddr, size: u64) -> Result<(), RegionsFull> {
        let (base, end) = bounds(base, size);
        self.memory.remove(base, end)
    }

    /// Linux's `memblock_reserve`. It cannot fail: with the list full the
    /// range is joined to its nearest neighbour, reserving the gap too
    /// (`false` then, for the caller to log).
    pub fn reserve(&mut self, base: PhysAddr, size: u64) -> bool {
        let (base, end) = bounds(base, size);
        self.reserved.add_widening(base, end)
    }

    /// Whether any of `[base, base + size)` is reserved.
    pub fn is_reserved(&self, base: PhysAddr, size: u64) -> bool {
        let (base, end) = bounds(base, size);
        let r = PhysRange::from_bounds(base, end);
        self.reserved.as_slice().iter().any(|x| x.overlaps(&r))
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
            let mut at = align_up(m.base, align)?;
            'scan: while at.checked_add(size).is_some_and(|e| e <= m.end()) {
                for r in self.reserved.as_slice() {
                    if r.overlaps(&PhysRange::new(at, size)) {
                        at = align_up(r.end(), align)?;
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

    /// A free that would need one range more than the list holds leaves
    /// the pages reserved: lost to boot, never handed out twice.
    fn free_pages(&mut self, pa: PhysAddr, order: u32) {
        let (base, end) = bounds(pa, 1u64 << (PAGE_SHIFT + order));
        let _ = self.reserved.remove(base, end);
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
        m.add_memory(pa(0x4000_0000), 0x100_0000).unwrap();
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

    /// A DT with more separate ranges than the lists hold: extra memory is
    /// refused with nothing changed, a split that does not fit is refused,
    /// and every reservation still keeps its memory from the allocator.
    #[test]
    fn more_ranges_than_slots_never_panic_nor_free_a_reservation() {
        let mut m = Memblock::new();
        let step = 0x10_0000;
        for i in 0..MAX_REGIONS as u64 {
            m.add_memory(pa(0x4000_0000 + 2 * i * step), step).unwrap();
        }
        let before = m.memory().to_vec();
        assert_eq!(
            m.add_memory(pa(0x4000_0000 + 2 * 64 * step), step),
            Err(RegionsFull)
        );
        assert_eq!(m.remove(pa(0x4000_1000), 0x1000), Err(RegionsFull));
        assert_eq!(m.memory(), &before[..], "refusals changed nothing");
        // Merging into a neighbour needs no slot.
        m.add_memory(pa(0x4000_0000 + step), step).unwrap();
        assert_eq!(m.memory().len(), MAX_REGIONS - 1);

        let mut asked = Vec::new();
        for i in 0..3 * MAX_REGIONS as u64 {
            let r = PhysRange::new(pa(0x4000_0000 + i * 0x3_0000 + 0x1000), 0x1000);
            let exact = m.reserve(r.base, r.size);
            assert_eq!(exact, i < MAX_REGIONS as u64, "i={i}");
            asked.push(r);
        }
        assert!(m.reserved().len() <= MAX_REGIONS);
        for r in &asked {
            assert!(
                m.reserved().iter().any(|x| x.covers(r)),
                "{r:?} lost its reservation"
            );
        }
        let mut free = Vec::new();
        m.for_each_free(|s, e| free.push(PhysRange::from_bounds(s, e)));
        for f in &free {
            assert!(asked.iter().all(|r| !r.overlaps(f)), "{f:?} is reserved");
        }
        while let Some(a) = m.alloc(0x1000, 0x1000) {
            assert!(asked
                .iter()
                .all(|r| !r.overlaps(&PhysRange::new(a, 0x1000))));
        }
    }

    #[test]
    fn ranges_at_the_top_of_the_address_space_do_not_wrap() {
        let mut m = Memblock::new();
        m.add_memory(pa(u64::MAX - 0x1_ffff), u64::MAX).unwrap();
        assert_eq!(
            m.memory(),
            &[PhysRange::from_bounds(
                pa(u64::MAX - 0x1_ffff),
                pa(u64::MAX)
            )]
        );
        m.reserve(pa(u64::MAX - 0xfff), 0x2000);
        assert_eq!(m.alloc(0x1000, 0x1000), Some(pa(u64::MAX - 0x1_ffff)));
        assert_eq!(m.alloc(0x2_0000, 0x1000), None);
        assert_eq!(m.alloc(0x1000, 1 << 63), None);
    }
}
