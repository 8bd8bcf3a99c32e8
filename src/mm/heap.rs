//! The kernel heap behind `alloc`: `linked_list_allocator` heaps over
//! blocks of the page allocator, as many as it takes (Linux's slab grows
//! from the page allocator the same way), so kernel memory grows with what
//! the machine holds instead of stopping at a fixed size.
//!
//! An allocation never calls into the memory system, whose lock the very
//! code that allocates may hold: it draws on one spare block kept ready.
//! Each time the memory lock is about to be released ([`top_up`], from
//! `mm::global`), the spare is replaced and blocks that became empty go
//! back to the page allocator. A request larger than a block, or one made
//! when the spare is gone, fails: fallible callers (`try_reserve`) report
//! `ENOMEM`.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{null_mut, NonNull};

use super::addr::VirtAddr;
use super::layout::{MAX_ORDER, PAGE_SIZE};
use crate::arch::lock::FairLock;

/// Heap blocks are the page allocator's largest (4 MiB).
pub const BLOCK_ORDER: u32 = MAX_ORDER;
pub const BLOCK_SIZE: usize = (PAGE_SIZE << BLOCK_ORDER) as usize;
/// At most this many blocks (1 GiB of heap).
const MAX_BLOCKS: usize = 256;

struct Block {
    start: usize,
    heap: linked_list_allocator::Heap,
}

struct Blocks {
    blocks: [Option<Block>; MAX_BLOCKS],
    /// A free block, not yet carved: what the next growth uses.
    spare: Option<usize>,
    /// A free may have emptied a block since the last top-up: only then
    /// does [`Heap::top_up`] look for blocks to give back (it runs around
    /// every memory-lock section, so usually it returns at once).
    maybe_empty: bool,
}

pub struct Heap(FairLock<Blocks>);

/// What the heap holds, for `/proc/meminfo` (`Slab:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes of page-allocator memory the heap holds, spare included.
    pub bytes: u64,
    /// Bytes handed out.
    pub used: u64,
}

impl Blocks {
    fn add(&mut self, start: usize) -> Option<&mut Block> {
        let slot = self.blocks.iter_mut().find(|b| b.is_none())?;
        let mut heap = linked_list_allocator::Heap::empty();
        // SAFETY: `start` is a whole free block of the page allocator,
        // mapped by the linear map, that nothing else uses from now on.
        unsafe { heap.init(start as *mut u8, BLOCK_SIZE) };
        *slot = Some(Block { start, heap });
        slot.as_mut()
    }
}

impl Heap {
    pub const fn empty() -> Self {
        Self(FairLock::new(Blocks {
            blocks: [const { None }; MAX_BLOCKS],
            spare: None,
            maybe_empty: false,
        }))
    }

    /// Gives the heap its first block and a spare.
    ///
    /// # Safety
    /// Both are whole free blocks of [`BLOCK_SIZE`] bytes, mapped, owned by
    /// the heap from now on.
    pub unsafe fn init(&self, first: VirtAddr, spare: Option<VirtAddr>) {
        let mut b = self.0.lock();
        b.add(first.as_u64() as usize);
        b.spare = spare.map(|s| s.as_u64() as usize);
    }

    /// Replaces a spare used since the last call (`alloc_block`) and gives
    /// back blocks that are empty again (`free_block`), keeping one.
    pub fn top_up(
        &self,
        mut alloc_block: impl FnMut() -> Option<VirtAddr>,
        mut free_block: impl FnMut(VirtAddr),
    ) {
        let mut b = self.0.lock();
        let b = &mut *b;
        if b.spare.is_some() && !core::mem::take(&mut b.maybe_empty) {
            return;
        }
        let mut kept = 0;
        for slot in b.blocks.iter_mut() {
            let Some(block) = slot else { continue };
            if block.heap.used() != 0 || kept == 0 {
                kept += 1;
                continue;
            }
            let start = block.start;
            *slot = None;
            match b.spare {
                None => b.spare = Some(start),
                Some(_) => free_block(VirtAddr::new(start as u64)),
            }
        }
        if b.spare.is_none() {
            b.spare = alloc_block().map(|va| va.as_u64() as usize);
        }
    }

    pub fn stats(&self) -> HeapStats {
        let b = self.0.lock();
        let blocks = b.blocks.iter().flatten();
        let n = blocks.clone().count() + usize::from(b.spare.is_some());
        HeapStats {
            bytes: (n * BLOCK_SIZE) as u64,
            used: blocks.map(|bl| bl.heap.used() as u64).sum(),
        }
    }
}

// SAFETY: every block is memory the heap owns; `linked_list_allocator`
// hands out disjoint, suitably aligned pieces of it and takes them back
// only from the block they came from.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut b = self.0.lock();
        for block in b.blocks.iter_mut().flatten() {
            if let Ok(p) = block.heap.allocate_first_fit(layout) {
                return p.as_ptr();
            }
        }
        if layout.size() > BLOCK_SIZE / 2 {
            // A request this large could never fit a fresh block once
            // the allocator's bookkeeping is in it; keep the spare.
            return null_mut();
        }
        let Some(spare) = b.spare.take() else {
            return null_mut();
        };
        match b.add(spare).map(|bl| bl.heap.allocate_first_fit(layout)) {
            Some(Ok(p)) => p.as_ptr(),
            _ => null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let addr = ptr as usize;
        let mut b = self.0.lock();
        let Some(block) = b
            .blocks
            .iter_mut()
            .flatten()
            .find(|bl| (bl.start..bl.start + BLOCK_SIZE).contains(&addr))
        else {
            return;
        };
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `ptr` came from this block's `allocate_first_fit`
            // with `layout` (the GlobalAlloc contract).
            unsafe { block.heap.deallocate(p, layout) };
            if block.heap.used() == 0 {
                b.maybe_empty = true;
            }
        }
    }
}

static KERNEL_HEAP: spin::Once<&'static Heap> = spin::Once::new();

/// Makes `heap` the one [`top_up`] and `Slab:` speak of.
pub fn register(heap: &'static Heap) {
    KERNEL_HEAP.call_once(|| heap);
}

/// The kernel's heap, once registered (never on the host).
pub fn kernel() -> Option<&'static Heap> {
    KERNEL_HEAP.get().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc, dealloc};

    /// Host memory standing for page-allocator blocks.
    struct Blocks(Vec<*mut u8>);

    impl Blocks {
        fn layout() -> Layout {
            Layout::from_size_align(BLOCK_SIZE, BLOCK_SIZE).unwrap()
        }

        fn take(&mut self) -> Option<VirtAddr> {
            // SAFETY: a non-zero-sized layout.
            let p = unsafe { alloc(Self::layout()) };
            self.0.push(p);
            Some(VirtAddr::new(p as u64))
        }

        fn give_back(&mut self, va: VirtAddr) {
            let p = va.as_u64() as *mut u8;
            let i = self
                .0
                .iter()
                .position(|&q| q == p)
                .expect("a block we gave");
            self.0.swap_remove(i);
            // SAFETY: allocated above with the same layout.
            unsafe { dealloc(p, Self::layout()) };
        }
    }

    impl Drop for Blocks {
        fn drop(&mut self) {
            for &p in &self.0 {
                // SAFETY: as in `give_back`.
                unsafe { dealloc(p, Self::layout()) };
            }
        }
    }

    #[test]
    fn grows_by_blocks_and_gives_empty_ones_back() {
        let mut src = Blocks(Vec::new());
        let heap = Box::leak(Box::new(Heap::empty()));
        let (first, spare) = (src.take().unwrap(), src.take());
        // SAFETY: two fresh blocks, the heap's from now on.
        unsafe { heap.init(first, spare) };
        assert_eq!(heap.stats().bytes, 2 * BLOCK_SIZE as u64);
        // Two fit a block, a third does not.
        let big = Layout::from_size_align(BLOCK_SIZE * 2 / 5, 8).unwrap();
        // SAFETY: a valid layout; every pointer is freed with it below.
        let ptrs: Vec<*mut u8> = (0..5).map(|_| unsafe { heap.alloc(big) }).collect();
        assert!(ptrs[..4].iter().all(|p| !p.is_null()), "{ptrs:?}");
        // Both blocks carved, no spare left: the fifth waits for a top-up.
        assert!(ptrs[4].is_null());
        heap.top_up(|| src.take(), |_| unreachable!("nothing is empty"));
        assert_eq!(heap.stats().bytes, 3 * BLOCK_SIZE as u64);
        // SAFETY: as above.
        let p = unsafe { heap.alloc(big) };
        assert!(!p.is_null());
        for q in ptrs[..4].iter().copied().chain([p]) {
            // SAFETY: allocated above with `big`.
            unsafe { heap.dealloc(q, big) };
        }
        assert_eq!(heap.stats().used, 0);
        let mut freed = Vec::new();
        heap.top_up(|| unreachable!("a spare is there"), |va| freed.push(va));
        for va in freed.iter().copied() {
            src.give_back(va);
        }
        // The first block stays, one empty block became the spare, the
        // other went back.
        assert_eq!(freed.len(), 1);
        assert_eq!(heap.stats().bytes, 2 * BLOCK_SIZE as u64);
        // Too large for any block: refused, not a panic.
        let huge = Layout::from_size_align(BLOCK_SIZE + 1, 8).unwrap();
        // SAFETY: a valid layout.
        assert!(unsafe { heap.alloc(huge) }.is_null());
    }
}
