//! Per-CPU page lists (Linux's `per_cpu_pages`, `rmqueue_pcplist`,
//! `free_unref_page`, `drain_all_pages`).
//!
//! Each CPU keeps, per buddy zone and per order up to
//! [`PCP_MAX_ORDER`], a short stack of blocks taken from the buddy
//! allocator. Allocating and freeing such a block takes only that CPU's
//! list lock; the zone lock (which guards the buddy allocator, `buddy.rs`;
//! never the memory lock, which guards the rest of mm) is taken to move a
//! batch between the buddy allocator and a list ([`PCP_BATCH`] pages when a list is empty, down to
//! `PCP_HIGH - PCP_BATCH` when a CPU holds more than [`PCP_HIGH`]).
//!
//! Invariants:
//! - A block on a list is free: `MemFree` counts it (unlike Linux, whose
//!   `NR_FREE_PAGES` leaves the lists out), so that `/proc/meminfo` does
//!   not depend on where free pages sit. Blocks move between the buddy
//!   allocator and a list only with both the zone lock and that CPU's
//!   lock held, so a reader holding the zone lock sees every page counted
//!   exactly once.
//! - A listed block's head has refcount 0 and its allocation order; the
//!   buddy allocator sees it as allocated. Draining sets refcount 1 and
//!   frees it through [`BuddyAllocator::free`], which checks it again.
//! - No block of a range being isolated for offlining is on any list:
//!   isolation takes the range's blocks off every CPU's lists and records
//!   the range with each CPU, under that CPU's lock, so a later free into the range goes to the
//!   buddy allocator (which holds it aside) instead of a list. An offline
//!   takes the block's blocks off the lists before it takes its pages, so a removed block never has a
//!   page on a list either.
//! - A block freed into a range under isolation is put aside on the
//!   freeing CPU (`isolated_frees`, refcount 0, still allocated to the
//!   buddy allocator and not counted free) without the zone lock; the
//!   offline collects such blocks (under the zone lock and each CPU's
//!   lock) before it tests its range, and when the isolation ends.
//! - When the buddy allocator cannot serve an allocation, the lists are
//!   drained and it is asked again before the allocation fails: pages
//!   counted free are never out of reach.
//!
//! - NUMA: a CPU's lists hold only pages of its own node (Linux keeps
//!   lists per zone, so per node, and allocates from them for the local
//!   node first): a page of another node is freed to the buddy
//!   allocator, and an allocation its node cannot serve takes the zone
//!   lock and walks the nodes by distance. Node `N`'s listed pages are
//!   the lists of its CPUs, so per-node `MemFree` stays exact too.
//!
//! Lock order: the memory lock (if at all), the zone lock, then one CPU's
//! list lock. The fast paths take a list lock alone and never another lock
//! while holding it; the slow paths take the zone lock first, and a CPU
//! allocating through [`crate::mm::global`] never takes the memory lock. Linux drains another CPU's lists
//! from that CPU (work queued to it, as its lists are protected by
//! disabling preemption there); here every list has its own lock, so the
//! draining CPU takes it and empties the list itself: no IPI, no waiting
//! for a CPU that may be busy with interrupts masked. The list locks are
//! not taken in interrupt context.
//!
//! Everything takes the CPU's index explicitly, so that host tests drive
//! several "CPUs" from one thread; the kernel passes
//! [`crate::arch::cpu_id`].

use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use super::addr::Pfn;
use super::buddy::BuddyAllocator;
use super::node::{Topology, MAX_NUMNODES};
use super::page::{decode_zone_byte, Memmap, Page, PageFlags, Zone, NR_BUDDY_ZONES};
use super::pgtable::Translation;
use super::system::MemorySystem;
use crate::arch::lock::FairLock;
use crate::arch::MAX_CPUS;

/// Orders kept on the lists: up to Linux's `PAGE_ALLOC_COSTLY_ORDER`.
pub const PCP_MAX_ORDER: u32 = 3;
const NR_PCP_ORDERS: usize = PCP_MAX_ORDER as usize + 1;
/// Pages a CPU keeps over all its lists before it gives some back
/// (`pcp->high`).
pub const PCP_HIGH: u64 = 128;
/// Pages moved from the buddy allocator to an empty list, and given back
/// below `PCP_HIGH` (`pcp->batch`).
pub const PCP_BATCH: u64 = 16;
/// Entries of one list: `PCP_HIGH` pages plus one refill, at order 0.
const LIST_CAP: usize = (PCP_HIGH + PCP_BATCH) as usize;
/// Ranges under isolation a CPU remembers one by one; past that, frees on
/// that CPU bypass the lists while any isolation lasts.
const MAX_ISOLATED: usize = 4;
/// Blocks freed into a range under isolation that a CPU keeps until the
/// offline collects them; past that, such frees take the memory lock.
const MAX_ISOLATED_FREES: usize = 16;

/// Blocks of one order and zone, newest last (the next one handed out is
/// the one freed last, likely still in the cache).
struct PcpList {
    len: usize,
    pfns: [u64; LIST_CAP],
}

impl PcpList {
    const EMPTY: PcpList = PcpList {
        len: 0,
        pfns: [0; LIST_CAP],
    };

    fn push(&mut self, pfn: Pfn) -> bool {
        let Some(slot) = self.pfns.get_mut(self.len) else {
            return false;
        };
        *slot = pfn.as_u64();
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<Pfn> {
        self.len = self.len.checked_sub(1)?;
        Some(Pfn::new(self.pfns[self.len]))
    }

    /// The oldest block, for giving back (Linux frees from the tail).
    fn pop_oldest(&mut self) -> Option<Pfn> {
        let first = *self.pfns[..self.len].first()?;
        self.pfns.copy_within(1..self.len, 0);
        self.len -= 1;
        Some(Pfn::new(first))
    }
}

/// One CPU's lists and what it knows of isolation.
struct PerCpuPages {
    lists: [[PcpList; NR_PCP_ORDERS]; NR_BUDDY_ZONES],
    /// Pages on the lists (`pcp->count`).
    count: u64,
    isolated: [(Pfn, Pfn); MAX_ISOLATED],
    nr_isolated: usize,
    /// Isolations that did not fit in `isolated`.
    isolated_overflow: usize,
    /// Blocks freed into a range of `isolated`, `(pfn, order)`, still
    /// allocated as far as the buddy allocator knows (refcount 1, not
    /// free in `MemFree`) until [`Pcp::collect_isolated`]
    /// hands them to it, which holds them for the isolation.
    isolated_frees: [(Pfn, u32); MAX_ISOLATED_FREES],
    nr_isolated_frees: usize,
}

impl PerCpuPages {
    const EMPTY: PerCpuPages = PerCpuPages {
        lists: [const { [const { PcpList::EMPTY }; NR_PCP_ORDERS] }; NR_BUDDY_ZONES],
        count: 0,
        isolated: [(Pfn::new(0), Pfn::new(0)); MAX_ISOLATED],
        nr_isolated: 0,
        isolated_overflow: 0,
        isolated_frees: [(Pfn::new(0), 0); MAX_ISOLATED_FREES],
        nr_isolated_frees: 0,
    };

    /// Puts a block freed into a range under isolation aside (see
    /// `isolated_frees`); `false` when there is no room.
    fn put_isolated(&mut self, pfn: Pfn, order: u32, pcp: &Pcp) -> bool {
        let Some(slot) = self.isolated_frees.get_mut(self.nr_isolated_frees) else {
            return false;
        };
        *slot = (pfn, order);
        self.nr_isolated_frees += 1;
        pcp.isolated_frees.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether a block at `pfn` must bypass the lists (Linux's
    /// `is_migrate_isolate` check in `free_unref_page`).
    fn isolates(&self, pfn: Pfn) -> bool {
        self.isolated_overflow > 0 || self.in_isolated_range(pfn)
    }

    /// Whether `pfn` lies in a range this CPU recorded as under isolation.
    fn in_isolated_range(&self, pfn: Pfn) -> bool {
        self.isolated[..self.nr_isolated]
            .iter()
            .any(|&(s, e)| s <= pfn && pfn < e)
    }
}

#[repr(align(64))]
struct CpuSlot {
    pages: FairLock<PerCpuPages>,
    /// `pages.count`, readable without the lock (for `MemFree`); written
    /// under it.
    count: AtomicU64,
    /// Times an offline, an unplug or a drain took blocks off these lists,
    /// and the pages it took (`stress --profile`).
    drained: AtomicU64,
    drained_pages: AtomicU64,
}

impl CpuSlot {
    /// Records that `pages` pages were taken off the lists (under their
    /// lock) by a drain.
    fn count_drain(&self, pages: u64) {
        if pages != 0 {
            self.drained.fetch_add(1, Ordering::Relaxed);
            self.drained_pages.fetch_add(pages, Ordering::Relaxed);
        }
    }
}

/// Every CPU's lists.
pub struct Pcp {
    cpus: [CpuSlot; MAX_CPUS],
    /// Whether the buddy allocator had free pages in each zone when the
    /// zone lock was last released by a slow path or the memory lock: the fast path falls back to the next
    /// zone's list without the lock only when the preferred zone had none
    /// (otherwise an empty Movable list would send every movable allocation
    /// to the zone lock while no Movable memory exists).
    zone_has_free: [[AtomicBool; NR_BUDDY_ZONES]; MAX_NUMNODES],
    /// Each CPU's node: the only node its lists hold pages of.
    cpu_node: [AtomicU8; MAX_CPUS],
    /// Allocations the fast path served, by node (all local hits, for
    /// `numastat`).
    fast_allocs: [AtomicU64; MAX_NUMNODES],
    /// Blocks put aside by frees into ranges under isolation, ever: an
    /// offline waiting for pages polls it without a lock.
    isolated_frees: AtomicU64,
}

/// The struct page of a block's head, for the fields the fast paths touch.
///
/// # Safety
/// `pfn` is within `memmap`'s bounds with its struct page mapped, and the
/// block is the caller's: allocated to it, or on a list whose lock it
/// holds. The buddy allocator then never writes this struct page (it may
/// read its flags, order and zone as a neighbour's), and only `refcount`
/// is written here, through a field pointer.
unsafe fn head(memmap: &Memmap, pfn: Pfn) -> *mut Page {
    memmap.page(pfn)
}

/// Sets a head's refcount (see [`head`]).
///
/// # Safety
/// As for [`head`].
unsafe fn set_refcount(memmap: &Memmap, pfn: Pfn, refcount: u32) {
    // SAFETY: the caller's promise; a field write, not a `&mut Page`.
    unsafe { addr_of_mut!((*head(memmap, pfn)).refcount).write(refcount) }
}

impl Pcp {
    pub const fn new() -> Pcp {
        Pcp {
            cpus: [const {
                CpuSlot {
                    pages: FairLock::new(PerCpuPages::EMPTY),
                    count: AtomicU64::new(0),
                    drained: AtomicU64::new(0),
                    drained_pages: AtomicU64::new(0),
                }
            }; MAX_CPUS],
            zone_has_free: [const { [const { AtomicBool::new(true) }; NR_BUDDY_ZONES] };
                MAX_NUMNODES],
            cpu_node: [const { AtomicU8::new(0) }; MAX_CPUS],
            fast_allocs: [const { AtomicU64::new(0) }; MAX_NUMNODES],
            isolated_frees: AtomicU64::new(0),
        }
    }

    /// Records each CPU's node; boot, before any page is listed.
    pub fn set_cpu_nodes(&self, topo: &Topology) {
        for (cpu, n) in self.cpu_node.iter().enumerate() {
            n.store(topo.cpu_node(cpu) as u8, Ordering::Relaxed);
        }
    }

    /// The node whose pages `cpu`'s lists hold.
    pub fn cpu_node(&self, cpu: usize) -> usize {
        self.cpu_node
            .get(cpu)
            .map_or(0, |n| n.load(Ordering::Relaxed) as usize)
    }

    /// Pages on the lists of node `nid`'s CPUs: node `nid`'s pages.
    pub fn nr_pages_of_node(&self, nid: usize) -> u64 {
        (0..MAX_CPUS)
            .filter(|&c| self.cpu_node(c) == nid)
            .map(|c| self.nr_pages_on(c))
            .sum()
    }

    /// Allocations the fast path served from node `nid`.
    pub fn fast_allocs(&self, nid: usize) -> u64 {
        self.fast_allocs
            .get(nid)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Pages on every CPU's lists: free memory, for `MemFree`.
    pub fn nr_pages(&self) -> u64 {
        self.cpus
            .iter()
            .map(|c| c.count.load(Ordering::Relaxed))
            .sum()
    }

    /// Pages on `cpu`'s lists.
    pub fn nr_pages_on(&self, cpu: usize) -> u64 {
        self.cpus
            .get(cpu)
            .map_or(0, |c| c.count.load(Ordering::Relaxed))
    }

    /// Drains of `cpu`'s lists since boot and the pages they took:
    /// `(times, pages)`.
    pub fn drained(&self, cpu: usize) -> (u64, u64) {
        self.cpus.get(cpu).map_or((0, 0), |c| {
            (
                c.drained.load(Ordering::Relaxed),
                c.drained_pages.load(Ordering::Relaxed),
            )
        })
    }

    /// Blocks freed into ranges under isolation and put aside, since boot:
    /// when it moves, an offline waiting for pages has something to collect.
    pub fn nr_isolated_frees(&self) -> u64 {
        self.isolated_frees.load(Ordering::Relaxed)
    }

    /// Whether any list holds a page of `start..end`.
    pub fn holds_any(&self, start: Pfn, end: Pfn) -> bool {
        self.cpus.iter().any(|c| {
            let pages = c.pages.lock();
            pages.lists.iter().flatten().any(|l| {
                l.pfns[..l.len]
                    .iter()
                    .any(|&p| start.as_u64() <= p && p < end.as_u64())
            })
        })
    }

    /// The fast path of an allocation of `2^order` pages from the first of
    /// `zones` that has them: a block off `cpu`'s own list, or `None` when
    /// the zone lock is needed ([`Pcp::alloc_slow`]).
    pub fn alloc_fast(
        &self,
        memmap: &Memmap,
        cpu: usize,
        order: u32,
        zones: &[Zone],
    ) -> Option<Pfn> {
        if order > PCP_MAX_ORDER {
            return None;
        }
        let slot = self.cpus.get(cpu)?;
        let nid = self.cpu_node(cpu);
        let mut pages = slot.pages.lock();
        for &zone in zones {
            let z = zone.buddy_index()?;
            if let Some(pfn) = pages.lists[z][order as usize].pop() {
                pages.count -= 1 << order;
                slot.count.store(pages.count, Ordering::Relaxed);
                // SAFETY: the block was on our list, under its lock; a
                // listed block's struct page is mapped (its block is online:
                // offline drains first).
                unsafe { set_refcount(memmap, pfn, 1) };
                self.fast_allocs[nid].fetch_add(1, Ordering::Relaxed);
                return Some(pfn);
            }
            if self.zone_has_free[nid][z].load(Ordering::Relaxed) {
                return None;
            }
        }
        None
    }

    /// The fast path of a free: `true` when the block went on `cpu`'s own
    /// list; `false` when the zone lock is needed
    /// ([`Pcp::free_slow`]): a larger order, a block that fails the
    /// free checks (the buddy allocator then refuses it and says why), a
    /// range under isolation, or a CPU past `PCP_HIGH`.
    ///
    /// The caller owns the block (that is what freeing means): its struct
    /// page is mapped, since a block with pages in use is never offlined.
    pub fn free_fast(&self, memmap: &Memmap, cpu: usize, pfn: Pfn, order: u32) -> bool {
        let nr = 1u64 << order.min(PCP_MAX_ORDER + 1);
        if order > PCP_MAX_ORDER || !pfn.is_aligned(nr) || !memmap.contains_range(pfn, pfn + nr) {
            return false;
        }
        let Some(slot) = self.cpus.get(cpu) else {
            return false;
        };
        let mut pages = slot.pages.lock();
        let isolated = pages.in_isolated_range(pfn);
        if !isolated && (pages.isolated_overflow > 0 || pages.count + nr > PCP_HIGH) {
            return false;
        }
        // SAFETY: the caller's block (see above); fields read one by one.
        let (flags, zone, block_order, refcount) = unsafe {
            let p = head(memmap, pfn);
            (
                addr_of_mut!((*p).flags).read(),
                addr_of_mut!((*p).zone).read(),
                addr_of_mut!((*p).order).read(),
                addr_of_mut!((*p).refcount).read(),
            )
        };
        // What `BuddyAllocator::check_free` accepts, seen from the head.
        let refused = PageFlags::NEVER_BUDDY | PageFlags::BUDDY | PageFlags::ISOLATED;
        let freeable = refcount == 1
            && u32::from(block_order) == order
            && flags.contains(PageFlags::ONLINE)
            && !flags.intersects(refused);
        let zone = decode_zone_byte(zone).and_then(|(z, n)| Some((z.buddy_index()?, n)));
        if isolated {
            // Linux frees such a block straight to the buddy allocator
            // under the zone lock (`free_one_page`); here it waits on this
            // CPU, still allocated, for the offline to collect it: a free
            // into a block being offlined takes no lock but the list's.
            if !(freeable && zone.is_some() && pages.put_isolated(pfn, order, self)) {
                return false;
            }
            // SAFETY: as above. Refcount 0 while aside, as on a list: a
            // second free of the block is refused.
            unsafe { set_refcount(memmap, pfn, 0) };
            return true;
        }
        let z = match zone {
            Some((z, nid)) if freeable && nid == self.cpu_node(cpu) => z,
            _ => return false,
        };
        if !pages.lists[z][order as usize].push(pfn) {
            return false;
        }
        // SAFETY: as above.
        unsafe { set_refcount(memmap, pfn, 0) };
        pages.count += nr;
        slot.count.store(pages.count, Ordering::Relaxed);
        true
    }

    /// Refills `cpu`'s list of `order` from the first of `zones` whose
    /// list or buddy zone has a block, and takes one (`rmqueue_bulk`).
    fn refill(
        &self,
        buddy: &mut BuddyAllocator,
        cpu: usize,
        order: u32,
        zones: &[Zone],
    ) -> Option<Pfn> {
        let slot = self.cpus.get(cpu)?;
        let memmap = *buddy.memmap();
        let nid = self.cpu_node(cpu);
        let mut pages = slot.pages.lock();
        let mut got = None;
        for &zone in zones {
            let z = zone.buddy_index()?;
            got = pages.lists[z][order as usize].pop();
            if got.is_some() {
                pages.count -= 1 << order;
                break;
            }
            got = buddy.alloc_on(order, zone, nid);
            let Some(_) = got else { continue };
            for _ in 1..(PCP_BATCH >> order).max(1) {
                let Some(pfn) = buddy.alloc_on(order, zone, nid) else {
                    break;
                };
                // SAFETY: just allocated to us, under both locks.
                unsafe { set_refcount(&memmap, pfn, 0) };
                if !pages.lists[z][order as usize].push(pfn) {
                    // SAFETY: as above.
                    unsafe { set_refcount(&memmap, pfn, 1) };
                    buddy.free(pfn, order);
                    break;
                }
                pages.count += 1 << order;
            }
            break;
        }
        slot.count.store(pages.count, Ordering::Relaxed);
        if got.is_some() {
            buddy.count_numa(nid, nid, nid);
        }
        // SAFETY: a block off our list or fresh from the buddy allocator.
        got.inspect(|&pfn| unsafe { set_refcount(&memmap, pfn, 1) })
    }

    /// Gives blocks of `pages` back to the buddy allocator, oldest first
    /// and orders in turn, until at most `target` pages remain
    /// (`free_pcppages_bulk`).
    fn free_bulk(buddy: &mut BuddyAllocator, pages: &mut PerCpuPages, target: u64) {
        let memmap = *buddy.memmap();
        while pages.count > target {
            let before = pages.count;
            for z in 0..NR_BUDDY_ZONES {
                for o in 0..NR_PCP_ORDERS {
                    if pages.count <= target {
                        return;
                    }
                    if let Some(pfn) = pages.lists[z][o].pop_oldest() {
                        pages.count -= 1 << o;
                        // SAFETY: a listed block, under both locks.
                        unsafe { set_refcount(&memmap, pfn, 1) };
                        buddy.free(pfn, o as u32);
                    }
                }
            }
            if pages.count == before {
                // Unreachable while `count` matches the lists; never spin.
                pages.count = 0;
            }
        }
    }

    /// Gives every block of `start..end` on `pages` back to the buddy
    /// allocator, leaving the rest listed.
    fn free_range(
        buddy: &mut BuddyAllocator,
        slot: &CpuSlot,
        pages: &mut PerCpuPages,
        start: Pfn,
        end: Pfn,
    ) {
        let memmap = *buddy.memmap();
        let mut freed = 0;
        for (o, list) in pages.lists.iter_mut().flatten().enumerate() {
            let order = (o % NR_PCP_ORDERS) as u32;
            let mut kept = 0;
            for i in 0..list.len {
                let pfn = Pfn::new(list.pfns[i]);
                if start <= pfn && pfn < end {
                    // SAFETY: a listed block, under both locks.
                    unsafe { set_refcount(&memmap, pfn, 1) };
                    buddy.free(pfn, order);
                    freed += 1u64 << order;
                } else {
                    list.pfns[kept] = pfn.as_u64();
                    kept += 1;
                }
            }
            list.len = kept;
        }
        pages.count -= freed;
        slot.count.store(pages.count, Ordering::Relaxed);
        slot.count_drain(freed);
    }

    /// Empties `cpu`'s lists into the buddy allocator (`drain_pages`).
    fn drain_cpu(&self, buddy: &mut BuddyAllocator, cpu: usize) {
        let slot = &self.cpus[cpu];
        let mut pages = slot.pages.lock();
        slot.count_drain(pages.count);
        Self::free_bulk(buddy, &mut pages, 0);
        slot.count.store(0, Ordering::Relaxed);
    }

    /// Empties every CPU's lists into the buddy allocator
    /// (`drain_all_pages`), each under its own lock (see the module
    /// comment).
    pub fn drain_all(&self, buddy: &mut BuddyAllocator) {
        for cpu in 0..MAX_CPUS {
            if self.nr_pages_on(cpu) != 0 {
                self.drain_cpu(buddy, cpu);
            }
        }
    }

    /// Runs `f` on the buddy allocator, and once more after draining every
    /// list if it found nothing: an allocation fails only when no free
    /// page is left anywhere (Linux drains and retries in the slow path).
    /// Inlined, with the drain out of line: as a call of its own it cost
    /// every allocation ~30 instructions (a page-by-page allocation of
    /// 1 GiB on 4K took 46.7 ms instead of 37.7 ms).
    #[inline(always)]
    pub fn or_drain<R>(
        &self,
        buddy: &mut BuddyAllocator,
        mut f: impl FnMut(&mut BuddyAllocator) -> Option<R>,
    ) -> Option<R> {
        if let Some(r) = f(buddy) {
            return Some(r);
        }
        if self.drain_if_any(buddy) {
            f(buddy)
        } else {
            None
        }
    }

    /// The slow path of [`or_drain`](Self::or_drain): whether any list
    /// held pages (now given back).
    #[cold]
    #[inline(never)]
    fn drain_if_any(&self, buddy: &mut BuddyAllocator) -> bool {
        if self.nr_pages() == 0 {
            return false;
        }
        self.drain_all(buddy);
        true
    }

    /// Refreshes the zone hints from the buddy allocator; called with the
    /// zone lock held, before it is released.
    pub fn update_hints(&self, buddy: &BuddyAllocator) {
        for nid in buddy.topology().possible().iter() {
            for (z, &zone) in Zone::BUDDY_ZONES.iter().enumerate() {
                let free = buddy.nr_free_node(nid, zone) > 0;
                self.zone_has_free[nid][z].store(free, Ordering::Relaxed);
            }
        }
    }
}

impl Default for Pcp {
    fn default() -> Self {
        Self::new()
    }
}

/// The lists of a new memory system: the kernel's one static set (the
/// kernel has one memory system), or a fresh set per host test system.
#[cfg(not(test))]
pub(in crate::mm) fn new_pcp() -> &'static Pcp {
    static KERNEL: Pcp = Pcp::new();
    &KERNEL
}

#[cfg(test)]
pub(in crate::mm) fn new_pcp() -> &'static Pcp {
    alloc::boxed::Box::leak(alloc::boxed::Box::new(Pcp::new()))
}

/// The slow paths, with the zone lock held by the caller.
impl Pcp {
    /// An allocation for `cpu` that its list could not serve: refill the
    /// list from the buddy allocator (larger orders: straight from it);
    /// when that fails, drain every list and try once more.
    pub fn alloc_slow(
        &self,
        buddy: &mut BuddyAllocator,
        cpu: usize,
        order: u32,
        zones: &[Zone],
    ) -> Option<Pfn> {
        let got = if order <= PCP_MAX_ORDER {
            self.refill(buddy, cpu, order, zones)
        } else {
            None
        };
        let nid = self.cpu_node(cpu);
        let got = got.or_else(|| self.or_drain(buddy, |b| b.alloc_nodes(order, zones, nid)));
        self.update_hints(buddy);
        got
    }

    /// A free for `cpu` that its list could not take: onto the list, giving
    /// a batch back past `PCP_HIGH`; or, for larger orders, blocks in a
    /// range under isolation and refused frees, to the buddy allocator
    /// (which holds, or refuses and counts).
    pub fn free_slow(&self, buddy: &mut BuddyAllocator, cpu: usize, pfn: Pfn, order: u32) -> bool {
        let listable = order <= PCP_MAX_ORDER && buddy.check_free(pfn, order).is_ok();
        let slot = self.cpus.get(cpu).filter(|_| listable);
        let Some(slot) = slot else {
            let ok = buddy.free(pfn, order);
            self.update_hints(buddy);
            return ok;
        };
        let mut pages = slot.pages.lock();
        // SAFETY: `check_free` passed: an allocated block of the caller's.
        let zone = unsafe { addr_of_mut!((*head(buddy.memmap(), pfn)).zone).read() };
        let local = |&(_, n): &(Zone, usize)| n == self.cpu_node(cpu);
        let z = decode_zone_byte(zone)
            .filter(local)
            .and_then(|(z, _)| z.buddy_index());
        let ok = match z {
            Some(z) if !pages.isolates(pfn) && pages.lists[z][order as usize].push(pfn) => {
                // SAFETY: as above.
                unsafe { set_refcount(buddy.memmap(), pfn, 0) };
                pages.count += 1 << order;
                if pages.count > PCP_HIGH {
                    Pcp::free_bulk(buddy, &mut pages, PCP_HIGH - PCP_BATCH);
                }
                true
            }
            _ => buddy.free(pfn, order),
        };
        slot.count.store(pages.count, Ordering::Relaxed);
        drop(pages);
        self.update_hints(buddy);
        ok
    }

    /// Gives back every listed block of `start..end`, on every CPU, before
    /// an offline takes the range's pages. Linux's `offline_pages` drains
    /// the whole zone; draining only the range leaves other CPUs' lists
    /// (and so their lock-free allocations) alone.
    pub fn drain_range(&self, buddy: &mut BuddyAllocator, start: Pfn, end: Pfn) {
        for slot in &self.cpus {
            let mut pages = slot.pages.lock();
            Pcp::free_range(buddy, slot, &mut pages, start, end);
        }
    }

    /// Records `start..end` as under isolation with every CPU, and gives
    /// back its blocks on their lists: from now until [`unisolate`](Self::unisolate)
    /// no block of the range is on a list.
    pub(in crate::mm) fn isolate(&self, buddy: &mut BuddyAllocator, start: Pfn, end: Pfn) {
        for slot in &self.cpus {
            let mut pages = slot.pages.lock();
            if pages.nr_isolated < MAX_ISOLATED {
                let n = pages.nr_isolated;
                pages.isolated[n] = (start, end);
                pages.nr_isolated += 1;
            } else {
                pages.isolated_overflow += 1;
            }
            Pcp::free_range(buddy, slot, &mut pages, start, end);
        }
    }

    /// Hands every block that frees put aside on the CPUs (freed into a
    /// range under isolation) to the buddy allocator, which holds each for
    /// its isolation; before an offline tests its range.
    pub fn collect_isolated(&self, buddy: &mut BuddyAllocator) {
        for slot in &self.cpus {
            let mut pages = slot.pages.lock();
            Self::collect_isolated_on(buddy, &mut pages);
        }
    }

    fn collect_isolated_on(buddy: &mut BuddyAllocator, pages: &mut PerCpuPages) {
        let memmap = *buddy.memmap();
        let n = core::mem::take(&mut pages.nr_isolated_frees);
        for &(pfn, order) in &pages.isolated_frees[..n] {
            // SAFETY: a block put aside, under both locks: allocated as
            // far as the buddy allocator knows, which checks it again.
            unsafe { set_refcount(&memmap, pfn, 1) };
            buddy.free(pfn, order);
        }
    }

    /// Ends what [`isolate`](Self::isolate) started, collecting what frees
    /// put aside first (under the same CPU lock, so that no block of the
    /// range is put aside after).
    pub(in crate::mm) fn unisolate(&self, buddy: &mut BuddyAllocator, start: Pfn, end: Pfn) {
        for slot in &self.cpus {
            let mut pages = slot.pages.lock();
            Self::collect_isolated_on(buddy, &mut pages);
            let n = pages.nr_isolated;
            match pages.isolated[..n].iter().position(|&r| r == (start, end)) {
                Some(i) => {
                    pages.isolated.copy_within(i + 1..n, i);
                    pages.nr_isolated -= 1;
                }
                None => pages.isolated_overflow = pages.isolated_overflow.saturating_sub(1),
            }
        }
    }
}

/// The same, for a caller holding the memory lock, not the zone lock
/// (each takes it).
impl<T: Translation> MemorySystem<T> {
    pub fn pcp(&self) -> &'static Pcp {
        self.pcp
    }

    pub fn pcp_alloc(&mut self, cpu: usize, order: u32, zones: &[Zone]) -> Option<Pfn> {
        self.pcp
            .alloc_slow(&mut self.buddy.lock(), cpu, order, zones)
    }

    pub fn pcp_free(&mut self, cpu: usize, pfn: Pfn, order: u32) -> bool {
        self.pcp.free_slow(&mut self.buddy.lock(), cpu, pfn, order)
    }

    /// Empties every CPU's lists (Linux's `drain_all_pages`).
    pub fn drain_all_pages(&mut self) {
        self.pcp.drain_all(&mut self.buddy.lock());
    }
}

#[cfg(test)]
#[cfg(not(any(feature = "granule-16k", feature = "granule-64k")))]
mod tests;
