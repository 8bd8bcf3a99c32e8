//! Hotplug while other CPUs run: `-smp 4`, every CPU online, and the
//! `stress` command for 100 cycles on each granule, ending with
//! `/proc/meminfo` equal to its baseline; a short run on GICv4, whose
//! redistributor frames are twice GICv3's; and on `-smp 2` each side of
//! `stress` alone (the workers go through per-CPU page lists, whose pages
//! `MemFree` counts), and its `--profile` breakdown.

mod common;

use common::{figure, granule_kernel, Opts, Qemu};
use std::time::Duration;

fn boot(granule: &str, machine: &str, smp: u32) -> Qemu {
    Qemu::boot(
        Opts::new()
            .kernel(granule_kernel(granule))
            .cpu("max")
            .machine(machine)
            .smp(smp)
            .mem("2G")
            .append("mem=1G")
            .timeout(Duration::from_secs(120)),
    )
}

/// `stress CYCLES WORKERS`, with a CPU for each worker besides CPU 0.
fn stress(granule: &str, machine: &str, cycles: u32, workers: u32) {
    let mut q = boot(granule, machine, workers + 1);
    let online = q.read("/sys/devices/system/cpu/online");
    assert_eq!(online.trim(), format!("0-{workers}"));
    let baseline = q.read("/proc/meminfo");
    let out = q.run_ok(&format!("stress {cycles} {workers}"));
    assert!(out.contains(&format!("{cycles} cycles of")), "{out}");
    assert!(out.contains(&format!("with {workers} workers")), "{out}");
    assert!(out.contains("errors: 0"), "{out}");
    assert!(out.contains("meminfo back to its baseline"), "{out}");
    assert!(
        figure(&out, "worker operations: ") > 0,
        "the workers did nothing: {out}"
    );
    assert!(figure(&out, "worker operations/s: ") > 0, "{out}");
    // The run means something only if the workers used hot-added memory
    // and CPU 0 had to isolate and wait for their pages at least once.
    let counts: Vec<u64> = out
        .lines()
        .find(|l| l.starts_with("allocations from hot-added memory: "))
        .unwrap_or_else(|| panic!("no hot-added counts in {out}"))
        .split(": ")
        .skip(1)
        .map(|s| s.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert!(counts[0] > 0, "no worker allocated hot-added memory: {out}");
    if cycles >= 100 {
        assert!(
            counts[1] > 0,
            "no offline waited for a worker's page: {out}"
        );
    }
    assert_eq!(q.read("/proc/meminfo"), baseline);
    q.assert_no_misuse("at the end");
    q.poweroff();
}

#[test]
fn stress_4k_gicv2() {
    stress("4k", "", 100, 3);
}

#[test]
fn stress_16k_gicv3() {
    stress("16k", ",gic-version=3", 100, 3);
}

#[test]
fn stress_64k_gicv3_el2() {
    stress("64k", ",gic-version=3,virtualization=on", 100, 3);
}

/// GICv4 redistributors are 256 KiB apart (VLPI frames after the RD and SGI
/// frames): a GICv3 stride wakes nothing on CPU 1, and `stress` reports
/// `workers did not stop`. QEMU offers GICv4 only with `virtualization=on`
/// (the kernel then enters at EL2).
#[test]
fn stress_gicv4_smp2() {
    stress("4k", ",gic-version=4,virtualization=on", 2, 1);
}

/// `-smp 2`: both sides, each alone, and the spinning control; every run
/// ends where it started, with the worker's pages back on its lists or in
/// the buddy allocator (`MemFree` counts both).
#[test]
fn stress_smp2_each_side_alone() {
    let mut q = boot("4k", "", 2);
    let baseline = q.read("/proc/meminfo");
    let both = q.run_ok("stress 20 1");
    assert!(
        both.contains("20 cycles of 8 blocks with 1 workers"),
        "{both}"
    );
    assert!(
        both.contains("errors: 0") && both.contains("meminfo back to its baseline"),
        "{both}"
    );
    assert!(figure(&both, "worker operations/s: ") > 0, "{both}");
    assert!(
        figure(&both, "allocations from hot-added memory: ") > 0,
        "{both}"
    );
    assert_eq!(q.read("/proc/meminfo"), baseline);

    let hotplug = q.run_ok("stress --hotplug-only 5");
    assert!(
        hotplug.contains("5 cycles of 8 blocks with 0 workers"),
        "{hotplug}"
    );
    assert!(
        hotplug.contains("meminfo back to its baseline"),
        "{hotplug}"
    );
    assert_eq!(figure(&hotplug, "worker operations: "), 0);

    let workers = q.run_ok("stress --workers-only 300 1");
    assert!(workers.contains("workers only, 1 workers for"), "{workers}");
    assert!(workers.contains("errors: 0"), "{workers}");
    assert!(
        workers.contains("meminfo back to its baseline"),
        "{workers}"
    );
    assert!(figure(&workers, "worker operations/s: ") > 0, "{workers}");
    assert_eq!(figure(&workers, "allocations from hot-added memory: "), 0);

    let spin = q.run_ok("stress --spin-workers 3 1");
    assert!(
        spin.contains("3 cycles of 8 blocks with 1 workers"),
        "{spin}"
    );
    assert!(spin.contains("meminfo back to its baseline"), "{spin}");

    // `--profile`: the breakdown, and the worker's frees into a block
    // being offlined put aside on its CPU (no memory lock) and collected.
    let prof = q.run_ok("stress --profile 20 1");
    assert!(prof.contains("meminfo back to its baseline"), "{prof}");
    assert!(
        figure(&prof, "offlines that waited for pages: ") > 0,
        "{prof}"
    );
    assert!(
        figure(&prof, "frees put aside for an offline: ") > 0,
        "{prof}"
    );
    for line in [
        "profile: cpu0 phases: ",
        "profile: cpu0: memory lock taken ",
        "profile: cpu1: iterations over 100 us: ",
    ] {
        assert!(prof.contains(line), "no {line:?} in {prof}");
    }
    // The worker refills its lists under the zone lock alone: never the
    // memory lock that CPU 0's hotplug holds.
    assert!(
        prof.contains("profile: cpu1: memory lock taken 0 times"),
        "{prof}"
    );
    let refills: u64 = prof
        .split("profile: cpu1: ")
        .nth(1)
        .and_then(|s| s.split("under the zone lock ").nth(1))
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no zone lock figures for cpu1 in {prof}"));
    assert!(refills > 0, "{prof}");
    let tlbi: u64 = prof
        .split("broadcast TLB invalidations ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no TLB invalidations in {prof}"));
    assert!(tlbi > 0, "removing memory invalidates: {prof}");
    q.run_err("stress --profile --memhog 1 1", "EINVAL");
    assert_eq!(q.read("/proc/meminfo"), baseline);

    q.run_err("stress --workers-only 0 1", "EINVAL");
    q.run_err("stress 1 1 1", "EINVAL");
    q.run_err("stress --bogus", "EINVAL");
    assert_eq!(q.read("/proc/meminfo"), baseline);
    q.assert_no_misuse("at the end");
    q.poweroff();
}
