//! The one interface through which the mm core gets and returns page frames.

use super::addr::PhysAddr;

/// A source of physically contiguous, naturally aligned page frames.
pub trait FrameAllocator {
    /// `2^order` pages, aligned to their size; `None` when none can be had.
    fn alloc_pages(&mut self, order: u32) -> Option<PhysAddr>;
    /// Give back what `alloc_pages(order)` returned.
    fn free_pages(&mut self, pa: PhysAddr, order: u32);
    /// Up to `max` (at least 1) pages in one physically contiguous run,
    /// `(first, count)`, each page to be given back on its own with
    /// `free_pages(pa, 0)`: backing mapped page by page (the vmemmap) taken
    /// a run at a time. One page by default.
    fn alloc_page_run(&mut self, max: u64) -> Option<(PhysAddr, u64)> {
        let _ = max;
        self.alloc_pages(0).map(|pa| (pa, 1))
    }
    /// Whether the page at `pa` is reserved (never to be freed to this
    /// allocator): Linux's `PageReserved`, checked before hotplug frees.
    fn is_reserved(&self, _pa: PhysAddr) -> bool {
        false
    }
}

/// Linux's `get_order`: the smallest order whose block holds `size` bytes.
pub fn get_order(size: u64, page_shift: u32) -> u32 {
    let pages = size.div_ceil(1 << page_shift).max(1);
    pages.next_power_of_two().trailing_zeros()
}
