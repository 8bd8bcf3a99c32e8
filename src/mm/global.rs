//! The machine's one memory system, behind the memory lock. Init installs
//! it; everything else reaches it through [`with_mm`] and passes it on as
//! a parameter, so that the code below runs on the host over any
//! [`MemorySystem`]. Page allocation on any CPU ([`alloc`], [`free`]) goes
//! through that CPU's page lists and, to refill or trim them, the zone
//! lock alone (`buddy.rs`), never the memory lock.

use super::addr::Pfn;
use super::buddy::{BuddyAllocator, ZoneLock};
use super::page::{Memmap, Zone};
use super::pcp::Pcp;
use super::system::MemorySystem;
use super::translation::KernelTranslation;
use crate::arch::lock::FairLock;
use crate::arch::{counter, MAX_CPUS};
use crate::error::Result;
use core::sync::atomic::{AtomicU64, Ordering};

pub type KernelMm = MemorySystem<KernelTranslation>;

// Fair (a waiter out of patience gets a ticket and no one overtakes it),
// as are the heap's and the per-CPU lists' locks: `arch::lock`, whose
// comment says why it is not a ticket lock from the first wait; figures
// in BENCHMARKS.md ("The memory lock: fair or not").
static MM: FairLock<Option<KernelMm>> = FairLock::new(None);

/// What the per-CPU fast paths reach without the memory lock, and their
/// slow paths under the zone lock alone (`buddy.rs`).
struct Local {
    pcp: &'static Pcp,
    memmap: Memmap,
    zone: &'static ZoneLock,
}

static LOCAL: spin::Once<Local> = spin::Once::new();

/// Hands the booted memory system over; from now on it lives behind the lock.
pub fn install(mm: KernelMm) {
    LOCAL.call_once(|| Local {
        pcp: mm.pcp(),
        memmap: *mm.buddy().memmap(),
        zone: mm.buddy,
    });
    *MM.lock() = Some(mm);
}

/// One CPU's use of the memory lock, or of the zone lock by [`alloc`] and
/// [`free`], since boot, in generic-timer ticks: what `stress --profile`
/// breaks a run down by. Written only by that CPU, on the paths that take
/// the lock, so the fast paths pay nothing.
#[repr(align(64))]
struct LockUse {
    takes: AtomicU64,
    wait: AtomicU64,
    longest_wait: AtomicU64,
    held: AtomicU64,
    longest_hold: AtomicU64,
    /// [`alloc`]s and [`free`]s that went to the lock, allocations it could
    /// not serve either.
    slow_allocs: AtomicU64,
    slow_frees: AtomicU64,
    failed_allocs: AtomicU64,
}

const fn unused() -> [LockUse; MAX_CPUS] {
    [const {
        LockUse {
            takes: AtomicU64::new(0),
            wait: AtomicU64::new(0),
            longest_wait: AtomicU64::new(0),
            held: AtomicU64::new(0),
            longest_hold: AtomicU64::new(0),
            slow_allocs: AtomicU64::new(0),
            slow_frees: AtomicU64::new(0),
            failed_allocs: AtomicU64::new(0),
        }
    }; MAX_CPUS]
}

static LOCK_USE: [LockUse; MAX_CPUS] = unused();
static ZONE_USE: [LockUse; MAX_CPUS] = unused();

/// A copy of one CPU's [`LockUse`]; the longest figures are since the last
/// [`reset_lock_use`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockUseSnapshot {
    pub takes: u64,
    pub wait: u64,
    pub longest_wait: u64,
    pub held: u64,
    pub longest_hold: u64,
    pub slow_allocs: u64,
    pub slow_frees: u64,
    pub failed_allocs: u64,
}

impl LockUseSnapshot {
    /// What happened between `earlier` and `self` (the longest figures
    /// are `self`'s).
    pub fn since(self, earlier: LockUseSnapshot) -> LockUseSnapshot {
        LockUseSnapshot {
            takes: self.takes - earlier.takes,
            wait: self.wait - earlier.wait,
            held: self.held - earlier.held,
            slow_allocs: self.slow_allocs - earlier.slow_allocs,
            slow_frees: self.slow_frees - earlier.slow_frees,
            failed_allocs: self.failed_allocs - earlier.failed_allocs,
            ..self
        }
    }
}

/// `cpu`'s use of the memory lock (zeros for a CPU out of range).
pub fn lock_use(cpu: usize) -> LockUseSnapshot {
    snapshot(&LOCK_USE, cpu)
}

/// `cpu`'s use of the zone lock through [`alloc`] and [`free`].
pub fn zone_use(cpu: usize) -> LockUseSnapshot {
    snapshot(&ZONE_USE, cpu)
}

fn snapshot(uses: &[LockUse; MAX_CPUS], cpu: usize) -> LockUseSnapshot {
    let Some(u) = uses.get(cpu) else {
        return LockUseSnapshot::default();
    };
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    LockUseSnapshot {
        takes: r(&u.takes),
        wait: r(&u.wait),
        longest_wait: r(&u.longest_wait),
        held: r(&u.held),
        longest_hold: r(&u.longest_hold),
        slow_allocs: r(&u.slow_allocs),
        slow_frees: r(&u.slow_frees),
        failed_allocs: r(&u.failed_allocs),
    }
}

/// Starts the longest wait and hold over, on every CPU.
pub fn reset_lock_use() {
    for u in LOCK_USE.iter().chain(&ZONE_USE) {
        u.longest_wait.store(0, Ordering::Relaxed);
        u.longest_hold.store(0, Ordering::Relaxed);
    }
}

fn count(cpu: usize, f: impl FnOnce(&LockUse) -> &AtomicU64) {
    if let Some(u) = ZONE_USE.get(cpu) {
        f(u).fetch_add(1, Ordering::Relaxed);
    }
}

/// `2^order` pages from the first of `zones` that has them, through this
/// CPU's page lists: the zone lock only to refill a list (Linux's
/// `rmqueue_pcplist`), never the memory lock, so that a hot-add or an
/// offline on another CPU holds it up only while it is in the allocator.
/// `None` when no zone has them, lists drained.
pub fn alloc(order: u32, zones: &[Zone]) -> Option<Pfn> {
    let cpu = crate::arch::cpu_id();
    let local = LOCAL.get()?;
    if let Some(pfn) = local.pcp.alloc_fast(&local.memmap, cpu, order, zones) {
        return Some(pfn);
    }
    count(cpu, |u| &u.slow_allocs);
    let got = with_zone(local.zone, cpu, |b| {
        local.pcp.alloc_slow(b, cpu, order, zones)
    });
    if got.is_none() {
        count(cpu, |u| &u.failed_allocs);
    }
    got
}

/// Gives back what [`alloc`] handed out, onto this CPU's lists when it
/// can (Linux's `free_unref_page`); `false` for a free the page allocator
/// refused (logged and counted there).
pub fn free(pfn: Pfn, order: u32) -> bool {
    let cpu = crate::arch::cpu_id();
    let Some(local) = LOCAL.get() else {
        return false;
    };
    if local.pcp.free_fast(&local.memmap, cpu, pfn, order) {
        return true;
    }
    count(cpu, |u| &u.slow_frees);
    with_zone(local.zone, cpu, |b| local.pcp.free_slow(b, cpu, pfn, order))
}

/// Runs `f` on the page allocator under the zone lock, counted in
/// [`zone_use`].
fn with_zone<R>(zone: &ZoneLock, cpu: usize, f: impl FnOnce(&mut BuddyAllocator) -> R) -> R {
    let t0 = counter();
    let mut guard = zone.lock();
    let t1 = counter();
    let r = f(&mut guard);
    let t2 = counter();
    drop(guard);
    record(&ZONE_USE, cpu, t1 - t0, t2 - t1);
    r
}

fn record(uses: &[LockUse; MAX_CPUS], cpu: usize, wait: u64, held: u64) {
    if let Some(u) = uses.get(cpu) {
        u.takes.fetch_add(1, Ordering::Relaxed);
        u.wait.fetch_add(wait, Ordering::Relaxed);
        u.longest_wait.fetch_max(wait, Ordering::Relaxed);
        u.held.fetch_add(held, Ordering::Relaxed);
        u.longest_hold.fetch_max(held, Ordering::Relaxed);
    }
}

/// Runs `f` on the machine's memory under the lock; `EAGAIN` before boot
/// installed it. Never call it with the lock held (it is not re-entrant).
pub fn with_mm<R>(f: impl FnOnce(&mut KernelMm) -> R) -> Result<R> {
    let t0 = counter();
    let mut guard = MM.lock();
    let t1 = counter();
    let r = with_locked(&mut guard, f);
    let t2 = counter();
    drop(guard);
    record(&LOCK_USE, crate::arch::cpu_id(), t1 - t0, t2 - t1);
    r
}

fn with_locked<R>(guard: &mut Option<KernelMm>, f: impl FnOnce(&mut KernelMm) -> R) -> Result<R> {
    let mm = guard
        .as_mut()
        .ok_or_else(|| crate::err!(EAGAIN, "memory is not initialised yet"))?;
    // Before: what was freed since (outside the lock) is given back, so
    // `f` sees it; after: what `f` used is replaced.
    top_up_heap(mm);
    let r = f(mm);
    top_up_heap(mm);
    mm.pcp().update_hints(&mm.buddy());
    Ok(r)
}

/// The heap's spare block replaced, its empty blocks given back: done here,
/// with the lock held, because the heap itself cannot take it.
fn top_up_heap(mm: &mut KernelMm) {
    let Some(heap) = super::heap::kernel() else {
        return;
    };
    let mm = core::cell::RefCell::new(mm);
    heap.top_up(
        || {
            let pa = mm.borrow_mut().alloc_pages(super::heap::BLOCK_ORDER)?;
            Some(pa.to_virt())
        },
        |va| {
            if let Some(pa) = va.linear_to_phys() {
                mm.borrow_mut().free_pages(pa, super::heap::BLOCK_ORDER);
            }
        },
    );
}
