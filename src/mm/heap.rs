//! The kernel heap behind `alloc`: `linked_list_allocator` over pages from
//! the buddy allocator, handed over once at boot.

use core::alloc::{GlobalAlloc, Layout};

pub struct Heap(linked_list_allocator::LockedHeap);

impl Heap {
    pub const fn empty() -> Self {
        Self(linked_list_allocator::LockedHeap::empty())
    }

    /// # Safety
    /// `[start, start + size)` is mapped, unused memory owned by the heap
    /// from now on; called once.
    pub unsafe fn init(&self, start: *mut u8, size: usize) {
        unsafe { self.0.lock().init(start, size) }
    }

    pub fn used(&self) -> usize {
        self.0.lock().used()
    }

    pub fn size(&self) -> usize {
        self.0.lock().size()
    }
}

unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) }
    }
}
