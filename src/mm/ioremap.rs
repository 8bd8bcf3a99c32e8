//! Device mappings in the ioremap window, handed out upwards and never
//! reused (devices here are discovered once).

use core::sync::atomic::{AtomicU64, Ordering};

use super::frame::FrameAllocator;
use super::granule::KernelGranule;
use super::layout::{align_down, align_up, IOREMAP_END, IOREMAP_START, PAGE_SIZE};
use super::pgtable::{Attributes, MapHints, PageTable, Translation, VaRange};

static NEXT: AtomicU64 = AtomicU64::new(IOREMAP_START);

/// Maps `[pa, pa + size)` as device memory; returns the VA of `pa`.
pub fn ioremap<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    pa: u64,
    size: u64,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> u64 {
    let (first, last) = (
        align_down(pa, PAGE_SIZE),
        align_up(pa + size.max(1), PAGE_SIZE),
    );
    let va = NEXT.fetch_add(last - first, Ordering::Relaxed);
    assert!(
        va + (last - first) <= IOREMAP_END,
        "ioremap window exhausted"
    );
    pt.map_range(
        VaRange::new(va, va + (last - first)),
        first,
        Attributes::DEVICE,
        MapHints::blocks(2 << 20),
        frames,
    )
    .expect("ioremap of a fresh window cannot overlap");
    va + (pa - first)
}
