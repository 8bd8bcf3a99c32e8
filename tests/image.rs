//! The kernel also boots as a raw arm64 Linux `Image` (scripts/image), the
//! form QEMU hands the DTB to in x0 instead of placing it at RAM's start.

mod common;

use common::{granule_kernel, kernel_elf, Opts, Qemu};
use std::path::{Path, PathBuf};
use std::process::Command;

fn make_image(elf: &Path, name: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!("hpk-{name}-{}.img", std::process::id()));
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/image"))
        .arg(elf)
        .arg(&out)
        .status()
        .expect("scripts/image runs");
    assert!(
        status.success(),
        "scripts/image failed for {}",
        elf.display()
    );
    out
}

fn boots_as_image(elf: PathBuf, name: &str, cpu: &str) {
    let image = make_image(&elf, name);
    let mut q = Qemu::boot(Opts::new().kernel(image.clone()).cpu(cpu).mem("1G"));
    let dmesg = q.run_ok("dmesg");
    // With an Image QEMU passes the DTB in x0, away from the start of RAM.
    let dtb = dmesg
        .lines()
        .find_map(|l| l.split("DTB at ").nth(1))
        .unwrap_or_else(|| panic!("no DTB line in\n{dmesg}"));
    assert_ne!(
        dtb.trim(),
        "0x40000000",
        "the DTB came from RAM's start, not x0"
    );
    let total = q.meminfo()["MemTotal"];
    assert!(total > 1_000_000 && total <= 1 << 20, "MemTotal {total} kB");
    q.run_ok("echo 0 > /sys/module/memory_hotplug/parameters/memmap_on_memory");
    q.poweroff();
    let _ = std::fs::remove_file(image);
}

#[test]
fn the_4k_kernel_boots_as_an_image() {
    boots_as_image(kernel_elf(), "4k", "cortex-a72");
}

#[test]
fn the_64k_kernel_boots_as_an_image() {
    boots_as_image(granule_kernel("64k"), "64k", "max");
}
