//! Bad platform input is refused, logged once, and changes nothing:
//! `memmap=` regions the device tree does not describe as RAM, beyond the
//! physical address range, or over the kernel; good ones are carved out of
//! boot RAM (they never reach the page allocator) and map as ZONE_DEVICE.

mod common;

use common::{block_size, Opts, Qemu, RAM_BASE};
use std::collections::BTreeMap;

fn boot(append: &str) -> Qemu {
    Qemu::boot(Opts::new().append(append))
}

/// RAM the kernel accounts for wherever it went: free, struct pages,
/// page tables.
fn accounted_kb(info: &BTreeMap<String, u64>) -> u64 {
    info["MemTotal"] + info["Vmemmap"] + info["PageTables"]
}

#[test]
fn memmap_outside_described_ram_is_ignored() {
    let plain = {
        let mut q = boot("");
        let info = q.meminfo();
        q.poweroff();
        info
    };
    let bad = [
        ("256M!0x200000000", "not RAM the device tree describes"),
        ("512M!0x70000000", "not RAM the device tree describes"),
        ("1M!0xfffffffffff00000", "wraps around the address space"),
        (
            "16M!0x40000000",
            "overlaps the kernel image or the device tree",
        ),
    ];
    let append: Vec<String> = bad.iter().map(|(m, _)| format!("memmap={m}")).collect();
    let mut q = boot(&append.join(" "));
    let log = q.log();
    for (m, why) in bad {
        let (size, addr) = m.split_once('!').unwrap();
        let _ = size;
        let line = log
            .lines()
            .find(|l| l.starts_with("memmap=") && l.ends_with(&format!("!{addr}: {why}; ignored")));
        if line.is_none() {
            q.fail(&format!("no warning that memmap={m} is ignored ({why})"));
        }
    }
    let list = q.run_ok("devmem list");
    if !list.is_empty() {
        q.fail(&format!("ignored regions are listed: {list:?}"));
    }
    q.run_err("devmem map 0 --map=dev", "ENODEV");
    let info = q.meminfo();
    if info != plain {
        q.fail(&format!(
            "meminfo {info:?} differs from a boot without memmap= {plain:?}"
        ));
    }
    q.poweroff();
}

#[test]
fn memmap_inside_boot_ram_is_carved_out_and_maps() {
    let bs = block_size();
    let base = RAM_BASE + bs;
    let plain = {
        let mut q = boot("");
        let info = q.meminfo();
        q.poweroff();
        info
    };
    let mut q = boot(&format!("memmap={bs:#x}!{base:#x}"));
    let info = q.meminfo();
    if accounted_kb(&plain) - accounted_kb(&info) != bs >> 10 {
        q.fail(&format!(
            "carving {bs:#x} out of boot RAM: {plain:?} -> {info:?}"
        ));
    }
    let iomem = q.read("/proc/iomem");
    let want = format!(
        "{base:08x}-{:08x} : Persistent Memory (legacy)",
        base + bs - 1
    );
    if !iomem.lines().any(|l| l == want) {
        q.fail(&format!("/proc/iomem lacks {want:?}: {iomem}"));
    }
    // The page allocator never hands out a page of it: pin everything.
    let out = q.run("pin 4G");
    if !out.contains("ENOMEM") {
        q.fail(&format!("pin 4G: {out:?}"));
    }
    q.run_ok("unpin");
    q.run_ok("devmem map 0 --map=dev");
    let mapped = q.meminfo();
    if mapped["DeviceMem"] != bs >> 10 {
        q.fail(&format!("DeviceMem after map: {mapped:?}"));
    }
    q.run_ok("devmem unmap 0");
    let after = q.meminfo();
    if after != info {
        q.fail(&format!("meminfo after unmap {after:?}, before {info:?}"));
    }
    q.poweroff();
}
