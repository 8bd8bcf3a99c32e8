//! Exhausting memory from the console is an `ENOMEM`, never a panic: the
//! kernel heap grows from the page allocator (`Slab:`) while it can, gives
//! its blocks back when they empty, and meminfo returns exactly.

mod common;

use common::{Opts, Qemu};

#[test]
fn pin_to_exhaustion_is_enomem_and_unpin_restores_everything() {
    let mut q = Qemu::boot(Opts::new().mem("3G"));
    let before = q.meminfo();
    if before.get("Slab").copied().unwrap_or(0) == 0 {
        q.fail(&format!("no Slab: line in {before:?}"));
    }
    // 2600M fits; its list of pages (5 MiB) grows the heap beyond its
    // first 4 MiB block.
    let out = q.run_ok("pin 2600M");
    if out != "pinned 2662400 KiB in all\n" {
        q.fail(&format!("pin 2600M: {out:?}"));
    }
    let pinned = q.meminfo();
    if pinned["Slab"] <= before["Slab"] {
        q.fail(&format!("the heap did not grow: {before:?} -> {pinned:?}"));
    }
    // Everything else: the page allocator runs dry, the kernel answers.
    let msg = q.run_err("pin 4G", "ENOMEM");
    if !msg.contains("pinned in all") {
        q.fail(&format!("pin 4G: {msg:?}"));
    }
    let dry = q.meminfo();
    if dry["MemFree"] > 8 << 10 {
        q.fail(&format!("pin 4G left {} kB free", dry["MemFree"]));
    }
    let out = q.run("echo alive");
    if out != "alive\n" {
        q.fail(&format!("after exhaustion: {out:?}"));
    }
    q.run_ok("unpin");
    let after = q.meminfo();
    if after != before {
        q.fail(&format!("meminfo after unpin {after:?}, before {before:?}"));
    }
    q.poweroff();
}

/// A benchmark that runs out of memory midway gives back what it took.
#[test]
fn bench_out_of_memory_midway_gives_everything_back() {
    let mut q = Qemu::boot(Opts::new().mem("2G").append("mem=1G"));
    let before = q.meminfo();
    // Leave 10 MiB: the baseline write needs 16 MiB, in 4 MiB blocks.
    let keep_kb = 10 << 10;
    q.run_ok(&format!("pin {}K", before["MemFree"] - keep_kb));
    let pinned = q.meminfo();
    let msg = q.run_err("bench hotplug 0x80000000 1G", "ENOMEM");
    let after = q.meminfo();
    if after != pinned {
        q.fail(&format!(
            "bench failing with {msg:?} kept memory: {pinned:?} -> {after:?}"
        ));
    }
    q.run_ok("unpin");
    let end = q.meminfo();
    if end != before {
        q.fail(&format!("meminfo after unpin {end:?}, before {before:?}"));
    }
    q.poweroff();
}
