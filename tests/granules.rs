//! Every granule boots and hot-plugs: the hotplug smoke test on the 4K, 16K
//! and 64K kernels (`scripts/test` builds each into `target/granule-*`).

mod common;

use common::{granule_kernel, Opts, Qemu};

/// Hot-adds 512 MiB (four sections of 4K/16K, one of 64K), onlines,
/// offlines and removes it with struct pages in RAM and on the memory, maps
/// 512 MiB of device memory both ways, and checks `/proc/meminfo` returns to
/// its baseline every time.
fn smoke(granule: &str, page_size: u64, section: u64) {
    let mut q = Qemu::boot(
        Opts::new()
            .kernel(granule_kernel(granule))
            .cpu("max")
            .mem("2G")
            .append("mem=1G memmap=512M!0xa0000000"),
    );
    let dmesg = q.run_ok("dmesg");
    assert!(
        dmesg.contains(&format!("({granule} granule, 48-bit VA)").replace('k', "K")),
        "{dmesg}"
    );
    assert_eq!(
        q.read("/sys/devices/system/memory/block_size_bytes").trim(),
        format!("{section:x}")
    );
    let ptdump = q.read("/sys/kernel/debug/kernel_page_tables");
    assert!(
        ptdump.contains("---[ Linear Mapping start ]---"),
        "{ptdump}"
    );
    assert!(
        ptdump.lines().any(|l| l.starts_with("0xffff000040000000-")
            && l.contains("RW NX SHD AF")
            && l.contains("BLK")),
        "linear map of boot RAM not in blocks:\n{ptdump}"
    );
    let baseline = q.read("/proc/meminfo");
    let struct_pages_kb = (512 << 20) / page_size * 64 / 1024;
    for on_memory in ["N", "Y"] {
        q.write(
            "/sys/module/memory_hotplug/parameters/memmap_on_memory",
            on_memory,
        );
        q.run_ok("echo 0x80000000 0x20000000 > /sys/devices/system/memory/probe");
        let first = 0x8000_0000 / section;
        for id in first..first + (512 << 20) / section {
            q.write(
                &format!("/sys/devices/system/memory/memory{id}/state"),
                "online_movable",
            );
        }
        let m = q.meminfo();
        let expect_total = q_baseline(&baseline, "MemTotal") + 512 * 1024
            - if on_memory == "Y" { struct_pages_kb } else { 0 };
        assert_eq!(m["MemTotal"], expect_total, "memmap_on_memory={on_memory}");
        let (vmemmap, altmap) = if on_memory == "Y" {
            (0, struct_pages_kb)
        } else {
            (struct_pages_kb, 0)
        };
        assert_eq!(m["Vmemmap"], q_baseline(&baseline, "Vmemmap") + vmemmap);
        assert_eq!(m["VmemmapAltmap"], altmap);
        q.run_ok("touch 0xffff000080000000");
        for id in first..first + (512 << 20) / section {
            q.write(
                &format!("/sys/devices/system/memory/memory{id}/state"),
                "offline",
            );
        }
        q.run_ok("echo 0x80000000 0x20000000 > /sys/devices/system/memory/remove");
        assert_eq!(
            q.read("/proc/meminfo"),
            baseline,
            "memmap_on_memory={on_memory}"
        );
        let fault = q.run_err("touch 0xffff000080000000", "EFAULT");
        assert!(fault.contains("translation fault"), "{fault}");
    }
    for (how, vmemmap, altmap) in [("dev", 0, struct_pages_kb), ("mem", struct_pages_kb, 0)] {
        q.run_ok(&format!("devmem map 0 --map={how}"));
        let m = q.meminfo();
        assert_eq!(m["DeviceMem"], 512 * 1024);
        assert_eq!(
            m["Vmemmap"],
            q_baseline(&baseline, "Vmemmap") + vmemmap,
            "--map={how}"
        );
        assert_eq!(m["VmemmapAltmap"], altmap, "--map={how}");
        let pfn = 0xa000_0000 / page_size;
        assert!(q.run_ok(&format!("page {pfn:#x}")).contains("zone Device"));
        q.run_ok("devmem unmap 0");
        assert_eq!(q.read("/proc/meminfo"), baseline, "--map={how}");
    }
    q.assert_no_misuse("at the end");
    q.poweroff();
}

fn q_baseline(meminfo: &str, name: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{meminfo}"))
}

#[test]
fn granule_4k_hotplug_smoke() {
    smoke("4k", 4 << 10, 128 << 20);
}

#[test]
fn granule_16k_hotplug_smoke() {
    smoke("16k", 16 << 10, 128 << 20);
}

#[test]
fn granule_64k_hotplug_smoke() {
    smoke("64k", 64 << 10, 512 << 20);
}

/// `cargo run` (scripts/qemu) picks a CPU that has the kernel's granule:
/// the 16K kernel on the default cortex-a72 used to hang silently.
#[test]
fn the_runner_picks_a_cpu_with_the_granule() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let runner = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/qemu");
    let mut child = Command::new(runner)
        .arg(granule_kernel("16k"))
        .env_remove("QEMU_CPU")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scripts/qemu runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"poweroff\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut out = String::new();
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            panic!("the 16K kernel did not power off within 30 s:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("(16K granule, 48-bit VA)"), "{out}");
}
