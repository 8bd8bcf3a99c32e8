//! Hotplug while other CPUs run: `-smp 4`, every CPU online, and the
//! `stress` command for 100 cycles on each granule, ending with
//! `/proc/meminfo` equal to its baseline; and a short run on GICv4, whose
//! redistributor frames are twice GICv3's.

mod common;

use common::{granule_kernel, Opts, Qemu};
use std::time::Duration;

/// `stress CYCLES WORKERS`, with a CPU for each worker besides CPU 0.
fn stress(granule: &str, machine: &str, cycles: u32, workers: u32) {
    let smp = workers + 1;
    let mut q = Qemu::boot(
        Opts::new()
            .kernel(granule_kernel(granule))
            .cpu("max")
            .machine(machine)
            .smp(smp)
            .mem("2G")
            .append("mem=1G")
            .timeout(Duration::from_secs(120)),
    );
    let online = q.read("/sys/devices/system/cpu/online");
    assert_eq!(online.trim(), format!("0-{workers}"));
    let baseline = q.read("/proc/meminfo");
    let out = q.run_ok(&format!("stress {cycles} {workers}"));
    assert!(out.contains(&format!("{cycles} cycles of")), "{out}");
    assert!(out.contains(&format!("with {workers} workers")), "{out}");
    assert!(out.contains("errors: 0"), "{out}");
    assert!(out.contains("meminfo back to its baseline"), "{out}");
    let ops: u64 = out
        .split("worker operations: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no operation count in {out}"));
    assert!(ops > 0, "the workers did nothing: {out}");
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
