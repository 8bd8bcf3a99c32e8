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

/// What a teardown walk does besides clearing leaves.
#[derive(Clone, Copy)]
struct Teardown {
    /// Free each leaf's backing (after the invalidation covering it).
    free_mapped: bool,
    /// Free emptied tables whose span lies within `[floor, ceiling)`, as
    /// `free_empty_tables` does.
    tables: Option<(VirtAddr, VirtAddr)>,
    /// Without `free_mapped`: leave the final invalidation pending.
    defer_flush: bool,
}

/// Whether the level-`size` span at `span_start` lies within `[floor,
/// ceiling)`; a ceiling of 0 is the top of the address space, as in Linux.
fn span_within(span_start: VirtAddr, size: u64, floor: VirtAddr, ceiling: VirtAddr) -> bool {
    span_start >= floor && (span_start + (size - 1)).as_u64() <= ceiling.as_u64().wrapping_sub(1)
}

impl<T: Translation, G: Granule> PageTable<T, G> {
    /// Unmaps `[start, end)`. With `free_mapped` the backing of each leaf is
    /// freed (through `altmap` when given) after its TLB entry is gone: one
    /// range invalidation per table, before any page of it goes back.
    /// Without, one range invalidation covers the whole range at the end.
    /// Tables stay (see [`free_empty_tables`](Self::free_empty_tables)).
    pub fn unmap_hotplug_range(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        free_mapped: bool,
        altmap: Option<&mut VmemAltmap>,
        frames: &mut (impl FrameAllocator + ?Sized),
        warnings: &mut UnmapWarnings,
    ) {
        let td = Teardown {
            free_mapped,
            tables: None,
            defer_flush: false,
        };
        self.teardown(start, end, td, altmap, frames, warnings);
    }

    /// `unmap_hotplug_range` then `free_empty_tables(start, end, floor,
    /// ceiling)`, with the same result in one walk: a table emptied by the
    /// unmap is freed on the way back up, without reading it again; and
    /// without `free_mapped` a table the range covers whole is detached
    /// (its parent entry cleared, one invalidation, the subtree freed)
    /// instead of clearing its leaves one by one.
    #[allow(clippy::too_many_arguments)]
    pub fn unmap_hotplug_range_free_tables(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        free_mapped: bool,
        altmap: Option<&mut VmemAltmap>,
        floor: VirtAddr,
        ceiling: VirtAddr,
        frames: &mut (impl FrameAllocator + ?Sized),
        warnings: &mut UnmapWarnings,
    ) {
        let td = Teardown {
            free_mapped,
            tables: Some((floor, ceiling)),
            defer_flush: false,
        };
        self.teardown(start, end, td, altmap, frames, warnings);
    }

    /// Linux's `__remove_pgd_mapping`: unmaps `[start, end)` without freeing
    /// what was mapped (the linear map) and frees the tables it empties
    /// within `[floor, ceiling)`.
    pub fn remove_pgd_mapping(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        floor: VirtAddr,
        ceiling: VirtAddr,
        frames: &mut (impl FrameAllocator + ?Sized),
        warnings: &mut UnmapWarnings,
    ) {
        self.remove_pgd_mapping_unflushed(start, end, floor, ceiling, frames, warnings);
        self.flush_pending();
    }

    /// [`remove_pgd_mapping`](Self::remove_pgd_mapping) whose final range
    /// invalidation is left pending: the next invalidation this table
    /// issues covers it too (a hot-remove's vmemmap teardown, before it
    /// frees the backing), and [`flush_pending`](Self::flush_pending) or
    /// the next map issues it otherwise. Linux invalidates each block of
    /// the linear map on its own (`unmap_hotplug_pmd_range`); under QEMU
    /// every broadcast invalidation stops all vCPUs, so a hot-remove that
    /// takes one instead of two is what a busy CPU beside it notices.
    pub fn remove_pgd_mapping_unflushed(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        floor: VirtAddr,
        ceiling: VirtAddr,
        frames: &mut (impl FrameAllocator + ?Sized),
        warnings: &mut UnmapWarnings,
    ) {
        let td = Teardown {
            free_mapped: false,
            tables: Some((floor, ceiling)),
            defer_flush: true,
        };
        self.teardown(start, end, td, None, frames, warnings);
    }

    fn teardown(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        td: Teardown,
        mut altmap: Option<&mut VmemAltmap>,
        frames: &mut (impl FrameAllocator + ?Sized),
        warnings: &mut UnmapWarnings,
    ) {
        if altmap.is_some() && !td.free_mapped {
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
            td,
            &mut altmap,
            frames,
            warnings,
        );
        if td.defer_flush {
            self.defer_flush(start, end);
        } else if !td.free_mapped {
            self.flush_range(start, end);
        }
    }

    /// The per-level `unmap_hotplug_{pte,pmd,pud,p4d}_range` (and, with
    /// `td.tables`, `free_empty_{pte,pmd,pud,p4d}_table`) over the part
    /// `[start, end)` of `table`. Returns whether that part holds no valid
    /// entry any more.
    #[allow(clippy::too_many_arguments)]
    fn unmap_hotplug_level(
        &mut self,
        table: PhysAddr,
        level: usize,
        start: VirtAddr,
        end: VirtAddr,
        td: Teardown,
        altmap: &mut Option<&mut VmemAltmap>,
        frames: &mut (impl FrameAllocator + ?Sized),
        warnings: &mut UnmapWarnings,
    ) -> bool {
        let size = G::level_size(level);
        let mut emptied = true;
        // Leaves cleared here whose backing waits for one invalidation.
        let mut pending: Option<(VirtAddr, VirtAddr)> = None;
        for (addr, next) in chunks(start, end, size) {
            let index = G::index(addr.as_u64(), level);
            let d = self.read(table, index);
            if !d.is_valid() {
                continue;
            }
            let span = addr.align_down(size);
            let whole = next - addr == size;
            if d.is_table(level) {
                let free = td
                    .tables
                    .is_some_and(|(floor, ceiling)| span_within(span, size, floor, ceiling));
                if free && whole && !td.free_mapped {
                    self.detach_table(table, index, level, span, d, frames);
                    continue;
                }
                let child = d.output_address();
                let child_emptied = self.unmap_hotplug_level(
                    child,
                    level + 1,
                    addr,
                    next,
                    td,
                    altmap,
                    frames,
                    warnings,
                );
                // What the range covers of the child is empty now: only
                // the child's other entries are left to read.
                if free && child_emptied && self.empty_outside(child, level + 1, addr, next) {
                    self.free_empty_table(table, index, level, span, d, frames);
                } else {
                    emptied = false;
                }
                continue;
            }
            if !whole {
                // Clearing the leaf would unmap (and free) memory outside
                // the range: a caller bug, refused in every build.
                warnings.partial_leaf += 1;
                emptied = false;
                crate::pr_warn!(
                    "unmap_hotplug_range: {start:#x}-{end:#x} covers part of a {size:#x} leaf at {span:#x}; left mapped"
                );
                continue;
            }
            if d.is_contiguous() {
                self.split_contiguous(table, level, span, start, end);
            }
            if td.free_mapped {
                self.clear_to(table, index, level, span, d, d.free_pending());
                pending = Some((pending.map_or(span, |p| p.0), span + size));
            } else {
                self.clear(table, index, level, span, d);
            }
        }
        if let Some((lo, hi)) = pending {
            // One invalidation for the table's cleared leaves, then their
            // backing goes back (a single-page invalidation drops a
            // block's TLB entry too, so a lone block costs one).
            let hi_flush = if lo + size == hi {
                lo + G::PAGE_SIZE
            } else {
                hi
            };
            self.flush_range(lo, hi_flush);
            for (addr, _) in chunks(lo, hi, size) {
                let index = G::index(addr.as_u64(), level);
                let d = self.read(table, index);
                if d.is_free_pending() {
                    self.write(table, index, Descriptor::EMPTY);
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
        emptied
    }

    /// Whether `table` (at `level`) holds no valid entry outside `[start,
    /// end)`, a part of its span.
    fn empty_outside(&self, table: PhysAddr, level: usize, start: VirtAddr, end: VirtAddr) -> bool {
        let first = G::index(start.as_u64(), level);
        let last = G::index((end - 1).as_u64(), level);
        (0..first)
            .chain(last + 1..G::entries_at(level))
            .all(|i| !self.read(table, i).is_valid())
    }

    /// Detaches the table `d` points at, which `[span, span + level size)`
    /// covers whole, and frees its subtree: one invalidation, where
    /// clearing each leaf would take one store per leaf and reading the
    /// tables again for `free_empty_tables`. The subtree's leaves stay in
    /// the TLB until the caller's range invalidation: what they map is not
    /// freed here, only the table pages, which no walk reaches after this
    /// invalidation.
    fn detach_table(
        &mut self,
        table: PhysAddr,
        index: usize,
        level: usize,
        span: VirtAddr,
        d: Descriptor,
        frames: &mut (impl FrameAllocator + ?Sized),
    ) {
        let child = d.output_address();
        self.clear(table, index, level, span, d);
        #[cfg(test)]
        self.trace_detached(child, level + 1, span);
        if level + 1 == 3 {
            // One table page: dropping the walk through it suffices.
            self.flush_table(span);
        } else {
            // Cached walks may point at any table page of the subtree.
            self.flush_all();
        }
        self.free_subtree(child, level + 1, frames);
    }

    /// Frees `table` (at `level`) and every table below it.
    fn free_subtree(
        &mut self,
        table: PhysAddr,
        level: usize,
        frames: &mut (impl FrameAllocator + ?Sized),
    ) {
        if level < 3 {
            for i in 0..G::entries_at(level) {
                let d = self.read(table, i);
                if d.is_table(level) {
                    self.free_subtree(d.output_address(), level + 1, frames);
                }
            }
        }
        self.free_table(table, frames);
    }

    /// Linux's `free_empty_*_table` for the empty table `d` (entry `index`
    /// of `table`, spanning from `span`) points at: the entry cleared, the
    /// walk through it invalidated, then the page freed.
    fn free_empty_table(
        &mut self,
        table: PhysAddr,
        index: usize,
        level: usize,
        span: VirtAddr,
        d: Descriptor,
        frames: &mut (impl FrameAllocator + ?Sized),
    ) {
        self.clear(table, index, level, span, d);
        self.flush_table(span);
        self.free_table(d.output_address(), frames);
    }

    /// Frees a table page no entry points at any more, and counts it.
    fn free_table(&mut self, table: PhysAddr, frames: &mut (impl FrameAllocator + ?Sized)) {
        frames.free_pages(table, 0);
        self.stats.tables -= 1;
        self.stats.tables_freed += 1;
    }

    /// Host tests: everything below a detached table counts as cleared and
    /// not yet invalidated (cached walks and leaves may still reach it), so
    /// that `arch::trace` catches a free before the invalidation.
    #[cfg(test)]
    fn trace_detached(&self, table: PhysAddr, level: usize, base: VirtAddr) {
        use crate::arch::trace::{cleared, Cleared};
        let size = G::level_size(level);
        for i in 0..G::entries_at(level) {
            let d = self.read(table, i);
            let va = base + i as u64 * size;
            if d.is_table(level) {
                let child = d.output_address();
                cleared(
                    va.as_u64(),
                    size,
                    child.as_u64(),
                    G::PAGE_SIZE,
                    Cleared::Table,
                );
                self.trace_detached(child, level + 1, va);
            } else if d.is_valid() {
                let out = d.output_address().as_u64();
                cleared(va.as_u64(), size, out, size, Cleared::Leaf);
            }
        }
    }

    /// Before part of a contiguous group is unmapped, the rest of the group
    /// loses the contiguous bit (break-before-make over the whole group).
    ///
    /// A group wholly inside the range keeps its bit: all of it is cleared
    /// before the invalidation, and nothing is freed before that (with
    /// `free_mapped` the backing waits for its table's invalidation), so no
    /// sibling still marked contiguous can refill a TLB entry covering a
    /// freed page (Arm ARM D8.6.1; Linux's contpte unfolds a partial group
    /// first too).
    fn split_contiguous(
        &mut self,
        table: PhysAddr,
        level: usize,
        addr: VirtAddr,
        start: VirtAddr,
        end: VirtAddr,
    ) {
        let n = G::contiguous_entries(level);
        let span = G::level_size(level) * n as u64;
        let group = addr.align_down(span);
        if group >= start && group + span <= end {
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
            if span_within(span_start, size, floor, ceiling) && self.table_is_empty(child) {
                self.free_empty_table(table, index, level, span_start, d, frames);
            }
        }
    }
}
