//! `bench lock [MS [CPUS]]`: CPU 0 and up to CPUS - 1 others take one lock
//! in a loop for MS milliseconds each round: the kernel's lock
//! (`arch::lock`), the same as a plain ticket lock (no patience), and a
//! test-and-set lock (`spin::Mutex`), each guarding the same short critical
//! section. CPU 0 asks again as soon as it lets go (a poller), the others
//! after as long outside. Per lock: the acquisitions each CPU made and the
//! longest each waited: what a lock's fairness, or its lack, does to the
//! CPUs that contend for it (BENCHMARKS.md, "The memory lock: fair or not").

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::arch::aarch64::{self as cpu, smp};
use crate::arch::lock::FairLock;
use crate::arch::MAX_CPUS;
use crate::error::Result;
use crate::{bail, err};

/// Eight cache lines written under the lock: a short critical section.
type Shared = [u64; 64];

static FAIR: FairLock<Shared> = FairLock::new([0; 64]);
static TAS: spin::Mutex<Shared> = spin::Mutex::new([0; 64]);

const LOCKS: [&str; 3] = ["fair", "ticket", "test-and-set"];
/// Which of [`LOCKS`] the round takes.
static WHICH: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static RUNNING: AtomicU64 = AtomicU64::new(0);
static ACQUIRED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Longest wait for the lock, in counter ticks.
static LONGEST: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Acquisitions so far, counted under the lock.
static GEN: AtomicU64 = AtomicU64::new(0);
/// Most acquisitions by other CPUs during one wait: how often a CPU was
/// overtaken.
static OVERTAKEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn critical(shared: &mut Shared, cpu: usize) -> u64 {
    let g = GEN.load(Ordering::Relaxed);
    GEN.store(g + 1, Ordering::Relaxed);
    for w in shared.iter_mut().step_by(8) {
        *w = w.wrapping_add(cpu as u64 + 1);
    }
    g
}

/// One acquisition and the critical section, then (but on CPU 0) as long
/// outside the lock; the ticks waited and the times overtaken.
fn step(cpu: usize) -> (u64, u64) {
    let t = cpu::counter();
    let g0 = GEN.load(Ordering::Relaxed);
    let (waited, overtaken);
    match WHICH.load(Ordering::Relaxed) {
        0 => {
            let mut g = FAIR.lock();
            waited = cpu::counter() - t;
            overtaken = critical(&mut g, cpu) - g0;
        }
        1 => {
            let mut g = FAIR.lock_with(0, u64::MAX);
            waited = cpu::counter() - t;
            overtaken = critical(&mut g, cpu) - g0;
        }
        _ => {
            let mut g = TAS.lock();
            waited = cpu::counter() - t;
            overtaken = critical(&mut g, cpu) - g0;
        }
    }
    if cpu != 0 {
        // Private work as long as the critical section's.
        let mut local = [0u64; 64];
        for w in local.iter_mut().step_by(8) {
            *w = w.wrapping_add(cpu as u64 + 1);
        }
        core::hint::black_box(&local);
    }
    (waited, overtaken)
}

/// Runs [`step`] until `done`, then leaves its figures for `cpu`.
fn contend_until(cpu: usize, done: impl Fn() -> bool) {
    let (mut n, mut longest, mut overtaken) = (0u64, 0u64, 0u64);
    while !done() {
        let (w, o) = step(cpu);
        (longest, overtaken) = (longest.max(w), overtaken.max(o));
        n += 1;
    }
    ACQUIRED[cpu].store(n, Ordering::Relaxed);
    LONGEST[cpu].store(longest, Ordering::Relaxed);
    OVERTAKEN[cpu].store(overtaken, Ordering::Relaxed);
}

fn contend(cpu: usize) {
    contend_until(cpu, || STOP.load(Ordering::Relaxed));
    RUNNING.fetch_and(!(1 << cpu), Ordering::AcqRel);
}

fn round(which: usize, mask: u64, ms: u64, out: &mut dyn Write) -> Result<()> {
    WHICH.store(which, Ordering::Relaxed);
    STOP.store(false, Ordering::Release);
    RUNNING.store(mask, Ordering::Release);
    smp::run_on(mask, contend);
    let t0 = cpu::counter();
    let freq = cpu::counter_freq();
    contend_until(0, || cpu::counter() - t0 >= ms * freq / 1000);
    let elapsed = cpu::counter() - t0;
    STOP.store(true, Ordering::Release);
    let t1 = cpu::counter();
    while RUNNING.load(Ordering::Acquire) != 0 {
        if cpu::counter() - t1 > 10 * freq {
            bail!(EIO, "CPUs did not stop");
        }
        core::hint::spin_loop();
    }
    let cpus = (0..MAX_CPUS).filter(|&c| (mask | 1) & (1 << c) != 0);
    let name = LOCKS[which];
    write!(out, "{name}: acquisitions per CPU:")?;
    let (mut min, mut max, mut total) = (u64::MAX, 0, 0);
    for c in cpus.clone() {
        let n = ACQUIRED[c].swap(0, Ordering::Relaxed);
        (min, max, total) = (min.min(n), max.max(n), total + n);
        write!(out, " {n}")?;
    }
    writeln!(
        out,
        "; min/max {}%; {} per s",
        min * 100 / max.max(1),
        total * 1000 / (elapsed * 1000 / freq).max(1)
    )?;
    write!(out, "{name}: longest wait per CPU (us):")?;
    for c in cpus.clone() {
        let t = LONGEST[c].swap(0, Ordering::Relaxed);
        write!(out, " {}", t * 1_000_000 / freq)?;
    }
    write!(out, "; most overtaken per CPU:")?;
    for c in cpus {
        write!(out, " {}", OVERTAKEN[c].swap(0, Ordering::Relaxed))?;
    }
    writeln!(out)?;
    Ok(())
}

/// `bench lock [MS [CPUS]]`.
pub fn command(argv: &[&str], out: &mut dyn Write) -> Result<()> {
    let num = |i: usize, default: u64| -> Result<u64> {
        argv.get(i).map_or(Ok(default), |w| {
            w.parse().map_err(|_| err!(EINVAL, "bad number {w:?}"))
        })
    };
    let ms = num(2, 1000)?;
    let want = num(3, MAX_CPUS as u64)?;
    if argv.len() > 4 {
        bail!(EINVAL, "usage: bench lock [MS [CPUS]]");
    }
    if !(1..=60_000).contains(&ms) {
        bail!(EINVAL, "run for 1 to 60000 ms");
    }
    let online = smp::online_mask() & !1;
    let mut mask = 0u64;
    for c in 1..MAX_CPUS {
        if online & (1 << c) != 0 && u64::from(mask.count_ones()) + 1 < want {
            mask |= 1 << c;
        }
    }
    if mask == 0 {
        bail!(
            EINVAL,
            "no second CPU to contend with (boot with -smp 2 or more)"
        );
    }
    (0..LOCKS.len()).try_for_each(|which| round(which, mask, ms, out))
}
