//! Boot tests: the kernel boots on every supported CPU, memory size, GIC
//! version (2, 3 and 4) and entry level, maps itself W^X, has dropped the
//! identity map, reports faults, and shows Linux's memory-block view of
//! boot RAM. With `HPK_GRANULE=16k` or `64k` (tests/common) all of it on
//! that granule's kernel, every CPU being `max`.

mod common;

use common::{block_size, boot_blocks, granule, Granule, Opts, Qemu};
use std::time::Duration;

/// `-m` sizes in kB.
fn size_kb(mem: &str) -> u64 {
    let (n, unit) = mem.split_at(mem.len() - 1);
    let n: u64 = n.parse().expect("size");
    match unit {
        "M" => n << 10,
        "G" => n << 20,
        _ => panic!("unit of {mem}"),
    }
}

/// Boots one configuration to the prompt; MemTotal must be at most `-m` and
/// at least 97% of it; every CPU is online; the GIC is driven (the UART's
/// interrupt wakes the idle CPU); `poweroff` exits with 0.
/// With `HPK_GRANULE` 16k or 64k the harness boots `cpu` as `max`.
fn check_config(cpu: &str, mem: &str, machine: &str, smp: u32) {
    let mut q = Qemu::boot(Opts::new().cpu(cpu).mem(mem).machine(machine).smp(smp));
    let mem_kb = size_kb(mem);
    let total = q.meminfo_kb("MemTotal");
    if total > mem_kb || total * 100 < mem_kb * 97 {
        q.fail(&format!(
            "MemTotal {total} kB is not within [97%, 100%] of -m {mem} ({mem_kb} kB)"
        ));
    }
    let free = q.meminfo_kb("MemFree");
    if free > total {
        q.fail(&format!("MemFree {free} kB > MemTotal {total} kB"));
    }
    let online = q.read("/sys/devices/system/cpu/online");
    let all = match smp {
        1 => "0\n".to_string(),
        n => format!("0-{}\n", n - 1),
    };
    if online != all {
        q.fail(&format!("cpu/online is {online:?} with {smp} CPUs"));
    }
    let dmesg = q.run_ok("dmesg");
    if !dmesg.contains("Booting") {
        q.fail("dmesg lacks the boot banner");
    }
    if !dmesg.contains("wakes the idle CPU") {
        q.fail("the GIC was not set up");
    }
    q.poweroff();
}

#[test]
fn matrix_gic_v2() {
    check_config("cortex-a53", "256M", ",gic-version=2", 1);
    check_config("cortex-a72", "1G", ",gic-version=2", 1);
    check_config("max", "512M", ",gic-version=2", 1);
}

#[test]
fn matrix_gic_v3() {
    check_config("cortex-a57", "1G", ",gic-version=3", 1);
    check_config("cortex-a53", "4G", ",gic-version=3", 1);
    check_config("cortex-a72", "2G", ",gic-version=3", 1);
}

/// GICv4 (QEMU offers it only with `virtualization=on`): redistributors
/// twice GICv3's size, one and several CPUs.
#[test]
fn matrix_gic_v4() {
    check_config("max", "1G", ",gic-version=4,virtualization=on", 1);
    check_config("cortex-a72", "2G", ",gic-version=4,virtualization=on", 2);
    check_config("cortex-a57", "512M", ",gic-version=4,virtualization=on", 4);
}

#[test]
fn matrix_default_machine_sizes() {
    check_config("cortex-a72", "4G", "", 1);
    check_config("cortex-a57", "256M", "", 1);
    check_config("max", "1G", "", 1);
}

#[test]
fn matrix_el2_entry() {
    check_config("max", "2G", ",virtualization=on,gic-version=3", 1);
    check_config("cortex-a72", "1G", ",virtualization=on", 1);
    check_config("cortex-a53", "256M", ",virtualization=on,gic-version=2", 1);
    check_config("cortex-a57", "4G", ",virtualization=on", 1);
}

#[test]
fn matrix_smp() {
    check_config("cortex-a72", "1G", "", 4);
    check_config("max", "2G", ",virtualization=on,gic-version=3", 2);
}

// ---------------------------------------------------------------------------
// kernel_page_tables

/// The lines between `---[ NAME start ]---` and `---[ NAME end ]---`.
fn region<'a>(q: &mut Qemu, dump: &'a str, name: &str) -> Vec<&'a str> {
    let start = format!("---[ {name} start ]---");
    let end = format!("---[ {name} end ]---");
    let lines: Vec<&str> = dump.lines().collect();
    let s = lines.iter().position(|l| *l == start);
    let e = lines.iter().position(|l| *l == end);
    match (s, e) {
        (Some(s), Some(e)) if s < e => lines[s + 1..e].to_vec(),
        _ => q.fail(&format!(
            "no region {start} .. {end} in the page-table dump"
        )),
    }
}

/// The attribute words of a dump line (after range, size and level), or
/// None for a marker or an unmapped range.
fn attrs(line: &str) -> Option<Vec<&str>> {
    if !line.starts_with("0x") {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().skip(3).collect();
    (!words.is_empty()).then_some(words)
}

fn size_bytes(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("size {s:?}"));
    n << match unit {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => panic!("size {s:?}"),
    }
}

/// The linear map of 1 GiB of boot RAM: one 1G PUD block with 4K; 32 MiB
/// PMD blocks with the contiguous bit with 16K; two 512 MiB PMD blocks with
/// 64K (the dump merges equal neighbours into one line).
fn linear_ram_1g() -> &'static str {
    match granule() {
        Granule::K4 => "0xffff000040000000-0xffff000080000000           1G PUD       RW NX SHD AF        BLK UXN    MEM/NORMAL",
        Granule::K16 => "0xffff000040000000-0xffff000080000000           1G PMD       RW NX SHD AF    CON BLK UXN    MEM/NORMAL",
        Granule::K64 => "0xffff000040000000-0xffff000080000000           1G PMD       RW NX SHD AF        BLK UXN    MEM/NORMAL",
    }
}

#[test]
fn ptdump_linear_map_vmemmap_and_kernel_wx() {
    let mut q = Qemu::boot(Opts::new().mem("1G"));
    let dump = q.read("/sys/kernel/debug/kernel_page_tables");

    // The linear map of RAM: one 1G PUD block (PMD blocks with 16K and
    // 64K), never executable.
    let linear = region(&mut q, &dump, "Linear Mapping");
    let want = linear_ram_1g();
    if !linear.contains(&want) {
        q.fail(&format!("no line\n{want}\nin the linear map"));
    }
    for l in &linear {
        if attrs(l).is_some_and(|a| !a.contains(&"NX")) {
            q.fail(&format!("executable linear-map line {l:?}"));
        }
    }

    // vmemmap: PMD blocks with 4K; base pages (PTEs, no blocks) with 16K
    // and 64K, as Linux (vmemmap_populate_basepages); RW NX, as much as
    // /proc/meminfo says.
    let vmemmap = region(&mut q, &dump, "vmemmap");
    let mapped: Vec<&str> = vmemmap
        .iter()
        .copied()
        .filter(|l| attrs(l).is_some())
        .collect();
    let (level, block) = match granule() {
        Granule::K4 => ("PMD", true),
        Granule::K16 | Granule::K64 => ("PTE", false),
    };
    let leaf = |l: &&str| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.get(2) == Some(&level)
            && w.contains(&"BLK") == block
            && w.contains(&"RW")
            && w.contains(&"NX")
    };
    if !mapped.iter().any(leaf) {
        let what = if block { "block" } else { "page" };
        q.fail(&format!("no RW NX {level} {what} in the vmemmap region"));
    }
    if !block {
        if let Some(l) = mapped.iter().find(|l| !leaf(l)) {
            q.fail(&format!("vmemmap line not an RW NX {level} page: {l:?}"));
        }
    }
    let vmemmap_kb: u64 = mapped
        .iter()
        .map(|l| size_bytes(l.split_whitespace().nth(1).unwrap()) >> 10)
        .sum();
    let info = q.meminfo();
    let expected = info["Vmemmap"] + info["VmemmapAltmap"];
    if vmemmap_kb != expected {
        q.fail(&format!(
            "vmemmap region maps {vmemmap_kb} kB, /proc/meminfo says Vmemmap + VmemmapAltmap = {expected} kB"
        ));
    }

    // The kernel image: text `ro x`, data `RW NX`, nothing else.
    let kernel = region(&mut q, &dump, "Kernel Image");
    let kmapped: Vec<&str> = kernel
        .iter()
        .copied()
        .filter(|l| attrs(l).is_some())
        .collect();
    if !kmapped.iter().any(|l| l.contains(" ro x ")) {
        q.fail("no `ro x` (text) line in the Kernel Image region");
    }
    if !kmapped.iter().any(|l| l.contains(" RW NX ")) {
        q.fail("no `RW NX` (data) line in the Kernel Image region");
    }
    for l in &kmapped {
        let a = attrs(l).unwrap();
        let ok = matches!(a[..2], ["ro", "x"] | ["ro", "NX"] | ["RW", "NX"]);
        if !ok {
            q.fail(&format!(
                "Kernel Image line is neither `ro x`, `ro NX` nor `RW NX`: {l:?}"
            ));
        }
    }

    // W^X everywhere.
    for l in dump.lines() {
        if let Some(a) = attrs(l) {
            if a.contains(&"RW") && a.contains(&"x") {
                q.fail(&format!("writable and executable: {l:?}"));
            }
        }
    }
    q.poweroff();
}

// ---------------------------------------------------------------------------
// Faults

#[test]
fn identity_map_is_gone() {
    let mut q = Qemu::boot(Opts::new().mem("1G"));
    let msg = q.run_err("touch 0x40000000", "EFAULT");
    if !msg.contains("translation fault") {
        q.fail(&format!(
            "EFAULT message does not mention a translation fault: {msg:?}"
        ));
    }
    // The console survived the fault.
    let info = q.meminfo();
    if info.get("MemTotal").copied().unwrap_or(0) == 0 {
        q.fail("no MemTotal after the fault");
    }
    // The linear map of the same RAM is there.
    let out = q.run_ok("touch 0xffff000040000000");
    if !out.starts_with("0xffff000040000000: 0x") || out.lines().count() != 1 {
        q.fail(&format!("touch of the linear map printed {out:?}"));
    }
    // And a second fault is handled as well as the first.
    q.run_err("touch 0x40000000", "EFAULT");
    q.run_ok("cat /proc/meminfo");
    q.poweroff();
}

/// A kernel stack overflow, on CPU 0 (boot stack) and on a secondary
/// (stacks in their own region), runs into an unmapped guard page and is
/// reported as such, not a silent hang.
#[test]
fn stack_overflow_hits_the_guard_page() {
    for cpu in [0, 1] {
        let mut q = Qemu::boot(Opts::new().mem("1G").smp(2));
        q.send_bytes(format!("crash stack {cpu}\n").as_bytes());
        let text = q.wait_for("Kernel panic", Duration::from_secs(30));
        for want in [
            "Internal error: Oops",
            "Kernel stack overflow (guard page hit)",
            "level 3 translation fault, write",
        ] {
            if !text.contains(want) {
                q.fail(&format!("CPU{cpu}: no {want:?} before \"Kernel panic\""));
            }
        }
        let status = q.wait_exit(Duration::from_secs(30));
        if !status.success() {
            q.fail(&format!(
                "QEMU exited with {status} after the panic, not 0 (powered off)"
            ));
        }
    }
}

#[test]
fn fatal_fault_oopses_and_powers_off() {
    let mut q = Qemu::boot(Opts::new().mem("1G"));
    q.send_bytes(b"crash 0x1234\n");
    let text = q.wait_for("Kernel panic", Duration::from_secs(30));
    let mut at = 0;
    for want in [
        "Internal error: Oops",
        "DABT (current EL)",
        "level 0 translation fault",
        "FAR: 0x0000000000001234",
        "ELR:",
    ] {
        match text[at..].find(want) {
            Some(i) => at += i,
            None => q.fail(&format!("no {want:?} (in order) before \"Kernel panic\"")),
        }
    }
    if text.lines().skip(1).any(|l| l.starts_with("# ")) {
        q.fail("a prompt appeared between the crash and the panic");
    }
    let status = q.wait_exit(Duration::from_secs(30));
    if !status.success() {
        q.fail(&format!(
            "QEMU exited with {status} after the panic, not 0 (powered off)"
        ));
    }
}

// ---------------------------------------------------------------------------
// sysfs and procfs views of boot memory

#[test]
fn memory_blocks_of_boot_ram() {
    let mut q = Qemu::boot(Opts::new().mem("1G"));
    let dir = "/sys/devices/system/memory";
    let bs = q.read(&format!("{dir}/block_size_bytes"));
    if bs != format!("{:x}\n", block_size()) {
        q.fail(&format!("block_size_bytes is {bs:?}"));
    }
    // memory8..15 with 128 MiB blocks, memory2..3 with 512 MiB ones.
    let boot = boot_blocks(1 << 30);
    let ls = q.run_ok(&format!("ls {dir}"));
    let mut blocks: Vec<u64> = ls
        .lines()
        .filter_map(|l| l.strip_prefix("memory")?.trim_end_matches('/').parse().ok())
        .collect();
    blocks.sort();
    if blocks != boot.clone().collect::<Vec<u64>>() {
        q.fail(&format!(
            "memory blocks {blocks:?}, want memory{}..memory{}",
            boot.start,
            boot.end - 1
        ));
    }
    for n in boot.clone() {
        let state = q.read(&format!("{dir}/memory{n}/state"));
        let removable = q.read(&format!("{dir}/memory{n}/removable"));
        let phys_index = q.read(&format!("{dir}/memory{n}/phys_index"));
        if state != "online\n" || removable != "1\n" || phys_index != format!("{n:08x}\n") {
            q.fail(&format!(
                "memory{n}: state {state:?}, removable {removable:?}, phys_index {phys_index:?}"
            ));
        }
    }
    for n in [0, boot.start - 1, boot.end] {
        q.run_err(&format!("cat {dir}/memory{n}/state"), "ENOENT");
    }
    let iomem = q.read("/proc/iomem");
    if iomem.lines().next() != Some("40000000-7fffffff : System RAM") {
        q.fail(&format!(
            "/proc/iomem does not start with System RAM: {iomem:?}"
        ));
    }
    q.poweroff();
}

#[test]
fn one_cpu_online() {
    let mut q = Qemu::boot(Opts::new());
    let online = q.read("/sys/devices/system/cpu/online");
    if online != "0\n" {
        q.fail(&format!("cpu/online is {online:?}"));
    }
    q.poweroff();
}
