//! The buddy page allocator, threaded through struct pages.
//!
//! Free blocks of `2^order` pages (order `0..=MAX_ORDER`, 4 MiB at most
//! whatever the granule) sit on per-zone, per-order doubly linked lists whose
//! links are pfns kept in the head page's `next`/`prev`, as in Linux: the
//! allocator needs no memory of its own, and a block can be unlinked from the
//! middle of its list in O(1), which offlining needs.
//!
//! A free block's head has `BUDDY` and its `order`; its tails have neither.
//! An allocated block's head has refcount 1 and the allocation order, which
//! [`BuddyAllocator::free`] checks: every misuse it can see (double free,
//! freeing a reserved, device, offline or tail page, wrong order, misaligned
//! pfn) is logged, counted in `bad_frees` and otherwise ignored, so that a
//! buggy caller can never corrupt the lists.
//!
//! Zones never merge: a block coalesces only with a free buddy of the same
//! order, zone, node and online state.
//!
//! NUMA (`node.rs`): the lists and counters are per (node, zone), as
//! Linux's are per zone of each node's `pg_data_t`; a page's node is in its
//! struct page. [`alloc`](BuddyAllocator::alloc) walks the nodes from the
//! allocating CPU's by distance, and counts Linux's `numastat` events.
//!
//! Locking: the allocator sits behind its own lock, the [`ZoneLock`]
//! (Linux's `zone->lock`), apart from the memory lock that hotplug and the
//! page tables are under: a CPU refilling its per-CPU lists (`pcp.rs`)
//! waits for the allocator, not for a hot-add or an offline. Order:
//! memory lock, then zone lock, then a CPU's page lists or the heap's lock
//! (the heap's top-up, under the memory lock, takes the zone lock inside
//! the heap's; nothing takes the heap's lock under the zone lock except
//! under the memory lock, so the two never cross).
//!
//! Onlining writes only the heads of the maximum-order blocks it hands over
//! (see "Deferred struct pages" in `page.rs` for the rule): the allocator
//! reads a page it was not handed as a block head through
//! [`Memmap::read`], and materialises a deferred block before it first
//! splits it, or splits off part of it when isolating.

use super::addr::{Pfn, PhysAddr};
use super::frame::FrameAllocator;
use super::layout::{self, MAX_ORDER};
use super::node::{Topology, MAX_NUMNODES};
use super::page::{Memmap, Page, PageFlags, Zone, MAX_ORDER_NR_PAGES, NR_BUDDY_ZONES, PFN_NONE};

/// Orders `0..=MAX_ORDER`.
pub const NR_ORDERS: usize = MAX_ORDER as usize + 1;

/// Free lists: one set per (node, zone).
const NR_LISTS: usize = MAX_NUMNODES * NR_BUDDY_ZONES;

/// The free-list index of `zone` (a buddy zone index) on node `nid`.
const fn list(nid: usize, z: usize) -> usize {
    nid * NR_BUDDY_ZONES + z
}

/// Linux's per-node `numastat` events (`drivers/base/node.c`), counted
/// per allocation as `zone_statistics` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NumaStat {
    /// Allocated here, and here was the preferred node.
    pub numa_hit: u64,
    /// Allocated here though another node was preferred.
    pub numa_miss: u64,
    /// Preferred here, allocated elsewhere.
    pub numa_foreign: u64,
    /// Allocated here by a CPU of this node.
    pub local_node: u64,
    /// Allocated here by a CPU of another node.
    pub other_node: u64,
}

/// Why a free (or another call handing pages to the allocator or taking
/// them from it) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFree {
    /// `order > MAX_ORDER`.
    OrderTooLarge,
    /// The pfn (or physical address) is not aligned to the block size.
    Misaligned,
    /// Part of the block lies outside the memmap.
    OutOfRange,
    /// The page may never be in the buddy (reserved, device, self-hosted
    /// vmemmap, altmap-backed).
    NeverBuddy(PageFlags),
    /// The page is not in an online memory block.
    NotOnline,
    /// The page's zone is not one the buddy manages.
    BadZone,
    /// The page is already free (double free, or a page inside a free block).
    AlreadyFree,
    /// The head does not hold exactly the one reference an allocation
    /// gives (0: never allocated, or a tail page).
    BadRefcount(u32),
    /// The block was allocated with another order.
    OrderMismatch { allocated: u32 },
    /// Onlining pages the allocator has already: online and handed over
    /// (allocated, split, or in a range being isolated).
    AlreadyOnline,
    /// Ending the isolation of a range that is not being isolated.
    NotIsolating,
}

impl From<BadFree> for crate::error::Error {
    fn from(e: BadFree) -> Self {
        crate::err!(EINVAL, "page allocator refused the free: {e:?}")
    }
}

/// Event counters (for `/proc/vmstat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuddyStats {
    pub allocs: u64,
    pub alloc_failures: u64,
    pub frees: u64,
    /// Frees (and `free_range` calls) refused as misuse.
    pub bad_frees: u64,
    /// Pages taken off the free lists by `isolate_range`.
    pub isolated: u64,
}

pub struct BuddyAllocator {
    memmap: Memmap,
    /// First block of each free list as a raw pfn, like the links in the
    /// struct pages; `PFN_NONE` when empty.
    heads: [[u64; NR_ORDERS]; NR_LISTS],
    /// Blocks on each free list (`/proc/buddyinfo`).
    nr_blocks: [[u64; NR_ORDERS]; NR_LISTS],
    /// Free pages per (node, zone).
    nr_free: [u64; NR_LISTS],
    /// Pages handed over by `free_range` and not taken back by
    /// `isolate_range` (Linux's `managed_pages`), per (node, zone).
    managed: [u64; NR_LISTS],
    /// The nodes, their distances and CPUs.
    topo: Topology,
    numa_stats: [NumaStat; MAX_NUMNODES],
    /// Ranges being isolated: `(start, end, pages held, pages never the
    /// allocator's when isolation started)`. Their free pages are off the
    /// free lists, and pages freed into them are held too.
    isolating: alloc::vec::Vec<(Pfn, Pfn, u64, u64)>,
    stats: BuddyStats,
    /// Whether [`online_pages`](BuddyAllocator::online_pages) defers the
    /// tails of whole max-order blocks (the default) or writes every struct
    /// page at once (kept to compare against: tests, `bench`).
    defer_init: bool,
}

/// Calls `f(pfn, order)` for the maximal naturally aligned blocks that tile
/// `start..end`, in address order.
pub fn for_each_max_block(start: Pfn, end: Pfn, mut f: impl FnMut(Pfn, u32)) {
    let mut pfn = start;
    while pfn < end {
        let mut order = match pfn.as_u64() {
            0 => MAX_ORDER,
            n => n.trailing_zeros().min(MAX_ORDER),
        };
        while pfn + (1 << order) > end {
            order -= 1;
        }
        f(pfn, order);
        pfn += 1 << order;
    }
}

/// The buddy of the `2^order` block at `pfn`: the other half of the
/// `2^(order + 1)` block that holds both (Linux's `__find_buddy_pfn`).
fn buddy_pfn(pfn: Pfn, order: u32) -> Pfn {
    Pfn::new(pfn.as_u64() ^ (1 << order))
}

impl BuddyAllocator {
    /// An allocator with no free pages.
    ///
    /// # Safety
    /// For as long as the allocator lives, the struct page of every pfn it
    /// may touch must be mapped and initialised, and not referenced
    /// elsewhere while a method runs. It touches the pfns handed to it by
    /// [`free_range`](Self::free_range), pfns passed to its other methods
    /// that are within the memmap's bounds, and the buddies of those: every
    /// pfn of the same `2^MAX_ORDER`-page block that is within the bounds.
    /// Populating the vmemmap by whole sections and initialising every
    /// struct page of a section (holes as `RESERVED`) satisfies this.
    pub unsafe fn new(memmap: Memmap) -> Self {
        Self {
            memmap,
            heads: [[PFN_NONE; NR_ORDERS]; NR_LISTS],
            nr_blocks: [[0; NR_ORDERS]; NR_LISTS],
            nr_free: [0; NR_LISTS],
            managed: [0; NR_LISTS],
            topo: Topology::single(),
            numa_stats: [NumaStat::default(); MAX_NUMNODES],
            isolating: alloc::vec::Vec::new(),
            stats: BuddyStats::default(),
            defer_init: true,
        }
    }

    pub fn memmap(&self) -> &Memmap {
        &self.memmap
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// The machine's nodes (boot, before memory is handed over).
    pub fn set_topology(&mut self, topo: Topology) {
        self.topo = topo;
    }

    pub fn defer_init(&self) -> bool {
        self.defer_init
    }

    /// Whether onlining defers struct pages (see the field).
    pub fn set_defer_init(&mut self, on: bool) {
        self.defer_init = on;
    }

    /// The struct page of any pfn within the memmap, under the rule of
    /// deferred struct pages (`page.rs`).
    fn read(&self, pfn: Pfn) -> Page {
        // Cannot fire: every pfn reaching `read`, `pg` and `pg_mut` is a
        // public entry's argument checked against the memmap (the entries
        // refuse others), a free-list link, or a buddy checked with
        // `contains`.
        debug_assert!(self.memmap.contains(pfn));
        // SAFETY: `new`'s contract covers every pfn the allocator touches,
        // and `&self` keeps it from handing out a conflicting `&mut`.
        unsafe { self.memmap.read(pfn) }
    }

    /// Materialises the deferred block holding `pfn`, if it is one.
    fn ensure_init(&mut self, pfn: Pfn) {
        // SAFETY: as in `pg_mut`: the block is within `new`'s contract
        // (same section as `pfn`), and `&mut self` excludes other references.
        unsafe { self.memmap.ensure_init(pfn) };
    }

    fn pg(&self, pfn: Pfn) -> &Page {
        // Cannot fire: as in `read`.
        debug_assert!(self.memmap.contains(pfn));
        // SAFETY: `new`'s contract covers every pfn the allocator touches,
        // and `&self` keeps it from handing out a conflicting `&mut`.
        unsafe { &*self.memmap.page(pfn) }
    }

    fn pg_mut(&mut self, pfn: Pfn) -> &mut Page {
        // Cannot fire: as in `read`.
        debug_assert!(self.memmap.contains(pfn));
        // SAFETY: as in `pg`; `&mut self` makes this the only reference.
        unsafe { &mut *self.memmap.page(pfn) }
    }

    /// Free-list index of the (node, zone) stored in a struct page.
    fn zone_index(page: &Page) -> Option<usize> {
        let z = page.zone().and_then(Zone::buddy_index)?;
        Some(list(page.nid(), z))
    }

    fn list_add(&mut self, z: usize, order: u32, pfn: Pfn) {
        let head = self.heads[z][order as usize];
        let p = self.pg_mut(pfn);
        p.next = head;
        p.prev = PFN_NONE;
        p.order = order as u8;
        p.flags.insert(PageFlags::BUDDY);
        if head != PFN_NONE {
            self.pg_mut(Pfn::new(head)).prev = pfn.as_u64();
        }
        self.heads[z][order as usize] = pfn.as_u64();
        self.nr_blocks[z][order as usize] += 1;
        self.nr_free[z] += 1 << order;
    }

    /// Unlink a free block from anywhere in its list: O(1).
    fn list_del(&mut self, z: usize, order: u32, pfn: Pfn) {
        let p = self.pg_mut(pfn);
        // Cannot fire: every caller passes a head it just read off this list
        // or saw with `BUDDY` and this order (the merge, `free_block_of`).
        debug_assert!(p.is_buddy() && p.order() == order);
        let (next, prev) = (p.next, p.prev);
        p.next = PFN_NONE;
        p.prev = PFN_NONE;
        p.flags.remove(PageFlags::BUDDY);
        if prev == PFN_NONE {
            // Cannot fire: `list_add` and `online_deferred` give only the
            // list's first block no `prev`.
            debug_assert_eq!(self.heads[z][order as usize], pfn.as_u64());
            self.heads[z][order as usize] = next;
        } else {
            self.pg_mut(Pfn::new(prev)).next = next;
        }
        if next != PFN_NONE {
            self.pg_mut(Pfn::new(next)).prev = prev;
        }
        self.nr_blocks[z][order as usize] -= 1;
        self.nr_free[z] -= 1 << order;
    }

    /// The free block containing `pfn`, as `(head, order)`. Like Linux's
    /// `is_free_buddy_page`: the head is the first aligned pfn below with
    /// `BUDDY` and an order that reaches `pfn`.
    pub fn free_block_of(&self, pfn: Pfn) -> Option<(Pfn, u32)> {
        if !self.memmap.contains(pfn) {
            return None;
        }
        // A deferred block's tails are never heads: the block is free whole
        // or not at all.
        // SAFETY: as in `read`.
        if let Some(head) = unsafe { self.memmap.deferred_head(pfn) } {
            return self.pg(head).is_buddy().then_some((head, MAX_ORDER));
        }
        for order in 0..=MAX_ORDER {
            let head = pfn.align_down(1 << order);
            if !self.memmap.contains(head) {
                break;
            }
            let p = self.pg(head);
            if p.is_buddy() && p.order() >= order {
                return Some((head, p.order()));
            }
        }
        None
    }

    pub fn is_free(&self, pfn: Pfn) -> bool {
        self.free_block_of(pfn).is_some()
    }

    /// Put a block on the free lists, merging it with free buddies of the
    /// same zone (Linux's `__free_one_page`).
    fn free_one(&mut self, mut pfn: Pfn, mut order: u32, z: usize) {
        let zone = self.pg(pfn).zone;
        while order < MAX_ORDER {
            let buddy = buddy_pfn(pfn, order);
            if !self.memmap.contains(buddy) {
                break;
            }
            let b = self.pg(buddy);
            let mergeable = b.is_buddy()
                && b.order() == order
                && b.zone == zone
                && b.is_online()
                && !b.flags.intersects(PageFlags::NEVER_BUDDY);
            if !mergeable {
                break;
            }
            self.list_del(z, order, buddy);
            // The lower of the two heads the merged block (`buddy & pfn`).
            pfn = pfn.min(buddy);
            order += 1;
        }
        self.list_add(z, order, pfn);
    }

    fn refuse(&mut self, what: &str, pfn: Pfn, order: u32, why: BadFree) {
        crate::pr_warn!(
            "buddy: refused {} of pfn {:#x} order {}: {:?}",
            what,
            pfn,
            order,
            why
        );
        self.stats.bad_frees += 1;
    }

    /// Hand `start_pfn..end_pfn` to the allocator in `zone` (boot, online),
    /// in maximal naturally aligned blocks coalesced with free neighbours.
    /// Every page handed over is stamped with `zone`, `ONLINE` and no
    /// references. Pages that may never be buddy pages (`RESERVED`,
    /// `DEVICE`, `VMEMMAP_SELF_HOSTED`, `ALTMAP_BACKED`) are skipped, so a
    /// range may have holes.
    ///
    /// Returns the number of pages handed over. The whole call is refused
    /// (logged, counted in `bad_frees`, nothing changed, 0 returned) if the
    /// zone is `Device`, the range leaves the memmap, or a page in it is
    /// already free or still referenced.
    ///
    /// Pages keep the node their struct pages have (`Memmap::init_range_on`).
    pub fn free_range(&mut self, start_pfn: Pfn, end_pfn: Pfn, zone: Zone) -> u64 {
        let nr = end_pfn.as_u64().saturating_sub(start_pfn.as_u64());
        let Some(zi) = zone.buddy_index() else {
            self.refuse("free_range", start_pfn, 0, BadFree::BadZone);
            return 0;
        };
        if nr == 0 {
            return 0;
        }
        if !self.memmap.contains_range(start_pfn, end_pfn) {
            self.refuse("free_range", start_pfn, 0, BadFree::OutOfRange);
            return 0;
        }
        // Check everything before changing anything. A free block overlapping
        // the range either contains its first page or has its head inside.
        if self.free_block_of(start_pfn).is_some() {
            self.refuse("free_range", start_pfn, 0, BadFree::AlreadyFree);
            return 0;
        }
        for pfn in Pfn::range(start_pfn, end_pfn) {
            let p = self.read(pfn);
            let why = if p.is_buddy() {
                BadFree::AlreadyFree
            } else if p.flags.intersects(PageFlags::NEVER_BUDDY) || p.refcount == 0 {
                continue;
            } else {
                BadFree::BadRefcount(p.refcount)
            };
            self.refuse("free_range", pfn, 0, why);
            return 0;
        }

        // Every page is rewritten below, and merging reads buddies.
        // SAFETY: as in `ensure_init`.
        unsafe { self.memmap.ensure_init_range(start_pfn, end_pfn) };
        let mut given = 0;
        let mut pfn = start_pfn;
        while pfn < end_pfn {
            if self.pg(pfn).flags.intersects(PageFlags::NEVER_BUDDY) {
                pfn += 1;
                continue;
            }
            let run = pfn;
            let nid = self.pg(run).nid();
            let z = list(nid, zi);
            while pfn < end_pfn
                && !self.pg(pfn).flags.intersects(PageFlags::NEVER_BUDDY)
                && self.pg(pfn).nid() == nid
            {
                let p = self.pg_mut(pfn);
                p.set_zone(zone);
                p.flags.insert(PageFlags::ONLINE);
                p.refcount = 0;
                p.order = 0;
                p.next = PFN_NONE;
                p.prev = PFN_NONE;
                pfn += 1;
            }
            for_each_max_block(run, pfn, |b, order| self.free_one(b, order, z));
            self.managed[z] += pfn - run;
            given += pfn - run;
        }
        given
    }

    /// Initialises the struct pages of the `nr_pages` pages from `pfn` for
    /// `zone` of node `nid` and hands them all over: Linux's `online_pages`
    /// (`memmap_init_range`, then `__free_pages_core`). Whole max-order
    /// blocks are written as deferred heads only, already on the free list
    /// (one 64-byte store each, their tails left for the first split: see
    /// `page.rs`); the ends of an unaligned range get one write per struct
    /// page. Nothing is read first, which is what makes onlining cost in
    /// proportion to blocks, not pages; the price is that the caller
    /// guarantees no page of the range is held by the allocator (the range
    /// is an offline memory block). Refused like
    /// [`free_range`](Self::free_range) for the `Device` zone or a range
    /// outside the memmap, and for a range that `check_online` finds the
    /// allocator's already.
    pub fn online_pages(&mut self, pfn: Pfn, nr_pages: u64, zone: Zone, nid: usize) -> u64 {
        self.online_pages_with(pfn, nr_pages, zone, nid, OnlineCheck::All)
            .unwrap_or(0)
    }

    /// [`online_pages`](Self::online_pages) of a range of memory blocks not
    /// onlined since they were hot-added, whose max-order heads are garbage
    /// like the rest of their struct pages (`page.rs`), so they are not
    /// read. Nothing is lost by it: hot-add refuses a range that overlaps
    /// present memory, so the allocator cannot hold these pages; and where
    /// that refusal failed, heads written at add (as this kernel did
    /// once, to check them here) would have overwritten the evidence.
    /// Ranges onlined before have their heads written by offline, and are
    /// checked. Reading them here and writing them at add cost 5 us per
    /// GiB, a third of adding 1 GiB on 64K. The rest of the checks stand.
    pub fn online_added_pages(&mut self, pfn: Pfn, nr_pages: u64, zone: Zone, nid: usize) -> u64 {
        self.online_pages_with(pfn, nr_pages, zone, nid, OnlineCheck::NotHeads)
            .unwrap_or(0)
    }

    /// [`online_pages`](Self::online_pages) with as much of `check_online`
    /// as `check` says (the zone and the range are always checked); a
    /// refusal names the page it stopped at.
    pub(in crate::mm) fn online_pages_with(
        &mut self,
        pfn: Pfn,
        nr_pages: u64,
        zone: Zone,
        nid: usize,
        check: OnlineCheck,
    ) -> Result<u64, Pfn> {
        let start_pfn = pfn;
        let Some(z) = zone.buddy_index().filter(|_| nid < MAX_NUMNODES) else {
            self.refuse("online_pages", start_pfn, 0, BadFree::BadZone);
            return Err(start_pfn);
        };
        let z = list(nid, z);
        if nr_pages == 0 {
            return Ok(0);
        }
        let end_pfn = match pfn.checked_add(nr_pages) {
            Some(end) if self.memmap.contains_range(start_pfn, end) => end,
            _ => {
                self.refuse("online_pages", start_pfn, 0, BadFree::OutOfRange);
                return Err(start_pfn);
            }
        };
        let checked = match check {
            OnlineCheck::All => self.check_online(start_pfn, end_pfn, true),
            OnlineCheck::NotHeads => self.check_online(start_pfn, end_pfn, false),
            OnlineCheck::Done => Ok(()),
        };
        if let Err((at, why)) = checked {
            self.refuse("online_pages", at, 0, why);
            return Err(at);
        }
        if !self.defer_init {
            // SAFETY: within the memmap, which `new`'s contract keeps mapped.
            unsafe {
                self.memmap
                    .init_range_on(start_pfn, end_pfn, zone, nid, PageFlags::ONLINE)
            };
            for_each_max_block(start_pfn, end_pfn, |b, order| self.free_one(b, order, z));
            self.managed[z] += nr_pages;
            return Ok(nr_pages);
        }
        // Whole max-order blocks in the middle, written as deferred heads;
        // the ends (if any) one struct page at a time. In address order,
        // as the eager way hands them over.
        let first = start_pfn.align_up(MAX_ORDER_NR_PAGES).min(end_pfn);
        let last = end_pfn.align_down(MAX_ORDER_NR_PAGES).max(first);
        for (s, e) in [(start_pfn, first), (last, end_pfn)] {
            if s == last && first < last {
                self.online_deferred(first, last, zone, nid, z);
            }
            // SAFETY: as above.
            unsafe {
                self.memmap
                    .init_range_on(s, e, zone, nid, PageFlags::ONLINE)
            };
            for_each_max_block(s, e, |b, order| self.free_one(b, order, z));
        }
        self.managed[z] += nr_pages;
        Ok(nr_pages)
    }

    /// [`check_online`](Self::check_online) of a run about to be onlined,
    /// for a caller that checks every run of a block before onlining any
    /// (`online_block`): a refusal is logged and counted as
    /// [`online_pages`](Self::online_pages) would, and names the page.
    pub(in crate::mm) fn check_online_run(
        &mut self,
        start: Pfn,
        end: Pfn,
        heads: bool,
    ) -> Result<(), Pfn> {
        let refused = if start < end && self.memmap.contains_range(start, end) {
            self.check_online(start, end, heads).err()
        } else {
            Some((start, BadFree::OutOfRange))
        };
        match refused {
            Some((at, why)) => {
                self.refuse("online_pages", at, 0, why);
                Err(at)
            }
            None => Ok(()),
        }
    }

    /// Whether `start..end` (within the memmap) may be onlined, as far as
    /// can be told without reading every struct page (onlining costs per
    /// max-order block, not per page): `Err((pfn, why))` if it overlaps a
    /// range being isolated, if a free block reaches `start` from below, or
    /// if a max-order block starting in the range is free, deferred or
    /// online and managed (its head is not `RESERVED` or otherwise never
    /// the allocator's; those heads only if `heads`: they are garbage in a
    /// block never onlined). It reads only struct pages that are written
    /// before an online: those heads (`page.rs`), and pages below `start`
    /// in its max-order block. Not seen: a free block wholly inside the
    /// range that starts at no max-order head (inside an unaligned end).
    fn check_online(&self, start: Pfn, end: Pfn, heads: bool) -> Result<(), (Pfn, BadFree)> {
        if self.isolating.iter().any(|r| r.0 < end && start < r.1) {
            return Err((start, BadFree::AlreadyOnline));
        }
        let below = start.align_down(MAX_ORDER_NR_PAGES);
        if below < start {
            // A whole online block has an online deferred head or a free
            // one (offlining leaves deferred heads that are offline).
            // SAFETY: as in `read`.
            let deferred = unsafe { self.memmap.deferred_head(below) };
            if deferred.is_some_and(|h| self.pg(h).is_online()) {
                return Err((below, BadFree::AlreadyOnline));
            }
            for order in 1..=MAX_ORDER {
                let head = start.align_down(1 << order);
                if head == start || !self.memmap.contains(head) {
                    continue;
                }
                let p = self.read(head);
                if p.is_buddy() && p.order() >= order {
                    return Err((head, BadFree::AlreadyFree));
                }
            }
        }
        let mut head = start.align_up(MAX_ORDER_NR_PAGES);
        while heads && head < end {
            let p = self.pg(head);
            if p.is_buddy() {
                return Err((head, BadFree::AlreadyFree));
            }
            // An online deferred head is managed too.
            if p.is_online() && !p.flags.intersects(PageFlags::NEVER_BUDDY) {
                return Err((head, BadFree::AlreadyOnline));
            }
            head += MAX_ORDER_NR_PAGES;
        }
        Ok(())
    }

    /// Puts the max-order blocks of `start..end` (aligned) on the free list
    /// as deferred blocks: each head is written once, complete with its
    /// links, so that the list is exactly what `list_add` of one block after
    /// the other would make (the last one first). A max-order block has no
    /// buddy to merge with.
    fn online_deferred(&mut self, start: Pfn, end: Pfn, zone: Zone, nid: usize, z: usize) {
        let top = MAX_ORDER as usize;
        let old = self.heads[z][top];
        let mut head = Page::new_on(zone, nid, PageFlags::ONLINE | PageFlags::BUDDY);
        head.order = MAX_ORDER as u8;
        let mut pfn = start;
        while pfn < end {
            let up = pfn + MAX_ORDER_NR_PAGES;
            head.next = if pfn == start {
                old
            } else {
                (pfn - MAX_ORDER_NR_PAGES).as_u64()
            };
            head.prev = if up == end { PFN_NONE } else { up.as_u64() };
            // SAFETY: within the memmap (checked by the caller), aligned,
            // and `&mut self` excludes other references.
            unsafe { self.memmap.init_deferred(pfn, head) };
            pfn = up;
        }
        let last = end - MAX_ORDER_NR_PAGES;
        if old != PFN_NONE {
            self.pg_mut(Pfn::new(old)).prev = start.as_u64();
        }
        let n = (end - start) / MAX_ORDER_NR_PAGES;
        self.heads[z][top] = last.as_u64();
        self.nr_blocks[z][top] += n;
        self.nr_free[z] += n * MAX_ORDER_NR_PAGES;
    }

    fn alloc_from(&mut self, order: u32, z: usize) -> Option<Pfn> {
        let found = (order..=MAX_ORDER).find(|&o| self.heads[z][o as usize] != PFN_NONE)?;
        let pfn = Pfn::new(self.heads[z][found as usize]);
        self.list_del(z, found, pfn);
        if found > order {
            // The first split of a deferred block writes its tails.
            self.ensure_init(pfn);
        }
        // Split: the upper halves go back, smallest last (Linux's `expand`).
        let mut o = found;
        while o > order {
            o -= 1;
            self.list_add(z, o, pfn + (1 << o));
        }
        let p = self.pg_mut(pfn);
        p.refcount = 1;
        p.order = order as u8;
        self.stats.allocs += 1;
        Some(pfn)
    }

    /// `2^order` pages from `zone`, naturally aligned: the head pfn. From
    /// the calling CPU's node, else the nearest node that has them.
    pub fn alloc(&mut self, order: u32, zone: Zone) -> Option<Pfn> {
        let nid = self.topo.cpu_node(crate::arch::cpu_id());
        self.alloc_nodes(order, &[zone], nid)
    }

    /// Linux's `split_page`: the allocated `2^order` block at `pfn` becomes
    /// `2^order` order-0 pages, each freed on its own (and counted as an
    /// allocation, so that allocations and frees still pair up).
    /// Refused (logged, counted, nothing changed) unless `pfn` is an
    /// allocated block of `order`.
    pub fn split_page(&mut self, pfn: Pfn, order: u32) {
        if let Err(why) = self.check_free(pfn, order) {
            self.refuse("split_page", pfn, order, why);
            return;
        }
        // A whole max-order block handed out as is may still be deferred.
        self.ensure_init(pfn);
        for p in Pfn::range(pfn, pfn + (1 << order)) {
            let page = self.pg_mut(p);
            page.refcount = 1;
            page.order = 0;
        }
        self.stats.allocs += (1 << order) - 1;
    }

    /// For users whose pages may move: `Normal` first, then `Movable`.
    pub fn alloc_any(&mut self, order: u32) -> Option<Pfn> {
        let nid = self.topo.cpu_node(crate::arch::cpu_id());
        self.alloc_nodes(order, &[Zone::Normal, Zone::Movable], nid)
    }

    /// `2^order` pages from the first of `zones` on node `nid`, else on the
    /// nodes nearest to it (Linux's zonelist: node by node, each node's
    /// zones in turn); counted in `numastat` with `nid` as the preferred
    /// node and the calling CPU's as the local one.
    pub fn alloc_nodes(&mut self, order: u32, zones: &[Zone], nid: usize) -> Option<Pfn> {
        let mut got = None;
        if order <= MAX_ORDER {
            let order_list = self.topo.fallback(nid);
            let mut nodes = [0u8; MAX_NUMNODES];
            nodes[..order_list.len()].copy_from_slice(order_list);
            'nodes: for &n in &nodes[..order_list.len()] {
                for z in zones.iter().filter_map(|z| z.buddy_index()) {
                    if let Some(pfn) = self.alloc_from(order, list(n as usize, z)) {
                        got = Some((pfn, n as usize));
                        break 'nodes;
                    }
                }
            }
        }
        let Some((pfn, n)) = got else {
            self.stats.alloc_failures += 1;
            return None;
        };
        let local = self.topo.cpu_node(crate::arch::cpu_id());
        self.count_numa(nid, n, local);
        Some(pfn)
    }

    /// `2^order` pages from `zone` of node `nid` only, not counted in
    /// `numastat` (a per-CPU list's refill: its pages are counted as
    /// they are handed out).
    pub fn alloc_on(&mut self, order: u32, zone: Zone, nid: usize) -> Option<Pfn> {
        match zone.buddy_index() {
            Some(z) if order <= MAX_ORDER && nid < MAX_NUMNODES => {
                self.alloc_from(order, list(nid, z))
            }
            _ => None,
        }
    }

    /// Linux's `zone_statistics`: an allocation that preferred node
    /// `preferred`, got node `got`, for a CPU of node `local`.
    pub fn count_numa(&mut self, preferred: usize, got: usize, local: usize) {
        if got >= MAX_NUMNODES {
            return;
        }
        if got == preferred {
            self.numa_stats[got].numa_hit += 1;
        } else {
            self.numa_stats[got].numa_miss += 1;
            if let Some(p) = self.numa_stats.get_mut(preferred) {
                p.numa_foreign += 1;
            }
        }
        match got == local {
            true => self.numa_stats[got].local_node += 1,
            false => self.numa_stats[got].other_node += 1,
        }
    }

    /// Node `nid`'s `numastat` events counted here.
    pub fn numa_stat(&self, nid: usize) -> NumaStat {
        self.numa_stats.get(nid).copied().unwrap_or_default()
    }

    /// Whether `free(pfn, order)` would be accepted, and why not.
    pub fn check_free(&self, pfn: Pfn, order: u32) -> Result<(), BadFree> {
        if order > MAX_ORDER {
            return Err(BadFree::OrderTooLarge);
        }
        if !pfn.is_aligned(1 << order) {
            return Err(BadFree::Misaligned);
        }
        // Checked: a wrapped end would make the range empty, and so "inside".
        let end = pfn.checked_add(1 << order);
        if !end.is_some_and(|end| self.memmap.contains_range(pfn, end)) {
            return Err(BadFree::OutOfRange);
        }
        let p = &self.read(pfn);
        let never = p.flags & PageFlags::NEVER_BUDDY;
        if !never.is_empty() {
            return Err(BadFree::NeverBuddy(never));
        }
        if p.is_buddy() || (p.refcount == 0 && self.is_free(pfn)) {
            return Err(BadFree::AlreadyFree);
        }
        if !p.is_online() {
            return Err(BadFree::NotOnline);
        }
        if Self::zone_index(p).is_none() {
            return Err(BadFree::BadZone);
        }
        if p.refcount != 1 {
            return Err(BadFree::BadRefcount(p.refcount));
        }
        if p.order() != order {
            return Err(BadFree::OrderMismatch {
                allocated: p.order(),
            });
        }
        Ok(())
    }

    /// Give back a block from `alloc(order, _)`. A refused free (see
    /// [`check_free`](Self::check_free)) is logged, counted in `bad_frees`,
    /// changes nothing else, and returns false.
    pub fn free(&mut self, pfn: Pfn, order: u32) -> bool {
        if let Err(why) = self.check_free(pfn, order) {
            self.refuse("free", pfn, order, why);
            return false;
        }
        let p = self.pg_mut(pfn);
        p.refcount = 0;
        let z = Self::zone_index(p).expect("checked");
        self.stats.frees += 1;
        if let Some(range) = self.isolating.iter_mut().find(|r| r.0 <= pfn && pfn < r.1) {
            range.2 += 1 << order;
            let p = self.pg_mut(pfn);
            p.order = order as u8;
            p.flags.insert(PageFlags::ISOLATED);
            return true;
        }
        self.free_one(pfn, order, z);
        true
    }

    /// Starts isolating `start_pfn..end_pfn` (aligned to `2^MAX_ORDER`
    /// pages) for offlining while pages in it are still in use: its free
    /// blocks leave the free lists, nothing more is allocated from it, and
    /// pages freed into it are held aside (Linux's
    /// `start_isolate_page_range`). Finish with
    /// [`undo_isolate_page_range`](Self::undo_isolate_page_range), then
    /// [`isolate_range`](Self::isolate_range) once
    /// [`test_pages_isolated`](Self::test_pages_isolated).
    pub fn start_isolate_page_range(&mut self, start_pfn: Pfn, end_pfn: Pfn) {
        let block = 1u64 << MAX_ORDER;
        assert!(
            start_pfn.is_aligned(block) && end_pfn.is_aligned(block),
            "isolation of an unaligned range"
        );
        assert!(self.memmap.contains_range(start_pfn, end_pfn));
        let (mut held, mut own) = (0, 0);
        let mut pfn = start_pfn;
        while pfn < end_pfn {
            let (met, step) = self.walk_step(pfn);
            match met {
                Met::Free(order) => {
                    let z = Self::zone_index(self.pg(pfn)).expect("free pages have a buddy zone");
                    self.list_del(z, order, pfn);
                    let p = self.pg_mut(pfn);
                    p.order = order as u8;
                    p.flags.insert(PageFlags::ISOLATED);
                    held += step;
                }
                Met::Other(flags) => own += u64::from(flags.intersects(PageFlags::UNMANAGED)),
            }
            pfn += step;
        }
        self.isolating.push((start_pfn, end_pfn, held, own));
    }

    /// One step of a walk over a range that starts at a max-order head and
    /// steps by what this returns: `(what is at pfn, pages to step)`. A
    /// free block is met at its head and stepped over whole (free blocks
    /// are aligned and never overlap, so such a walk lands on every head
    /// and inside none: no search for a head above `pfn`, which
    /// [`free_block_of`](Self::free_block_of) needs for an arbitrary pfn);
    /// so is a deferred block that is not free (its tails are online
    /// pages). Any other page is met alone, by its flags; it lies in a
    /// block whose struct pages are written, so it is read as stored.
    fn walk_step(&self, pfn: Pfn) -> (Met, u64) {
        let p = self.pg(pfn);
        if pfn.is_aligned(MAX_ORDER_NR_PAGES) && p.is_deferred_head() && !p.is_buddy() {
            return (Met::Other(PageFlags::ONLINE), MAX_ORDER_NR_PAGES);
        }
        if p.is_buddy() {
            (Met::Free(p.order()), 1 << p.order())
        } else {
            (Met::Other(p.flags), 1)
        }
    }

    /// Room for one more isolating range, so that the next
    /// [`start_isolate_page_range`](Self::start_isolate_page_range) does
    /// not allocate (its caller fails with `ENOMEM` instead).
    pub fn try_reserve_isolating(&mut self) -> Result<(), alloc::collections::TryReserveError> {
        self.isolating.try_reserve(1)
    }

    /// Whether every page of an isolating range is held or never was the
    /// allocator's (`UNMANAGED`): Linux's `test_pages_isolated`.
    pub fn test_pages_isolated(&self, start_pfn: Pfn, end_pfn: Pfn) -> bool {
        let Some(&(_, _, held, own_at_start)) = self
            .isolating
            .iter()
            .find(|r| (r.0, r.1) == (start_pfn, end_pfn))
        else {
            return false;
        };
        // "Not yet" from the counts alone: an offline polls this with the
        // memory lock held while pages are out, and reading every struct
        // page of the range each time kept the lock for milliseconds
        // (BENCHMARKS.md, "Where the worker's time goes"). Nothing makes
        // pages unmanaged inside a range under isolation, so the count
        // taken at the start still holds; "done" is confirmed from the
        // struct pages, held block by held block.
        if held + own_at_start != end_pfn - start_pfn {
            return false;
        }
        let mut pfn = start_pfn;
        while pfn < end_pfn {
            let p = self.read(pfn);
            pfn += match p.flags {
                f if f.intersects(PageFlags::UNMANAGED) => 1,
                f if f.contains(PageFlags::ISOLATED) => 1 << p.order(),
                _ => return false,
            };
        }
        true
    }

    /// Ends an isolation: held blocks go back to the free lists. Refused
    /// (logged, counted, nothing changed) for a range not being isolated.
    pub fn undo_isolate_page_range(&mut self, start_pfn: Pfn, end_pfn: Pfn) {
        let before = self.isolating.len();
        self.isolating
            .retain(|r| (r.0, r.1) != (start_pfn, end_pfn));
        if self.isolating.len() == before {
            self.refuse("undo_isolate", start_pfn, 0, BadFree::NotIsolating);
            return;
        }
        // The walk of `walk_step`, over held blocks instead of free ones:
        // each met at its head, every range aligned (`start_isolate_page_range`).
        let mut pfn = start_pfn;
        while pfn < end_pfn {
            let p = *self.pg(pfn);
            if !p.has(PageFlags::ISOLATED) {
                let deferred = pfn.is_aligned(MAX_ORDER_NR_PAGES) && p.is_deferred_head();
                pfn += if deferred { MAX_ORDER_NR_PAGES } else { 1 };
                continue;
            }
            let (order, z) = (
                p.order(),
                Self::zone_index(&p).expect("held pages have a buddy zone"),
            );
            self.pg_mut(pfn).flags.remove(PageFlags::ISOLATED);
            self.free_one(pfn, order, z);
            pfn += 1 << order;
        }
    }

    /// Take every free page of `start_pfn..end_pfn` off the free lists, for
    /// offlining a memory block (Linux's `start_isolate_page_range` plus
    /// `take_page_off_buddy`, minus migration: pages in use make it fail).
    ///
    /// First checks, changing nothing, that every page is free or
    /// `UNMANAGED` (the block's own memmap, unplugged memory: skipped); otherwise
    /// returns `Err(first busy pfn)` (a pfn outside the memmap counts as
    /// busy). Then unlinks the free blocks and returns `Ok(pages taken)`.
    ///
    /// Memory blocks are aligned to `2^MAX_ORDER` pages, and no free block
    /// straddles such a boundary. Other ranges work too: a free block that
    /// straddles an end is split, and its part outside the range stays free.
    /// Taken pages keep their zone and `ONLINE` (the caller owns online
    /// state); [`free_range`](Self::free_range) over the same range undoes
    /// the isolation.
    pub fn isolate_range(&mut self, start_pfn: Pfn, end_pfn: Pfn) -> Result<u64, Pfn> {
        let mut pfn = start_pfn;
        while pfn < end_pfn {
            if !self.memmap.contains(pfn) {
                return Err(pfn);
            }
            if self.read(pfn).flags.intersects(PageFlags::UNMANAGED) {
                pfn += 1;
                continue;
            }
            match self.free_block_of(pfn) {
                Some((head, order)) => pfn = head + (1 << order),
                None => return Err(pfn),
            }
        }

        let mut taken = 0;
        let mut pfn = start_pfn;
        while pfn < end_pfn {
            if self.read(pfn).flags.intersects(PageFlags::UNMANAGED) {
                pfn += 1;
                continue;
            }
            let (head, order) = self.free_block_of(pfn).expect("checked above");
            let z = Self::zone_index(self.pg(head)).expect("free pages have a buddy zone");
            let end = head + (1 << order);
            self.list_del(z, order, head);
            if head < start_pfn || end > end_pfn {
                // Part of the block stays free: its new heads are tails now.
                self.ensure_init(head);
            }
            // Parts outside the range go back as they are: their maximal
            // blocks have distinct orders, so none is a buddy of another.
            for_each_max_block(head, start_pfn.max(head), |b, o| self.list_add(z, o, b));
            for_each_max_block(end_pfn.min(end), end, |b, o| self.list_add(z, o, b));
            let (lo, hi) = (head.max(start_pfn), end.min(end_pfn));
            taken += hi - lo;
            self.managed[z] -= hi - lo;
            pfn = hi;
        }
        self.stats.isolated += taken;
        Ok(taken)
    }

    /// Free pages in `zone` (0 for `Device`), over every node.
    pub fn nr_free(&self, zone: Zone) -> u64 {
        (0..MAX_NUMNODES).map(|n| self.nr_free_node(n, zone)).sum()
    }

    /// Free pages in `zone` of node `nid`.
    pub fn nr_free_node(&self, nid: usize, zone: Zone) -> u64 {
        match zone.buddy_index() {
            Some(z) if nid < MAX_NUMNODES => self.nr_free[list(nid, z)],
            _ => 0,
        }
    }

    pub fn nr_free_total(&self) -> u64 {
        self.nr_free.iter().sum()
    }

    /// Free blocks of exactly `order` in `zone`, over every node.
    pub fn nr_free_blocks(&self, zone: Zone, order: u32) -> u64 {
        (0..MAX_NUMNODES)
            .map(|n| self.nr_free_blocks_node(n, zone, order))
            .sum()
    }

    /// Free blocks of exactly `order` in `zone` of node `nid` (a
    /// `/proc/buddyinfo` cell).
    pub fn nr_free_blocks_node(&self, nid: usize, zone: Zone, order: u32) -> u64 {
        match zone.buddy_index() {
            Some(z) if order <= MAX_ORDER && nid < MAX_NUMNODES => {
                self.nr_blocks[list(nid, z)][order as usize]
            }
            _ => 0,
        }
    }

    /// Pages the allocator manages in `zone`, free or allocated, over
    /// every node.
    pub fn managed(&self, zone: Zone) -> u64 {
        (0..MAX_NUMNODES).map(|n| self.managed_node(n, zone)).sum()
    }

    /// Pages the allocator manages in `zone` of node `nid`.
    pub fn managed_node(&self, nid: usize, zone: Zone) -> u64 {
        match zone.buddy_index() {
            Some(z) if nid < MAX_NUMNODES => self.managed[list(nid, z)],
            _ => 0,
        }
    }

    pub fn stats(&self) -> BuddyStats {
        self.stats
    }

    /// Calls `f(head_pfn, order)` for every free block of `zone`, by order
    /// then list position.
    pub fn for_each_free_block(&self, zone: Zone, mut f: impl FnMut(Pfn, u32)) {
        let Some(z) = zone.buddy_index() else { return };
        for order in 0..=MAX_ORDER {
            for nid in 0..MAX_NUMNODES {
                let mut pfn = self.heads[list(nid, z)][order as usize];
                while pfn != PFN_NONE {
                    f(Pfn::new(pfn), order);
                    pfn = self.pg(Pfn::new(pfn)).next;
                }
            }
        }
    }
}

/// The buddy allocator behind its lock (module comment).
pub type ZoneLock = crate::arch::lock::FairLock<BuddyAllocator>;

/// How much of the check against onlining the allocator's own pages an
/// online runs ([`BuddyAllocator::online_pages_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::mm) enum OnlineCheck {
    /// All of it ([`BuddyAllocator::online_pages`]).
    All,
    /// All but the max-order heads, garbage in memory not onlined since
    /// hot-add ([`BuddyAllocator::online_added_pages`]).
    NotHeads,
    /// None: the caller checked the range in the same hold of the zone
    /// lock ([`BuddyAllocator::check_online_run`]).
    Done,
}

/// What [`BuddyAllocator::walk_step`] meets.
enum Met {
    /// The head of a free block of this order.
    Free(u32),
    /// A page the allocator does not hold free, with these flags.
    Other(PageFlags),
}

/// The zone lock of a new memory system: the kernel's one, or a fresh one
/// per host test system.
#[cfg(not(test))]
pub(in crate::mm) fn new_zone(buddy: BuddyAllocator) -> &'static ZoneLock {
    static KERNEL: spin::Once<ZoneLock> = spin::Once::new();
    let mut buddy = Some(buddy);
    let zone = KERNEL.call_once(|| ZoneLock::new(buddy.take().expect("taken once")));
    // A second memory system would share the first one's allocator.
    assert!(buddy.is_none(), "the kernel has one memory system");
    zone
}

#[cfg(test)]
pub(in crate::mm) fn new_zone(buddy: BuddyAllocator) -> &'static ZoneLock {
    alloc::boxed::Box::leak(alloc::boxed::Box::new(ZoneLock::new(buddy)))
}

/// Kernel page frames: `Normal` zone only (page-table pages and the like
/// must never sit in memory that can be offlined).
impl FrameAllocator for BuddyAllocator {
    fn alloc_pages(&mut self, order: u32) -> Option<PhysAddr> {
        self.alloc(order, Zone::Normal).map(Pfn::phys)
    }

    fn free_pages(&mut self, pa: PhysAddr, order: u32) {
        if !pa.is_aligned(layout::PAGE_SIZE) {
            self.refuse("free", Pfn::down(pa), order, BadFree::Misaligned);
            return;
        }
        self.free(Pfn::down(pa), order);
    }

    /// Outside the memmap counts as reserved: such a page can never be
    /// freed here.
    fn is_reserved(&self, pa: PhysAddr) -> bool {
        let pfn = Pfn::down(pa);
        !self.memmap.contains(pfn) || self.read(pfn).is_reserved()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    const BASE: Pfn = Pfn::new(0x40000);
    const MAXB: u64 = 1 << MAX_ORDER;

    /// The pages must outlive the allocator: keep them together.
    struct Fixture {
        buddy: BuddyAllocator,
        _pages: Vec<Page>,
    }

    fn fixture(nr: u64) -> Fixture {
        let mut pages = vec![Page::new(Zone::Normal, PageFlags::empty()); nr as usize];
        let mm = Memmap::for_slice(&mut pages, BASE);
        // SAFETY: the pages live in the fixture, next to the allocator.
        let buddy = unsafe { BuddyAllocator::new(mm) };
        Fixture {
            buddy,
            _pages: pages,
        }
    }

    fn set_flags(b: &BuddyAllocator, pfn: Pfn, f: PageFlags) {
        // SAFETY: the fixture's struct pages cover every pfn used here.
        unsafe { b.memmap().get(pfn).set_flags(f) }
    }

    /// Walk every list checking links, flags, counts and disjointness;
    /// returns the free blocks sorted by pfn.
    fn audit(b: &BuddyAllocator) -> Vec<(Pfn, u32, Zone)> {
        let mut all = Vec::new();
        for zone in Zone::BUDDY_ZONES {
            for nid in 0..MAX_NUMNODES {
                let z = list(nid, zone.buddy_index().unwrap());
                let mut pages = 0;
                for order in 0..=MAX_ORDER {
                    let mut prev = PFN_NONE;
                    let mut pfn = b.heads[z][order as usize];
                    let mut n = 0;
                    while pfn != PFN_NONE {
                        let p = b.pg(Pfn::new(pfn));
                        assert_eq!(p.prev, prev, "back link of {pfn:#x}");
                        assert!(
                            p.is_buddy() && p.is_online(),
                            "{pfn:#x} flags {:?}",
                            p.flags
                        );
                        assert_eq!((p.order(), p.zone(), p.refcount), (order, Some(zone), 0));
                        assert_eq!(p.nid(), nid, "{pfn:#x} on the wrong node's list");
                        assert_eq!(pfn % (1 << order), 0, "misaligned free block");
                        all.push((Pfn::new(pfn), order, zone));
                        n += 1;
                        prev = pfn;
                        pfn = p.next;
                    }
                    assert_eq!(n, b.nr_blocks[z][order as usize]);
                    pages += n << order;
                }
                assert_eq!(pages, b.nr_free[z]);
            }
        }
        all.sort();
        for w in all.windows(2) {
            assert!(
                w[0].0 + (1 << w[0].1) <= w[1].0,
                "overlapping free blocks {w:?}"
            );
        }
        // Fully coalesced buddies never coexist (same zone, same order).
        for &(pfn, order, zone) in &all {
            let bp = buddy_pfn(pfn, order);
            let same_node = || b.read(pfn).nid() == b.read(bp).nid();
            if order < MAX_ORDER && b.memmap().contains(bp) && same_node() {
                let buddy = (bp, order, zone);
                assert!(
                    all.binary_search(&buddy).is_err(),
                    "unmerged buddies at {pfn:#x}"
                );
            }
        }
        // No page outside a listed block claims to be a free head.
        let heads: HashSet<Pfn> = all.iter().map(|b| b.0).collect();
        let mm = b.memmap();
        for pfn in Pfn::range(mm.start_pfn(), mm.end_pfn()) {
            assert_eq!(
                b.read(pfn).is_buddy(),
                heads.contains(&pfn),
                "stray BUDDY at {pfn:#x}"
            );
        }
        all
    }

    fn expected_blocks(runs: &[(Pfn, Pfn, Zone)]) -> Vec<(Pfn, u32, Zone)> {
        let mut v = Vec::new();
        for &(s, e, zone) in runs {
            for_each_max_block(s, e, |p, o| v.push((p, o, zone)));
        }
        v.sort();
        v
    }

    #[test]
    fn max_blocks_tile_a_range() {
        let mut v = Vec::new();
        let three = Pfn::new(3);
        for_each_max_block(three, three + 2 * MAXB + 5, |p, o| v.push((p, o)));
        let covered: u64 = v.iter().map(|&(_, o)| 1u64 << o).sum();
        assert_eq!(covered, 2 * MAXB + 5);
        assert_eq!(v[0], (three, 0));
        assert!(v
            .iter()
            .all(|&(p, o)| p.as_u64() % (1 << o) == 0 && o <= MAX_ORDER));
        let mut z = Vec::new();
        let zero = Pfn::new(0);
        for_each_max_block(zero, zero + 2 * MAXB, |p, o| z.push((p, o)));
        assert_eq!(z, [(zero, MAX_ORDER), (zero + MAXB, MAX_ORDER)]);
    }

    #[test]
    fn isolation_holds_what_is_freed_and_allocates_nothing_from_the_range() {
        let mut f = fixture(2 * MAXB);
        let b = &mut f.buddy;
        b.free_range(BASE, BASE + 2 * MAXB, Zone::Movable);
        let before = audit(b);
        let a = b.alloc(2, Zone::Movable).unwrap();
        let c = b.alloc(0, Zone::Movable).unwrap();
        let (lo, hi) = (
            BASE + (a - BASE) / MAXB * MAXB,
            BASE + (a - BASE) / MAXB * MAXB + MAXB,
        );
        assert!((lo..hi).contains(&c), "both from one max block");
        b.start_isolate_page_range(lo, hi);
        assert!(!b.test_pages_isolated(lo, hi));
        // Nothing comes from the isolated range any more.
        let d = b.alloc(0, Zone::Movable).unwrap();
        assert!(!(lo..hi).contains(&d));
        assert!(b.free(a, 2));
        assert!(!b.test_pages_isolated(lo, hi));
        assert!(b.free(c, 0));
        assert!(b.test_pages_isolated(lo, hi));
        assert_eq!(
            b.nr_free(Zone::Movable),
            MAXB - 1,
            "held pages are not free"
        );
        b.undo_isolate_page_range(lo, hi);
        assert!(b.free(d, 0));
        assert_eq!(audit(b), before, "undo coalesces back to the start");
        // The usual way to finish: undo, then take everything at once.
        b.start_isolate_page_range(lo, hi);
        assert!(b.test_pages_isolated(lo, hi));
        b.undo_isolate_page_range(lo, hi);
        assert_eq!(b.isolate_range(lo, hi), Ok(MAXB));
        assert_eq!(b.managed(Zone::Movable), MAXB);
    }

    #[test]
    fn split_and_coalesce() {
        let mut f = fixture(2 * MAXB);
        let b = &mut f.buddy;
        assert_eq!(b.free_range(BASE, BASE + 2 * MAXB, Zone::Normal), 2 * MAXB);
        assert_eq!(
            audit(b),
            [
                (BASE, MAX_ORDER, Zone::Normal),
                (BASE + MAXB, MAX_ORDER, Zone::Normal)
            ]
        );
        assert_eq!(b.managed(Zone::Normal), 2 * MAXB);

        let p = b.alloc(0, Zone::Normal).unwrap();
        assert!(p == BASE || p == BASE + MAXB);
        // One block of every smaller order is left by the split.
        for order in 0..MAX_ORDER {
            assert_eq!(b.nr_free_blocks(Zone::Normal, order), 1, "order {order}");
        }
        assert_eq!(b.nr_free(Zone::Normal), 2 * MAXB - 1);
        assert!(!b.is_free(p) && b.is_free(p + 1) && b.is_free(p + MAXB - 1));
        // SAFETY: the fixture's struct pages cover every pfn used here.
        unsafe {
            assert_eq!(b.memmap().get(p).refcount(), 1);
            assert!(!b.memmap().get(p).is_buddy());
        }
        audit(b);

        let q = b.alloc(1, Zone::Normal).unwrap();
        assert_eq!(q, p + 2);
        assert!(b.free(p, 0));
        assert!(b.free(q, 1));
        assert_eq!(audit(b).len(), 2);
        assert_eq!(b.nr_free_total(), 2 * MAXB);
        let s = b.stats();
        assert_eq!((s.allocs, s.frees, s.bad_frees), (2, 2, 0));

        // Everything at once, then nothing left.
        let x = b.alloc(MAX_ORDER, Zone::Normal).unwrap();
        let y = b.alloc(MAX_ORDER, Zone::Normal).unwrap();
        assert_eq!(b.alloc(0, Zone::Normal), None);
        assert_eq!(b.alloc(0, Zone::Movable), None);
        assert_eq!(b.alloc(MAX_ORDER + 1, Zone::Normal), None);
        assert_eq!(b.alloc(0, Zone::Device), None);
        assert_eq!(b.stats().alloc_failures, 4);
        assert!(b.free(y, MAX_ORDER) && b.free(x, MAX_ORDER));
        assert_eq!(audit(b).len(), 2);
    }

    #[test]
    fn free_range_skips_reserved_and_coalesces_with_neighbours() {
        let mut f = fixture(2 * MAXB);
        let b = &mut f.buddy;
        set_flags(b, BASE + 5, PageFlags::RESERVED);
        set_flags(b, BASE + 6, PageFlags::VMEMMAP_SELF_HOSTED);
        // Two pieces whose seam is not aligned still end up coalesced.
        let n = b.free_range(BASE + 3, BASE + 77, Zone::Normal)
            + b.free_range(BASE + 77, BASE + 2 * MAXB, Zone::Normal);
        assert_eq!(n, 2 * MAXB - 5);
        let want = expected_blocks(&[
            (BASE + 3, BASE + 5, Zone::Normal),
            (BASE + 7, BASE + 2 * MAXB, Zone::Normal),
        ]);
        assert_eq!(audit(b), want);
        // The hole is filled later: everything merges.
        // SAFETY: the fixture's struct pages cover every pfn used here.
        unsafe {
            b.memmap()
                .init_range(BASE, BASE + 3, Zone::Normal, PageFlags::empty())
        };
        assert_eq!(b.free_range(BASE, BASE + 3, Zone::Normal), 3);
        let want = expected_blocks(&[
            (BASE, BASE + 5, Zone::Normal),
            (BASE + 7, BASE + 2 * MAXB, Zone::Normal),
        ]);
        assert_eq!(audit(b), want);
        assert!(b.is_free(BASE) && !b.is_free(BASE + 5) && !b.is_free(BASE + 6));
        assert!(b.is_reserved((BASE + 5).phys()));
        assert!(!b.is_reserved((BASE + 4).phys()));
        assert!(b.is_reserved((BASE - 1).phys()));
    }

    #[test]
    fn free_range_refuses_overlap_and_device() {
        let mut f = fixture(MAXB);
        let b = &mut f.buddy;
        assert_eq!(b.free_range(BASE, BASE + MAXB, Zone::Normal), MAXB);
        let before = audit(b);
        assert_eq!(b.free_range(BASE + 1, BASE + 2, Zone::Normal), 0); // inside a free block
        assert_eq!(b.free_range(BASE, BASE + MAXB + 1, Zone::Normal), 0); // out of the memmap
        assert_eq!(b.free_range(BASE, BASE + 1, Zone::Device), 0);
        let p = b.alloc(0, Zone::Normal).unwrap();
        assert_eq!(b.free_range(p, p + 1, Zone::Normal), 0); // still referenced
        assert_eq!(b.stats().bad_frees, 4);
        assert!(b.free(p, 0));
        assert_eq!(audit(b), before);
    }

    /// Per-node free lists: halves of one max-order block on two nodes
    /// never merge; an allocation for a node takes its pages while it has
    /// them, then the nearest node's, and `numastat` says so.
    #[test]
    fn nodes_never_merge_and_allocation_walks_by_distance() {
        let half = MAXB / 2;
        let mut f = fixture(2 * MAXB);
        let b = &mut f.buddy;
        let memory = [(
            crate::mm::addr::PhysRange::new(BASE.phys(), (2 * MAXB) << layout::PAGE_SHIFT),
            Some(0),
        )];
        let distances = [(0, 1, 30), (0, 2, 20), (1, 2, 20)];
        let desc = crate::mm::node::NumaDesc {
            memory: &memory,
            cpus: &[Some(0), Some(1), Some(2)],
            distances: &distances,
            distance_map_malformed: false,
        };
        b.set_topology(Topology::build(&desc, false));
        b.online_pages(BASE, half, Zone::Normal, 0);
        b.online_pages(BASE + half, half, Zone::Normal, 1);
        b.online_pages(BASE + MAXB, MAXB, Zone::Normal, 2);
        let want = [
            (BASE, MAX_ORDER - 1, Zone::Normal),
            (BASE + half, MAX_ORDER - 1, Zone::Normal),
            (BASE + MAXB, MAX_ORDER, Zone::Normal),
        ];
        assert_eq!(audit(b), want);
        assert_eq!(
            (
                b.nr_free_node(1, Zone::Normal),
                b.managed_node(2, Zone::Normal)
            ),
            (half, MAXB)
        );
        assert_eq!(b.nr_free(Zone::Normal), 2 * MAXB);
        // Node 1's own half, then node 2 (20 away), then node 0 (30).
        let mut held = Vec::new();
        while let Some(p) = b.alloc_nodes(0, &[Zone::Normal], 1) {
            let want_node = match held.len() as u64 {
                n if n < half => 1,
                n if n < half + MAXB => 2,
                _ => 0,
            };
            assert_eq!(b.read(p).nid(), want_node, "allocation {}", held.len());
            held.push(p);
        }
        assert_eq!(held.len() as u64, 2 * MAXB);
        let (s0, s1, s2) = (b.numa_stat(0), b.numa_stat(1), b.numa_stat(2));
        assert_eq!((s1.numa_hit, s1.numa_foreign), (half, half + MAXB));
        assert_eq!((s2.numa_miss, s0.numa_miss), (MAXB, half));
        // Host tests run as CPU 0, of node 0.
        assert_eq!((s0.local_node, s1.other_node), (half, half));
        held.sort_by_key(|&p| (p.as_u64().reverse_bits(), p));
        for p in held {
            assert!(b.free(p, 0));
        }
        assert_eq!(audit(b), want);
    }

    #[test]
    fn zones_never_merge() {
        let half = MAXB / 2;
        let mut f = fixture(MAXB);
        let b = &mut f.buddy;
        b.free_range(BASE, BASE + half, Zone::Normal);
        b.free_range(BASE + half, BASE + MAXB, Zone::Movable);
        let want = [
            (BASE, MAX_ORDER - 1, Zone::Normal),
            (BASE + half, MAX_ORDER - 1, Zone::Movable),
        ];
        assert_eq!(audit(b), want);
        assert_eq!(b.alloc(MAX_ORDER, Zone::Normal), None);
        assert_eq!(b.alloc_any(MAX_ORDER), None);

        let mut held = Vec::new();
        while let Some(p) = b.alloc_any(0) {
            // Normal first, then Movable.
            assert_eq!(p < BASE + half, (held.len() as u64) < half);
            held.push(p);
        }
        assert_eq!(b.alloc(0, Zone::Movable), None);
        assert_eq!(held.len() as u64, MAXB);
        assert_eq!(b.nr_free_total(), 0);
        // Free in an interleaved order so that merges are attempted across
        // the zone boundary at every order.
        held.sort_by_key(|&p| (p.as_u64().reverse_bits(), p));
        for p in held {
            assert!(b.free(p, 0));
        }
        assert_eq!(audit(b), want);
    }

    #[test]
    fn bad_frees_are_detected_and_harmless() {
        let mut f = fixture(2 * MAXB);
        let b = &mut f.buddy;
        set_flags(b, BASE + 8, PageFlags::RESERVED);
        set_flags(b, BASE + 9, PageFlags::DEVICE);
        set_flags(b, BASE + 10, PageFlags::ALTMAP_BACKED);
        b.free_range(BASE, BASE + MAXB, Zone::Normal); // BASE+MAXB.. stays offline
        let a = b.alloc(2, Zone::Normal).unwrap();
        let before = audit(b);
        let nr = b.nr_free_total();

        let cases: &[(Pfn, u32, BadFree)] = &[
            (BASE + 8, 0, BadFree::NeverBuddy(PageFlags::RESERVED)),
            (BASE + 9, 0, BadFree::NeverBuddy(PageFlags::DEVICE)),
            (BASE + 10, 0, BadFree::NeverBuddy(PageFlags::ALTMAP_BACKED)),
            (before[0].0, before[0].1, BadFree::AlreadyFree), // a free head
            (before[0].0 + 1, 0, BadFree::AlreadyFree),       // inside a free block
            (a + 1, 0, BadFree::BadRefcount(0)),              // tail of an allocation
            (a, 1, BadFree::OrderMismatch { allocated: 2 }),
            (a, 3, BadFree::Misaligned),
            (a + 2, 1, BadFree::BadRefcount(0)),
            (BASE + MAXB, 0, BadFree::NotOnline),
            (BASE - 1, 0, BadFree::OutOfRange),
            (BASE + 2 * MAXB, 0, BadFree::OutOfRange),
            (BASE, MAX_ORDER + 1, BadFree::OrderTooLarge),
        ];
        for (i, &(pfn, order, why)) in cases.iter().enumerate() {
            assert_eq!(b.check_free(pfn, order), Err(why), "case {i}");
            assert!(!b.free(pfn, order), "case {i}");
            assert_eq!(b.stats().bad_frees, i as u64 + 1);
            assert_eq!(b.nr_free_total(), nr);
        }
        // Through the FrameAllocator interface too.
        b.free_pages(a.phys() + 8, 2);
        b.free_pages((BASE + 8).phys(), 0);
        assert_eq!(b.stats().bad_frees, cases.len() as u64 + 2);
        assert_eq!(audit(b), before);

        // The real owner can still free it, once.
        assert!(b.free(a, 2));
        assert!(!b.free(a, 2));
        assert_eq!(b.check_free(a, 2), Err(BadFree::AlreadyFree));
        assert_eq!(b.stats().frees, 1);
    }

    fn snapshot(b: &BuddyAllocator) -> (Vec<(Pfn, u32, Zone)>, u64, u64, u64) {
        (
            audit(b),
            b.nr_free(Zone::Normal),
            b.nr_free(Zone::Movable),
            b.managed(Zone::Normal),
        )
    }

    /// `online_pages` over `start..start + nr` is refused for `why` at
    /// `at`: 0 pages, one more bad free, nothing else changed.
    #[track_caller]
    fn assert_online_refused(b: &mut BuddyAllocator, start: Pfn, nr: u64, at: Pfn, why: BadFree) {
        assert_eq!(b.check_online(start, start + nr, true), Err((at, why)));
        let (before, bad) = (snapshot(b), b.stats().bad_frees);
        assert_eq!(b.online_pages(start, nr, Zone::Movable, 0), 0);
        assert_eq!(b.stats().bad_frees, bad + 1);
        assert_eq!(snapshot(b), before);
    }

    #[test]
    fn online_over_the_allocators_pages_is_refused() {
        let mut f = fixture(6 * MAXB);
        let b = &mut f.buddy;
        // Blocks 0-1 freed (not deferred), 2-3 onlined over garbage as
        // hot-added memory (deferred heads), 4-5 offline heads as offline
        // leaves them (their tails left clean: `audit` reads every struct
        // page).
        assert_eq!(b.free_range(BASE, BASE + 2 * MAXB, Zone::Movable), 2 * MAXB);
        let (off, end) = (BASE + 4 * MAXB, BASE + 6 * MAXB);
        // SAFETY: the fixture's struct pages; no reference is live.
        unsafe {
            b.memmap().poison_range(BASE + 2 * MAXB, off);
            for head in [off, off + MAXB] {
                let offline = Page::new(Zone::Movable, PageFlags::RESERVED);
                b.memmap().init_deferred(head, offline);
            }
        }
        assert_eq!(
            b.online_added_pages(BASE + 2 * MAXB, 2 * MAXB, Zone::Movable, 0),
            2 * MAXB
        );
        let bad = b.stats().bad_frees;
        assert_eq!(bad, 0);
        // Whole blocks again: free, deferred, or both and the offline ones.
        assert_online_refused(b, BASE, MAXB, BASE, BadFree::AlreadyFree);
        assert_online_refused(
            b,
            BASE + 3 * MAXB,
            MAXB,
            BASE + 3 * MAXB,
            BadFree::AlreadyFree,
        );
        assert_online_refused(
            b,
            BASE + 3 * MAXB,
            3 * MAXB,
            BASE + 3 * MAXB,
            BadFree::AlreadyFree,
        );
        // From inside a free block: a free head below the start reaches it.
        assert_online_refused(b, BASE + 5, 7, BASE, BadFree::AlreadyFree);
        assert_online_refused(b, BASE + MAXB / 2, MAXB, BASE, BadFree::AlreadyFree);
        // From inside a deferred block.
        let d = BASE + 2 * MAXB;
        assert_online_refused(b, d + 5, 7, d, BadFree::AlreadyOnline);
        // A max-order head allocated whole, then one split by an allocation.
        let whole = b.alloc(MAX_ORDER, Zone::Movable).unwrap();
        assert_online_refused(b, whole, MAXB, whole, BadFree::AlreadyOnline);
        let page = b.alloc(0, Zone::Movable).unwrap();
        let split = page.align_down(MAXB);
        assert_ne!(split, whole);
        assert_online_refused(b, split, MAXB, split, BadFree::AlreadyOnline);
        // Inside a range being isolated.
        b.start_isolate_page_range(off - MAXB, off);
        let iso = off - MAXB;
        assert_online_refused(b, iso + 8, 8, iso + 8, BadFree::AlreadyOnline);
        b.undo_isolate_page_range(iso, off);
        // A range whose end wraps around, or leaves the memmap.
        assert_online_refused_no_check(b, off, u64::MAX - off.as_u64() + 1);
        assert_online_refused_no_check(b, off, 2 * MAXB + 1);
        assert_eq!(b.stats().bad_frees, 11);

        // The offline blocks themselves are accepted, from an unaligned
        // start below which nothing is free, and every page comes back.
        assert!(b.free(page, 0) && b.free(whole, MAX_ORDER));
        assert_eq!(b.check_online(off, end, true), Ok(()));
        assert_eq!(b.online_pages(off, 3, Zone::Movable, 0), 3);
        assert_eq!(b.check_online(off + 3, end, true), Ok(()));
        assert_eq!(
            b.online_pages(off + 3, 2 * MAXB - 3, Zone::Movable, 0),
            2 * MAXB - 3
        );
        assert_eq!(b.stats().bad_frees, 11);
        assert_eq!(audit(b), expected_blocks(&[(BASE, end, Zone::Movable)]));
    }

    /// As [`assert_online_refused`] for arguments refused before the check.
    #[track_caller]
    fn assert_online_refused_no_check(b: &mut BuddyAllocator, start: Pfn, nr: u64) {
        let (before, bad) = (snapshot(b), b.stats().bad_frees);
        assert_eq!(b.online_pages(start, nr, Zone::Movable, 0), 0);
        assert_eq!(b.stats().bad_frees, bad + 1);
        assert_eq!(snapshot(b), before);
    }

    #[test]
    fn split_page_and_undo_isolate_refuse_bad_arguments() {
        let mut f = fixture(2 * MAXB);
        let b = &mut f.buddy;
        b.free_range(BASE, BASE + 2 * MAXB, Zone::Normal);
        let a = b.alloc(2, Zone::Normal).unwrap();
        let words = |b: &BuddyAllocator| {
            let w: Vec<[u64; 8]> = Pfn::range(a, a + 8).map(|p| b.read(p).to_words()).collect();
            (snapshot(b), w, b.stats().allocs)
        };
        let before = words(b);
        let mut bad = 0;
        for (pfn, order) in [
            (a, 1),               // wrong order
            (a + 1, 0),           // a tail
            (a + 4, 2),           // a free block
            (a + 2, 2),           // misaligned
            (a, MAX_ORDER + 1),   // no such order
            (BASE - 4, 2),        // outside the memmap
            (BASE + 2 * MAXB, 2), // just past it
            (Pfn::new(!3), 2),    // its end wraps around
        ] {
            b.split_page(pfn, order);
            bad += 1;
            assert_eq!(b.stats().bad_frees, bad, "{pfn:?} {order}");
        }
        // Ranges not being isolated, inside the memmap or not.
        for (s, e) in [
            (BASE, BASE + MAXB),
            (BASE - MAXB, BASE),
            (Pfn::new(0), Pfn::new(u64::MAX)),
        ] {
            b.undo_isolate_page_range(s, e);
            bad += 1;
            assert_eq!(b.stats().bad_frees, bad);
        }
        assert_eq!(words(b), before);
        // The real split still works.
        b.split_page(a, 2);
        assert_eq!(b.stats().bad_frees, bad);
        for p in Pfn::range(a, a + 4) {
            assert!(b.free(p, 0));
        }
        assert_eq!(b.nr_free(Zone::Normal), 2 * MAXB);
    }

    #[test]
    fn isolate_busy_changes_nothing() {
        let mut f = fixture(4 * MAXB);
        let b = &mut f.buddy;
        set_flags(b, BASE + 3 * MAXB + 17, PageFlags::RESERVED);
        b.free_range(BASE, BASE + 4 * MAXB, Zone::Normal);
        // Keep one page of the second block busy.
        let block = BASE + MAXB;
        let busy = block + MAXB / 2 + 5;
        let mut held = Vec::new();
        while let Some(p) = b.alloc(0, Zone::Normal) {
            held.push(p);
        }
        for p in held.into_iter().filter(|&p| p != busy) {
            assert!(b.free(p, 0));
        }
        let before = snapshot(b);
        assert_eq!(b.nr_free(Zone::Normal), 4 * MAXB - 2);
        assert_eq!(b.isolate_range(block, block + MAXB), Err(busy));
        assert_eq!(b.isolate_range(BASE, BASE + 4 * MAXB), Err(busy));
        assert_eq!(
            b.isolate_range(BASE + 3 * MAXB, BASE + 4 * MAXB),
            Err(BASE + 3 * MAXB + 17)
        );
        assert_eq!(
            b.isolate_range(BASE + 4 * MAXB - 1, BASE + 4 * MAXB + 1),
            Err(BASE + 4 * MAXB)
        );
        assert_eq!(snapshot(b), before);
        assert_eq!(b.stats().isolated, 0);
    }

    #[test]
    fn isolate_free_takes_pages_off_the_lists() {
        let mut f = fixture(4 * MAXB);
        let b = &mut f.buddy;
        b.free_range(BASE, BASE + 2 * MAXB, Zone::Normal);
        b.free_range(BASE + 2 * MAXB, BASE + 4 * MAXB, Zone::Movable);
        // Fragment the second block of Normal so isolation takes many blocks.
        let block = BASE + MAXB;
        let mut held = Vec::new();
        for _ in 0..2 * MAXB {
            let p = b.alloc(0, Zone::Normal).unwrap();
            if p >= block {
                held.push(p);
            } else {
                assert!(b.free(p, 0));
                break;
            }
        }
        for p in held.drain(..).rev().step_by(2) {
            assert!(b.free(p, 0));
        }
        let before = snapshot(b);
        let first = Pfn::range(BASE, block + MAXB)
            .find(|&p| !b.is_free(p))
            .unwrap();
        assert_eq!(b.isolate_range(block, block + MAXB), Err(first));
        assert_eq!(snapshot(b), before);

        // Free everything in the block, then isolate it.
        for p in Pfn::range(block, block + MAXB) {
            if !b.is_free(p) {
                assert!(b.free(p, 0));
            }
        }
        let nr_normal = b.nr_free(Zone::Normal);
        assert_eq!(b.isolate_range(block, block + MAXB), Ok(MAXB));
        assert_eq!(b.nr_free(Zone::Normal), nr_normal - MAXB);
        assert_eq!(b.managed(Zone::Normal), MAXB);
        assert!(Pfn::range(block, block + MAXB).all(|p| !b.is_free(p)));
        assert!(audit(b)
            .iter()
            .all(|&(p, o, _)| p + (1 << o) <= block || p >= block + MAXB));
        // Never handed out again while isolated.
        let mut got = Vec::new();
        while let Some(p) = b.alloc_any(0) {
            assert!(!(block..block + MAXB).contains(&p));
            got.push(p);
        }
        for p in got {
            assert!(b.free(p, 0));
        }
        // A whole Movable block plus its neighbour, then undo both.
        assert_eq!(
            b.isolate_range(BASE + 2 * MAXB, BASE + 4 * MAXB),
            Ok(2 * MAXB)
        );
        assert_eq!(b.nr_free(Zone::Movable), 0);
        assert_eq!(b.stats().isolated, 3 * MAXB);
        assert_eq!(b.free_range(block, block + MAXB, Zone::Normal), MAXB);
        assert_eq!(
            b.free_range(BASE + 2 * MAXB, BASE + 4 * MAXB, Zone::Movable),
            2 * MAXB
        );
        assert_eq!(
            audit(b),
            expected_blocks(&[
                (BASE, BASE + 2 * MAXB, Zone::Normal),
                (BASE + 2 * MAXB, BASE + 4 * MAXB, Zone::Movable)
            ])
        );
    }

    #[test]
    fn isolate_skips_self_hosted_memmap_and_splits_unaligned_ranges() {
        let mut f = fixture(2 * MAXB);
        let b = &mut f.buddy;
        let block = BASE + MAXB;
        let memmap_pages = 3;
        for p in Pfn::range(block, block + memmap_pages) {
            set_flags(b, p, PageFlags::VMEMMAP_SELF_HOSTED | PageFlags::ONLINE);
        }
        assert_eq!(
            b.free_range(BASE, BASE + 2 * MAXB, Zone::Movable),
            2 * MAXB - memmap_pages
        );
        assert_eq!(
            b.isolate_range(block, block + MAXB),
            Ok(MAXB - memmap_pages)
        );
        assert_eq!(b.nr_free(Zone::Movable), MAXB);
        assert_eq!(
            b.free_range(block, block + MAXB, Zone::Movable),
            MAXB - memmap_pages
        );

        // Unaligned: a piece out of the middle of a max-order block.
        assert_eq!(b.isolate_range(BASE + 5, BASE + 7), Ok(2));
        assert_eq!(b.nr_free(Zone::Movable), 2 * MAXB - memmap_pages - 2);
        let mut want = expected_blocks(&[
            (BASE, BASE + 5, Zone::Movable),
            (BASE + 7, BASE + MAXB, Zone::Movable),
            (block + memmap_pages, block + MAXB, Zone::Movable),
        ]);
        assert_eq!(audit(b), want);
        assert_eq!(b.free_range(BASE + 5, BASE + 7, Zone::Movable), 2);
        want = expected_blocks(&[
            (BASE, BASE + MAXB, Zone::Movable),
            (block + memmap_pages, block + MAXB, Zone::Movable),
        ]);
        assert_eq!(audit(b), want);
        assert_eq!(b.isolate_range(BASE + 9, BASE + 9), Ok(0));
    }

    #[test]
    fn frame_allocator_interface_uses_normal_only() {
        let mut f = fixture(2 * MAXB);
        let b = &mut f.buddy;
        b.free_range(BASE, BASE + MAXB, Zone::Movable);
        assert_eq!(b.alloc_pages(0), None);
        b.free_range(BASE + MAXB, BASE + 2 * MAXB, Zone::Normal);
        let pa = b.alloc_pages(3).unwrap();
        assert_eq!(pa.as_u64() % (8 << layout::PAGE_SHIFT), 0);
        assert!(Pfn::down(pa) >= BASE + MAXB);
        assert!(!b.is_reserved(pa));
        b.free_pages(pa, 3);
        assert_eq!(b.stats().frees, 1);
        assert_eq!(b.nr_free(Zone::Normal), MAXB);
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Alloc(u32, Zone),
        AllocAny(u32),
        Free(usize),
        /// A free of an arbitrary pfn (offset from BASE) and order.
        Wild(u64, u32),
        Isolate(u64),
        Unisolate,
    }

    const NPAGES: u64 = 4 * MAXB;

    fn op() -> impl Strategy<Value = Op> {
        let order = prop_oneof![3 => 0u32..3, 1 => 0..=MAX_ORDER];
        let zone = prop_oneof![Just(Zone::Normal), Just(Zone::Movable)];
        prop_oneof![
            8 => (order.clone(), zone).prop_map(|(o, z)| Op::Alloc(o, z)),
            2 => order.prop_map(Op::AllocAny),
            5 => any::<usize>().prop_map(Op::Free),
            1 => (0..NPAGES + 8, 0..=MAX_ORDER + 1).prop_map(|(p, o)| Op::Wild(p, o)),
            1 => (0..NPAGES / MAXB).prop_map(Op::Isolate),
            1 => Just(Op::Unisolate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn alloc_free_matches_model(
            lead in 0..64u64,
            split in 0..=NPAGES,
            reserved in proptest::collection::vec(0..NPAGES, 0..6),
            ops in proptest::collection::vec(op(), 1..120),
            online in any::<bool>(),
        ) {
            let split = split.max(lead);
            let mut f = fixture(NPAGES);
            let b = &mut f.buddy;
            // With `online`, the Movable part is onlined as hot-added memory
            // (deferred struct pages over garbage; no reserved pages)
            // instead of freed.
            let reserved: HashSet<Pfn> = reserved.into_iter().map(|r| BASE + r)
                .filter(|&r| !online || r < BASE + split).collect();
            for &r in &reserved {
                set_flags(b, r, PageFlags::RESERVED);
            }
            let zone_of = |pfn: Pfn| if pfn < BASE + split { Zone::Normal } else { Zone::Movable };
            let nz = b.free_range(BASE + lead, BASE + split, Zone::Normal);
            let mz = if online {
                // SAFETY: the fixture's struct pages; no reference is live.
                unsafe { b.memmap().poison_range(BASE + split, BASE + NPAGES) };
                b.online_added_pages(BASE + split, NPAGES - split, Zone::Movable, 0)
            } else {
                b.free_range(BASE + split, BASE + NPAGES, Zone::Movable)
            };
            let managed =
                |s: Pfn, e: Pfn| Pfn::range(s, e).filter(|p| !reserved.contains(p)).count() as u64;
            let total = [managed(BASE + lead, BASE + split), managed(BASE + split, BASE + NPAGES)];
            prop_assert_eq!([nz, mz], total);

            let mut held: Vec<(Pfn, u32)> = Vec::new();
            let mut heads: HashMap<Pfn, u32> = HashMap::new();
            let mut allocated: HashSet<Pfn> = HashSet::new();
            let mut isolated: Vec<Pfn> = Vec::new();
            let mut bad = 0;
            let taken = |pfn: Pfn, iso: &[Pfn]| iso.iter().any(|&s| (s..s + MAXB).contains(&pfn));

            for op in ops {
                match op {
                    Op::Alloc(..) | Op::AllocAny(_) => {
                        let (order, got) = match op {
                            Op::Alloc(o, z) => (o, b.alloc(o, z).map(|p| (p, Some(z)))),
                            Op::AllocAny(o) => (o, b.alloc_any(o).map(|p| (p, None))),
                            _ => unreachable!(),
                        };
                        if let Some((pfn, zone)) = got {
                            prop_assert_eq!(pfn.as_u64() % (1 << order), 0);
                            let z = zone.unwrap_or_else(|| zone_of(pfn));
                            prop_assert_eq!(zone_of(pfn), z);
                            for p in Pfn::range(pfn, pfn + (1 << order)) {
                                prop_assert!(p >= BASE + lead && p < BASE + NPAGES);
                                prop_assert_eq!(zone_of(p), z, "block crosses zones");
                                prop_assert!(!reserved.contains(&p) && !taken(p, &isolated));
                                prop_assert!(allocated.insert(p), "page {:#x} handed out twice", p);
                            }
                            held.push((pfn, order));
                            heads.insert(pfn, order);
                        }
                    }
                    Op::Free(i) if !held.is_empty() => {
                        let (pfn, order) = held.swap_remove(i % held.len());
                        heads.remove(&pfn);
                        prop_assert!(b.free(pfn, order));
                        for p in Pfn::range(pfn, pfn + (1 << order)) {
                            allocated.remove(&p);
                        }
                    }
                    Op::Free(_) => {}
                    Op::Wild(off, order) => {
                        let pfn = BASE + off;
                        if heads.get(&pfn) == Some(&order) {
                            continue; // a legitimate free: not what this op tests
                        }
                        prop_assert!(!b.free(pfn, order));
                        bad += 1;
                    }
                    Op::Isolate(i) => {
                        let s = BASE + i * MAXB;
                        let busy = Pfn::range(s, s + MAXB).find(|&p| {
                            p < BASE + lead || reserved.contains(&p) || allocated.contains(&p)
                                || taken(p, &isolated)
                        });
                        let before = (b.nr_free_total(), b.stats().isolated);
                        match b.isolate_range(s, s + MAXB) {
                            Ok(n) => {
                                prop_assert_eq!(busy, None);
                                prop_assert_eq!(n, MAXB);
                                prop_assert_eq!(b.nr_free_total(), before.0 - MAXB);
                                isolated.push(s);
                            }
                            Err(p) => {
                                prop_assert_eq!(Some(p), busy);
                                prop_assert_eq!((b.nr_free_total(), b.stats().isolated), before);
                            }
                        }
                    }
                    Op::Unisolate => {
                        if let Some(s) = isolated.pop() {
                            let cut = (BASE + split).clamp(s, s + MAXB);
                            let n = b.free_range(s, cut, Zone::Normal)
                                + b.free_range(cut, s + MAXB, Zone::Movable);
                            prop_assert_eq!(n, MAXB);
                        }
                    }
                }
                for (z, zone) in Zone::BUDDY_ZONES.into_iter().enumerate() {
                    let used = allocated.iter().filter(|&&p| zone_of(p) == zone).count() as u64;
                    let iso = isolated.iter().flat_map(|&s| Pfn::range(s, s + MAXB))
                        .filter(|&p| zone_of(p) == zone).count() as u64;
                    prop_assert_eq!(b.nr_free(zone), total[z] - used - iso);
                }
                prop_assert_eq!(b.stats().bad_frees, bad);
            }
            audit(b);

            for (pfn, order) in held.drain(..) {
                prop_assert!(b.free(pfn, order));
            }
            while let Some(s) = isolated.pop() {
                let cut = (BASE + split).clamp(s, s + MAXB);
                b.free_range(s, cut, Zone::Normal);
                b.free_range(cut, s + MAXB, Zone::Movable);
            }
            // Exactly the maximal blocks of the original runs.
            let mut runs: Vec<(Pfn, Pfn, Zone)> = Vec::new();
            for p in Pfn::range(BASE + lead, BASE + NPAGES).filter(|p| !reserved.contains(p)) {
                match runs.last_mut() {
                    Some(r) if r.1 == p && r.2 == zone_of(p) => r.1 += 1,
                    _ => runs.push((p, p + 1, zone_of(p))),
                }
            }
            prop_assert_eq!(audit(b), expected_blocks(&runs));
            prop_assert_eq!(b.nr_free(Zone::Normal), total[0]);
            prop_assert_eq!(b.nr_free(Zone::Movable), total[1]);
        }
    }
}
