//! `stress [CYCLES [WORKERS]]`: secondary CPUs allocate, touch, check and
//! free pages (hot-added ones first, through the linear map and
//! `pfn_to_page`) while CPU 0 adds, onlines, offlines and removes every
//! held-back memory block. Offlining waits for the workers' pages to come
//! back, as Linux's page isolation does. At the end `/proc/meminfo` must
//! equal its start.
//!
//! Each side alone, for comparison: `--hotplug-only CYCLES` (no workers),
//! `--workers-only [MS [WORKERS]]` (the workers for MS milliseconds, no
//! hotplug); `--spin-workers CYCLES [WORKERS]` runs hotplug beside workers
//! that only spin, the cost of a busy CPU without any shared lock or page.
//! Every run prints the worker operations per second.
//!
//! `--profile` (with any mode but `--memhog`) adds where the time went,
//! from the generic timer: each CPU's trips to the memory lock, and to the
//! zone lock to refill or trim its page lists (waiting and holding), how often offlining drained a worker's page lists, CPU 0's
//! time per hotplug phase and its broadcast TLB invalidations (under QEMU
//! MTTCG each one stops every other vCPU), and the worker's iterations
//! that took over [`GAP_US`]: with a trip to the lock, or without one (its
//! vCPU stopped: the host did not run it, or another vCPU's exclusive
//! section). Without it the workers read no clock.
//!
//! `--memhog CYCLES [WORKERS]`: each worker maps a memhog area
//! (`mm::anon`) on the hot-added movable memory and, page after page,
//! checks it and rewrites it with the next generation, through its own
//! mapping, while CPU 0 offlines (migrating the pages away) and re-onlines
//! every block, one at a time. A page read with the wrong contents is a
//! mismatch; the run must end with none.

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::arch::aarch64::{self as cpu, smp};
use crate::error::Result;
use crate::mm::addr::{Pfn, PhysRange};
use crate::mm::global::{self, with_mm, KernelMm};
use crate::mm::layout::*;
use crate::mm::page::{Memmap, PageFlags, Zone};
use crate::mm::system::{block_id, block_range};
use crate::{bail, err};

static STOP: AtomicBool = AtomicBool::new(false);
static RUNNING: AtomicU64 = AtomicU64::new(0);
static OPS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);
/// Worker allocations that came from hot-added blocks.
static HOT_ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Offlines that found a worker's page in the block and waited for it.
static WAITED: AtomicU64 = AtomicU64::new(0);

/// Whether the workers time their iterations (`--profile`).
static PROFILE: AtomicBool = AtomicBool::new(false);
/// A worker iteration longer than this is a gap (`--profile`); one
/// iteration takes ~2 us on an idle host.
const GAP_US: u64 = 100;

/// One worker's gaps (`--profile`): iterations over [`GAP_US`] with a trip
/// to a lock, and without one; in generic-timer ticks.
#[repr(align(64))]
struct Gaps {
    locked: AtomicU64,
    locked_ticks: AtomicU64,
    stalls: AtomicU64,
    stall_ticks: AtomicU64,
    longest_stall: AtomicU64,
}

static GAPS: [Gaps; crate::arch::MAX_CPUS] = [const {
    Gaps {
        locked: AtomicU64::new(0),
        locked_ticks: AtomicU64::new(0),
        stalls: AtomicU64::new(0),
        stall_ticks: AtomicU64::new(0),
        longest_stall: AtomicU64::new(0),
    }
}; crate::arch::MAX_CPUS];

/// CPU 0's time per hotplug phase over a run, in ticks: add and online,
/// waiting for a worker to take a new page, offline (from isolating to
/// done), the part of it spent waiting for pages, remove.
static PHASES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
const ADD_ONLINE: usize = 0;
const HANDOFF: usize = 1;
const OFFLINE: usize = 2;
const OFFLINE_WAIT: usize = 3;
const REMOVE: usize = 4;

/// Runs `f`, adding its time to `PHASES[phase]`.
fn timed<R>(phase: usize, f: impl FnOnce() -> R) -> R {
    let t = cpu::counter();
    let r = f();
    PHASES[phase].fetch_add(cpu::counter() - t, Ordering::Relaxed);
    r
}

/// Pages of memhog workers read with the wrong contents.
static MISMATCHES: AtomicU64 = AtomicU64::new(0);
/// Memhog workers whose area is mapped.
static MAPPED: AtomicU64 = AtomicU64::new(0);
/// A memhog worker's area.
const MEMHOG_BYTES: u64 = 16 << 20;

/// Pages a worker holds at most at once.
const HELD: usize = 8;
/// Words written per page: one per 64-byte line.
const STRIDE: usize = 8;

fn pattern(pfn: Pfn, cpu: usize, i: usize) -> u64 {
    pfn.as_u64().rotate_left(17) ^ ((cpu as u64) << 56) ^ i as u64
}

fn words(pfn: Pfn, order: u32) -> (*mut u64, usize) {
    let va = pfn.phys().to_virt().as_mut_ptr::<u64>();
    (va, ((PAGE_SIZE << order) / 8) as usize)
}

/// Pfns from here up are hot-added memory (the held-back RAM lies above
/// boot memory).
static HOT_BASE: AtomicU64 = AtomicU64::new(u64::MAX);

/// One secondary CPU's loop; see the module comment. Pages come and go
/// through the CPU's own page lists ([`global::alloc`]), so only the zone
/// lock is taken, to refill or trim them, never the memory lock.
fn worker(cpu: usize) {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (cpu as u64 * 0x1234_5678_9abc);
    let mut held = [(Pfn::new(0), 0u32); HELD];
    let mut n = 0;
    let profile = PROFILE.load(Ordering::Relaxed);
    let gap = GAP_US * cpu::counter_freq() / 1_000_000;
    let takes = || global::lock_use(cpu).takes + global::zone_use(cpu).takes;
    let mut last = (cpu::counter(), takes());
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    loop {
        let stopping = STOP.load(Ordering::Acquire);
        if stopping && n == 0 {
            break;
        }
        if !stopping && n < HELD && (n == 0 || next() % 2 == 0) {
            let order = (next() % 3) as u32;
            if let Some(pfn) = global::alloc(order, &[Zone::Movable, Zone::Normal]) {
                // SAFETY: the block is ours, so its memory block stays
                // online and its struct page mapped; no one else writes it.
                let page = unsafe { &*Memmap::kernel().page(pfn) };
                if page.refcount() != 1 || !page.has(PageFlags::ONLINE) {
                    ERRORS.fetch_add(1, Ordering::Relaxed);
                }
                if pfn.phys().as_u64() >= HOT_BASE.load(Ordering::Relaxed) {
                    HOT_ALLOCS.fetch_add(1, Ordering::Relaxed);
                }
                let (va, len) = words(pfn, order);
                for i in (0..len).step_by(STRIDE) {
                    // SAFETY: the pages are ours, mapped by the linear map.
                    unsafe { va.add(i).write_volatile(pattern(pfn, cpu, i)) };
                }
                held[n] = (pfn, order);
                n += 1;
            }
        } else if n > 0 {
            let k = (next() % n as u64) as usize;
            let (pfn, order) = held[k];
            let (va, len) = words(pfn, order);
            for i in (0..len).step_by(STRIDE) {
                // SAFETY: as above; no one else writes our pages.
                if unsafe { va.add(i).read_volatile() } != pattern(pfn, cpu, i) {
                    ERRORS.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            if !global::free(pfn, order) {
                ERRORS.fetch_add(1, Ordering::Relaxed);
            }
            held[k] = held[n - 1];
            n -= 1;
        }
        OPS.fetch_add(1, Ordering::Relaxed);
        if profile {
            let now = (cpu::counter(), takes());
            let took = now.0 - last.0;
            if let Some(g) = GAPS.get(cpu).filter(|_| took > gap) {
                if now.1 != last.1 {
                    g.locked.fetch_add(1, Ordering::Relaxed);
                    g.locked_ticks.fetch_add(took, Ordering::Relaxed);
                } else {
                    g.stalls.fetch_add(1, Ordering::Relaxed);
                    g.stall_ticks.fetch_add(took, Ordering::Relaxed);
                    g.longest_stall.fetch_max(took, Ordering::Relaxed);
                }
            }
            last = now;
        }
    }
    RUNNING.fetch_and(!(1 << cpu), Ordering::AcqRel);
}

/// A memhog worker (module comment): its area checked and rewritten, one
/// generation after another, until told to stop; then checked and freed.
fn memhog_worker(cpu: usize) {
    use crate::mm::anon::{check_page, fill_page, page_va};
    let pages = MEMHOG_BYTES / PAGE_SIZE;
    let id = match with(|m| m.anon_map(pages)) {
        Ok(id) => id,
        Err(_) => {
            ERRORS.fetch_add(1, Ordering::Relaxed);
            MAPPED.fetch_add(1, Ordering::AcqRel);
            RUNNING.fetch_and(!(1 << cpu), Ordering::AcqRel);
            return;
        }
    };
    MAPPED.fetch_add(1, Ordering::AcqRel);
    // Pages below `i` hold generation `gen + 1`, the others `gen`.
    let mut gen = 0;
    while !STOP.load(Ordering::Acquire) {
        for i in 0..pages {
            let va = page_va(id, i);
            let p = va.as_u64() as *mut u64;
            // SAFETY: the area is ours and mapped read-write until we free
            // it; a page under migration makes the access wait (fault
            // handler) and retry.
            if unsafe { check_page(p, va, gen) }.is_err() {
                MISMATCHES.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: as above.
            unsafe { fill_page(p, va, gen + 1) };
            OPS.fetch_add(1, Ordering::Relaxed);
        }
        gen += 1;
    }
    with(|m| {
        m.anon_set_gen(id, gen);
        if m.anon_check(id).is_err() {
            MISMATCHES.fetch_add(1, Ordering::Relaxed);
        }
        if m.anon_free(id).is_err() {
            ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    });
    RUNNING.fetch_and(!(1 << cpu), Ordering::AcqRel);
}

/// CPU 0's side of `--memhog`: every held-back block hot-added as movable
/// memory, then `cycles` times each offlined (its memhog pages migrate)
/// and onlined again, then all removed.
fn cycle_memhog(cycles: u64, ranges: &[PhysRange], mask: u64) -> Result<u64> {
    let ids = || {
        ranges
            .iter()
            .flat_map(|r| block_id(r.base)..block_id(r.end()))
    };
    for id in ids() {
        with(|m| {
            m.add_memory(block_range(id).base, MEMORY_BLOCK_SIZE)?;
            m.online_block(id, Zone::Movable)
        })?;
    }
    let before = with(|m| m.anon().pgmigrate_success);
    MAPPED.store(0, Ordering::Release);
    start_workers(mask, memhog_worker);
    let t = cpu::counter();
    while MAPPED.load(Ordering::Acquire) < mask.count_ones() as u64 {
        if cpu::counter() - t > 10 * cpu::counter_freq() {
            bail!(EIO, "memhog workers did not map their areas");
        }
        core::hint::spin_loop();
    }
    let mut r = Ok(());
    'cycles: for _ in 0..cycles {
        for id in ids() {
            r = with(|m| {
                m.offline_block(id).map_err(crate::error::Error::from)?;
                m.online_block(id, Zone::Movable)
            });
            if r.is_err() {
                break 'cycles;
            }
        }
    }
    let migrated = with(|m| m.anon().pgmigrate_success) - before;
    stop_workers()?;
    r?;
    for id in ids() {
        with(|m| {
            m.offline_block(id).map_err(crate::error::Error::from)?;
            m.remove_memory(block_range(id).base, MEMORY_BLOCK_SIZE)
        })?;
    }
    Ok(migrated)
}

/// A worker that only spins, touching no memory: the control that shows
/// what a busy CPU costs CPU 0 without any sharing of locks or pages (under
/// TCG, the host time the vCPUs share).
fn spinner(cpu: usize) {
    while !STOP.load(Ordering::Acquire) {
        OPS.fetch_add(1, Ordering::Relaxed);
    }
    RUNNING.fetch_and(!(1 << cpu), Ordering::AcqRel);
}

/// The memory system is installed before any command runs.
fn with<R>(f: impl FnOnce(&mut KernelMm) -> R) -> R {
    with_mm(f).expect("memory is installed before the console starts")
}

/// Offlines block `id`, waiting (bounded) for the workers' pages to drain.
fn offline_draining(id: u64) -> Result<()> {
    let pcp = with(|m| m.offline_begin(id).map(|()| m.pcp()))?;
    let t0 = cpu::counter();
    let mut waited = false;
    loop {
        let seen = pcp.nr_isolated_frees();
        if with(|m| m.offline_try_finish(id)) {
            WAITED.fetch_add(u64::from(waited), Ordering::Relaxed);
            return Ok(());
        }
        waited = true;
        if cpu::counter() - t0 > 10 * cpu::counter_freq() {
            with(|m| m.offline_abort(id));
            bail!(EBUSY, "memory{id}: pages still in use after 10 s");
        }
        // Wait without a lock until a worker frees a page into the block
        // (its CPU puts it aside, `mm::pcp`), or 1 ms for a free that went
        // to the buddy allocator: polling under the zone lock would hold
        // up the workers' refills.
        timed(OFFLINE_WAIT, || {
            let t = cpu::counter();
            while pcp.nr_isolated_frees() == seen && cpu::counter() - t < cpu::counter_freq() / 1000
            {
                core::hint::spin_loop();
            }
        });
    }
}

/// What `stress` runs: both sides, or one alone for comparison.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Both,
    /// CPU 0 cycles hotplug, no workers (`--hotplug-only`, or 0 workers).
    HotplugOnly,
    /// The workers for a time, no hotplug (`--workers-only`).
    WorkersOnly,
    /// Hotplug with workers that only spin (`--spin-workers`).
    Spin,
    /// Offline and online under memhog workers (`--memhog`).
    Memhog,
}

/// Starts `job` on the CPUs of `mask`.
fn start_workers(mask: u64, job: fn(usize)) {
    STOP.store(false, Ordering::Release);
    OPS.store(0, Ordering::Relaxed);
    ERRORS.store(0, Ordering::Relaxed);
    MISMATCHES.store(0, Ordering::Relaxed);
    HOT_ALLOCS.store(0, Ordering::Relaxed);
    WAITED.store(0, Ordering::Relaxed);
    RUNNING.store(mask, Ordering::Release);
    for g in &GAPS {
        for a in [
            &g.locked,
            &g.locked_ticks,
            &g.stalls,
            &g.stall_ticks,
            &g.longest_stall,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
    for p in &PHASES {
        p.store(0, Ordering::Relaxed);
    }
    global::reset_lock_use();
    smp::run_on(mask, job);
}

/// Stops the workers and waits (bounded) until they gave their pages back.
fn stop_workers() -> Result<()> {
    STOP.store(true, Ordering::Release);
    let t1 = cpu::counter();
    while RUNNING.load(Ordering::Acquire) != 0 {
        if cpu::counter() - t1 > 10 * cpu::counter_freq() {
            bail!(EIO, "workers did not stop");
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Adds, onlines, offlines and removes every held-back block `cycles`
/// times (struct pages on the memory itself every other cycle).
fn cycle_hotplug(cycles: u64, ranges: &[PhysRange], workers: bool, saved: bool) -> Result<()> {
    for c in 0..cycles {
        // Block by block, as a user offlines and removes memory blocks
        // through sysfs (each block's removal one TLB invalidation).
        for id in ranges
            .iter()
            .flat_map(|r| block_id(r.base)..block_id(r.end()))
        {
            timed(ADD_ONLINE, || {
                with(|m| {
                    m.set_memmap_on_memory(c % 2 == 1);
                    let r = m.add_memory(block_range(id).base, MEMORY_BLOCK_SIZE);
                    m.set_memmap_on_memory(saved);
                    r?;
                    m.online_block(id, Zone::Movable)
                })
            })?;
        }
        // Give the workers a moment (unlocked) to take pages of the new
        // memory: offline must then isolate and wait for them. Bounded, so
        // that a worker that does not come cannot stall the run.
        let (hot, t) = (HOT_ALLOCS.load(Ordering::Relaxed), cpu::counter());
        while workers
            && HOT_ALLOCS.load(Ordering::Relaxed) == hot
            && cpu::counter() - t < cpu::counter_freq() / 20
        {
            core::hint::spin_loop();
        }
        PHASES[HANDOFF].fetch_add(cpu::counter() - t, Ordering::Relaxed);
        for id in ranges
            .iter()
            .flat_map(|r| block_id(r.base)..block_id(r.end()))
        {
            timed(OFFLINE, || offline_draining(id))?;
            timed(REMOVE, || {
                with(|m| m.remove_memory(block_range(id).base, MEMORY_BLOCK_SIZE))
            })?;
        }
    }
    Ok(())
}

pub fn stress(argv: &[&str], out: &mut dyn Write) -> Result<()> {
    let mut mode = Mode::Both;
    let mut profile = false;
    let mut nums = [None; 2];
    let mut positional = 0;
    for &w in argv.iter().skip(1) {
        match w {
            "--hotplug-only" => mode = Mode::HotplugOnly,
            "--workers-only" => mode = Mode::WorkersOnly,
            "--spin-workers" => mode = Mode::Spin,
            "--memhog" => mode = Mode::Memhog,
            "--profile" => profile = true,
            _ if positional < nums.len() => {
                let n = w.parse().map_err(|_| err!(EINVAL, "bad number {w:?}"))?;
                nums[positional] = Some(n);
                positional += 1;
            }
            _ => bail!(EINVAL, "too many arguments"),
        }
    }
    if profile && mode == Mode::Memhog {
        bail!(EINVAL, "--profile does not apply to --memhog");
    }
    // CYCLES, or with `--workers-only` the milliseconds to run.
    let amount = nums[0].unwrap_or(if mode == Mode::WorkersOnly { 1000 } else { 10 });
    let workers = match mode {
        Mode::HotplugOnly => 0,
        _ => nums[1].unwrap_or(63),
    };
    if mode == Mode::WorkersOnly && !(1..=60_000).contains(&amount) {
        bail!(EINVAL, "run the workers for 1 to 60000 ms");
    }
    let online = smp::online_mask() & !1;
    let mut mask = 0u64;
    for cpu in 1..64 {
        if online & (1 << cpu) != 0 && (mask.count_ones() as u64) < workers {
            mask |= 1 << cpu;
        }
    }
    if matches!(mode, Mode::WorkersOnly | Mode::Memhog) && mask == 0 {
        bail!(
            EINVAL,
            "no secondary CPU to run a worker (boot with -smp 2 or more)"
        );
    }
    let ranges = with(|m| m.hotpluggable().to_vec());
    if ranges.is_empty() && mode != Mode::WorkersOnly {
        bail!(EINVAL, "no held-back RAM to hot-plug (boot with mem=)");
    }
    let blocks = ranges
        .iter()
        .map(|r| r.size / MEMORY_BLOCK_SIZE)
        .sum::<u64>();
    HOT_BASE.store(
        ranges
            .iter()
            .map(|r| r.base.as_u64())
            .min()
            .unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    let (baseline, saved) = with(|m| (m.meminfo(), m.memmap_on_memory()));
    if mode == Mode::Memhog {
        let waits = crate::mm::anon::MIGRATION_WAITS.load(Ordering::Relaxed);
        let t0 = cpu::counter();
        let migrated = cycle_memhog(amount, &ranges, mask)?;
        let ms = ((cpu::counter() - t0) * 1000 / cpu::counter_freq()).max(1);
        writeln!(
            out,
            "{amount} offline/online cycles of {blocks} blocks under {} memhog workers in {ms} ms",
            mask.count_ones()
        )?;
        writeln!(
            out,
            "pages migrated: {migrated}, migration waits: {}",
            crate::mm::anon::MIGRATION_WAITS.load(Ordering::Relaxed) - waits
        )?;
        writeln!(
            out,
            "worker page passes: {}, mismatches: {}, errors: {}",
            OPS.load(Ordering::Relaxed),
            MISMATCHES.load(Ordering::Relaxed),
            ERRORS.load(Ordering::Relaxed)
        )?;
        let after = with(|m| m.meminfo());
        if MISMATCHES.load(Ordering::Relaxed) + ERRORS.load(Ordering::Relaxed) != 0 {
            bail!(EIO, "memhog workers saw mismatches or errors");
        }
        if after != baseline {
            bail!(
                EIO,
                "meminfo did not return to its baseline: {baseline:?} -> {after:?}"
            );
        }
        writeln!(out, "meminfo back to its baseline")?;
        return Ok(());
    }
    PROFILE.store(profile, Ordering::Relaxed);
    let before = Profile::take(mask);
    start_workers(mask, if mode == Mode::Spin { spinner } else { worker });
    let t0 = cpu::counter();
    let result = if mode == Mode::WorkersOnly {
        while cpu::counter() - t0 < amount * cpu::counter_freq() / 1000 {
            core::hint::spin_loop();
        }
        Ok(())
    } else {
        cycle_hotplug(amount, &ranges, mode == Mode::Both && mask != 0, saved)
    };
    let elapsed = cpu::counter() - t0;
    let ops = OPS.load(Ordering::Relaxed);
    let after_run = Profile::take(mask);
    stop_workers()?;
    result?;
    let after = with(|m| m.meminfo());
    let ms = (elapsed * 1000 / cpu::counter_freq()).max(1);
    let nr = mask.count_ones();
    if mode == Mode::WorkersOnly {
        writeln!(out, "workers only, {nr} workers for {ms} ms")?;
    } else {
        writeln!(
            out,
            "{amount} cycles of {blocks} blocks with {nr} workers in {ms} ms: {} cycles/s",
            amount * 1000 / ms
        )?;
    }
    writeln!(
        out,
        "worker operations: {}, errors: {}",
        OPS.load(Ordering::Relaxed),
        ERRORS.load(Ordering::Relaxed)
    )?;
    writeln!(out, "worker operations/s: {}", ops * 1000 / ms)?;
    writeln!(
        out,
        "allocations from hot-added memory: {}, offlines that waited for pages: {}",
        HOT_ALLOCS.load(Ordering::Relaxed),
        WAITED.load(Ordering::Relaxed)
    )?;
    if profile {
        after_run.print(&before, mask, amount.max(1), mode, out)?;
    }
    if ERRORS.load(Ordering::Relaxed) != 0 {
        bail!(EIO, "workers saw {} errors", ERRORS.load(Ordering::Relaxed));
    }
    if after != baseline {
        bail!(
            EIO,
            "meminfo did not return to its baseline: {baseline:?} -> {after:?}"
        );
    }
    writeln!(out, "meminfo back to its baseline")?;
    Ok(())
}

/// Counters `--profile` compares, taken at the start and end of a run.
struct Profile {
    /// Each CPU's use of the memory lock, CPU 0 first.
    lock: [global::LockUseSnapshot; crate::arch::MAX_CPUS],
    /// Each CPU's use of the zone lock to refill or trim its page lists.
    zone: [global::LockUseSnapshot; crate::arch::MAX_CPUS],
    /// Each CPU's page-list drains: times, pages.
    drained: [(u64, u64); crate::arch::MAX_CPUS],
    /// TLB invalidation instructions (all broadcast: `... IS`).
    tlbi: u64,
    /// Frees into a block under isolation put aside on their CPU.
    aside: u64,
}

impl Profile {
    fn take(mask: u64) -> Profile {
        let (tlbi, pcp) = with(|m| (m.page_table().stats.tlbi_ops, m.pcp()));
        let mut p = Profile {
            lock: [global::LockUseSnapshot::default(); crate::arch::MAX_CPUS],
            zone: [global::LockUseSnapshot::default(); crate::arch::MAX_CPUS],
            drained: [(0, 0); crate::arch::MAX_CPUS],
            tlbi,
            aside: pcp.nr_isolated_frees(),
        };
        for c in (0..crate::arch::MAX_CPUS).filter(|&c| c == 0 || mask & (1 << c) != 0) {
            p.lock[c] = global::lock_use(c);
            p.zone[c] = global::zone_use(c);
            p.drained[c] = pcp.drained(c);
        }
        p
    }

    /// The `profile:` lines of a run (module comment); CPU 0's own
    /// `Profile::take` calls are among its lock takes.
    fn print(
        &self,
        start: &Profile,
        mask: u64,
        cycles: u64,
        mode: Mode,
        out: &mut dyn Write,
    ) -> Result<()> {
        let f = cpu::counter_freq();
        let us = |t: u64| t * 1_000_000 / f;
        let ms = |t: u64| t * 1000 / f;
        let phase = |p: usize| ms(PHASES[p].load(Ordering::Relaxed));
        if mode != Mode::WorkersOnly {
            let tlbi = self.tlbi - start.tlbi;
            writeln!(
                out,
                "profile: cpu0 phases: add+online {} ms, waiting for a hot allocation {} ms, offline {} ms (waiting for pages {} ms), remove {} ms; broadcast TLB invalidations {tlbi} ({} a cycle); frees put aside for an offline: {}",
                phase(ADD_ONLINE),
                phase(HANDOFF),
                phase(OFFLINE),
                phase(OFFLINE_WAIT),
                phase(REMOVE),
                tlbi / cycles,
                self.aside - start.aside,
            )?;
        }
        for c in (0..crate::arch::MAX_CPUS).filter(|&c| c == 0 || mask & (1 << c) != 0) {
            let l = self.lock[c].since(start.lock[c]);
            let z = self.zone[c].since(start.zone[c]);
            let d = (
                self.drained[c].0 - start.drained[c].0,
                self.drained[c].1 - start.drained[c].1,
            );
            writeln!(
                out,
                "profile: cpu{c}: memory lock taken {} times, waited {} us (longest {} us), held {} us (longest {} us); lists refilled or trimmed under the zone lock {} times ({} allocations, {} frees; {} allocations failed), waited {} us (longest {} us), held {} us (longest {} us); lists drained {} times ({} pages)",
                l.takes,
                us(l.wait),
                us(l.longest_wait),
                us(l.held),
                us(l.longest_hold),
                z.takes,
                z.slow_allocs,
                z.slow_frees,
                z.failed_allocs,
                us(z.wait),
                us(z.longest_wait),
                us(z.held),
                us(z.longest_hold),
                d.0,
                d.1
            )?;
            let g = &GAPS[c];
            let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
            if c != 0 && mode != Mode::Spin {
                writeln!(
                    out,
                    "profile: cpu{c}: iterations over {GAP_US} us: {} with a lock ({} us), {} without (vCPU stopped) ({} us, longest {} us)",
                    r(&g.locked),
                    us(r(&g.locked_ticks)),
                    r(&g.stalls),
                    us(r(&g.stall_ticks)),
                    us(r(&g.longest_stall)),
                )?;
            }
        }
        Ok(())
    }
}
