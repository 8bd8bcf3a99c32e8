//! Bad platform input is refused, logged once, and changes nothing:
//! `memmap=` regions the device tree does not describe as RAM, beyond the
//! physical address range, or over the kernel; good ones are carved out of
//! boot RAM (they never reach the page allocator) and map as ZONE_DEVICE.
//! The device tree's reservations (`/memreserve/`, `/reserved-memory`) are
//! honoured: QEMU's own tree, with reservations added, is passed back with
//! `-dtb`.

mod common;

#[path = "../src/platform/dtb/build.rs"]
mod dtb;

use common::{block_size, Opts, Qemu, RAM_BASE};
use std::collections::BTreeMap;
use std::path::PathBuf;

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

/// QEMU's device tree for `-m {mem}` (its `dumpdtb`), read back.
fn qemu_dtb(mem: &str) -> dtb::Fdt {
    let path = temp_path("dump.dtb");
    let out = std::process::Command::new("qemu-system-aarch64")
        .arg("-machine")
        .arg(format!("virt,dumpdtb={}", path.display()))
        .args(["-cpu", "cortex-a72", "-m", mem, "-display", "none"])
        .output()
        .expect("qemu-system-aarch64 runs");
    assert!(out.status.success(), "dumpdtb: {out:?}");
    let fdt = dtb::Fdt::parse(&std::fs::read(&path).unwrap());
    let _ = std::fs::remove_file(&path);
    fdt
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hpk-platform-{}-{name}", std::process::id()))
}

/// Writes `fdt` packed: QEMU doubles a `-dtb` file's size (plus 10000
/// bytes) for its fixups and, for an ELF kernel, places it in the 2 MiB
/// below the image; `dumpdtb`'s 1 MiB blob does not fit and QEMU then
/// silently boots without one.
fn write_dtb(fdt: &dtb::Fdt, name: &str) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, fdt.to_bytes()).unwrap();
    path
}

/// The linear-map address of `pa`.
fn va(pa: u64) -> u64 {
    0xffff_0000_0000_0000 + pa
}

#[test]
fn device_tree_reservations_are_kept_from_the_allocator() {
    let bs = block_size();
    let held = RAM_BASE + (1 << 30);
    let no_map = (RAM_BASE + 0x800_0000, 0x20_0000);
    let buf = (RAM_BASE + 0x900_0000, 0x1_0000);
    let memreserve = (RAM_BASE + 0xa00_0000, 0x1000);
    let in_held = (held + 0x10_0000, 0x1000);
    let pattern = 0x1122_3344_5566_7788u64;

    let plain = qemu_dtb("2G");
    let mut fdt = plain.clone();
    fdt.reservations.push(memreserve);
    let mut rm = dtb::Node::new("reserved-memory");
    rm.u32s("#address-cells", &[2])
        .u32s("#size-cells", &[2])
        .prop("ranges", &[]);
    let mut fw = dtb::Node::new(&format!("fw@{:x}", no_map.0));
    fw.reg64(&[no_map]).prop("no-map", &[]);
    let mut b = dtb::Node::new(&format!("buf@{:x}", buf.0));
    b.reg64(&[buf, in_held]);
    let mut off = dtb::Node::new("off@4b000000");
    off.reg64(&[(RAM_BASE + 0xb00_0000, 0x10_0000)])
        .string("status", "disabled");
    rm.child(fw).child(b).child(off);
    fdt.root.child(rm);
    let (plain_path, path) = (
        write_dtb(&plain, "plain.dtb"),
        write_dtb(&fdt, "reserved.dtb"),
    );

    let opts = |p: &PathBuf| {
        Opts::new()
            .mem("2G")
            .append("mem=1G")
            .args(&["-dtb", p.to_str().unwrap()])
    };
    let before = {
        let mut q = Qemu::boot(opts(&plain_path));
        let info = q.meminfo();
        q.poweroff();
        info
    };
    let loader = format!("loader,addr={:#x},data={pattern:#x},data-len=8", buf.0);
    let mut q = Qemu::boot(opts(&path).args(&["-device", &loader]));
    let _ = std::fs::remove_file(&plain_path);
    let _ = std::fs::remove_file(&path);
    let log = q.log();
    for r in [no_map, buf, memreserve, in_held] {
        let line = format!("OF: reserved mem: {:#x}..{:#x}", r.0, r.0 + r.1 - 1);
        if !log.contains(&line) {
            q.fail(&format!("no {line:?} in the boot log"));
        }
    }
    if log.contains("0x4b000000..") {
        q.fail("a disabled reserved-memory node was reserved");
    }
    // Everything reserved in boot RAM is gone from the allocator and no
    // more: the no-map region, the buffer and the /memreserve/ page.
    let info = q.meminfo();
    let gone = accounted_kb(&before) - accounted_kb(&info);
    let want = (no_map.1 + buf.1 + memreserve.1) >> 10;
    if gone != want {
        q.fail(&format!(
            "{gone} kB reserved, want {want}: {before:?} -> {info:?}"
        ));
    }
    let iomem = q.read("/proc/iomem");
    let lines = [
        format!("{:08x}-{:08x} : System RAM", RAM_BASE, no_map.0 - 1),
        format!(
            "{:08x}-{:08x} : reserved",
            no_map.0,
            no_map.0 + no_map.1 - 1
        ),
        format!(
            "{:08x}-{:08x} : System RAM",
            no_map.0 + no_map.1,
            RAM_BASE + (1 << 30) - 1
        ),
        format!("  {:08x}-{:08x} : reserved", buf.0, buf.0 + buf.1 - 1),
        format!(
            "  {:08x}-{:08x} : reserved",
            memreserve.0,
            memreserve.0 + memreserve.1 - 1
        ),
        format!(
            "{:08x}-{:08x} : reserved",
            in_held.0,
            in_held.0 + in_held.1 - 1
        ),
    ];
    for l in &lines {
        if !iomem.lines().any(|x| x == l) {
            q.fail(&format!("/proc/iomem lacks {l:?}:\n{iomem}"));
        }
    }
    // No page of them is handed out: pin all there is, give it back; what
    // QEMU loaded into the buffer is still there.
    let out = q.run("pin 4G");
    if !out.contains("ENOMEM") {
        q.fail(&format!("pin 4G: {out:?}"));
    }
    q.run_ok("unpin");
    let want = format!("{:#018x}: {pattern:#018x}", va(buf.0));
    let got = q.run_ok(&format!("touch {:#x}", va(buf.0)));
    if got.trim() != want {
        q.fail(&format!(
            "touch of the reserved buffer: {got:?}, want {want:?}"
        ));
    }
    // no-map: not in the linear map at all.
    q.run_err(&format!("touch {:#x}", va(no_map.0)), "EFAULT");
    // Hot-add refuses the held-back block that holds a reservation, and
    // changes nothing; the next block adds.
    let info = q.meminfo();
    let probe = "/sys/devices/system/memory/probe";
    q.run_err(&format!("echo {held:#x} > {probe}"), "EBUSY");
    if q.meminfo() != info {
        q.fail("a refused probe changed meminfo");
    }
    q.run_ok(&format!("echo {:#x} > {probe}", held + bs));
    q.poweroff();
}
