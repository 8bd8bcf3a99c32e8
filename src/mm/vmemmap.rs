//! The sparse vmemmap: struct pages at `VMEMMAP_START + pfn * 64`, mapped
//! only where sections are present. Names follow Linux's
//! `mm/sparse-vmemmap.c` and `arch/arm64/mm/mmu.c`.

use super::altmap::VmemAltmap;
use super::frame::FrameAllocator;
use super::granule::KernelGranule;
use super::layout::{pfn_to_page_va, PAGE_SHIFT, PAGE_SIZE, VMEMMAP_END, VMEMMAP_START};
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
) -> Option<u64> {
    match altmap {
        Some(a) => a.alloc_pfns(1 << order).map(|pfn| pfn << PAGE_SHIFT),
        None => frames.alloc_pages(order),
    }
}

fn free_backing(
    pa: u64,
    order: u32,
    altmap: &mut Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
) {
    match altmap {
        Some(a) => a
            .free_pfns(pa >> PAGE_SHIFT, 1 << order)
            .expect("just allocated"),
        None => frames.free_pages(pa, order),
    }
}

/// Maps the struct pages of `[start_pfn, end_pfn)`. With a 4K granule each
/// whole 2 MiB of vmemmap is one block, falling back to base pages when no
/// block can be had; 16K and 64K use base pages throughout. On failure
/// everything mapped so far is freed again through the same altmap, and the
/// tables and altmap are as they were.
pub fn vmemmap_populate<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    start_pfn: u64,
    end_pfn: u64,
    mut altmap: Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> Result<(), MapError> {
    let (start, end) = (pfn_to_page_va(start_pfn), pfn_to_page_va(end_pfn));
    let mut populate = || -> Result<(), MapError> {
        let mut va = start;
        while va < end {
            let block_end = (va + VMEMMAP_BLOCK) & !(VMEMMAP_BLOCK - 1);
            if PAGE_SHIFT == 12 && va % VMEMMAP_BLOCK == 0 && block_end <= end {
                match vmemmap_populate_block(pt, va, &mut altmap, frames) {
                    Err(MapError::NoMemory) => {
                        vmemmap_populate_basepages(pt, va, block_end, &mut altmap, frames)?
                    }
                    r => r?,
                }
                va = block_end;
            } else {
                let to = block_end.min(end);
                vmemmap_populate_basepages(pt, va, to, &mut altmap, frames)?;
                va = to;
            }
        }
        Ok(())
    };
    let result = populate();
    if result.is_err() {
        let mut warnings = UnmapWarnings::default();
        vmemmap_free(pt, start_pfn, end_pfn, altmap, frames, &mut warnings);
    }
    result
}

/// One 2 MiB block of vmemmap; `NoMemory` when no block is to be had.
fn vmemmap_populate_block<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    va: u64,
    altmap: &mut Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> Result<(), MapError> {
    let order = (VMEMMAP_BLOCK >> PAGE_SHIFT).trailing_zeros();
    let pa = alloc_backing(order, altmap, frames).ok_or(MapError::NoMemory)?;
    let range = VaRange::new(va, va + VMEMMAP_BLOCK);
    pt.map_range(
        range,
        pa,
        Attributes::KERNEL_RW,
        MapHints::blocks(VMEMMAP_BLOCK),
        frames,
    )
    .inspect_err(|_| free_backing(pa, order, altmap, frames))
}

/// Linux's `vmemmap_populate_basepages`: one page of backing per page.
pub fn vmemmap_populate_basepages<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    start: u64,
    end: u64,
    altmap: &mut Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
) -> Result<(), MapError> {
    let mut va = start & !(PAGE_SIZE - 1);
    while va < end {
        let pa = alloc_backing(0, altmap, frames).ok_or(MapError::NoMemory)?;
        let range = VaRange::new(va, va + PAGE_SIZE);
        pt.map_range(range, pa, Attributes::KERNEL_RW, MapHints::pages(), frames)
            .inspect_err(|_| free_backing(pa, 0, altmap, frames))?;
        va += PAGE_SIZE;
    }
    Ok(())
}

/// Unmaps the struct pages of `[start_pfn, end_pfn)`, returns their backing
/// to the altmap or the page allocator and frees emptied tables.
pub fn vmemmap_free<T: Translation>(
    pt: &mut PageTable<T, KernelGranule>,
    start_pfn: u64,
    end_pfn: u64,
    altmap: Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
    warnings: &mut UnmapWarnings,
) {
    let (start, end) = (pfn_to_page_va(start_pfn), pfn_to_page_va(end_pfn));
    pt.unmap_hotplug_range(start, end, true, altmap, frames, warnings);
    pt.free_empty_tables(start, end, VMEMMAP_START, VMEMMAP_END, frames);
}

/// Where the struct pages of `pfn` are backed, if mapped: `(pa, leaf size)`.
pub fn vmemmap_backing<T: Translation>(
    pt: &PageTable<T, KernelGranule>,
    pfn: u64,
) -> Option<(u64, u64)> {
    pt.translate(pfn_to_page_va(pfn)).map(|(pa, _, level)| {
        let size = 1u64 << <KernelGranule as super::granule::Granule>::level_shift(level);
        (pa & !(size - 1), size)
    })
}
