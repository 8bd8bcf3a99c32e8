//! The sparse vmemmap: struct pages at `VMEMMAP_START + pfn * 64`, mapped
//! only where sections are present. Names and arguments follow Linux's
//! `mm/sparse-vmemmap.c` and `arch/arm64/mm/mmu.c`: the populate and free
//! functions take the vmemmap's own virtual range, which callers get from
//! [`memmap_range`](super::addr::memmap_range).

use super::addr::{Pfn, PhysAddr, VirtAddr};
use super::altmap::VmemAltmap;
use super::frame::FrameAllocator;
use super::granule::KernelGranule;
use super::layout::{PAGE_SHIFT, PAGE_SIZE, VMEMMAP_END, VMEMMAP_START};
use super::pgtable::unmap::UnmapWarnings;
use super::pgtable::{Attributes, MapError, MapHints, PageTable, Translation, VaRange};

/// The vmemmap block size with a 4K granule: one PMD, which describes
/// exactly one 128 MiB section.
const VMEMMAP_BLOCK: u64 = 2 << 20;

/// One allocation of `2^order` pages for vmemmap backing: from the altmap
/// when there is one (Linux's `vmemmap_alloc_block_buf`), else `frames`.
fn alloc_backing(
    order: u32,
    altmap: &mut Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> Option<PhysAddr> {
    match altmap {
        Some(a) => a.alloc_pfns(1 << order).map(Pfn::phys),
        None => frames.alloc_pages(order),
    }
}

fn free_backing(
    pa: PhysAddr,
    order: u32,
    altmap: &mut Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
) {
    match altmap {
        Some(a) => a
            .free_pfns(Pfn::down(pa), 1 << order)
            .expect("just allocated"),
        None => frames.free_pages(pa, order),
    }
}

/// Maps the vmemmap `[start, end)` (struct pages, see
/// [`memmap_range`](super::addr::memmap_range)). With a 4K granule each
/// whole 2 MiB of vmemmap is one block, falling back to base pages when no
/// block can be had; 16K and 64K use base pages throughout. On failure
/// everything mapped so far is freed again through the same altmap, and the
/// tables and altmap are as they were.
pub fn vmemmap_populate<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    start: VirtAddr,
    end: VirtAddr,
    mut altmap: Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> Result<(), MapError> {
    let mut populate = || -> Result<(), MapError> {
        let mut addr = start;
        while addr < end {
            let next = (addr + VMEMMAP_BLOCK).align_down(VMEMMAP_BLOCK);
            if PAGE_SHIFT == 12 && addr.is_aligned(VMEMMAP_BLOCK) && next <= end {
                match vmemmap_populate_block(pt, addr, &mut altmap, frames) {
                    Err(MapError::NoMemory) => {
                        vmemmap_populate_basepages(pt, addr, next, &mut altmap, frames)?
                    }
                    r => r?,
                }
                addr = next;
            } else {
                let next = next.min(end);
                vmemmap_populate_basepages(pt, addr, next, &mut altmap, frames)?;
                addr = next;
            }
        }
        Ok(())
    };
    let result = populate();
    if result.is_err() {
        let mut warnings = UnmapWarnings::default();
        vmemmap_free(pt, start, end, altmap, frames, &mut warnings);
    }
    result
}

/// One 2 MiB block of vmemmap at `addr`; `NoMemory` when no block is to
/// be had.
fn vmemmap_populate_block<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    addr: VirtAddr,
    altmap: &mut Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> Result<(), MapError> {
    let order = (VMEMMAP_BLOCK >> PAGE_SHIFT).trailing_zeros();
    let pa = alloc_backing(order, altmap, frames).ok_or(MapError::NoMemory)?;
    let range = VaRange::new(addr, addr + VMEMMAP_BLOCK);
    pt.map_range(
        range,
        pa,
        Attributes::KERNEL_RW,
        MapHints::blocks(VMEMMAP_BLOCK),
        frames,
    )
    .inspect_err(|_| free_backing(pa, order, altmap, frames))
}

/// Linux's `vmemmap_populate_basepages`: one page of backing per page of
/// the vmemmap `[start, end)`, in one walk that descends once per
/// last-level table.
pub fn vmemmap_populate_basepages<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    start: VirtAddr,
    end: VirtAddr,
    altmap: &mut Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> Result<(), MapError> {
    let range = VaRange::new(start.align_down(PAGE_SIZE), end.align_up(PAGE_SIZE));
    pt.map_pages_with(range, Attributes::KERNEL_RW, frames, &mut |frames, max| {
        alloc_backing_run(max, altmap, frames)
    })
}

/// Up to `max` pages of base-page backing in one contiguous run (each page
/// freed on its own later): from the altmap, a naturally aligned power of
/// two that needs no padding; else from `frames`.
fn alloc_backing_run(
    max: u64,
    altmap: &mut Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> Option<(PhysAddr, u64)> {
    let Some(a) = altmap else {
        return frames.alloc_page_run(max);
    };
    let next = a.next_pfn().as_u64();
    let aligned = if next == 0 {
        max
    } else {
        1 << next.trailing_zeros()
    };
    // A power of two that `next` is aligned to and the altmap holds: it
    // takes no padding, so it fails only when the altmap is empty.
    let n = 1u64 << max.min(aligned).min(a.nr_free()).max(1).ilog2();
    a.alloc_pfns(n).map(|pfn| (pfn.phys(), n))
}

/// Linux's `vmemmap_free`: unmaps the vmemmap `[start, end)`, returns its
/// backing to the altmap or the page allocator and frees emptied tables.
pub fn vmemmap_free<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    start: VirtAddr,
    end: VirtAddr,
    altmap: Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
    warnings: &mut UnmapWarnings,
) {
    let (floor, ceiling) = (VirtAddr::new(VMEMMAP_START), VirtAddr::new(VMEMMAP_END));
    pt.unmap_hotplug_range_free_tables(start, end, true, altmap, floor, ceiling, frames, warnings);
}

/// Where the struct pages of `pfn` are backed, if mapped: `(pa, leaf size)`.
pub fn vmemmap_backing<T: Translation>(
    pt: &PageTable<T, KernelGranule>,
    pfn: Pfn,
) -> Option<(PhysAddr, u64)> {
    pt.translate(pfn.page_va()).map(|(pa, _, level)| {
        let size = 1u64 << <KernelGranule as super::granule::Granule>::level_shift(level);
        (pa.align_down(size), size)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::testing::Arena;

    /// An altmap of `free` pfns after `reserve`, from pfn 0x1000 (aligned
    /// to every run size used here).
    fn altmap(reserve: u64, free: u64) -> VmemAltmap {
        let base = Pfn::new(0x1000);
        VmemAltmap::new(base, base + reserve + free, reserve, free)
    }

    /// Runs come from the altmap whole, as large as `next_pfn`'s alignment,
    /// the altmap and `max` allow, and never cost padding.
    #[test]
    fn altmap_runs_are_aligned_and_take_no_padding() {
        let arena = Arena::new(PhysAddr::new(0x4000_0000), 4, PAGE_SIZE);
        let mut frames = arena.frames();
        // (reserve, free, max) -> pages in the run
        for (reserve, free, max, want) in [
            (0, 64, 16, 16),
            (0, 64, 64, 64),
            (8, 64, 64, 8),
            (1, 64, 16, 1),
            (2, 64, 16, 2),
            (0, 3, 16, 2),
        ] {
            let mut a = altmap(reserve, free);
            let next = a.next_pfn();
            let got = alloc_backing_run(max, &mut Some(&mut a), &mut frames);
            let case = (reserve, free, max);
            assert_eq!(got, Some((next.phys(), want)), "{case:?}");
            assert_eq!((a.alloc, a.align), (want, 0), "{case:?}");
        }
        assert_eq!(frames.in_use(), 0, "the altmap's runs took no frames");
    }

    /// An empty altmap gives nothing and changes nothing.
    #[test]
    fn an_empty_altmap_gives_no_run() {
        let arena = Arena::new(PhysAddr::new(0x4000_0000), 4, PAGE_SIZE);
        let mut frames = arena.frames();
        let mut a = altmap(1, 0);
        assert_eq!(alloc_backing_run(8, &mut Some(&mut a), &mut frames), None);
        assert_eq!((a.alloc, a.align, frames.in_use()), (0, 0, 0));
    }
}
