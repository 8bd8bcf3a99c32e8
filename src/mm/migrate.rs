//! Page migration for offlining: Linux's `offline_pages` loop
//! (`scan_movable_pages`, `do_migrate_range`, mm/memory_hotplug.c) and
//! `migrate_pages` / `migrate_folio` / `remove_migration_ptes`
//! (mm/migrate.c), for the one movable kind of page here: anonymous
//! memory (`anon.rs`).
//!
//! A range is first scanned, changing nothing: a page in use that is not
//! anonymous (a `pin`, a kernel allocation, a page table) is unmovable and
//! the offline fails at once with `EBUSY` (Linux's `has_unmovable_pages`
//! at isolation). Otherwise the range is isolated (nothing more is
//! allocated from it, what is freed into it is held) and each anon page
//! moves to a new page outside it:
//!
//! 1. its page entry becomes a migration entry and the TLB entry is
//!    invalidated on every CPU (break): from here a CPU touching the page
//!    faults and waits in `anon::migration_entry_wait`;
//! 2. the contents are copied to the new page, which takes over the
//!    reverse map;
//! 3. the entry is made again to the new page (make), and the old page is
//!    freed, into the isolated range.
//!
//! All of it runs under the memory lock, so no other mapping change races
//! with it; only other CPUs' accesses through the mapping do, and the
//! migration entry holds them off. A migration that cannot get a new page
//! stops the offline with `EBUSY` (counted in `pgmigrate_fail`): the
//! isolation is undone; pages moved so far stay where they went, intact
//! and mapped, as in Linux (which retries before giving up; here nothing
//! can free memory while the lock is held, so a retry would fail alike).

use super::addr::Pfn;
use super::anon::page_va;
use super::hotplug::OfflineError;
use super::layout::PAGE_SIZE;
use super::page::{PageFlags, MAX_ORDER_NR_PAGES};
use super::pgtable::{Descriptor, Translation};
use super::system::MemorySystem;
use crate::err;
use crate::error::Result;

impl<T: Translation> MemorySystem<T> {
    /// The first page of `start..end` in use that cannot move, if any
    /// (after the per-CPU lists were drained).
    pub(in crate::mm) fn first_unmovable(&self, start: Pfn, end: Pfn) -> Option<Pfn> {
        let buddy = self.buddy.lock();
        let mut pfn = start;
        while pfn < end {
            // SAFETY: callers pass a present block's pfns: its vmemmap is
            // populated.
            let page = unsafe { self.memmap.read(pfn) };
            if page.flags().intersects(PageFlags::UNMANAGED) || page.anon_rmap().is_some() {
                pfn += 1;
                continue;
            }
            match buddy.free_block_of(pfn) {
                Some((head, order)) => pfn = head + (1 << order),
                None => return Some(pfn),
            }
        }
        None
    }

    /// Moves anon page `old` to a new page (module comment): the new pfn.
    /// `ENOMEM` with nothing changed when there is no page to move to.
    pub fn migrate_anon_page(&mut self, old: Pfn) -> Result<Pfn> {
        // SAFETY: `old` is a page of a present block.
        let page = unsafe { self.memmap.read(old) };
        let (area, index) = page
            .anon_rmap()
            .ok_or_else(|| err!(EINVAL, "{:#x} is not anonymous memory", old.phys()))?;
        let va = page_va(area as usize, index);
        let entry = self
            .pt
            .pte(va)
            .filter(|d| d.is_valid() && d.output_address() == old.phys())
            .ok_or_else(|| {
                err!(
                    EFAULT,
                    "{:#x} is not mapped where its struct page says",
                    old.phys()
                )
            })?;
        let new = self
            .alloc_anon_page()
            .ok_or_else(|| err!(ENOMEM, "no page to migrate {:#x} to", old.phys()))?;
        self.pt.break_pte(va, Descriptor::migration(old.phys()));
        let (src, dst) = (self.page_ptr(old.phys()), self.page_ptr(new.phys()));
        // SAFETY: two distinct whole pages; no CPU reaches `old` through
        // the mapping any more, nor `new` yet.
        unsafe { core::ptr::copy_nonoverlapping(src, dst, (PAGE_SIZE / 8) as usize) };
        // SAFETY: just allocated; no reference to its struct page is live.
        unsafe { self.memmap.get(new) }.set_anon_rmap(area, index);
        let leaf = Descriptor::leaf(new.phys(), entry.attrs().leaf_attrs(), 3);
        self.pt.make_pte(va, leaf);
        // SAFETY: as above, for the old page.
        unsafe { self.memmap.get(old) }.clear_anon_rmap();
        crate::arch::trace::check_free(old.phys().as_u64(), PAGE_SIZE);
        self.free(old, 0);
        self.anon.pgmigrate_success += 1;
        Ok(new)
    }

    /// Linux's `offline_pages` between isolation and the final check, for
    /// pages `start..end` of memory block `id` (the block, or sub-blocks
    /// a driver unplugs) that are not all free: migrates every anon page
    /// out of the range. Isolation covers the range widened to whole
    /// max-order blocks (as Linux isolates whole pageblocks); only the
    /// range itself is scanned and emptied. `Ok` once every anon page has
    /// moved (the caller takes the free range as before), `Busy` (the
    /// isolation undone) on an unmovable page or a failed migration.
    pub(in crate::mm) fn migrate_range_out(
        &mut self,
        id: u64,
        start: Pfn,
        end: Pfn,
    ) -> core::result::Result<(), OfflineError> {
        if let Some(pfn) = self.first_unmovable(start, end) {
            return Err(OfflineError::Busy { id, pfn });
        }
        let (istart, iend) = (
            start.align_down(MAX_ORDER_NR_PAGES),
            end.align_up(MAX_ORDER_NR_PAGES),
        );
        {
            let mut buddy = self.buddy.lock();
            buddy
                .try_reserve_isolating()
                .map_err(|_| err!(ENOMEM, "no kernel memory for the records"))?;
            buddy.start_isolate_page_range(istart, iend);
            self.pcp.isolate(&mut buddy, istart, iend);
        }
        let mut failed = None;
        let mut pfn = start;
        while pfn < end {
            // SAFETY: as in `first_unmovable`.
            let page = unsafe { self.memmap.read(pfn) };
            if page.has(PageFlags::ISOLATED) {
                pfn += 1 << page.order();
                continue;
            }
            if page.anon_rmap().is_some() && self.migrate_anon_page(pfn).is_err() {
                self.anon.pgmigrate_fail += 1;
                failed = Some(pfn);
                break;
            }
            pfn += 1;
        }
        let mut buddy = self.buddy.lock();
        self.pcp.unisolate(&mut buddy, istart, iend);
        buddy.undo_isolate_page_range(istart, iend);
        match failed {
            Some(pfn) => Err(OfflineError::Busy { id, pfn }),
            None => Ok(()),
        }
    }
}
