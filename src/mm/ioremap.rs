//! Device mappings in the ioremap window, handed out upwards and never
//! reused (devices here are discovered once).

use core::sync::atomic::{AtomicU64, Ordering};

use super::addr::{PhysAddr, VirtAddr};
use super::frame::FrameAllocator;
use super::granule::KernelGranule;
use super::layout::{IOREMAP_END, IOREMAP_START, PAGE_SIZE};
use super::pgtable::{Attributes, MapHints, PageTable, Translation, VaRange};
use crate::bail;
use crate::error::Result;

static NEXT: AtomicU64 = AtomicU64::new(IOREMAP_START);

/// The largest leaf used for device mappings.
const BLOCK: u64 = 2 << 20;

/// Maps `[pa, pa + size)` as device memory; returns the VA of `pa`.
/// `ENOMEM` when the window has no room left (a device's BAR size is the
/// device's to say) or the tables cannot be allocated; `EINVAL` for a
/// range that wraps or lies beyond the physical address space.
pub fn ioremap<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    pa: PhysAddr,
    size: u64,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> Result<VirtAddr> {
    let first = pa.align_down(PAGE_SIZE);
    let last = pa
        .checked_add(size.max(1))
        .and_then(|end| end.checked_add(PAGE_SIZE - 1))
        .map(|end| end.align_down(PAGE_SIZE));
    let Some(last) = last else {
        bail!(EINVAL, "ioremap of {pa:#x}+{size:#x} wraps around");
    };
    let len = last - first;
    // Congruent with the physical address modulo a block, so that large
    // windows (the 256 MiB ECAM) get blocks, not a page table per 2 MiB.
    let align = if len >= BLOCK { BLOCK } else { PAGE_SIZE };
    let place = |next: u64| {
        let va = next.checked_add(align - 1)? & !(align - 1);
        let va = va.checked_add(first.as_u64() & (align - 1))?;
        va.checked_add(len)
            .filter(|&end| end <= IOREMAP_END)
            .map(|end| (va, end))
    };
    // The window only grows, and not at all for a request that does not fit.
    let Ok(next) = NEXT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
        place(next).map(|(_, end)| end)
    }) else {
        bail!(
            ENOMEM,
            "ioremap window exhausted: no room for {len:#x} bytes at {pa:#x}"
        );
    };
    let Some((va, _)) = place(next) else {
        bail!(ENOMEM, "ioremap window exhausted");
    };
    let va = VirtAddr::new(va);
    pt.map_range(
        VaRange::new(va, va + len),
        first,
        Attributes::DEVICE,
        MapHints::blocks(BLOCK),
        frames,
    )?;
    Ok(va + (pa - first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Errno;
    use crate::mm::granule::Granule;
    use crate::mm::testing::Arena;

    /// A BAR larger than the window, or one that wraps, is an error and
    /// leaves the window as it was.
    #[test]
    fn a_request_that_does_not_fit_is_refused_and_takes_nothing() {
        let arena = Arena::new(PhysAddr::new(0x4000_0000), 64, KernelGranule::PAGE_SIZE);
        let mut frames = arena.frames();
        let mut pt = PageTable::<_, KernelGranule>::new(arena.translation(), &mut frames).unwrap();
        let before = NEXT.load(Ordering::Relaxed);
        let huge = IOREMAP_END - IOREMAP_START + PAGE_SIZE;
        let e = ioremap(&mut pt, PhysAddr::new(0x80_0000_0000), huge, &mut frames).unwrap_err();
        assert_eq!(e.errno, Errno::ENOMEM);
        let e = ioremap(
            &mut pt,
            PhysAddr::new(u64::MAX - 0xfff),
            0x2000,
            &mut frames,
        )
        .unwrap_err();
        assert_eq!(e.errno, Errno::EINVAL);
        assert_eq!(NEXT.load(Ordering::Relaxed), before);
        assert_eq!(pt.stats.tables, 1, "no table was allocated");
    }
}
