//! Memory hotplug through the console (`console.md`), on a 2 GiB machine
//! booted with `mem=1G memmap=256M!0x90000000`: RAM 0x80000000-0xbfffffff
//! is held back for `probe`, except the emulated pmem 0x90000000-0x9fffffff
//! (`devmem` region 0). The held-back blocks are memory16, 17, 20..23.
//!
//! - probe / online / offline / remove cycles, with and without
//!   `memmap_on_memory`, one block at a time and several at once: the
//!   `/proc/meminfo` deltas are exact and the whole file is back to its
//!   baseline to the kB after every cycle; `/proc/vmstat` counts every block
//!   and a small, constant number of TLB invalidations per removal;
//! - `memory_hotplug.memmap_on_memory=1` on the command line;
//! - `devmem map --map=dev|mem`: struct pages on the device or in RAM;
//! - a removed address (linear map, struct page) faults, reported;
//! - every bad request is one `error: ERRNO: ...` line and changes nothing,
//!   allocation failures injected at every allocation included.

mod common;

use common::{Opts, Qemu, MISUSE_COUNTERS};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const APPEND: &str = "mem=1G memmap=256M!0x90000000";
const MEM: &str = "/sys/devices/system/memory";
const PROBE: &str = "/sys/devices/system/memory/probe";
const REMOVE: &str = "/sys/devices/system/memory/remove";
const MOM: &str = "/sys/module/memory_hotplug/parameters/memmap_on_memory";
const FAIL_NTH: &str = "/sys/kernel/debug/fail_nth_alloc";
const PTDUMP: &str = "/sys/kernel/debug/kernel_page_tables";
const VMEMMAP: &str = "/sys/kernel/debug/vmemmap";

const BLOCK: u64 = 0x800_0000;
/// One memory block, in kB.
const BLOCK_KB: u64 = BLOCK >> 10;
/// The struct pages of one block (32768 pages of 64 bytes), in kB.
const MEMMAP_KB: u64 = 2048;
/// The held-back blocks `probe` takes: memory16, 17, 20, 21, 22, 23.
const HELD_BACK: [u64; 6] = [
    0x8000_0000,
    0x8800_0000,
    0xa000_0000,
    0xa800_0000,
    0xb000_0000,
    0xb800_0000,
];
/// The device region (`devmem` 0).
const PMEM: u64 = 0x9000_0000;
const PMEM_SIZE: u64 = 0x1000_0000;
const PMEM_KB: u64 = PMEM_SIZE >> 10;
/// Its struct pages, in kB.
const PMEM_MEMMAP_KB: u64 = (PMEM_SIZE / 64) >> 10;
const LINEAR: u64 = 0xffff_0000_0000_0000;

/// Commands answer in milliseconds: a short bound makes a hang fail fast.
fn boot(append: &str) -> Qemu {
    Qemu::boot(
        Opts::new()
            .mem("2G")
            .append(append)
            .timeout(Duration::from_secs(20)),
    )
}

fn id(addr: u64) -> u64 {
    addr / BLOCK
}

fn state_path(id: u64) -> String {
    format!("{MEM}/memory{id}/state")
}

/// Runs `cmd`, which must succeed; kernel log lines (`memory16: added
/// ...`) may come with it, an `error:` line may not.
fn ok(q: &mut Qemu, cmd: &str) -> String {
    q.run_ok(cmd)
}

fn probe(q: &mut Qemu, arg: &str) {
    ok(q, &format!("echo {arg} > {PROBE}"));
}

fn remove(q: &mut Qemu, arg: &str) {
    ok(q, &format!("echo {arg} > {REMOVE}"));
}

fn set_state(q: &mut Qemu, id: u64, state: &str) {
    q.write(&state_path(id), state);
}

fn state(q: &mut Qemu, id: u64) -> String {
    q.read(&state_path(id)).trim_end().to_string()
}

fn set_mom(q: &mut Qemu, on: bool) {
    q.write(MOM, if on { "Y" } else { "N" });
    let want = if on { "Y\n" } else { "N\n" };
    let got = q.read(MOM);
    if got != want {
        q.fail(&format!("{MOM} reads {got:?} after writing {want:?}"));
    }
}

/// The memoryN directories.
fn blocks(q: &mut Qemu) -> Vec<u64> {
    let ls = q.run_ok(&format!("ls {MEM}"));
    let mut ids: Vec<u64> = ls
        .lines()
        .filter_map(|l| l.strip_prefix("memory")?.strip_suffix('/')?.parse().ok())
        .collect();
    ids.sort();
    ids
}

/// `/proc/vmstat` as name -> value.
fn vmstat(q: &mut Qemu) -> BTreeMap<String, u64> {
    let text = q.read("/proc/vmstat");
    let mut map = BTreeMap::new();
    for line in text.lines() {
        match line
            .split_once(' ')
            .and_then(|(k, v)| Some((k, v.parse().ok()?)))
        {
            Some((k, v)) => {
                map.insert(k.to_string(), v);
            }
            None => q.fail(&format!("bad /proc/vmstat line {line:?}")),
        }
    }
    map
}

fn counter(q: &mut Qemu, stat: &BTreeMap<String, u64>, name: &str) -> u64 {
    match stat.get(name) {
        Some(&v) => v,
        None => q.fail(&format!("no {name} in /proc/vmstat")),
    }
}

fn no_warnings(q: &mut Qemu, when: &str) {
    q.assert_no_misuse(when);
}

fn get(q: &mut Qemu, info: &BTreeMap<String, u64>, name: &str) -> u64 {
    match info.get(name) {
        Some(&v) => v,
        None => q.fail(&format!("no {name} in /proc/meminfo")),
    }
}

/// Exact `/proc/meminfo` changes from `base` to `now`: `(field, kB)`.
fn expect_deltas(
    q: &mut Qemu,
    base: &BTreeMap<String, u64>,
    now: &BTreeMap<String, u64>,
    deltas: &[(&str, i64)],
    when: &str,
) {
    q.expect_meminfo_deltas(base, now, deltas, when);
}

/// Top-level `/proc/iomem` lines naming System RAM that `base` lacks, as
/// `[start, end)`; everything else must be as in `base`.
fn new_system_ram(q: &mut Qemu, base: &str, now: &str) -> Vec<(u64, u64)> {
    let base_lines: Vec<&str> = base.lines().collect();
    let mut rest = Vec::new();
    let mut added = Vec::new();
    for line in now.lines() {
        if !base_lines.contains(&line) && !line.starts_with(' ') {
            if let Some(range) = line.strip_suffix(" : System RAM") {
                let parsed = range.split_once('-').and_then(|(s, e)| {
                    Some((
                        u64::from_str_radix(s, 16).ok()?,
                        u64::from_str_radix(e, 16).ok()? + 1,
                    ))
                });
                match parsed {
                    Some(r) => added.push(r),
                    None => q.fail(&format!("bad /proc/iomem line {line:?}")),
                }
                continue;
            }
        }
        rest.push(line);
    }
    if rest != base_lines {
        q.fail(&format!(
            "/proc/iomem changed beyond new System RAM:\nbefore:\n{base}now:\n{now}"
        ));
    }
    added
}

/// `/proc/iomem` is `base` plus System RAM covering exactly `blocks`.
fn expect_iomem_ram(q: &mut Qemu, base: &str, blocks: &[u64], when: &str) {
    let now = q.read("/proc/iomem");
    let mut added = new_system_ram(q, base, &now);
    added.sort();
    let mut covered: Vec<u64> = Vec::new();
    for &(s, e) in &added {
        if s % BLOCK != 0 || e % BLOCK != 0 || s >= e {
            q.fail(&format!(
                "{when}: System RAM {s:#x}-{e:#x} is not whole blocks"
            ));
        }
        covered.extend((s..e).step_by(BLOCK as usize));
    }
    let mut want = blocks.to_vec();
    want.sort();
    if covered != want {
        q.fail(&format!(
            "{when}: /proc/iomem has new System RAM at {covered:x?}, want {want:x?}:\n{now}"
        ));
    }
}

/// Everything a refused request must leave alone.
#[derive(PartialEq, Eq)]
struct Snapshot(Vec<(String, String)>);

fn snapshot(q: &mut Qemu) -> Snapshot {
    let mut s = vec![
        ("/proc/meminfo".to_string(), q.read("/proc/meminfo")),
        ("/proc/iomem".to_string(), q.read("/proc/iomem")),
        (format!("ls {MEM}"), q.run_ok(&format!("ls {MEM}"))),
        (PTDUMP.to_string(), q.read(PTDUMP)),
        (VMEMMAP.to_string(), q.read(VMEMMAP)),
        ("devmem list".to_string(), q.run_ok("devmem list")),
        (MOM.to_string(), q.read(MOM)),
    ];
    for id in blocks(q) {
        let path = state_path(id);
        let st = q.read(&path);
        s.push((path, st));
    }
    // Free pages, table pages and warnings; not the event counters.
    let stat = q.read("/proc/vmstat");
    let keep: String = stat
        .lines()
        .filter(|l| l.starts_with("nr_") || MISUSE_COUNTERS.iter().any(|w| l.starts_with(w)))
        .map(|l| format!("{l}\n"))
        .collect();
    s.push(("/proc/vmstat (state)".to_string(), keep));
    Snapshot(s)
}

/// The `/proc/vmstat` counters a refused request must not move: all but
/// table allocations and TLB invalidations (a rollback frees what it took).
fn events(q: &mut Qemu) -> String {
    let stat = q.read("/proc/vmstat");
    stat.lines()
        .filter(|l| !l.starts_with("pgtable_") && !l.starts_with("tlb_"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn expect_same_events(q: &mut Qemu, before: &str, after_what: &str) {
    let now = events(q);
    if now != before {
        q.fail(&format!(
            "{after_what} moved /proc/vmstat counters:\nbefore:\n{before}after:\n{now}"
        ));
    }
}

fn expect_unchanged(q: &mut Qemu, before: &Snapshot, after_what: &str) {
    let now = snapshot(q);
    if now == *before {
        return;
    }
    let mut msg = format!("{after_what} changed something:\n");
    let n = before.0.len().max(now.0.len());
    for i in 0..n {
        match (before.0.get(i), now.0.get(i)) {
            (Some(b), Some(a)) if b == a => {}
            (b, a) => {
                msg += &format!("--- before: {b:?}\n+++ after: {a:?}\n");
            }
        }
    }
    q.fail(&msg);
}

/// Runs `cmd`, which must be refused with `errno` and change nothing.
fn refused(q: &mut Qemu, cmd: &str, errno: &str) -> String {
    let before = snapshot(q);
    let ev = events(q);
    let msg = q.run_err(cmd, errno);
    let what = format!("`{cmd}` (refused: {errno}: {msg})");
    expect_unchanged(q, &before, &what);
    expect_same_events(q, &ev, &what);
    msg
}

fn echo(data: &str, path: &str) -> String {
    format!("echo {data} > {path}")
}

/// `touch ADDR` must fault: one line `error: EFAULT: ...translation
/// fault...`.
fn expect_fault(q: &mut Qemu, va: u64) {
    let msg = q.run_err(&format!("touch {va:#x}"), "EFAULT");
    if !msg.contains("translation fault") {
        q.fail(&format!("touch {va:#x}: not a translation fault: {msg:?}"));
    }
}

fn expect_touch(q: &mut Qemu, va: u64) {
    let out = q.run_ok(&format!("touch {va:#x}"));
    if !out.starts_with(&format!("{va:#018x}: 0x")) || out.lines().count() != 1 {
        q.fail(&format!("touch {va:#x} printed {out:?}"));
    }
}

/// `page PFN` must show zone `zone`.
fn expect_page_zone(q: &mut Qemu, pfn: u64, zone: &str) {
    let out = q.run_ok(&format!("page {pfn:#x}"));
    if out.lines().count() != 1 || !out.contains(&format!(" zone {zone} ")) {
        q.fail(&format!("page {pfn:#x}: want zone {zone}, got {out:?}"));
    }
}

fn expect_page_unmapped(q: &mut Qemu, pfn: u64) {
    q.run_err(&format!("page {pfn:#x}"), "EFAULT");
}

// ---------------------------------------------------------------------------
// probe / online / offline / remove cycles

/// How one cycle hot-adds and hot-removes the held-back blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    /// `probe` and `remove` once per block.
    OneByOne,
    /// 0x80000000 and 0x88000000 one by one, then
    /// `0xa0000000 0x20000000` (four blocks) in one write.
    Multi,
}

/// One cycle over every held-back block; the whole `/proc/meminfo` must
/// be `base_text` again at the end. Returns the TLB invalidations of the
/// removal.
fn cycle(
    q: &mut Qemu,
    n: usize,
    mom: bool,
    shape: Shape,
    base_text: &str,
    base_iomem: &str,
) -> u64 {
    let when = |what: &str| format!("cycle {n} (memmap_on_memory={mom}, {shape:?}): {what}");
    set_mom(q, mom);
    let base = q.meminfo();
    let boot_blocks = blocks(q);
    let k = HELD_BACK.len() as i64;

    // probe: offline blocks, System RAM in /proc/iomem, struct pages mapped.
    match shape {
        Shape::OneByOne => {
            for a in HELD_BACK {
                probe(q, &format!("{a:#x}"));
            }
        }
        Shape::Multi => {
            probe(q, "0x80000000");
            probe(q, "0x88000000");
            probe(q, "\"0xa0000000 0x20000000\"");
        }
    }
    let mut want_blocks = boot_blocks.clone();
    want_blocks.extend(HELD_BACK.iter().map(|&a| id(a)));
    want_blocks.sort();
    let now_blocks = blocks(q);
    if now_blocks != want_blocks {
        q.fail(&when(&format!(
            "memory blocks after probe are {now_blocks:?}, want {want_blocks:?}"
        )));
    }
    for a in HELD_BACK {
        let st = state(q, id(a));
        if st != "offline" {
            q.fail(&when(&format!("memory{} is {st:?} after probe", id(a))));
        }
    }
    expect_iomem_ram(q, base_iomem, &HELD_BACK, &when("after probe"));
    let probed = q.meminfo();
    let (vm, alt) = if mom {
        (0, MEMMAP_KB as i64 * k)
    } else {
        (MEMMAP_KB as i64 * k, 0)
    };
    expect_deltas(
        q,
        &base,
        &probed,
        &[
            ("MemTotal", 0),
            ("Vmemmap", vm),
            ("VmemmapAltmap", alt),
            ("DeviceMem", 0),
        ],
        &when("after probe"),
    );

    // online, in a mix of the three words.
    let words = ["online", "online_kernel", "online_movable"];
    for (i, a) in HELD_BACK.iter().enumerate() {
        let word = words[(i + n) % 3];
        set_state(q, id(*a), word);
        let st = state(q, id(*a));
        let zones = q.read(&format!("{MEM}/memory{}/valid_zones", id(*a)));
        let zone = if word == "online_movable" {
            "Movable\n"
        } else {
            "Normal\n"
        };
        if st != "online" || zones != zone {
            q.fail(&when(&format!(
                "memory{} after `{word}`: state {st:?}, valid_zones {zones:?}",
                id(*a)
            )));
        }
    }
    let online = q.meminfo();
    let per_block = BLOCK_KB as i64 - if mom { MEMMAP_KB as i64 } else { 0 };
    expect_deltas(
        q,
        &base,
        &online,
        &[
            ("MemTotal", per_block * k),
            ("Vmemmap", vm),
            ("VmemmapAltmap", alt),
            ("DeviceMem", 0),
        ],
        &when("after online"),
    );
    // Onlining allocates nothing: every page it adds is free.
    expect_deltas(
        q,
        &probed,
        &online,
        &[("MemFree", per_block * k), ("PageTables", 0)],
        &when("after online (from probe)"),
    );
    for a in HELD_BACK {
        expect_touch(q, LINEAR + a + BLOCK - 8);
    }

    // offline: MemTotal back, struct pages still there.
    for a in HELD_BACK.iter().rev() {
        set_state(q, id(*a), "offline");
        let st = state(q, id(*a));
        if st != "offline" {
            q.fail(&when(&format!("memory{} is {st:?} after offline", id(*a))));
        }
    }
    let offline = q.meminfo();
    expect_deltas(
        q,
        &base,
        &offline,
        &[("MemTotal", 0), ("Vmemmap", vm), ("VmemmapAltmap", alt)],
        &when("after offline"),
    );
    if offline != probed {
        q.fail(&when(&format!(
            "/proc/meminfo after offline is {offline:?}, after probe it was {probed:?}"
        )));
    }

    // remove: everything as before, to the kB and byte.
    let stat = vmstat(q);
    let tlbi_before = counter(q, &stat, "tlb_kernel_invalidations");
    match shape {
        Shape::OneByOne => {
            for a in HELD_BACK {
                remove(q, &format!("{a:#x}"));
            }
        }
        Shape::Multi => {
            remove(q, "\"0xa0000000 0x20000000\"");
            remove(q, "0x88000000");
            remove(q, "0x80000000");
        }
    }
    let stat = vmstat(q);
    let tlbi = counter(q, &stat, "tlb_kernel_invalidations") - tlbi_before;
    let text = q.read("/proc/meminfo");
    if text != base_text {
        q.fail(&when(&format!(
            "/proc/meminfo after remove is\n{text}not the baseline\n{base_text}"
        )));
    }
    let iomem = q.read("/proc/iomem");
    if iomem != base_iomem {
        q.fail(&when(&format!(
            "/proc/iomem after remove is\n{iomem}not the baseline\n{base_iomem}"
        )));
    }
    let now_blocks = blocks(q);
    if now_blocks != boot_blocks {
        q.fail(&when(&format!(
            "memory blocks after remove are {now_blocks:?}, want {boot_blocks:?}"
        )));
    }
    tlbi
}

#[test]
fn probe_online_offline_remove_cycles_restore_meminfo() {
    let started = Instant::now();
    let mut q = boot(APPEND);
    let base_text = q.read("/proc/meminfo");
    let base_iomem = q.read("/proc/iomem");
    let base_ptdump = q.read(PTDUMP);
    let stat0 = vmstat(&mut q);
    let blocks0 = blocks(&mut q);
    if blocks0 != (8..16).collect::<Vec<u64>>() {
        q.fail(&format!("boot memory blocks are {blocks0:?}, want 8..15"));
    }
    let mom0 = q.read(MOM);
    if mom0 != "N\n" {
        q.fail(&format!("{MOM} is {mom0:?} without the boot parameter"));
    }

    const CYCLES: usize = 20;
    let k = HELD_BACK.len() as u64;
    // TLB invalidations of each removal, by kind of cycle.
    let mut tlbis: BTreeMap<(bool, Shape), Vec<u64>> = BTreeMap::new();
    for n in 0..CYCLES {
        let mom = n % 2 == 1;
        // The multi-block extension in the last two cycles: once with
        // memmap_on_memory N, once with Y.
        let shape = if n >= CYCLES - 2 {
            Shape::Multi
        } else {
            Shape::OneByOne
        };
        let tlbi = cycle(&mut q, n, mom, shape, &base_text, &base_iomem);
        if tlbi > 8 * k {
            q.fail(&format!(
                "cycle {n}: removing {k} blocks took {tlbi} TLB invalidations, more than 8 a block"
            ));
        }
        tlbis.entry((mom, shape)).or_default().push(tlbi);
        no_warnings(&mut q, &format!("after cycle {n}"));
    }
    eprintln!("TLB invalidations per removal of {k} blocks: {tlbis:?}");
    // A removal of the same blocks from the same state costs the same.
    for ((mom, shape), v) in &tlbis {
        if v.iter().any(|&t| t != v[0]) {
            q.fail(&format!(
                "TLB invalidations per removal vary for memmap_on_memory={mom} {shape:?}: {v:?}"
            ));
        }
    }

    // Every block counted once on the way in and once on the way out.
    let stat = vmstat(&mut q);
    let blocks_total = CYCLES as u64 * k;
    for (name, want) in [
        ("memory_hotplug_add", blocks_total),
        ("memory_hotplug_remove", blocks_total),
        ("memory_online", blocks_total),
        ("memory_offline", blocks_total),
        ("devmem_map", 0),
        ("devmem_unmap", 0),
    ] {
        let (a, b) = (counter(&mut q, &stat0, name), counter(&mut q, &stat, name));
        if b - a != want {
            q.fail(&format!(
                "/proc/vmstat {name} rose by {} over {CYCLES} cycles, want {want}",
                b - a
            ));
        }
    }
    for name in ["nr_free_pages", "nr_page_table_pages"] {
        let (a, b) = (counter(&mut q, &stat0, name), counter(&mut q, &stat, name));
        if a != b {
            q.fail(&format!(
                "/proc/vmstat {name} is {b} after the cycles, {a} before"
            ));
        }
    }
    let ptdump = q.read(PTDUMP);
    if ptdump != base_ptdump {
        q.fail(&format!(
            "kernel_page_tables after the cycles is\n{ptdump}not as at boot\n{base_ptdump}"
        ));
    }
    set_mom(&mut q, false);
    q.poweroff();
    let wall = started.elapsed();
    eprintln!("{CYCLES} hotplug cycles in {wall:.1?}");
    assert!(
        wall < Duration::from_secs(60),
        "{CYCLES} cycles took {wall:.1?}, more than 60 s"
    );
}

/// Blocks added and onlined one after another, `memmap_on_memory` switched
/// between blocks, then offlined and removed last in, first out: struct
/// pages and tables of later blocks may live in earlier Normal blocks, never
/// in a Movable one.
#[test]
fn interleaved_blocks_with_mixed_memmap_on_memory() {
    let mut q = boot(APPEND);
    let q = &mut q;
    let base_text = q.read("/proc/meminfo");
    let base_iomem = q.read("/proc/iomem");
    let base = q.meminfo();
    let words = ["online", "online_kernel", "online_movable"];
    for n in 0..10 {
        let (mut total, mut vm, mut alt) = (0i64, 0i64, 0i64);
        for (i, &a) in HELD_BACK.iter().enumerate() {
            let mom = (i + n) % 2 == 1;
            set_mom(q, mom);
            probe(q, &format!("{a:#x}"));
            let word = if i == 0 {
                "online_movable"
            } else {
                words[(i + n) % 3]
            };
            set_state(q, id(a), word);
            total += BLOCK_KB as i64 - if mom { MEMMAP_KB as i64 } else { 0 };
            if mom {
                alt += MEMMAP_KB as i64;
            } else {
                vm += MEMMAP_KB as i64;
            }
            let now = q.meminfo();
            expect_deltas(
                q,
                &base,
                &now,
                &[("MemTotal", total), ("Vmemmap", vm), ("VmemmapAltmap", alt)],
                &format!(
                    "cycle {n}: memory{} `{word}`, memmap_on_memory={mom}",
                    id(a)
                ),
            );
            expect_touch(q, LINEAR + a);
        }
        // Nothing the kernel allocated after it went to the Movable block:
        // it goes offline first and comes back.
        set_state(q, 16, "offline");
        set_state(q, 16, "online_movable");
        for &a in HELD_BACK.iter().rev() {
            set_state(q, id(a), "offline");
            remove(q, &format!("{a:#x}"));
            expect_fault(q, LINEAR + a);
        }
        let text = q.read("/proc/meminfo");
        if text != base_text {
            q.fail(&format!(
                "cycle {n}: /proc/meminfo after remove is\n{text}not the baseline\n{base_text}"
            ));
        }
        let iomem = q.read("/proc/iomem");
        if iomem != base_iomem {
            q.fail(&format!(
                "cycle {n}: /proc/iomem after remove is\n{iomem}not\n{base_iomem}"
            ));
        }
        no_warnings(q, &format!("after cycle {n}"));
    }
}

// ---------------------------------------------------------------------------
// memmap_on_memory from the command line

#[test]
fn memmap_on_memory_boot_parameter() {
    let mut q = boot(&format!("{APPEND} memory_hotplug.memmap_on_memory=1"));
    let mom = q.read(MOM);
    if mom != "Y\n" {
        q.fail(&format!(
            "{MOM} is {mom:?} after memory_hotplug.memmap_on_memory=1"
        ));
    }
    let base_text = q.read("/proc/meminfo");
    let base = q.meminfo();
    if base["VmemmapAltmap"] != 0 {
        q.fail("VmemmapAltmap is not 0 at boot");
    }
    // It takes effect: the struct pages of a probed block are on the block.
    probe(&mut q, "0x88000000");
    let probed = q.meminfo();
    expect_deltas(
        &mut q,
        &base,
        &probed,
        &[
            ("Vmemmap", 0),
            ("VmemmapAltmap", MEMMAP_KB as i64),
            ("MemTotal", 0),
        ],
        "probe with memory_hotplug.memmap_on_memory=1",
    );
    let vmemmap = q.read(VMEMMAP);
    let self_hosted_kb: u64 = vmemmap
        .lines()
        .filter(|l| l.ends_with(" altmap:memmap_on_memory"))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)?
                .strip_suffix('K')?
                .parse::<u64>()
                .ok()
        })
        .sum();
    // On the block itself.
    let pfns = (0x88000, 0x90000);
    expect_vmemmap_backed(&mut q, "altmap:memmap_on_memory", pfns, pfns, "memory17");
    if self_hosted_kb != MEMMAP_KB {
        q.fail(&format!(
            "{VMEMMAP} shows {self_hosted_kb}K altmap:memmap_on_memory, want {MEMMAP_KB}K:\n{vmemmap}"
        ));
    }
    set_state(&mut q, 17, "online");
    let online = q.meminfo();
    expect_deltas(
        &mut q,
        &base,
        &online,
        &[("MemTotal", (BLOCK_KB - MEMMAP_KB) as i64)],
        "online with memmap_on_memory",
    );
    set_state(&mut q, 17, "offline");
    remove(&mut q, "0x88000000");
    let text = q.read("/proc/meminfo");
    if text != base_text {
        q.fail(&format!(
            "/proc/meminfo after remove is\n{text}not\n{base_text}"
        ));
    }
    // The run-time switch still works both ways.
    set_mom(&mut q, false);
    set_mom(&mut q, true);
    no_warnings(&mut q, "at the end");
    q.poweroff();
}

// ---------------------------------------------------------------------------
// devmem

/// Sizes (kB) of the `/sys/kernel/debug/vmemmap` lines backed by `backing`.
fn vmemmap_kb(q: &mut Qemu, backing: &str) -> u64 {
    let text = q.read(VMEMMAP);
    text.lines()
        .filter(|l| l.split_whitespace().last() == Some(backing))
        .map(|l| {
            let size = l
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.strip_suffix('K'));
            size.and_then(|s| s.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("bad {VMEMMAP} line {l:?}"))
        })
        .sum()
}

/// The `/sys/kernel/debug/vmemmap` lines backed by `backing`, as
/// `(va_start, va_end, kB, backing pfn)`.
fn vmemmap_lines(q: &mut Qemu, backing: &str) -> Vec<(u64, u64, u64, u64)> {
    let text = q.read(VMEMMAP);
    let mut v = Vec::new();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.last() != Some(&backing) {
            continue;
        }
        let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
        let parsed = (|| {
            let (a, b) = w.first()?.split_once('-')?;
            let kb = w.get(1)?.strip_suffix('K')?.parse().ok()?;
            (w.get(2) == Some(&"pfn")).then_some(())?;
            Some((hex(a)?, hex(b)?, kb, hex(w.get(3)?)?))
        })();
        match parsed {
            Some(x) => v.push(x),
            None => q.fail(&format!("bad {VMEMMAP} line {l:?}")),
        }
    }
    v
}

/// The struct pages of `[pfn, end_pfn)` are mapped by `backing` lines
/// exactly, from pages inside `[lo_pfn, hi_pfn)`.
fn expect_vmemmap_backed(
    q: &mut Qemu,
    backing: &str,
    pfns: (u64, u64),
    from: (u64, u64),
    what: &str,
) {
    let lines = vmemmap_lines(q, backing);
    let va = |pfn: u64| 0xffff_fc00_0000_0000 + pfn * 64;
    let mut at = va(pfns.0);
    for &(s, e, kb, pfn) in &lines {
        let pages = (e - s) >> 12;
        let ok = s == at && kb == (e - s) >> 10 && pfn >= from.0 && pfn + pages <= from.1;
        if !ok {
            q.fail(&format!(
                "{what}: {backing} line {s:#x}-{e:#x} {kb}K pfn {pfn:#x}: want it at {at:#x}, \
                 backed inside pfns {:#x}-{:#x}; all: {lines:x?}",
                from.0, from.1
            ));
        }
        at = e;
    }
    if at != va(pfns.1) {
        q.fail(&format!(
            "{what}: {backing} lines cover vmemmap up to {at:#x}, want {:#x}: {lines:x?}",
            va(pfns.1)
        ));
    }
}

#[test]
fn devmem_map_dev_keeps_vmemmap_map_mem_grows_it_by_size_over_64() {
    let mut q = boot(APPEND);
    let list = q.run_ok("devmem list");
    if list != "0 0x90000000-0x9fffffff pmem unmapped\n" {
        q.fail(&format!("devmem list is {list:?}"));
    }
    let base_text = q.read("/proc/meminfo");
    let base_iomem = q.read("/proc/iomem");
    let base = q.meminfo();
    let pfn = PMEM >> 12;
    let last_pfn = ((PMEM + PMEM_SIZE) >> 12) - 1;
    expect_page_unmapped(&mut q, pfn);
    expect_fault(&mut q, LINEAR + PMEM);

    // --map=dev: struct pages on the device.
    ok(&mut q, "devmem map 0 --map=dev");
    let list = q.run_ok("devmem list");
    if list != "0 0x90000000-0x9fffffff pmem mapped(dev)\n" {
        q.fail(&format!("devmem list after map=dev is {list:?}"));
    }
    let dev = q.meminfo();
    let tables = get(&mut q, &dev, "PageTables") as i64 - base["PageTables"] as i64;
    expect_deltas(
        &mut q,
        &base,
        &dev,
        &[
            ("MemTotal", 0),
            ("Vmemmap", 0),
            ("VmemmapAltmap", PMEM_MEMMAP_KB as i64),
            ("DeviceMem", PMEM_KB as i64),
            ("MemFree", -tables),
        ],
        "devmem map 0 --map=dev",
    );
    if !(0..=16).contains(&tables) {
        q.fail(&format!(
            "devmem map 0 --map=dev took {tables} kB of page tables"
        ));
    }
    if dev["VmemmapAltmap"] != 4096 || dev["DeviceMem"] != 262144 {
        q.fail(&format!("after map=dev: {dev:?}"));
    }
    let altmap_kb = vmemmap_kb(&mut q, "altmap:pmem");
    if altmap_kb != PMEM_MEMMAP_KB {
        let text = q.read(VMEMMAP);
        q.fail(&format!(
            "{VMEMMAP} has {altmap_kb}K altmap:pmem, want {PMEM_MEMMAP_KB}K:\n{text}"
        ));
    }
    // On the device itself, for the whole device.
    let dev_pfns = (pfn, last_pfn + 1);
    expect_vmemmap_backed(&mut q, "altmap:pmem", dev_pfns, dev_pfns, "map=dev");
    expect_page_zone(&mut q, pfn, "Device");
    expect_page_zone(&mut q, last_pfn, "Device");
    expect_touch(&mut q, LINEAR + PMEM);
    ok(&mut q, "devmem unmap 0");
    let text = q.read("/proc/meminfo");
    if text != base_text {
        q.fail(&format!(
            "/proc/meminfo after unmap (dev) is\n{text}not\n{base_text}"
        ));
    }
    if vmemmap_kb(&mut q, "altmap:pmem") != 0 {
        q.fail("altmap:pmem lines left after unmap");
    }
    expect_page_unmapped(&mut q, pfn);
    expect_page_unmapped(&mut q, last_pfn);
    expect_fault(&mut q, LINEAR + PMEM);

    // --map=mem: struct pages in system RAM, size / 64 of them.
    ok(&mut q, "devmem map 0 --map=mem");
    let list = q.run_ok("devmem list");
    if list != "0 0x90000000-0x9fffffff pmem mapped(mem)\n" {
        q.fail(&format!("devmem list after map=mem is {list:?}"));
    }
    let mem = q.meminfo();
    let tables = get(&mut q, &mem, "PageTables") as i64 - base["PageTables"] as i64;
    expect_deltas(
        &mut q,
        &base,
        &mem,
        &[
            ("MemTotal", 0),
            ("Vmemmap", PMEM_MEMMAP_KB as i64),
            ("VmemmapAltmap", 0),
            ("DeviceMem", PMEM_KB as i64),
            ("MemFree", -(PMEM_MEMMAP_KB as i64) - tables),
        ],
        "devmem map 0 --map=mem",
    );
    if vmemmap_kb(&mut q, "altmap:pmem") != 0 {
        q.fail("altmap:pmem lines with --map=mem");
    }
    expect_page_zone(&mut q, pfn, "Device");
    expect_page_zone(&mut q, last_pfn, "Device");
    ok(&mut q, "devmem unmap 0");
    let text = q.read("/proc/meminfo");
    if text != base_text {
        q.fail(&format!(
            "/proc/meminfo after unmap (mem) is\n{text}not\n{base_text}"
        ));
    }
    let iomem = q.read("/proc/iomem");
    if iomem != base_iomem {
        q.fail(&format!(
            "/proc/iomem after unmap is\n{iomem}not\n{base_iomem}"
        ));
    }
    expect_page_unmapped(&mut q, pfn);
    let list = q.run_ok("devmem list");
    if list != "0 0x90000000-0x9fffffff pmem unmapped\n" {
        q.fail(&format!("devmem list after unmap is {list:?}"));
    }
    let stat = vmstat(&mut q);
    for (name, want) in [("devmem_map", 2), ("devmem_unmap", 2)] {
        let v = counter(&mut q, &stat, name);
        if v != want {
            q.fail(&format!("/proc/vmstat {name} is {v}, want {want}"));
        }
    }
    no_warnings(&mut q, "after devmem map/unmap");
    q.poweroff();
}

// ---------------------------------------------------------------------------
// Removed memory faults

#[test]
fn touched_removed_address_faults() {
    for mom in [false, true] {
        let mut q = boot(APPEND);
        set_mom(&mut q, mom);
        let base_text = q.read("/proc/meminfo");
        let va = LINEAR + 0x8000_0000;
        expect_fault(&mut q, va);
        expect_page_unmapped(&mut q, 0x80000);

        probe(&mut q, "0x80000000");
        // Mapped as soon as it is added (Linux's arch_add_memory).
        expect_touch(&mut q, va);
        set_state(&mut q, 16, "online");
        expect_touch(&mut q, va);
        expect_touch(&mut q, va + BLOCK - 8);
        expect_page_zone(&mut q, 0x80000, "Normal");
        expect_page_zone(&mut q, 0x87fff, "Normal");
        set_state(&mut q, 16, "offline");
        remove(&mut q, "0x80000000");

        // Exactly one error line, then the console goes on.
        for a in [va, va + 0x1000, va + BLOCK - 8] {
            expect_fault(&mut q, a);
        }
        let text = q.read("/proc/meminfo");
        if text != base_text {
            q.fail(&format!(
                "/proc/meminfo after remove is\n{text}not\n{base_text}"
            ));
        }
        expect_page_unmapped(&mut q, 0x80000);
        expect_page_unmapped(&mut q, 0x87fff);
        // A second fault is handled like the first; boot RAM is still there.
        expect_fault(&mut q, va);
        expect_touch(&mut q, LINEAR + 0x4000_0000);
        // The block can come back.
        probe(&mut q, "0x80000000");
        set_state(&mut q, 16, "online_movable");
        expect_touch(&mut q, va);
        expect_page_zone(&mut q, 0x80000, if mom { "Normal" } else { "Movable" });
        set_state(&mut q, 16, "offline");
        remove(&mut q, "0x80000000");
        expect_fault(&mut q, va);
        let text = q.read("/proc/meminfo");
        if text != base_text {
            q.fail(&format!(
                "/proc/meminfo after the second remove is\n{text}not\n{base_text}"
            ));
        }
        no_warnings(&mut q, "after the faults");
        q.poweroff();
    }
}

// ---------------------------------------------------------------------------
// Bad requests

#[test]
fn every_bad_request_is_refused_and_changes_nothing() {
    let mut q = boot(APPEND);
    let q = &mut q;
    let start = snapshot(q);

    // probe
    refused(q, &echo("0x80001000", PROBE), "EINVAL");
    refused(q, &echo("\"0x80000000 0x1000\"", PROBE), "EINVAL");
    refused(q, &echo("\"0x80000000 0\"", PROBE), "EINVAL");
    refused(q, &echo("\"0x80000000 0x8001000\"", PROBE), "EINVAL");
    // Boot RAM is present already, as Linux would say.
    refused(q, &echo("0x40000000", PROBE), "EEXIST");
    refused(q, &echo("0x78000000", PROBE), "EEXIST");
    // Not RAM at all.
    refused(q, &echo("0x200000000", PROBE), "EINVAL");
    refused(q, &echo("0xc0000000", PROBE), "EINVAL");
    // Partly held-back RAM, partly boot RAM or beyond RAM: all or nothing.
    refused(q, &echo("\"0x78000000 0x10000000\"", PROBE), "EEXIST");
    refused(q, &echo("\"0xb8000000 0x10000000\"", PROBE), "EINVAL");
    // Beyond the physical address range (aligned addresses), or a size
    // that makes the end overflow.
    refused(q, &echo("0x800000000000", PROBE), "ERANGE");
    refused(q, &echo("0xfffffffff8000000", PROBE), "ERANGE");
    refused(
        q,
        &echo("\"0x80000000 0xffffffff80000000\"", PROBE),
        "ERANGE",
    );
    refused(q, &echo("\"0x80000000 0x800000000000\"", PROBE), "ERANGE");
    // Misaligned comes first (Linux's probe_store checks it first).
    refused(q, &echo("0xffffffffffff000", PROBE), "EINVAL");
    // Numbers that do not fit.
    refused(q, &echo("0x1ffffffffffffffff", PROBE), "EINVAL");
    // The device region, whole or in part.
    refused(q, &echo("0x90000000", PROBE), "EBUSY");
    refused(q, &echo("\"0x88000000 0x10000000\"", PROBE), "EBUSY");
    refused(q, &echo("\"0x80000000 0x40000000\"", PROBE), "EBUSY");

    // remove
    refused(q, &echo("0x40000000", REMOVE), "EPERM");
    refused(q, &echo("\"0x78000000 0x10000000\"", REMOVE), "EPERM");
    refused(q, &echo("0x80000000", REMOVE), "EINVAL");
    refused(q, &echo("0x80001000", REMOVE), "EINVAL");
    refused(q, &echo("0xfffffffff8000000", REMOVE), "ERANGE");

    // state and parameters
    refused(q, &echo("offline", &state_path(8)), "EBUSY");
    refused(q, &echo("online", &state_path(8)), "EINVAL");
    refused(q, &echo("online_movable", &state_path(8)), "EINVAL");
    refused(q, &echo("bogus", &state_path(8)), "EINVAL");
    refused(q, &echo("online", &state_path(16)), "ENOENT");
    refused(q, &echo("maybe", MOM), "EINVAL");
    refused(q, &echo("yes", MOM), "EINVAL");
    refused(q, &echo("many", FAIL_NTH), "EINVAL");

    // devmem
    refused(q, "devmem map 7 --map=dev", "ENODEV");
    refused(q, "devmem unmap 7", "ENODEV");
    refused(q, "devmem map 0 --map=xyz", "EINVAL");
    refused(q, "devmem map 0", "EINVAL");
    refused(q, "devmem unmap 0", "EINVAL");
    ok(q, "devmem map 0 --map=dev");
    refused(q, "devmem map 0 --map=dev", "EBUSY");
    refused(q, "devmem map 0 --map=mem", "EBUSY");
    // Mapped device memory is still not RAM to probe.
    refused(q, &echo("0x90000000", PROBE), "EBUSY");
    ok(q, "devmem unmap 0");
    refused(q, "devmem unmap 0", "EINVAL");
    expect_unchanged(q, &start, "devmem map and unmap");

    // With hot-added blocks: memory16 online, memory17 offline.
    probe(q, "0x80000000");
    set_state(q, 16, "online");
    probe(q, "0x88000000");
    refused(q, &echo("0x80000000", PROBE), "EEXIST");
    refused(q, &echo("0x88000000", PROBE), "EEXIST");
    refused(q, &echo("\"0x80000000 0x10000000\"", PROBE), "EEXIST");
    refused(q, &echo("0x80000000", REMOVE), "EBUSY");
    // All or nothing: memory17 is offline but memory16 is not.
    refused(q, &echo("\"0x80000000 0x10000000\"", REMOVE), "EBUSY");
    // memory18 is not present: memory17 stays.
    refused(q, &echo("\"0x88000000 0x10000000\"", REMOVE), "EINVAL");
    refused(q, &echo("online", &state_path(16)), "EINVAL");
    refused(q, &echo("online_kernel", &state_path(16)), "EINVAL");
    refused(q, &echo("online_movable", &state_path(16)), "EINVAL");
    refused(q, &echo("offline", &state_path(17)), "EINVAL");
    refused(q, &echo("bogus", &state_path(16)), "EINVAL");
    refused(q, &echo("bogus", &state_path(17)), "EINVAL");
    refused(q, &echo("0xa0000000", REMOVE), "EINVAL");
    set_state(q, 16, "offline");
    remove(q, "\"0x80000000 0x10000000\"");
    expect_unchanged(q, &start, "probe, online, offline and remove");
    no_warnings(q, "after the bad requests");
    // The console still answers.
    let out = q.run("echo alive");
    if out != "alive\n" {
        q.fail(&format!("`echo alive` printed {out:?}"));
    }
}

// ---------------------------------------------------------------------------
// Allocation failures

/// What a successful operation must have changed in `/proc/meminfo`.
struct Expect {
    vmemmap: i64,
    altmap: i64,
    device: i64,
    /// It must need a page (a table) it cannot do without: some run fails.
    allocates: bool,
}

/// Makes the 1st, 2nd, 3rd, ... page allocation of `op` fail until it
/// succeeds without reaching the injected failure. A failure must be one
/// line `error: ENOMEM: ...` with nothing changed; a success (also one that
/// fell back after the failed allocation) must change `/proc/meminfo` as
/// `expect` says and be undone exactly by `undo`. Returns the numbers of
/// runs that failed and that succeeded.
fn fail_each_allocation(q: &mut Qemu, op: &str, undo: &[&str], expect: Expect) -> (u64, u64) {
    let before = snapshot(q);
    let base = q.meminfo();
    let (mut failures, mut successes) = (0, 0);
    for n in 1..=64u64 {
        q.write(FAIL_NTH, &n.to_string());
        let ev = events(q);
        let out = q.run(op);
        if out.starts_with("error: ") {
            q.expect_error(
                &format!("`{op}` with allocation {n} failing"),
                &out,
                "ENOMEM",
            );
            expect_same_events(q, &ev, &format!("`{op}` failing at allocation {n}"));
            let pending = q.read(FAIL_NTH);
            if pending != "0\n" {
                q.fail(&format!(
                    "`{op}` failed with ENOMEM but allocation {n} was not reached ({FAIL_NTH} reads {pending:?})"
                ));
            }
            expect_unchanged(q, &before, &format!("`{op}` failing at allocation {n}"));
            failures += 1;
            continue;
        }
        if out.lines().any(|l| l.contains("error")) {
            q.fail(&format!(
                "`{op}` with allocation {n} failing printed {out:?}"
            ));
        }
        successes += 1;
        let pending = q.read(FAIL_NTH);
        q.write(FAIL_NTH, "0");
        let now = q.meminfo();
        expect_deltas(
            q,
            &base,
            &now,
            &[
                ("MemTotal", 0),
                ("Vmemmap", expect.vmemmap),
                ("VmemmapAltmap", expect.altmap),
                ("DeviceMem", expect.device),
            ],
            &format!("`{op}` succeeding with allocation {n} failing"),
        );
        for u in undo {
            ok(q, u);
        }
        expect_unchanged(
            q,
            &before,
            &format!("`{op}` (allocation {n} failing) and its undo"),
        );
        if pending != "0\n" {
            // The injected failure was not reached: every allocation of
            // `op` has been made to fail once.
            if expect.allocates && failures == 0 {
                q.fail(&format!("`{op}` never failed: it allocates nothing?"));
            }
            return (failures, successes);
        }
    }
    q.fail(&format!(
        "`{op}` still reaches the injected failure after 64 runs"
    ));
}

#[test]
fn allocation_failures_roll_back_exactly() {
    let mut q = boot(APPEND);
    let q = &mut q;
    let start = snapshot(q);
    let stat0 = vmstat(q);
    let one = MEMMAP_KB as i64;
    let four = 4 * one;
    let mut summary = Vec::new();
    // Blocks that successful probes added (each removed again).
    let mut blocks_added = 0;
    for mom in [false, true] {
        set_mom(q, mom);
        let expect = |kb: i64, allocates: bool| {
            let (vmemmap, altmap) = if mom { (0, kb) } else { (kb, 0) };
            Expect {
                vmemmap,
                altmap,
                device: 0,
                allocates,
            }
        };
        let (f, s) = fail_each_allocation(
            q,
            &echo("0x80000000", PROBE),
            &[&echo("0x80000000", REMOVE)],
            expect(one, true),
        );
        summary.push((format!("probe one block, memmap_on_memory={mom}"), f, s));
        blocks_added += s;
        let (f, s) = fail_each_allocation(
            q,
            &echo("\"0xa0000000 0x20000000\"", PROBE),
            &[&echo("\"0xa0000000 0x20000000\"", REMOVE)],
            expect(four, true),
        );
        summary.push((format!("probe four blocks, memmap_on_memory={mom}"), f, s));
        blocks_added += 4 * s;
        // With a block present already, sharing its tables: nothing but
        // struct pages (which fall back to base pages) to allocate.
        probe(q, "0x88000000");
        blocks_added += 1;
        let (f, s) = fail_each_allocation(
            q,
            &echo("\"0xa0000000 0x20000000\"", PROBE),
            &[&echo("\"0xa0000000 0x20000000\"", REMOVE)],
            expect(four, false),
        );
        summary.push((
            format!("probe four blocks next to memory17, memmap_on_memory={mom}"),
            f,
            s,
        ));
        blocks_added += 4 * s;
        remove(q, "0x88000000");
    }
    set_mom(q, false);
    let dev = PMEM_MEMMAP_KB as i64;
    let mut maps = 0;
    let (f, s) = fail_each_allocation(
        q,
        "devmem map 0 --map=dev",
        &["devmem unmap 0"],
        Expect {
            vmemmap: 0,
            altmap: dev,
            device: PMEM_KB as i64,
            allocates: true,
        },
    );
    summary.push(("devmem map --map=dev".to_string(), f, s));
    maps += s;
    let (f, s) = fail_each_allocation(
        q,
        "devmem map 0 --map=mem",
        &["devmem unmap 0"],
        Expect {
            vmemmap: dev,
            altmap: 0,
            device: PMEM_KB as i64,
            allocates: true,
        },
    );
    summary.push(("devmem map --map=mem".to_string(), f, s));
    maps += s;
    expect_unchanged(q, &start, "all the injected failures");
    no_warnings(q, "after the injected failures");
    eprintln!("(operation, runs failed, runs succeeded): {summary:#?}");

    // Failed runs count nothing: the counters rose by the successes only.
    let stat = vmstat(q);
    for (name, want) in [
        ("memory_hotplug_add", blocks_added),
        ("memory_hotplug_remove", blocks_added),
        ("memory_online", 0),
        ("memory_offline", 0),
        ("devmem_map", maps),
        ("devmem_unmap", maps),
    ] {
        let rose = counter(q, &stat, name) - counter(q, &stat0, name);
        if rose != want {
            q.fail(&format!("/proc/vmstat {name} rose by {rose}, want {want}"));
        }
    }
}
