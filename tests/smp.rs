//! Hotplug while other CPUs run: `-smp 4`, every CPU online, and the
//! `stress` command for 100 cycles on each granule, ending with
//! `/proc/meminfo` equal to its baseline.

mod common;

use common::{granule_kernel, Opts, Qemu};
use std::time::Duration;

fn stress(granule: &str, machine: &str) {
    let mut q = Qemu::boot(
        Opts::new()
            .kernel(granule_kernel(granule))
            .cpu("max")
            .machine(machine)
            .smp(4)
            .mem("2G")
            .append("mem=1G")
            .timeout(Duration::from_secs(120)),
    );
    assert_eq!(q.read("/sys/devices/system/cpu/online").trim(), "0-3");
    let baseline = q.read("/proc/meminfo");
    let out = q.run_ok("stress 100 3");
    assert!(out.contains("100 cycles of"), "{out}");
    assert!(out.contains("with 3 workers"), "{out}");
    assert!(out.contains("errors: 0"), "{out}");
    assert!(out.contains("meminfo back to its baseline"), "{out}");
    let ops: u64 = out
        .split("worker operations: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no operation count in {out}"));
    assert!(ops > 0, "the workers did nothing: {out}");
    assert_eq!(q.read("/proc/meminfo"), baseline);
    q.assert_no_misuse("at the end");
    q.poweroff();
}

#[test]
fn stress_4k_gicv2() {
    stress("4k", "");
}

#[test]
fn stress_16k_gicv3() {
    stress("16k", ",gic-version=3");
}

#[test]
fn stress_64k_gicv3_el2() {
    stress("64k", ",gic-version=3,virtualization=on");
}
