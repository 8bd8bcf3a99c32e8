//! Host-test doubles for the mm core (compiled only under `cfg(test)`): a
//! simulated physical memory arena at any base physical address, reached
//! through [`Translation`] like the linear map, and a bitmap frame allocator
//! over (part of) it with fault injection.
//!
//! ```ignore
//! let arena = Arena::new(0x4000_0000, 256, Granule4K::PAGE_SIZE);
//! let mut frames = arena.frames();
//! let mut pt = PageTable::<_, Granule4K>::new(arena.translation(), &mut frames).unwrap();
//! ```
//!
//! The [`Arena`] owns the host memory; every [`ArenaTranslation`] handed out
//! is a plain `Copy` pointer into it and must not outlive it (tests keep the
//! arena alive for as long as the page table that uses it).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{HashMap, HashSet};

use crate::mm::addr::PhysAddr;
use crate::mm::frame::FrameAllocator;
use crate::mm::pgtable::{Descriptor, Translation};

/// Page-aligned, zero-filled host memory standing for the physical range
/// `[base_pa, base_pa + pages * page_size)`.
pub struct Arena {
    host: *mut u8,
    /// What was allocated (`host` lies within it, page aligned).
    raw: *mut u8,
    layout: Layout,
    base_pa: PhysAddr,
    page_size: u64,
    pages: usize,
}

// SAFETY: the arena is plain memory owned by this value; all access through
// the raw pointers it hands out is already `unsafe` for the user.
unsafe impl Send for Arena {}
// SAFETY: tests touch an arena from one thread at a time; the pointer
// is only to memory the arena owns.
unsafe impl Sync for Arena {}

impl Arena {
    /// `pages` pages of `page_size` bytes (a power of two) at `base_pa`,
    /// which must be `page_size` aligned. The host buffer is aligned to
    /// `page_size`, so offsets within the arena keep their alignment.
    pub fn new(base_pa: PhysAddr, pages: usize, page_size: u64) -> Self {
        assert!(
            page_size.is_power_of_two() && page_size >= 8,
            "bad page size {page_size:#x}"
        );
        assert!(
            base_pa.is_aligned(page_size),
            "arena base {base_pa:#x} not page aligned"
        );
        assert!(pages > 0, "empty arena");
        let len = (pages as u64)
            .checked_mul(page_size)
            .expect("arena size overflows");
        base_pa
            .checked_add(len)
            .expect("arena wraps the physical address space");
        // One page more than needed at a small alignment, the buffer aligned
        // by hand: `alloc_zeroed` then is `calloc`, whose large blocks are
        // fresh mappings, zero without being written. A GiB-sized arena
        // costs only the pages a test touches (a page-aligned layout would
        // make the system allocator zero all of it).
        let layout = Layout::from_size_align((len + page_size) as usize, 16).expect("arena layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        assert!(!raw.is_null(), "cannot allocate a {len:#x}-byte arena");
        // SAFETY: the offset is below `page_size`, inside the allocation.
        let host = unsafe { raw.add(raw.align_offset(page_size as usize)) };
        Self {
            host,
            raw,
            layout,
            base_pa,
            page_size,
            pages,
        }
    }

    pub fn base_pa(&self) -> PhysAddr {
        self.base_pa
    }

    /// One past the last physical address of the arena.
    pub fn end_pa(&self) -> PhysAddr {
        self.base_pa + self.len()
    }

    pub fn len(&self) -> u64 {
        self.pages as u64 * self.page_size
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn pages(&self) -> usize {
        self.pages
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Whether all of `[pa, pa + len)` lies in the arena.
    pub fn contains(&self, pa: PhysAddr, len: u64) -> bool {
        self.translation().contains(pa, len)
    }

    /// The [`Translation`] onto this arena (valid while the arena lives).
    pub fn translation(&self) -> ArenaTranslation {
        ArenaTranslation {
            host_base: self.host,
            base_pa: self.base_pa,
            len: self.len(),
        }
    }

    /// A frame allocator owning every page of the arena.
    pub fn frames(&self) -> ArenaFrames {
        ArenaFrames::new(self.base_pa, self.pages, self.page_size)
    }

    /// A frame allocator owning `pages` pages from `pa` (which must lie in
    /// the arena): the rest stays free for other uses (an altmap, a device).
    pub fn frames_in(&self, pa: PhysAddr, pages: usize) -> ArenaFrames {
        assert!(
            self.contains(pa, pages as u64 * self.page_size),
            "frames outside the arena"
        );
        ArenaFrames::new(pa, pages, self.page_size)
    }

    /// Host pointer to the byte at `pa`; panics outside the arena.
    pub fn host_ptr(&self, pa: PhysAddr) -> *mut u8 {
        self.translation().host_ptr(pa)
    }

    pub fn read_u64(&self, pa: PhysAddr) -> u64 {
        assert!(
            self.contains(pa, 8) && pa.is_aligned(8),
            "read_u64 at {pa:#x}"
        );
        // SAFETY: in bounds and aligned (the buffer is page aligned).
        unsafe { (self.host_ptr(pa) as *const u64).read_volatile() }
    }

    pub fn write_u64(&self, pa: PhysAddr, value: u64) {
        assert!(
            self.contains(pa, 8) && pa.is_aligned(8),
            "write_u64 at {pa:#x}"
        );
        // SAFETY: as in `read_u64`.
        unsafe { (self.host_ptr(pa) as *mut u64).write_volatile(value) }
    }

    /// Copies `buf.len()` bytes out of the arena from `pa`.
    pub fn read_bytes(&self, pa: PhysAddr, buf: &mut [u8]) {
        assert!(
            self.contains(pa, buf.len() as u64),
            "read_bytes at {pa:#x}+{:#x}",
            buf.len()
        );
        // SAFETY: in bounds; the arena never overlaps a Rust reference.
        unsafe { core::ptr::copy_nonoverlapping(self.host_ptr(pa), buf.as_mut_ptr(), buf.len()) }
    }

    /// Copies `buf` into the arena at `pa`.
    pub fn write_bytes(&self, pa: PhysAddr, buf: &[u8]) {
        assert!(
            self.contains(pa, buf.len() as u64),
            "write_bytes at {pa:#x}+{:#x}",
            buf.len()
        );
        // SAFETY: as in `read_bytes`.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), self.host_ptr(pa), buf.len()) }
    }

    /// Sets `len` bytes from `pa` to `byte`.
    pub fn fill(&self, pa: PhysAddr, len: u64, byte: u8) {
        assert!(self.contains(pa, len), "fill at {pa:#x}+{len:#x}");
        // SAFETY: in bounds.
        unsafe { core::ptr::write_bytes(self.host_ptr(pa), byte, len as usize) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.raw, self.layout) }
    }
}

impl core::fmt::Debug for Arena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Arena({:#x}..{:#x}, {} x {:#x})",
            self.base_pa,
            self.end_pa(),
            self.pages,
            self.page_size
        )
    }
}

/// The arena seen as physical memory: `table_va(pa)` is the host address of
/// `pa`. Cheap to copy; valid only while its [`Arena`] lives.
#[derive(Clone, Copy, Debug)]
pub struct ArenaTranslation {
    pub host_base: *mut u8,
    pub base_pa: PhysAddr,
    pub len: u64,
}

// SAFETY: see `Arena`.
unsafe impl Send for ArenaTranslation {}
// SAFETY: as for `Arena`, whose memory this points into.
unsafe impl Sync for ArenaTranslation {}

impl ArenaTranslation {
    pub fn contains(&self, pa: PhysAddr, len: u64) -> bool {
        pa >= self.base_pa
            && pa
                .checked_add(len)
                .is_some_and(|end| end <= self.base_pa + self.len)
    }

    /// Host pointer to the byte at `pa`; panics outside the arena.
    pub fn host_ptr(&self, pa: PhysAddr) -> *mut u8 {
        assert!(
            self.contains(pa, 1),
            "physical address {pa:#x} outside the arena {:#x}..{:#x}",
            self.base_pa,
            self.base_pa + self.len
        );
        // SAFETY: in bounds of the arena's allocation.
        unsafe { self.host_base.add((pa - self.base_pa) as usize) }
    }
}

impl Translation for ArenaTranslation {
    fn table_va(&self, pa: PhysAddr) -> *mut Descriptor {
        assert!(
            pa.is_aligned(8),
            "table address {pa:#x} not descriptor aligned"
        );
        self.host_ptr(pa) as *mut Descriptor
    }
}

impl Translation for &Arena {
    fn table_va(&self, pa: PhysAddr) -> *mut Descriptor {
        self.translation().table_va(pa)
    }
}

/// A bitmap page allocator over `[base_pa, base_pa + pages * page_size)`:
/// lowest address first, every block naturally aligned (in physical
/// addresses) to its size, like the buddy allocator.
///
/// It checks its callers: freeing a page that is not allocated (double or
/// wild free), a misaligned or out-of-range block, a reserved page, or (with
/// `strict_order`) a block at another order than it was allocated at panics.
#[derive(Clone, Debug)]
pub struct ArenaFrames {
    base_pa: PhysAddr,
    page_shift: u32,
    pages: usize,
    /// One bit per page: set while allocated.
    used: Vec<u64>,
    /// Live allocations: first pa -> order.
    heads: HashMap<PhysAddr, u32>,
    in_use: usize,
    /// Fault injection: `Some(n)` lets the next `n` allocations succeed and
    /// fails every one after that (counted in `failed`) until set back to
    /// `None`. `Some(0)` fails the very next allocation.
    pub fail_after: Option<usize>,
    /// Pages (by their pa) that are `PageReserved`: never handed out, and
    /// reported by [`FrameAllocator::is_reserved`]; freeing one panics.
    pub reserved: HashSet<PhysAddr>,
    /// Frees must name the exact pa and order of an allocation (default).
    /// When false any aligned block of allocated pages may be freed.
    pub strict_order: bool,
    /// Successful allocations, frees and injected or real failures.
    pub allocs: u64,
    pub frees: u64,
    pub failed: u64,
}

impl ArenaFrames {
    pub fn new(base_pa: PhysAddr, pages: usize, page_size: u64) -> Self {
        assert!(page_size.is_power_of_two(), "bad page size {page_size:#x}");
        assert!(
            base_pa.is_aligned(page_size),
            "frames base {base_pa:#x} not page aligned"
        );
        Self {
            base_pa,
            page_shift: page_size.trailing_zeros(),
            pages,
            used: vec![0; pages.div_ceil(64)],
            heads: HashMap::new(),
            in_use: 0,
            fail_after: None,
            reserved: HashSet::new(),
            strict_order: true,
            allocs: 0,
            frees: 0,
            failed: 0,
        }
    }

    pub fn page_size(&self) -> u64 {
        1 << self.page_shift
    }

    pub fn base_pa(&self) -> PhysAddr {
        self.base_pa
    }

    pub fn end_pa(&self) -> PhysAddr {
        self.base_pa + ((self.pages as u64) << self.page_shift)
    }

    /// Pages managed.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Pages currently allocated.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Pages currently free (reserved ones included).
    pub fn nr_free(&self) -> usize {
        self.pages - self.in_use
    }

    /// Live allocations as `(pa, order)`, sorted by address.
    pub fn allocations(&self) -> Vec<(PhysAddr, u32)> {
        let mut v: Vec<_> = self.heads.iter().map(|(&pa, &o)| (pa, o)).collect();
        v.sort_unstable();
        v
    }

    /// Whether `pa` lies in the managed range.
    pub fn contains(&self, pa: PhysAddr) -> bool {
        pa >= self.base_pa && pa < self.end_pa()
    }

    /// Whether the page holding `pa` is allocated.
    pub fn is_allocated(&self, pa: PhysAddr) -> bool {
        assert!(
            self.contains(pa),
            "{pa:#x} outside the frames {:#x}..{:#x}",
            self.base_pa,
            self.end_pa()
        );
        self.bit(((pa - self.base_pa) >> self.page_shift) as usize)
    }

    fn bit(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, on: bool) {
        if on {
            self.used[i / 64] |= 1 << (i % 64);
        } else {
            self.used[i / 64] &= !(1 << (i % 64));
        }
    }

    fn block_free(&self, first: usize, n: usize) -> bool {
        let mut i = first;
        while i < first + n {
            // Whole words at a time where possible.
            if i.is_multiple_of(64) && first + n - i >= 64 {
                if self.used[i / 64] != 0 {
                    return false;
                }
                i += 64;
            } else {
                if self.bit(i) {
                    return false;
                }
                i += 1;
            }
        }
        if self.reserved.is_empty() {
            return true;
        }
        (first..first + n).all(|i| !self.reserved.contains(&self.pa_of(i)))
    }

    fn pa_of(&self, i: usize) -> PhysAddr {
        self.base_pa + ((i as u64) << self.page_shift)
    }
}

impl FrameAllocator for ArenaFrames {
    fn alloc_pages(&mut self, order: u32) -> Option<PhysAddr> {
        if self.fail_after == Some(0) {
            self.failed += 1;
            return None;
        }
        let n = 1usize.checked_shl(order).filter(|&n| n <= self.pages);
        let Some(n) = n else {
            self.failed += 1;
            return None;
        };
        // First index whose pfn is aligned to the block size.
        let base_pfn = self.base_pa.as_u64() >> self.page_shift;
        let mut i = ((n as u64 - base_pfn % n as u64) % n as u64) as usize;
        while i + n <= self.pages {
            if self.block_free(i, n) {
                for p in i..i + n {
                    self.set(p, true);
                }
                self.in_use += n;
                self.allocs += 1;
                if let Some(left) = self.fail_after.as_mut() {
                    *left -= 1;
                }
                let pa = self.pa_of(i);
                self.heads.insert(pa, order);
                return Some(pa);
            }
            i += n;
        }
        self.failed += 1;
        None
    }

    fn free_pages(&mut self, pa: PhysAddr, order: u32) {
        let size = 1u64 << (self.page_shift + order);
        // Break-before-make: nothing cleared that reached it is unflushed.
        crate::arch::trace::check_free(pa.as_u64(), size);
        assert!(
            pa.is_aligned(size),
            "free_pages({pa:#x}, {order}): misaligned"
        );
        assert!(
            self.contains(pa) && pa + size <= self.end_pa(),
            "free_pages({pa:#x}, {order}): outside the frames {:#x}..{:#x}",
            self.base_pa,
            self.end_pa()
        );
        let first = ((pa - self.base_pa) >> self.page_shift) as usize;
        let n = 1usize << order;
        for i in first..first + n {
            assert!(
                self.bit(i),
                "free_pages({pa:#x}, {order}): page {:#x} is not allocated",
                self.pa_of(i)
            );
            assert!(
                !self.reserved.contains(&self.pa_of(i)),
                "free_pages({pa:#x}, {order}): page {:#x} is reserved",
                self.pa_of(i)
            );
        }
        if self.strict_order {
            match self.heads.get(&pa) {
                Some(&o) if o == order => {}
                other => panic!("free_pages({pa:#x}, {order}): allocated as {other:?}"),
            }
            self.heads.remove(&pa);
        } else {
            for i in first..first + n {
                let p = self.pa_of(i);
                self.heads.remove(&p);
            }
        }
        for i in first..first + n {
            self.set(i, false);
        }
        self.in_use -= n;
        self.frees += 1;
    }

    fn is_reserved(&self, pa: PhysAddr) -> bool {
        self.reserved.contains(&pa.align_down(self.page_size()))
    }
}

/// Heap fault injection for host tests: the kernel heap fails a request
/// when its spare block is gone (`mm::heap`), and every allocation on a
/// path a user drives must then give `ENOMEM` with nothing changed. On the
/// host the test binary's allocator stands in for it: per thread (tests run
/// in parallel), [`fail_nth`] makes the n-th heap allocation from now fail.
/// An infallible collection that meets the failure aborts the test binary:
/// the test is then seen to fail, loudly.
pub mod heap_faults {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    std::thread_local! {
        static FAIL_NTH: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Fails the `n`-th heap allocation (or growth) of this thread from now
    /// (`Some(0)`: the next); `None` turns it off.
    pub fn fail_nth(n: Option<u64>) {
        FAIL_NTH.with(|f| f.set(n));
    }

    /// Whether the injected failure has happened (it is then off).
    pub fn fired() -> bool {
        FAIL_NTH.with(|f| f.get().is_none())
    }

    fn fail_now() -> bool {
        FAIL_NTH
            .try_with(|f| match f.get() {
                Some(0) => {
                    f.set(None);
                    true
                }
                Some(n) => {
                    f.set(Some(n - 1));
                    false
                }
                None => false,
            })
            .unwrap_or(false)
    }

    pub struct FailingAlloc;

    // SAFETY: every call goes to `System` unchanged, or fails with null,
    // which the `GlobalAlloc` contract allows.
    unsafe impl GlobalAlloc for FailingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if fail_now() {
                return core::ptr::null_mut();
            }
            // SAFETY: the caller's layout, passed on.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if fail_now() {
                return core::ptr::null_mut();
            }
            // SAFETY: the caller's layout, passed on.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` with `layout`.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if fail_now() {
                return core::ptr::null_mut();
            }
            // SAFETY: the caller's block and sizes, passed on.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: FailingAlloc = FailingAlloc;

    #[test]
    fn the_nth_allocation_fails_once() {
        let mut v: Vec<u64> = Vec::new();
        fail_nth(Some(1));
        assert!(v.try_reserve(1).is_ok());
        assert!(!fired());
        let mut w: Vec<u64> = Vec::new();
        assert!(w.try_reserve(1).is_err());
        assert!(fired());
        assert!(w.try_reserve(1).is_ok());
        v.push(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::granule::{Granule, Granule16K, Granule4K, Granule64K};

    fn pa(v: u64) -> PhysAddr {
        PhysAddr::new(v)
    }

    fn frames_behave<G: Granule>() {
        // An odd base: only aligned blocks may be handed out.
        let base = pa(0x8000_0000_0000 + 3 * G::PAGE_SIZE);
        let arena = Arena::new(base, 64, G::PAGE_SIZE);
        let mut f = arena.frames();
        assert_eq!(f.in_use(), 0);
        let a = f.alloc_pages(0).unwrap();
        assert_eq!(a, base);
        let b = f.alloc_pages(2).unwrap();
        assert_eq!(b.as_u64() % (4 * G::PAGE_SIZE), 0);
        assert_eq!(b, base + G::PAGE_SIZE);
        let c = f.alloc_pages(0).unwrap();
        assert_eq!(c, base + 5 * G::PAGE_SIZE);
        assert_eq!(f.in_use(), 6);
        assert_eq!(f.allocations(), vec![(a, 0), (b, 2), (c, 0)]);
        // Too large for what is left at its alignment.
        assert_eq!(f.alloc_pages(6), None);
        assert_eq!(f.alloc_pages(7), None);
        f.free_pages(b, 2);
        assert_eq!(f.in_use(), 2);
        assert_eq!(f.alloc_pages(1), Some(b));
        f.free_pages(b, 1);
        f.free_pages(a, 0);
        f.free_pages(c, 0);
        assert_eq!(f.in_use(), 0);
        assert_eq!(f.nr_free(), 64);

        // The translation points into the arena.
        let t = arena.translation();
        arena.write_u64(base + G::PAGE_SIZE + 8, 0xdead_beef);
        // SAFETY: in the arena.
        let d = unsafe { t.table_va(base + G::PAGE_SIZE).add(1).read() };
        assert_eq!(d.0, 0xdead_beef);
        assert_eq!(t.host_ptr(base) as usize % G::PAGE_SIZE as usize, 0);
    }

    #[test]
    fn frames_are_naturally_aligned_for_every_page_size() {
        frames_behave::<Granule4K>();
        frames_behave::<Granule16K>();
        frames_behave::<Granule64K>();
    }

    #[test]
    fn fault_injection_and_reserved_pages() {
        let arena = Arena::new(pa(0x4000_0000), 16, 4096);
        let mut f = arena.frames();
        f.fail_after = Some(2);
        assert!(f.alloc_pages(0).is_some());
        assert!(f.alloc_pages(0).is_some());
        assert_eq!(f.alloc_pages(0), None);
        assert_eq!(f.alloc_pages(0), None);
        assert_eq!(f.failed, 2);
        f.fail_after = None;
        assert_eq!(f.alloc_pages(0), Some(pa(0x4000_2000)));
        f.reserved.insert(pa(0x4000_3000));
        assert!(f.is_reserved(pa(0x4000_3123)));
        assert_eq!(f.alloc_pages(0), Some(pa(0x4000_4000)));
        assert_eq!(f.alloc_pages(2), Some(pa(0x4000_8000)));
        assert_eq!(f.in_use(), 8);
    }

    #[test]
    #[should_panic(expected = "not allocated")]
    fn double_free_panics() {
        let mut f = ArenaFrames::new(pa(0x1000), 8, 0x1000);
        let a = f.alloc_pages(0).unwrap();
        f.free_pages(a, 0);
        f.free_pages(a, 0);
    }

    #[test]
    #[should_panic(expected = "misaligned")]
    fn misaligned_free_panics() {
        let mut f = ArenaFrames::new(pa(0), 8, 0x1000);
        f.alloc_pages(2).unwrap();
        f.free_pages(pa(0x1000), 1);
    }

    #[test]
    #[should_panic(expected = "allocated as")]
    fn free_at_the_wrong_order_panics() {
        let mut f = ArenaFrames::new(pa(0), 8, 0x1000);
        f.alloc_pages(2).unwrap();
        f.free_pages(pa(0), 1);
    }

    #[test]
    fn loose_order_allows_piecewise_frees() {
        let mut f = ArenaFrames::new(pa(0), 8, 0x1000);
        f.strict_order = false;
        f.alloc_pages(2).unwrap();
        f.free_pages(pa(0x2000), 1);
        f.free_pages(pa(0), 0);
        f.free_pages(pa(0x1000), 0);
        assert_eq!(f.in_use(), 0);
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn translation_outside_the_arena_panics() {
        let arena = Arena::new(pa(0x4000_0000), 4, 4096);
        arena.translation().table_va(pa(0x4000_4000));
    }
}
