//! Offlining memory in use: `memhog` areas on hot-added movable memory
//! migrate out of every block offlined (contents checked through the
//! mapping, `/proc/meminfo` exact afterwards); a `pin` in a block makes its
//! offline fail with `EBUSY` and change nothing; and on `-smp 2` a worker
//! checks its own memhog pages without a break while CPU 0 offlines and
//! re-onlines their blocks.

mod common;

use common::{block_size, figure, granule, granule_kernel, Granule, Opts, Qemu};
use std::time::Duration;

const PROBE: &str = "/sys/devices/system/memory/probe";
const REMOVE: &str = "/sys/devices/system/memory/remove";
const AUTO: &str = "/sys/devices/system/memory/auto_online_blocks";
/// RAM held back by `mem=1G` starts where boot RAM ends.
const HELD_BACK: u64 = 0x8000_0000;

fn mem() -> &'static str {
    match granule() {
        Granule::K64 => "4G",
        _ => "2G",
    }
}

fn boot() -> Qemu {
    Qemu::boot(
        Opts::new()
            .mem(mem())
            .append("mem=1G")
            .timeout(Duration::from_secs(120)),
    )
}

fn vmstat(q: &mut Qemu, name: &str) -> u64 {
    let text = q.read("/proc/vmstat");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn state(id: u64) -> String {
    format!("/sys/devices/system/memory/memory{id}/state")
}

/// Hot-adds `blocks` blocks of held-back RAM as movable memory: their ids.
fn add_movable(q: &mut Qemu, blocks: u64) -> Vec<u64> {
    q.write(AUTO, "online_movable");
    let size = blocks * block_size();
    q.run_ok(&format!("echo {HELD_BACK:#x} {size:#x} > {PROBE}"));
    let first = HELD_BACK / block_size();
    (first..first + blocks).collect()
}

#[test]
fn memhog_moves_out_of_every_offlined_block() {
    let mut q = boot();
    let baseline = q.read("/proc/meminfo");
    let blocks = match granule() {
        Granule::K64 => 2,
        _ => 8,
    };
    let size = match granule() {
        Granule::K4 => "600M",
        _ => "256M",
    };
    let ids = add_movable(&mut q, blocks);
    let out = q.run_ok(&format!("memhog {size}"));
    assert!(out.starts_with("memhog 0: "), "{out}");
    let kb: u64 = size.trim_end_matches('M').parse::<u64>().unwrap() << 10;
    assert_eq!(q.meminfo_kb("AnonPages"), kb);
    assert_eq!(
        (vmstat(&mut q, "nr_anon_pages") * common::page_size()) >> 10,
        kb
    );
    for &id in ids.iter().rev() {
        q.run_ok(&format!("echo offline > {}", state(id)));
        assert_eq!(q.read(&state(id)).trim(), "offline");
    }
    let moved = vmstat(&mut q, "pgmigrate_success");
    assert!(
        moved * common::page_size() >= (kb << 10) / 2,
        "{moved} pages migrated"
    );
    assert_eq!(vmstat(&mut q, "pgmigrate_fail"), 0);
    q.run_ok(&format!(
        "echo {HELD_BACK:#x} {:#x} > {REMOVE}",
        blocks * block_size()
    ));
    let out = q.run_ok("memhog check");
    assert!(out.contains("1 areas"), "{out}");
    assert_eq!(q.meminfo_kb("AnonPages"), kb);
    q.run_ok("memhog free");
    assert_eq!(q.read("/proc/meminfo"), baseline);
    q.assert_no_misuse("after memhog and remove");
    q.poweroff();
}

#[test]
fn offline_with_a_pin_fails_and_changes_nothing() {
    let mut q = boot();
    let ids = add_movable(&mut q, 1);
    q.run_ok("memhog 16M");
    q.run_ok("pin 1M");
    let (info, vm) = (q.read("/proc/meminfo"), q.read("/proc/vmstat"));
    q.run_err(&format!("echo offline > {}", state(ids[0])), "EBUSY");
    assert_eq!(q.read(&state(ids[0])).trim(), "online");
    assert_eq!(q.read("/proc/meminfo"), info);
    assert_eq!(q.read("/proc/vmstat"), vm);
    q.run_ok("unpin");
    q.run_ok(&format!("echo offline > {}", state(ids[0])));
    assert!(vmstat(&mut q, "pgmigrate_success") > 0);
    q.run_ok("memhog check");
    q.run_ok("memhog free");
    q.poweroff();
}

/// `stress --memhog`: a worker checks and rewrites its memhog pages while
/// CPU 0 offlines and re-onlines the blocks that hold them.
fn stress_memhog(granule: &str, cycles: u32) {
    let mut q = Qemu::boot(
        Opts::new()
            .kernel(granule_kernel(granule))
            .cpu("max")
            .smp(2)
            .mem(if granule == "64k" { "4G" } else { "2G" })
            .append("mem=1G")
            .timeout(Duration::from_secs(240)),
    );
    let baseline = q.read("/proc/meminfo");
    let out = q.run_ok(&format!("stress --memhog {cycles} 1"));
    assert!(out.contains("mismatches: 0"), "{out}");
    assert!(out.contains("errors: 0"), "{out}");
    let migrated = figure(&out, "pages migrated: ");
    assert!(migrated > 0, "nothing migrated: {out}");
    let waits = figure(&out, "migration waits: ");
    eprintln!("{granule}: {migrated} pages migrated, {waits} migration waits");
    assert_eq!(q.read("/proc/meminfo"), baseline);
    q.poweroff();
}

#[test]
fn smp_worker_sees_no_stale_page_4k() {
    stress_memhog("4k", 10);
}

#[test]
fn smp_worker_sees_no_stale_page_16k() {
    stress_memhog("16k", 4);
}

#[test]
fn smp_worker_sees_no_stale_page_64k() {
    stress_memhog("64k", 2);
}
