//! Tearing down hot-plugged mappings, named and shaped after Linux's
//! `arch/arm64/mm/mmu.c` so the two can be read side by side. One recursive
//! function stands for the per-level `unmap_hotplug_{pte,pmd,pud,p4d}_range`
//! and `free_empty_{pte,pmd,pud,p4d}_table` of the C code.

use super::descriptor::{Attributes, Descriptor};
use super::walker::{chunks, PageTable, Translation};
use crate::mm::addr::{Pfn, PhysAddr, VirtAddr};
use crate::mm::altmap::VmemAltmap;
use crate::mm::frame::{get_order, FrameAllocator};
use crate::mm::granule::Granule;

/// Counters of hotplug teardown bugs caught instead of ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapWarnings {
    /// `unmap_hotplug_range` called with an altmap but `free_mapped` false.
    pub altmap_without_free_mapped: u64,
    /// A page to free was reserved (`WARN_ON(PageReserved(page))`).
    pub reserved_page_freed: u64,
    /// A free refused by the altmap (pfn not handed out by it).
    pub altmap_bad_free: u64,
    /// A range that covers only part of a block or contiguous leaf: the
    /// leaf is left mapped (Linux would clear and free all of it).
    pub partial_leaf: u64,
}

/// Returns the backing of one leaf to where it came from: `size >>
/// PAGE_SHIFT` pfns to the altmap when there is one, else the pages to the
/// frame allocator at `get_order(size)`.
pub fn free_hotplug_page_range<G: Granule>(
    pa: PhysAddr,
    size: u64,
    altmap: Option<&mut VmemAltmap>,
    frames: &mut (impl FrameAllocator + ?Sized),
    warnings: &mut UnmapWarnings,
) {
    if let Some(altmap) = altmap {
        // The altmap is a free too: nothing may still map the page.
        crate::arch::trace::check_free(pa.as_u64(), size);
        // In pages of `G`, which an altmap shares with the table it backs.
        let pfn = Pfn::new(pa.as_u64() >> G::PAGE_SHIFT);
        if let Err(e) = altmap.free_pfns(pfn, size >> G::PAGE_SHIFT) {
            warnings.altmap_bad_free += 1;
            crate::pr_warn!(
                "free_hotplug_page_range: altmap refused {:#x}+{:#x}: {:?}",
                pa,
                size,
                e
            );
        }
    } else if frames.is_reserved(pa) {
        warnings.reserved_page_freed += 1;
        crate::pr_warn!(
            "free_hotplug_page_range: page {:#x} is reserved, not freed",
            pa
        );
    } else {
        frames.free_pages(pa, get_order(size, G::PAGE_SHIFT));
    }
}

impl<T: Translation, G: Granule> PageTable<T, G> {
    /// Unmaps `[start, end)`. With `free_mapped` the backing of each leaf is
    /// freed (through `altmap` when given) after its TLB entry is gone;
    /// without, one range invalidation covers the whole range at the end.
    pub fn unmap_hotplug_range(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        free_mapped: bool,
        mut altmap: Option<&mut VmemAltmap>,
        frames: &mut (impl FrameAllocator + ?Sized),
        warnings: &mut UnmapWarnings,
    ) {
        if altmap.is_some() && !free_mapped {
            // The altmap only says where freed backing goes; passing one
            // while freeing nothing means the caller confused two paths.
            warnings.altmap_without_free_mapped += 1;
            crate::pr_warn!("unmap_hotplug_range: altmap given without free_mapped");
        }
        let root = self.root_pa();
        self.unmap_hotplug_level(
            root,
            G::START_LEVEL,
            start,
            end,
            free_mapped,
            &mut altmap,
            frames,
            warnings,
        );
        if !free_mapped {
            self.flush_range(start, end);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn unmap_hotplug_level(
        &mut self,
        table: PhysAddr,
        level: usize,
        start: VirtAddr,
        end: VirtAddr,
        free_mapped: bool,
        altmap: &mut Option<&mut VmemAltmap>,
        frames: &mut (impl FrameAllocator + ?Sized),
        warnings: &mut UnmapWarnings,
    ) {
        let size = G::level_size(level);
        for (addr, next) in chunks(start, end, size) {
            let index = G::index(addr.as_u64(), level);
            let d = self.read(table, index);
            if !d.is_valid() {
                continue;
            }
            if d.is_table(level) {
                let child = d.output_address();
                self.unmap_hotplug_level(
                    child,
                    level + 1,
                    addr,
                    next,
                    free_mapped,
                    altmap,
                    frames,
                    warnings,
                );
                continue;
            }
            let leaf = addr.align_down(size);
            if next - addr != size {
                // Clearing the leaf would unmap (and free) memory outside
                // the range: a caller bug, refused in every build.
                warnings.partial_leaf += 1;
                crate::pr_warn!(
                    "unmap_hotplug_range: {start:#x}-{end:#x} covers part of a {size:#x} leaf at {leaf:#x}; left mapped"
                );
                continue;
            }
            if d.is_contiguous() {
                self.split_contiguous(table, level, leaf, start, end, free_mapped);
            }
            self.clear(table, index, level, leaf, d);
            if free_mapped {
                // A single-page invalidation drops a block's TLB entry too.
                self.flush_range(leaf, leaf + G::PAGE_SIZE);
                free_hotplug_page_range::<G>(
                    d.output_address(),
                    size,
                    altmap.as_deref_mut(),
                    frames,
                    warnings,
                );
            }
        }
    }

    /// Before part of a contiguous group is unmapped, the rest of the group
    /// loses the contiguous bit (break-before-make over the whole group).
    ///
    /// A group wholly inside the range keeps its bit only when nothing is
    /// freed before the final flush: with `free_mapped` each leaf's backing
    /// is freed as soon as that leaf is cleared, and a sibling still marked
    /// contiguous may refill a TLB entry covering the whole group, freed
    /// page included (Arm ARM D8.6.1; Linux's contpte unfolds first too).
    fn split_contiguous(
        &mut self,
        table: PhysAddr,
        level: usize,
        addr: VirtAddr,
        start: VirtAddr,
        end: VirtAddr,
        free_mapped: bool,
    ) {
        let n = G::contiguous_entries(level);
        let span = G::level_size(level) * n as u64;
        let group = addr.align_down(span);
        if !free_mapped && group >= start && group + span <= end {
            return;
        }
        let first = G::index(group.as_u64(), level);
        let saved: [Descriptor; 128] = core::array::from_fn(|i| {
            if i < n {
                self.read(table, first + i)
            } else {
                Descriptor::EMPTY
            }
        });
        let entry = G::level_size(level);
        for (i, &old) in saved.iter().take(n).enumerate() {
            self.clear(table, first + i, level, group + i as u64 * entry, old);
        }
        self.flush_range(group, group + span);
        for (i, d) in saved.iter().take(n).enumerate() {
            if d.is_valid() {
                self.write(
                    table,
                    first + i,
                    Descriptor(d.0 & !Attributes::CONTIGUOUS.bits()),
                );
            }
        }
    }

    /// Frees table pages in `[start, end)` that hold no valid entry and whose
    /// whole span lies within `[floor, ceiling)`: the parent entry is cleared
    /// and the walk caches invalidated before the page is freed. Table pages
    /// never come from an altmap.
    pub fn free_empty_tables(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        floor: VirtAddr,
        ceiling: VirtAddr,
        frames: &mut (impl FrameAllocator + ?Sized),
    ) {
        let root = self.root_pa();
        self.free_empty_level(root, G::START_LEVEL, start, end, floor, ceiling, frames);
    }

    #[allow(clippy::too_many_arguments)]
    fn free_empty_level(
        &mut self,
        table: PhysAddr,
        level: usize,
        start: VirtAddr,
        end: VirtAddr,
        floor: VirtAddr,
        ceiling: VirtAddr,
        frames: &mut (impl FrameAllocator + ?Sized),
    ) {
        let size = G::level_size(level);
        for (addr, next) in chunks(start, end, size) {
            let index = G::index(addr.as_u64(), level);
            let d = self.read(table, index);
            if !d.is_table(level) {
                continue;
            }
            let child = d.output_address();
            self.free_empty_level(child, level + 1, addr, next, floor, ceiling, frames);
            let span_start = addr.align_down(size);
            let span_last = span_start + (size - 1);
            // A ceiling of 0 is the top of the address space, as in Linux.
            if span_start >= floor
                && span_last.as_u64() <= ceiling.as_u64().wrapping_sub(1)
                && self.table_is_empty(child)
            {
                self.clear(table, index, level, span_start, d);
                self.flush_table(span_start);
                frames.free_pages(child, 0);
                self.stats.tables -= 1;
                self.stats.tables_freed += 1;
            }
        }
    }
}
