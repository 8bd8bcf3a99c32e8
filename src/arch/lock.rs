//! The kernel's lock for contended data: test-and-set until a waiter has
//! waited [`PATIENCE_US`], then a ticket lock (Go's `sync.Mutex` has the
//! same two modes). A CPU that cannot get the lock within that time takes a
//! ticket; while any ticket is out, no CPU may take the lock without one,
//! and tickets get it in the order they were taken. So no CPU waits longer
//! than the patience plus one hold per CPU ahead of it in line while it
//! spins (with a plain test-and-set lock the CPU that just released the
//! lock is the likeliest to win it again, and a waiter may starve).
//!
//! Why not a ticket lock from the first wait, as arm64 Linux had before
//! qspinlock: under QEMU TCG with more vCPUs than host cores it hands the
//! lock to the next vCPU in line even when the host is not running it,
//! while the others spin on host time that vCPU needs: `stress 30 3` on
//! `-smp 4` ran 4x longer (BENCHMARKS.md, "The memory lock: fair or
//! not"). The same holds for the line itself, hence the CPU whose turn it
//! is records when it last spun ([`STALE_US`]): one that has stopped (its
//! vCPU is not running, and it could not use the lock anyway) is passed
//! until it spins again (the idea of He, Scherer and Scott's
//! time-published locks). On real CPUs a waiter rarely runs out of
//! patience.
//!
//! Waiting: on the target, Linux's `__cmpwait` (`LDXR` arms the exclusive
//! monitor on the word, `WFE` sleeps until a store to it, such as the
//! unlock's, clears the monitor and wakes the CPU); off target, a spin in
//! proportion to the tickets ahead, then the host scheduler (host test
//! threads outnumber the cores).

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// How long a CPU competes for the lock before it takes a ticket.
pub const PATIENCE_US: u64 = 1000;
/// How long the CPU whose turn it is may go without spinning before the
/// others stop standing back for it: its vCPU is not running (a running
/// one beats every few microseconds at most).
pub const STALE_US: u64 = 100;

pub struct FairLock<T: ?Sized> {
    /// 1 while held.
    locked: AtomicU32,
    /// The next ticket to hand out.
    next: AtomicU32,
    /// The ticket whose turn it is; tickets are out while `next != head`.
    head: AtomicU32,
    /// When the CPU whose turn it is last spun ([`now_us`]).
    beat: AtomicU64,
    /// Host tests: the thread holding the lock, so that taking it again
    /// panics instead of spinning for ever (the memory and zone locks are
    /// taken in many places; a test must fail, not hang).
    #[cfg(test)]
    owner: AtomicU64,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one holder at a time, so it may be
// shared between CPUs whenever `T` may move between them.
unsafe impl<T: ?Sized + Send> Sync for FairLock<T> {}
// SAFETY: as above; the lock owns its `T`.
unsafe impl<T: ?Sized + Send> Send for FairLock<T> {}

pub struct FairLockGuard<'a, T: ?Sized> {
    lock: &'a FairLock<T>,
}

impl<T> FairLock<T> {
    pub const fn new(data: T) -> Self {
        Self {
            locked: AtomicU32::new(0),
            next: AtomicU32::new(0),
            head: AtomicU32::new(0),
            beat: AtomicU64::new(0),
            #[cfg(test)]
            owner: AtomicU64::new(0),
            data: UnsafeCell::new(data),
        }
    }
}

impl<T: ?Sized> FairLock<T> {
    pub fn lock(&self) -> FairLockGuard<'_, T> {
        self.lock_with(PATIENCE_US, STALE_US)
    }

    /// [`lock`](Self::lock) with other times: patience 0 and staleness
    /// `u64::MAX` make it a plain ticket lock (for comparison, `bench lock`).
    pub fn lock_with(&self, patience_us: u64, stale_us: u64) -> FairLockGuard<'_, T> {
        #[cfg(test)]
        assert_ne!(
            self.owner.load(Ordering::Relaxed),
            this_thread(),
            "a lock taken again by its holder"
        );
        let guard = self.acquire(patience_us, stale_us);
        #[cfg(test)]
        self.owner.store(this_thread(), Ordering::Relaxed);
        guard
    }

    fn acquire(&self, patience_us: u64, stale_us: u64) -> FairLockGuard<'_, T> {
        if self.tickets_out() == 0 && self.try_take() {
            return FairLockGuard { lock: self };
        }
        // While patience lasts, compete when no ticket is out or the CPU
        // whose turn it is has stopped spinning (its vCPU is not running),
        // and otherwise stand back (without a ticket: a CPU that has not
        // waited long does not make the lock hand over in line). The clock
        // is read only once there is a wait.
        let start = now_us();
        while now_us().wrapping_sub(start) < patience_us {
            wait_while(&self.locked, 1, 1);
            if self.may_compete(stale_us) && self.try_take() {
                return FairLockGuard { lock: self };
            }
        }
        // In line: wait for our turn, then for the holder, beating while
        // we spin (only a CPU that found no ticket out just before ours was
        // taken, or one that found us not beating, can still come between),
        // then pass the turn on with a fresh beat for the next in line.
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        loop {
            let head = self.head.load(Ordering::Acquire);
            if head == ticket {
                break;
            }
            wait_while(&self.head, head, ticket.wrapping_sub(head));
        }
        loop {
            let now = now_us();
            if now.wrapping_sub(self.beat.load(Ordering::Relaxed)) > stale_us / 4 {
                self.beat.store(now, Ordering::Relaxed);
            }
            if self.try_take() {
                break;
            }
            // A spin, not `WFE`: a head asleep through a long hold would
            // stop beating and let others pass it again and again.
            core::hint::spin_loop();
        }
        self.beat.store(now_us(), Ordering::Relaxed);
        self.head.store(ticket.wrapping_add(1), Ordering::Release);
        FairLockGuard { lock: self }
    }

    fn try_take(&self) -> bool {
        self.locked.load(Ordering::Relaxed) == 0
            && self
                .locked
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether a CPU without a ticket may take the lock: no one is in line,
    /// or the CPU whose turn it is has not spun for `stale_us`.
    fn may_compete(&self, stale_us: u64) -> bool {
        self.tickets_out() == 0
            || now_us().wrapping_sub(self.beat.load(Ordering::Relaxed)) > stale_us
    }

    /// CPUs waiting in line (with a ticket).
    pub fn tickets_out(&self) -> u32 {
        self.next
            .load(Ordering::Relaxed)
            .wrapping_sub(self.head.load(Ordering::Relaxed))
    }
}

impl<T: ?Sized> Deref for FairLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard is the one holder of the lock.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for FairLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard is the one holder of the lock.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for FairLockGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(test)]
        self.lock.owner.store(0, Ordering::Relaxed);
        self.lock.locked.store(0, Ordering::Release);
    }
}

/// A number unique to the calling thread while it lives (never 0).
#[cfg(test)]
fn this_thread() -> u64 {
    std::thread_local!(static ME: u8 = const { 0 });
    ME.with(|m| m as *const u8 as u64)
}

/// Microseconds on the generic timer (the host's clock in host tests; in
/// other host builds, which have no clock and no contention, a count of
/// calls).
fn now_us() -> u64 {
    #[cfg(target_os = "none")]
    return super::counter() * 1_000_000 / super::counter_freq();
    #[cfg(all(not(target_os = "none"), test))]
    {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_micros() as u64
    }
    #[cfg(all(not(target_os = "none"), not(test)))]
    {
        static CALLS: AtomicU64 = AtomicU64::new(0);
        CALLS.fetch_add(1, Ordering::Relaxed)
    }
}

/// Waits until `word` may no longer read `old` (it may return early: the
/// caller reads again). `ahead` is the number of CPUs before this one.
#[cfg(target_os = "none")]
fn wait_while(word: &AtomicU32, old: u32, _ahead: u32) {
    super::aarch64::insn::cmpwait(word.as_ptr(), old);
}

#[cfg(not(target_os = "none"))]
fn wait_while(word: &AtomicU32, old: u32, ahead: u32) {
    // Proportional backoff: the further back in line, the longer before
    // the shared line is read again.
    for _ in 0..ahead.min(64) * 16 {
        if word.load(Ordering::Relaxed) != old {
            return;
        }
        core::hint::spin_loop();
    }
    #[cfg(test)]
    std::thread::yield_now();
}

#[cfg(test)]
mod tests {
    use super::{FairLock, PATIENCE_US};
    use std::sync::Arc;

    /// The order tests wait for their threads to be in line; a host thread
    /// in line may be descheduled for longer than [`super::STALE_US`] and
    /// then be passed, as a vCPU would, so they never count it stale.
    fn lock<T>(l: &FairLock<T>) -> super::FairLockGuard<'_, T> {
        l.lock_with(PATIENCE_US, u64::MAX)
    }

    /// Waiters that ran out of patience one after another get the lock in
    /// that order, however the host schedules them: a lock that let any
    /// spinning waiter win (test-and-set) fails this.
    #[test]
    fn waiters_get_the_lock_in_the_order_they_asked() {
        const WAITERS: usize = 6;
        for _ in 0..20 {
            let lock = Arc::new(FairLock::new(Vec::new()));
            let held = self::lock(&lock);
            let threads: Vec<_> = (0..WAITERS)
                .map(|i| {
                    let l = lock.clone();
                    let t = std::thread::spawn(move || self::lock(&l).push(i));
                    // The next waiter asks only after this one is in line.
                    while lock.tickets_out() != i as u32 + 1 {
                        std::thread::yield_now();
                    }
                    t
                })
                .collect();
            drop(held);
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(*lock.lock(), (0..WAITERS).collect::<Vec<_>>());
        }
    }

    /// The starvation a test-and-set lock allows: the holder drops the
    /// lock and asks again at once while another CPU has been waiting. Once
    /// that waiter is in line, the holder gets the lock only after it.
    #[test]
    fn a_cpu_that_retakes_the_lock_at_once_goes_behind_a_waiter() {
        for _ in 0..20 {
            let lock = Arc::new(FairLock::new(Vec::new()));
            let mut held = self::lock(&lock);
            let l = lock.clone();
            let waiter = std::thread::spawn(move || self::lock(&l).push("waiter"));
            while lock.tickets_out() != 1 {
                std::thread::yield_now();
            }
            drop(held);
            held = self::lock(&lock);
            held.push("retaker");
            drop(held);
            waiter.join().unwrap();
            assert_eq!(*lock.lock(), ["waiter", "retaker"]);
        }
    }

    /// A CPU in line that does not run (a ticket taken, never spun for)
    /// does not hold the others up: they take the lock past it.
    #[test]
    fn a_waiter_that_does_not_run_is_passed() {
        let lock = Arc::new(FairLock::new(0u32));
        lock.next
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        let l = lock.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..3 {
                *l.lock() += 1;
            }
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the lock waited for a CPU that never came");
        assert_eq!(lock.tickets_out(), 1);
    }

    /// Mutual exclusion: a read-modify-write split by a yield loses no
    /// update while four threads contend.
    #[test]
    fn holders_exclude_each_other() {
        let lock = Arc::new(FairLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let mut g = l.lock();
                        let v = *g;
                        std::thread::yield_now();
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 8000);
        assert_eq!(lock.tickets_out(), 0);
    }
}
