//! Memory hotplug through the console (`console.md`), on every granule
//! (`HPK_GRANULE`, see [`Layout`]). With 128 MiB blocks (4K, 16K): a 2 GiB
//! machine booted with `mem=1G memmap=256M!0x90000000`: RAM
//! 0x80000000-0xbfffffff is held back for `probe`, except the emulated pmem
//! 0x90000000-0x9fffffff (`devmem` region 0). The held-back blocks are
//! memory16, 17, 20..23. With 512 MiB blocks (64K) the same shape at 4 GiB:
//! memory4, 5, pmem memory6, then memory7..9.
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

use common::{
    block_kb, block_size, boot_blocks, granule, page_size, struct_pages_kb,
    struct_pages_per_block_kb, vmemmap_va, Granule, Opts, Qemu, MISUSE_COUNTERS, RAM_BASE,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const MEM: &str = "/sys/devices/system/memory";
const PROBE: &str = "/sys/devices/system/memory/probe";
const REMOVE: &str = "/sys/devices/system/memory/remove";
const MOM: &str = "/sys/module/memory_hotplug/parameters/memmap_on_memory";
const FAIL_NTH: &str = "/sys/kernel/debug/fail_nth_alloc";
const PTDUMP: &str = "/sys/kernel/debug/kernel_page_tables";
const VMEMMAP: &str = "/sys/kernel/debug/vmemmap";

const LINEAR: u64 = 0xffff_0000_0000_0000;
/// Boot RAM: 1 GiB from [`RAM_BASE`] (`mem=1G`).
const BOOT_RAM: u64 = 1 << 30;
/// The end of boot RAM.
const BOOT_END: u64 = RAM_BASE + BOOT_RAM;

/// The machine of these tests: 1 GiB of boot RAM, then held-back RAM for
/// `probe`: two blocks, the device region (`devmem` 0, `memmap=`, which
/// must be whole blocks), and more blocks up to the end of RAM.
struct Layout {
    /// `-m`.
    mem: &'static str,
    /// The kernel command line.
    append: &'static str,
    /// The two held-back blocks below the device region (memory16, 17).
    below: [u64; 2],
    /// The device region.
    pmem: u64,
    pmem_size: u64,
    /// The held-back RAM above the device region: `[above, ram_end)`.
    above: u64,
    /// The end of RAM (`RAM_BASE` + `-m`).
    ram_end: u64,
}

/// The layout for the selected granule.
fn layout() -> Layout {
    match granule() {
        // 128 MiB blocks: memory16, 17 | pmem (memory18, 19) | memory20..23.
        Granule::K4 | Granule::K16 => Layout {
            mem: "2G",
            append: "mem=1G memmap=256M!0x90000000",
            below: [0x8000_0000, 0x8800_0000],
            pmem: 0x9000_0000,
            pmem_size: 0x1000_0000,
            above: 0xa000_0000,
            ram_end: 0xc000_0000,
        },
        // 512 MiB blocks: memory4, 5 | pmem (memory6) | memory7..9, the
        // last two above 4 GiB.
        Granule::K64 => Layout {
            mem: "4G",
            append: "mem=1G memmap=512M!0xc0000000",
            below: [0x8000_0000, 0xa000_0000],
            pmem: 0xc000_0000,
            pmem_size: 0x2000_0000,
            above: 0xe000_0000,
            ram_end: 0x1_4000_0000,
        },
    }
}

impl Layout {
    /// The size of the held-back RAM above the device region.
    fn above_size(&self) -> u64 {
        self.ram_end - self.above
    }

    /// The blocks above the device region (four, or three with 64K).
    fn above_blocks(&self) -> Vec<u64> {
        (self.above..self.ram_end)
            .step_by(block_size() as usize)
            .collect()
    }

    /// The held-back blocks `probe` takes: memory16, 17, 20, 21, 22, 23
    /// with 128 MiB blocks.
    fn held_back(&self) -> Vec<u64> {
        let mut v = self.below.to_vec();
        v.extend(self.above_blocks());
        v
    }

    /// `"ABOVE SIZE"`: every block above the device region, in one write.
    fn above_range(&self) -> String {
        range(self.above, self.above_size())
    }

    fn pmem_kb(&self) -> u64 {
        self.pmem_size >> 10
    }

    /// The struct pages of the device region, in kB.
    fn pmem_memmap_kb(&self) -> u64 {
        struct_pages_kb(self.pmem_size)
    }

    /// The `devmem list` line of the device region in `state`.
    fn devmem_list(&self, state: &str) -> String {
        format!(
            "0 {:#x}-{:#x} pmem {state}\n",
            self.pmem,
            self.pmem + self.pmem_size - 1
        )
    }
}

/// The struct pages of one block, in kB: 2048 (4K: 32768 pages of 64
/// bytes), 512 (16K: 8192 pages), 512 (64K: 8192 pages of a 512 MiB
/// block).
fn memmap_kb() -> u64 {
    struct_pages_per_block_kb()
}

/// The vmemmap leaves mapping one block's struct pages: one PMD block with
/// 4K; with 16K and 64K base pages (as Linux, `vmemmap_populate_basepages`):
/// 32 of 16K, 8 of 64K. Each is a page allocated (unless on an altmap) and
/// a TLB invalidation when the block goes.
fn vmemmap_leaves_per_block() -> u64 {
    match granule() {
        Granule::K4 => 1,
        Granule::K16 | Granule::K64 => memmap_kb() * 1024 / page_size(),
    }
}

/// `"ADDR SIZE"`, quoted for `echo`.
fn range(addr: u64, size: u64) -> String {
    format!("\"{addr:#x} {size:#x}\"")
}

fn hex(addr: u64) -> String {
    format!("{addr:#x}")
}

/// Commands answer in milliseconds: a short bound makes a hang fail fast.
/// `extra` is appended to the layout's command line.
fn boot(extra: &str) -> Qemu {
    let l = layout();
    let append = if extra.is_empty() {
        l.append.to_string()
    } else {
        format!("{} {extra}", l.append)
    };
    Qemu::boot(
        Opts::new()
            .mem(l.mem)
            .append(&append)
            .timeout(Duration::from_secs(20)),
    )
}

fn id(addr: u64) -> u64 {
    addr / block_size()
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
        if s % block_size() != 0 || e % block_size() != 0 || s >= e {
            q.fail(&format!(
                "{when}: System RAM {s:#x}-{e:#x} is not whole blocks"
            ));
        }
        covered.extend((s..e).step_by(block_size() as usize));
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
    /// The two blocks below the device region one by one (0x80000000,
    /// 0x88000000), then those above it in one write
    /// (`0xa0000000 0x20000000`, four blocks; three with 64K).
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
    let l = layout();
    let held_back = l.held_back();
    let k = held_back.len() as i64;

    // probe: offline blocks, System RAM in /proc/iomem, struct pages mapped.
    match shape {
        Shape::OneByOne => {
            for &a in &held_back {
                probe(q, &hex(a));
            }
        }
        Shape::Multi => {
            probe(q, &hex(l.below[0]));
            probe(q, &hex(l.below[1]));
            probe(q, &l.above_range());
        }
    }
    let mut want_blocks = boot_blocks.clone();
    want_blocks.extend(held_back.iter().map(|&a| id(a)));
    want_blocks.sort();
    let now_blocks = blocks(q);
    if now_blocks != want_blocks {
        q.fail(&when(&format!(
            "memory blocks after probe are {now_blocks:?}, want {want_blocks:?}"
        )));
    }
    for &a in &held_back {
        let st = state(q, id(a));
        if st != "offline" {
            q.fail(&when(&format!("memory{} is {st:?} after probe", id(a))));
        }
    }
    expect_iomem_ram(q, base_iomem, &held_back, &when("after probe"));
    let probed = q.meminfo();
    let (vm, alt) = if mom {
        (0, memmap_kb() as i64 * k)
    } else {
        (memmap_kb() as i64 * k, 0)
    };
    q.expect_meminfo_deltas(
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
    for (i, a) in held_back.iter().enumerate() {
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
    let per_block = block_kb() as i64 - if mom { memmap_kb() as i64 } else { 0 };
    q.expect_meminfo_deltas(
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
    q.expect_meminfo_deltas(
        &probed,
        &online,
        &[("MemFree", per_block * k), ("PageTables", 0)],
        &when("after online (from probe)"),
    );
    for &a in &held_back {
        expect_touch(q, LINEAR + a + block_size() - 8);
    }

    // offline: MemTotal back, struct pages still there.
    for a in held_back.iter().rev() {
        set_state(q, id(*a), "offline");
        let st = state(q, id(*a));
        if st != "offline" {
            q.fail(&when(&format!("memory{} is {st:?} after offline", id(*a))));
        }
    }
    let offline = q.meminfo();
    q.expect_meminfo_deltas(
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
            for &a in &held_back {
                remove(q, &hex(a));
            }
        }
        Shape::Multi => {
            remove(q, &l.above_range());
            remove(q, &hex(l.below[1]));
            remove(q, &hex(l.below[0]));
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
    let mut q = boot("");
    let base_text = q.read("/proc/meminfo");
    let base_iomem = q.read("/proc/iomem");
    let base_ptdump = q.read(PTDUMP);
    let stat0 = vmstat(&mut q);
    let blocks0 = blocks(&mut q);
    let want0 = boot_blocks(BOOT_RAM);
    if blocks0 != want0.clone().collect::<Vec<u64>>() {
        q.fail(&format!(
            "boot memory blocks are {blocks0:?}, want {}..{}",
            want0.start,
            want0.end - 1
        ));
    }
    let mom0 = q.read(MOM);
    if mom0 != "N\n" {
        q.fail(&format!("{MOM} is {mom0:?} without the boot parameter"));
    }

    const CYCLES: usize = 20;
    let k = layout().held_back().len() as u64;
    // At most 8 TLB invalidations a block (4K), plus one for each further
    // vmemmap leaf of a block (31 with 16K, 7 with 64K): Linux invalidates
    // base pages of the vmemmap one by one.
    let per_block = 8 + vmemmap_leaves_per_block() - 1;
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
        if tlbi > per_block * k {
            q.fail(&format!(
                "cycle {n}: removing {k} blocks took {tlbi} TLB invalidations, more than {per_block} a block"
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
    let mut q = boot("");
    let q = &mut q;
    let base_text = q.read("/proc/meminfo");
    let base_iomem = q.read("/proc/iomem");
    let base = q.meminfo();
    let held_back = layout().held_back();
    let words = ["online", "online_kernel", "online_movable"];
    for n in 0..10 {
        let (mut total, mut vm, mut alt) = (0i64, 0i64, 0i64);
        for (i, &a) in held_back.iter().enumerate() {
            let mom = (i + n) % 2 == 1;
            set_mom(q, mom);
            probe(q, &format!("{a:#x}"));
            let word = if i == 0 {
                "online_movable"
            } else {
                words[(i + n) % 3]
            };
            set_state(q, id(a), word);
            total += block_kb() as i64 - if mom { memmap_kb() as i64 } else { 0 };
            if mom {
                alt += memmap_kb() as i64;
            } else {
                vm += memmap_kb() as i64;
            }
            let now = q.meminfo();
            q.expect_meminfo_deltas(
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
        let movable = id(held_back[0]);
        set_state(q, movable, "offline");
        set_state(q, movable, "online_movable");
        for &a in held_back.iter().rev() {
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
    let mut q = boot("memory_hotplug.memmap_on_memory=1");
    let a = layout().below[1];
    let b = id(a);
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
    probe(&mut q, &hex(a));
    let probed = q.meminfo();
    q.expect_meminfo_deltas(
        &base,
        &probed,
        &[
            ("Vmemmap", 0),
            ("VmemmapAltmap", memmap_kb() as i64),
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
    let pfns = (a / page_size(), (a + block_size()) / page_size());
    expect_vmemmap_backed(
        &mut q,
        "altmap:memmap_on_memory",
        pfns,
        pfns,
        &format!("memory{b}"),
    );
    if self_hosted_kb != memmap_kb() {
        q.fail(&format!(
            "{VMEMMAP} shows {self_hosted_kb}K altmap:memmap_on_memory, want {}K:\n{vmemmap}",
            memmap_kb()
        ));
    }
    set_state(&mut q, b, "online");
    let online = q.meminfo();
    q.expect_meminfo_deltas(
        &base,
        &online,
        &[("MemTotal", (block_kb() - memmap_kb()) as i64)],
        "online with memmap_on_memory",
    );
    set_state(&mut q, b, "offline");
    remove(&mut q, &hex(a));
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
    let va = vmemmap_va;
    let mut at = va(pfns.0);
    for &(s, e, kb, pfn) in &lines {
        let pages = (e - s) / page_size();
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
    let l = layout();
    let (pmem, pmem_size) = (l.pmem, l.pmem_size);
    let (pmem_kb, pmem_memmap_kb) = (l.pmem_kb(), l.pmem_memmap_kb());
    let mut q = boot("");
    let list = q.run_ok("devmem list");
    if list != l.devmem_list("unmapped") {
        q.fail(&format!("devmem list is {list:?}"));
    }
    let base_text = q.read("/proc/meminfo");
    let base_iomem = q.read("/proc/iomem");
    let base = q.meminfo();
    let pfn = pmem / page_size();
    let last_pfn = (pmem + pmem_size) / page_size() - 1;
    expect_page_unmapped(&mut q, pfn);
    expect_fault(&mut q, LINEAR + pmem);

    // --map=dev: struct pages on the device.
    ok(&mut q, "devmem map 0 --map=dev");
    let list = q.run_ok("devmem list");
    if list != l.devmem_list("mapped(dev)") {
        q.fail(&format!("devmem list after map=dev is {list:?}"));
    }
    let dev = q.meminfo();
    let tables = q.meminfo_field(&dev, "PageTables") as i64 - base["PageTables"] as i64;
    q.expect_meminfo_deltas(
        &base,
        &dev,
        &[
            ("MemTotal", 0),
            ("Vmemmap", 0),
            ("VmemmapAltmap", pmem_memmap_kb as i64),
            ("DeviceMem", pmem_kb as i64),
            ("MemFree", -tables),
        ],
        "devmem map 0 --map=dev",
    );
    // At most four table pages (16 kB with 4K).
    if !(0..=4 * (page_size() as i64 >> 10)).contains(&tables) {
        q.fail(&format!(
            "devmem map 0 --map=dev took {tables} kB of page tables"
        ));
    }
    if dev["VmemmapAltmap"] != pmem_memmap_kb || dev["DeviceMem"] != pmem_kb {
        q.fail(&format!("after map=dev: {dev:?}"));
    }
    let altmap_kb = vmemmap_kb(&mut q, "altmap:pmem");
    if altmap_kb != pmem_memmap_kb {
        let text = q.read(VMEMMAP);
        q.fail(&format!(
            "{VMEMMAP} has {altmap_kb}K altmap:pmem, want {pmem_memmap_kb}K:\n{text}"
        ));
    }
    // On the device itself, for the whole device.
    let dev_pfns = (pfn, last_pfn + 1);
    expect_vmemmap_backed(&mut q, "altmap:pmem", dev_pfns, dev_pfns, "map=dev");
    expect_page_zone(&mut q, pfn, "Device");
    expect_page_zone(&mut q, last_pfn, "Device");
    expect_touch(&mut q, LINEAR + pmem);
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
    expect_fault(&mut q, LINEAR + pmem);

    // --map=mem: struct pages in system RAM, size / 64 of them.
    ok(&mut q, "devmem map 0 --map=mem");
    let list = q.run_ok("devmem list");
    if list != l.devmem_list("mapped(mem)") {
        q.fail(&format!("devmem list after map=mem is {list:?}"));
    }
    let mem = q.meminfo();
    let tables = q.meminfo_field(&mem, "PageTables") as i64 - base["PageTables"] as i64;
    q.expect_meminfo_deltas(
        &base,
        &mem,
        &[
            ("MemTotal", 0),
            ("Vmemmap", pmem_memmap_kb as i64),
            ("VmemmapAltmap", 0),
            ("DeviceMem", pmem_kb as i64),
            ("MemFree", -(pmem_memmap_kb as i64) - tables),
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
    if list != l.devmem_list("unmapped") {
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
    // memory16 (memory4 with 64K): 0x80000000, pfns 0x80000..0x87fff
    // with 4K.
    let a = layout().below[0];
    let b = id(a);
    let (first_pfn, last_pfn) = (a / page_size(), (a + block_size()) / page_size() - 1);
    for mom in [false, true] {
        let mut q = boot("");
        set_mom(&mut q, mom);
        let base_text = q.read("/proc/meminfo");
        let va = LINEAR + a;
        expect_fault(&mut q, va);
        expect_page_unmapped(&mut q, first_pfn);

        probe(&mut q, &hex(a));
        // Mapped as soon as it is added (Linux's arch_add_memory).
        expect_touch(&mut q, va);
        set_state(&mut q, b, "online");
        expect_touch(&mut q, va);
        expect_touch(&mut q, va + block_size() - 8);
        expect_page_zone(&mut q, first_pfn, "Normal");
        expect_page_zone(&mut q, last_pfn, "Normal");
        set_state(&mut q, b, "offline");
        remove(&mut q, &hex(a));

        // Exactly one error line, then the console goes on.
        for a in [va, va + 0x1000, va + block_size() - 8] {
            expect_fault(&mut q, a);
        }
        let text = q.read("/proc/meminfo");
        if text != base_text {
            q.fail(&format!(
                "/proc/meminfo after remove is\n{text}not\n{base_text}"
            ));
        }
        expect_page_unmapped(&mut q, first_pfn);
        expect_page_unmapped(&mut q, last_pfn);
        // A second fault is handled like the first; boot RAM is still there.
        expect_fault(&mut q, va);
        expect_touch(&mut q, LINEAR + 0x4000_0000);
        // The block can come back.
        probe(&mut q, &hex(a));
        set_state(&mut q, b, "online_movable");
        expect_touch(&mut q, va);
        expect_page_zone(&mut q, first_pfn, if mom { "Normal" } else { "Movable" });
        set_state(&mut q, b, "offline");
        remove(&mut q, &hex(a));
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
    // Addresses as with 128 MiB blocks (4K, 16K); 64K has the same shape.
    let l = layout();
    let bs = block_size();
    // memory16 and 17, below the device region.
    let [lo0, lo1] = l.below;
    // The last block of boot RAM (0x78000000).
    let boot_last = BOOT_END - bs;
    // The last block of the address space (0xfffffffff8000000).
    let top = 0u64.wrapping_sub(bs);
    let first = id(RAM_BASE);
    let mut q = boot("");
    let q = &mut q;
    let start = snapshot(q);

    // probe
    refused(q, &echo(&hex(lo0 + 0x1000), PROBE), "EINVAL");
    refused(q, &echo(&format!("\"{lo0:#x} 0x1000\""), PROBE), "EINVAL");
    refused(q, &echo(&format!("\"{lo0:#x} 0\""), PROBE), "EINVAL");
    refused(q, &echo(&range(lo0, bs + 0x1000), PROBE), "EINVAL");
    // Boot RAM is present already, as Linux would say.
    refused(q, &echo(&hex(RAM_BASE), PROBE), "EEXIST");
    refused(q, &echo(&hex(boot_last), PROBE), "EEXIST");
    // Not RAM at all.
    refused(q, &echo("0x200000000", PROBE), "EINVAL");
    refused(q, &echo(&hex(l.ram_end), PROBE), "EINVAL");
    // Partly held-back RAM, partly boot RAM or beyond RAM: all or nothing.
    refused(q, &echo(&range(boot_last, 2 * bs), PROBE), "EEXIST");
    refused(q, &echo(&range(l.ram_end - bs, 2 * bs), PROBE), "EINVAL");
    // Beyond the physical address range (aligned addresses), or a size
    // that makes the end overflow.
    refused(q, &echo("0x800000000000", PROBE), "ERANGE");
    refused(q, &echo(&hex(top), PROBE), "ERANGE");
    refused(
        q,
        &echo(&range(lo0, 0u64.wrapping_sub(lo0)), PROBE),
        "ERANGE",
    );
    refused(q, &echo(&range(lo0, 0x8000_0000_0000), PROBE), "ERANGE");
    // Misaligned comes first (Linux's probe_store checks it first).
    refused(q, &echo("0xffffffffffff000", PROBE), "EINVAL");
    // Numbers that do not fit.
    refused(q, &echo("0x1ffffffffffffffff", PROBE), "EINVAL");
    // The device region, whole or in part.
    refused(q, &echo(&hex(l.pmem), PROBE), "EBUSY");
    refused(q, &echo(&range(lo1, 2 * bs), PROBE), "EBUSY");
    refused(q, &echo(&range(lo0, l.ram_end - lo0), PROBE), "EBUSY");

    // remove
    refused(q, &echo(&hex(RAM_BASE), REMOVE), "EPERM");
    refused(q, &echo(&range(boot_last, 2 * bs), REMOVE), "EPERM");
    refused(q, &echo(&hex(lo0), REMOVE), "EINVAL");
    refused(q, &echo(&hex(lo0 + 0x1000), REMOVE), "EINVAL");
    refused(q, &echo(&hex(top), REMOVE), "ERANGE");

    // state and parameters
    refused(q, &echo("offline", &state_path(first)), "EBUSY");
    // The last boot block is all free pages, yet boot memory is never
    // offlined (arm64 Linux's prevent_bootmem_remove_notifier).
    let msg = refused(q, &echo("offline", &state_path(id(boot_last))), "EBUSY");
    if !msg.contains("boot memory") {
        q.fail(&format!("offlining boot memory: {msg:?}"));
    }
    refused(
        q,
        &echo("0", &format!("{MEM}/memory{}/online", id(boot_last))),
        "EBUSY",
    );
    refused(q, &echo("online", &state_path(first)), "EINVAL");
    refused(q, &echo("online_movable", &state_path(first)), "EINVAL");
    refused(q, &echo("bogus", &state_path(first)), "EINVAL");
    refused(q, &echo("online", &state_path(id(lo0))), "ENOENT");
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
    refused(q, &echo(&hex(l.pmem), PROBE), "EBUSY");
    ok(q, "devmem unmap 0");
    refused(q, "devmem unmap 0", "EINVAL");
    expect_unchanged(q, &start, "devmem map and unmap");

    // With hot-added blocks: memory16 online, memory17 offline. With 16K
    // and 64K memory17's struct pages are base pages that may be allocated
    // from an online Normal memory16 (kernel pages, as in Linux), which
    // could then not go offline before memory17 is removed: there memory16
    // is onlined Movable, which keeps them out.
    let (m16, m17) = (id(lo0), id(lo1));
    probe(q, &hex(lo0));
    let word = match granule() {
        Granule::K4 => "online",
        Granule::K16 | Granule::K64 => "online_movable",
    };
    set_state(q, m16, word);
    probe(q, &hex(lo1));
    refused(q, &echo(&hex(lo0), PROBE), "EEXIST");
    refused(q, &echo(&hex(lo1), PROBE), "EEXIST");
    refused(q, &echo(&range(lo0, 2 * bs), PROBE), "EEXIST");
    refused(q, &echo(&hex(lo0), REMOVE), "EBUSY");
    // All or nothing: memory17 is offline but memory16 is not.
    refused(q, &echo(&range(lo0, 2 * bs), REMOVE), "EBUSY");
    // memory18 (the device region) is not present: memory17 stays.
    refused(q, &echo(&range(lo1, 2 * bs), REMOVE), "EINVAL");
    refused(q, &echo("online", &state_path(m16)), "EINVAL");
    refused(q, &echo("online_kernel", &state_path(m16)), "EINVAL");
    refused(q, &echo("online_movable", &state_path(m16)), "EINVAL");
    refused(q, &echo("offline", &state_path(m17)), "EINVAL");
    refused(q, &echo("bogus", &state_path(m16)), "EINVAL");
    refused(q, &echo("bogus", &state_path(m17)), "EINVAL");
    refused(q, &echo(&hex(l.above), REMOVE), "EINVAL");
    set_state(q, m16, "offline");
    remove(q, &range(lo0, 2 * bs));
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

/// How many runs [`fail_each_allocation`] makes at most: 64, plus with 16K
/// and 64K one for each base page of struct pages of all held-back blocks
/// (192 with 16K, 40 with 64K), each a page allocation.
fn max_runs() -> u64 {
    let extra = match granule() {
        Granule::K4 => 0,
        Granule::K16 | Granule::K64 => {
            layout().held_back().len() as u64 * vmemmap_leaves_per_block()
        }
    };
    64 + extra
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
    let runs = max_runs();
    for n in 1..=runs {
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
        q.expect_meminfo_deltas(
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
        "`{op}` still reaches the injected failure after {runs} runs"
    ));
}

#[test]
fn allocation_failures_roll_back_exactly() {
    let l = layout();
    let [lo0, lo1] = l.below;
    // The blocks above the device region: four (three with 64K).
    let n_above = l.above_blocks().len() as u64;
    let mut q = boot("");
    let q = &mut q;
    let start = snapshot(q);
    let stat0 = vmstat(q);
    let one = memmap_kb() as i64;
    let above = n_above as i64 * one;
    let mut summary = Vec::new();
    // Blocks that successful probes added (each removed again).
    let mut blocks_added = 0;
    for mom in [false, true] {
        set_mom(q, mom);
        // A probe of blocks none of which is present must allocate: with 4K
        // a PMD table for the linear map (boot RAM is one PUD block); with
        // 16K and 64K the boot tables cover the held-back RAM, so only the
        // struct pages, when in RAM (base pages: no fallback).
        let first_allocates = granule() == Granule::K4 || !mom;
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
            &echo(&hex(lo0), PROBE),
            &[&echo(&hex(lo0), REMOVE)],
            expect(one, first_allocates),
        );
        summary.push((format!("probe one block, memmap_on_memory={mom}"), f, s));
        blocks_added += s;
        let (f, s) = fail_each_allocation(
            q,
            &echo(&l.above_range(), PROBE),
            &[&echo(&l.above_range(), REMOVE)],
            expect(above, first_allocates),
        );
        summary.push((
            format!("probe {n_above} blocks, memmap_on_memory={mom}"),
            f,
            s,
        ));
        blocks_added += n_above * s;
        // With a block present already, sharing its tables: nothing but
        // struct pages (which fall back to base pages with 4K, and are base
        // pages with 16K and 64K) to allocate.
        probe(q, &hex(lo1));
        blocks_added += 1;
        let (f, s) = fail_each_allocation(
            q,
            &echo(&l.above_range(), PROBE),
            &[&echo(&l.above_range(), REMOVE)],
            expect(above, false),
        );
        summary.push((
            format!(
                "probe {n_above} blocks next to memory{}, memmap_on_memory={mom}",
                id(lo1)
            ),
            f,
            s,
        ));
        blocks_added += n_above * s;
        remove(q, &hex(lo1));
    }
    set_mom(q, false);
    let dev = l.pmem_memmap_kb() as i64;
    let mut maps = 0;
    let (f, s) = fail_each_allocation(
        q,
        "devmem map 0 --map=dev",
        &["devmem unmap 0"],
        Expect {
            vmemmap: 0,
            altmap: dev,
            device: l.pmem_kb() as i64,
            // With 4K the linear map of the region needs a PMD table; with
            // 16K and 64K the boot tables cover it, and the struct pages
            // are on the device.
            allocates: granule() == Granule::K4,
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
            device: l.pmem_kb() as i64,
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
