//! Device mappings in the ioremap window, handed out upwards and never
//! reused (devices here are discovered once).

use core::sync::atomic::{AtomicU64, Ordering};

use super::addr::{PhysAddr, VirtAddr};
use super::frame::FrameAllocator;
use super::granule::KernelGranule;
use super::layout::{align_up, IOREMAP_END, IOREMAP_START, PAGE_SIZE};
use super::pgtable::{Attributes, MapHints, PageTable, Translation, VaRange};

static NEXT: AtomicU64 = AtomicU64::new(IOREMAP_START);

/// The largest leaf used for device mappings.
const BLOCK: u64 = 2 << 20;

/// Maps `[pa, pa + size)` as device memory; returns the VA of `pa`.
pub fn ioremap<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    pa: PhysAddr,
    size: u64,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> VirtAddr {
    let (first, last) = (
        pa.align_down(PAGE_SIZE),
        (pa + size.max(1)).align_up(PAGE_SIZE),
    );
    let len = last - first;
    // Congruent with the physical address modulo a block, so that large
    // windows (the 256 MiB ECAM) get blocks, not a page table per 2 MiB.
    let align = if len >= BLOCK { BLOCK } else { PAGE_SIZE };
    let mut va = 0;
    NEXT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
        va = align_up(next, align) + (first.as_u64() & (align - 1));
        Some(va + len)
    })
    .expect("the update always succeeds");
    assert!(va + len <= IOREMAP_END, "ioremap window exhausted");
    let va = VirtAddr::new(va);
    pt.map_range(
        VaRange::new(va, va + len),
        first,
        Attributes::DEVICE,
        MapHints::blocks(BLOCK),
        frames,
    )
    .expect("ioremap of a fresh window cannot overlap");
    va + (pa - first)
}
