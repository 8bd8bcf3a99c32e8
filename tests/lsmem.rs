//! What a Linux user types, on the kernel: `/proc/zoneinfo` and `lsmem`
//! compared with Linux's layouts (`tests/data/linux`: field names and
//! order, not values), `MemAvailable`, `nr_memmap_*`, `chmem` and kmem's
//! `devmem reconfigure`; bad input gets one error line and changes nothing.
//! With `HPK_GRANULE=16k` or `64k` on that granule's kernel.

mod common;

use common::{block_id, block_size, Opts, Qemu};
use std::time::Duration;

const LINUX_ZONEINFO: &str = include_str!("data/linux/zoneinfo");
const LINUX_LSMEM: &str = include_str!("data/linux/lsmem");

/// 1 GiB of boot RAM, 512 MiB held back for `probe`, 512 MiB of `memmap=`
/// device memory.
fn boot() -> Qemu {
    Qemu::boot(
        Opts::new()
            .mem("2G")
            .append("mem=1G memmap=512M!0xa0000000")
            .timeout(Duration::from_secs(20)),
    )
}

/// A zoneinfo line's name: the text before its value (`pages free`,
/// `protection:`, `cpu:`, `nr_free_pages`), or the zone heading.
fn key(line: &str) -> String {
    if line.starts_with("Node ") {
        return "Node".into();
    }
    let t = line.trim();
    match t.find(|c: char| c.is_ascii_digit() || c == '(') {
        Some(i) if !t.starts_with("nr_") && !t.starts_with("numa_") => t[..i].trim().into(),
        _ => t.split_whitespace().next().unwrap_or("").into(),
    }
}

/// Zone name -> its lines' keys, from `/proc/zoneinfo` text.
fn sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(zone) = line.strip_prefix("Node 0, zone ") {
            out.push((zone.trim().to_string(), vec![key(line)]));
        } else if let Some(s) = out.last_mut() {
            s.1.push(key(line));
        }
    }
    out
}

/// Whether `ours` appears in `theirs` in order (Linux prints lines we do
/// not have, never ours in another order).
fn in_order(ours: &[String], theirs: &[String]) -> bool {
    let mut it = theirs.iter();
    ours.iter().all(|k| it.any(|t| t == k))
}

#[test]
fn zoneinfo_meminfo_vmstat_follow_linux() {
    let mut q = boot();
    let linux = sections(LINUX_ZONEINFO);
    let populated = &linux[0].1; // DMA: the node's stats, every zone field
    let empty = &linux.iter().find(|(z, _)| z == "Movable").unwrap().1;
    let check = |q: &mut Qemu, text: &str| {
        let ours = sections(text);
        let names: Vec<&str> = ours.iter().map(|(z, _)| z.as_str()).collect();
        if names != ["Normal", "Movable", "Device"] {
            q.fail(&format!("zones {names:?} in:\n{text}"));
        }
        for (zone, keys) in &ours {
            let full = keys.iter().any(|k| k == "start_pfn:");
            let reference = if full { populated } else { empty };
            if !in_order(keys, reference) {
                q.fail(&format!(
                    "zone {zone}: fields {keys:?} are not in Linux's order {reference:?}"
                ));
            }
            for want in [
                "pages free",
                "min",
                "low",
                "high",
                "spanned",
                "present",
                "managed",
                "protection:",
            ] {
                if !keys.iter().any(|k| k == want) {
                    q.fail(&format!("zone {zone}: no {want:?} in {keys:?}"));
                }
            }
        }
        ours
    };
    let zi = q.read("/proc/zoneinfo");
    let ours = check(&mut q, &zi);
    if !ours[0].1.iter().any(|k| k == "per-node") || !ours[0].1.iter().any(|k| k == "start_pfn:") {
        q.fail(&format!("Normal is not populated:\n{zi}"));
    }
    // Hot-added Movable memory populates Movable.
    let first = block_id(0x8000_0000);
    q.run_ok("echo 0x80000000 > /sys/devices/system/memory/probe");
    q.write(
        &format!("/sys/devices/system/memory/memory{first}/state"),
        "online_movable",
    );
    let zi = q.read("/proc/zoneinfo");
    let ours = check(&mut q, &zi);
    if !ours[1].1.iter().any(|k| k == "start_pfn:") {
        q.fail(&format!("Movable is not populated:\n{zi}"));
    }

    let info = q.meminfo();
    let (free, avail) = (info["MemFree"], info["MemAvailable"]);
    let text = q.read("/proc/meminfo");
    let names: Vec<&str> = text.lines().filter_map(|l| l.split(':').next()).collect();
    if names[..3] != ["MemTotal", "MemFree", "MemAvailable"] || avail >= free || avail == 0 {
        q.fail(&format!(
            "MemAvailable {avail} kB, MemFree {free} kB:\n{text}"
        ));
    }
    let vmstat = q.read("/proc/vmstat");
    let field = |name: &str| -> Option<u64> {
        vmstat
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
    };
    match (field("nr_memmap_boot_pages"), field("nr_memmap_pages")) {
        (Some(boot), Some(hot)) if boot > 0 && hot > 0 => {}
        _ => q.fail(&format!("nr_memmap counters:\n{vmstat}")),
    }
    q.poweroff();
}

/// The header and summary labels of util-linux's `lsmem`.
fn layout(text: &str) -> (String, Vec<String>) {
    let header = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let labels = text
        .lines()
        .filter_map(|l| Some(l.split_once(':')?.0.to_string()))
        .collect();
    (header, labels)
}

#[test]
fn lsmem_chmem_and_kmem_as_on_linux() {
    let mut q = boot();
    let bs = block_size();
    let per_gib = (1u64 << 30) / bs;
    let first = block_id(0x8000_0000);
    q.run_ok(&format!(
        "echo 0x80000000 {:#x} > /sys/devices/system/memory/probe",
        2 * bs
    ));
    let out = q.run_ok("lsmem");
    if layout(&out) != layout(LINUX_LSMEM) {
        q.fail(&format!("lsmem:\n{out}\nLinux's layout:\n{LINUX_LSMEM}"));
    }
    let boot_last = block_id(0x4000_0000) + per_gib - 1;
    let want_rows = [
        format!(
            "0x0000000040000000-0x000000007fffffff 1G online yes {}-{boot_last}",
            block_id(0x4000_0000)
        ),
        format!(
            "0x0000000080000000-0x{:016x} {}M offline {first}-{}",
            0x8000_0000 + 2 * bs - 1,
            (2 * bs) >> 20,
            first + 1
        ),
    ];
    let rows: Vec<String> = out
        .lines()
        .skip(1)
        .take(2)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if rows != want_rows {
        q.fail(&format!("lsmem rows {rows:?}, want {want_rows:?}"));
    }
    // chmem: a size, then a block range; bad input changes nothing.
    q.run_ok(&format!("chmem -e {}M", bs >> 20));
    let state =
        |q: &mut Qemu, id: u64| q.read(&format!("/sys/devices/system/memory/memory{id}/state"));
    if state(&mut q, first) != "online\n" || state(&mut q, first + 1) != "offline\n" {
        q.fail("chmem -e did not online the lowest offline block");
    }
    let before = (q.read("/proc/meminfo"), q.run_ok("lsmem -a"));
    for (bad, errno) in [
        ("chmem -e 1M", "EINVAL"),
        ("chmem -e -d 128M", "EINVAL"),
        ("chmem -x", "EINVAL"),
        ("chmem -e 64G", "ENOSPC"),
        ("chmem -d 0x40000000-0x7fffffff", "EBUSY"),
        ("chmem -e -b 99999", "ENOENT"),
        ("lsmem -o NOPE", "EINVAL"),
        ("lsmem --frob", "EINVAL"),
    ] {
        q.run_err(bad, errno);
        let now = (q.read("/proc/meminfo"), q.run_ok("lsmem -a"));
        if now != before {
            q.fail(&format!("`{bad}` changed state: {before:?} -> {now:?}"));
        }
    }
    q.run_ok(&format!("chmem -d -b {first}"));

    // kmem: device memory as System RAM, onlined by the policy.
    q.write(
        "/sys/devices/system/memory/auto_online_blocks",
        "online_movable",
    );
    let total = q.meminfo_kb("MemTotal");
    q.run_ok("devmem reconfigure 0 --mode=system-ram");
    let iomem = q.read("/proc/iomem");
    if !iomem.contains("  a0000000-") || !iomem.contains(": System RAM (kmem)") {
        q.fail(&format!("no System RAM (kmem) under the device:\n{iomem}"));
    }
    let dev = block_id(0xa000_0000);
    if state(&mut q, dev) != "online\n" || q.meminfo_kb("MemTotal") != total + (512 << 10) {
        q.fail("kmem memory is not online");
    }
    q.run_err("devmem map 0 --map=dev", "EBUSY");
    q.run_err("devmem reconfigure 0 --mode=frob", "EINVAL");
    q.run_ok("devmem reconfigure 0 --mode=devdax");
    if q.meminfo_kb("MemTotal") != total || q.read("/proc/iomem").contains("kmem") {
        q.fail("devdax did not take the memory back");
    }
    q.run_ok("devmem map 0 --map=dev");
    q.run_ok("devmem unmap 0");
    q.assert_no_misuse("after kmem");
    q.poweroff();
}
