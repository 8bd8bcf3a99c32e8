//! NUMA on QEMU: nodes from the device tree QEMU writes for `-numa`.
//!
//! Two memory-backed nodes, a CPU each: the node files match the command
//! line (distance, cpulist, memory blocks), per-node `MemTotal`/`MemFree`
//! add up to `/proc/meminfo`'s, and allocations land on the allocating
//! CPU's node (CPU 0 through `pin`, CPU 1 through `stress`'s worker).
//! A third, memory-less node that a `virtio-mem-pci,node=2` device fills:
//! it comes online with its first memory, its `meminfo` grows and shrinks
//! exactly with the device, and it goes offline with its last memory.

mod common;

use common::{Opts, Qemu, Qmp};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NODE: &str = "/sys/devices/system/node";
const MIB: u64 = 1 << 20;

/// `-numa` for nodes 0 and 1 (512 MiB and CPU `n` each), node 2 without
/// memory or CPU if `third`, and the distances 21, 31, 41.
fn numa_args(third: bool) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    for n in 0..2 {
        a.extend([
            "-object".into(),
            format!("memory-backend-ram,id=m{n},size=512M"),
            "-numa".into(),
            format!("node,nodeid={n},cpus={n},memdev=m{n}"),
        ]);
    }
    let mut dist = vec![(0, 1, 21)];
    if third {
        a.extend(["-numa".into(), "node,nodeid=2".into()]);
        dist.extend([(0, 2, 31), (1, 2, 41)]);
    }
    for (s, d, v) in dist {
        a.extend(["-numa".into(), format!("dist,src={s},dst={d},val={v}")]);
    }
    a
}

/// A node's `meminfo` line `what`, in kB.
fn node_kb(q: &mut Qemu, nid: usize, what: &str) -> u64 {
    let text = q.read(&format!("{NODE}/node{nid}/meminfo"));
    let prefix = format!("Node {nid} {what}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().strip_suffix(" kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| q.fail(&format!("no {prefix} in {text:?}")))
}

/// A node's `numastat` counter.
fn numastat(q: &mut Qemu, nid: usize, what: &str) -> u64 {
    let text = q.read(&format!("{NODE}/node{nid}/numastat"));
    text.lines()
        .find_map(|l| l.strip_prefix(what)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| q.fail(&format!("no {what} in {text:?}")))
}

/// Boots on `-smp 2` with `args`, `-m mem` and the command line `append`.
fn boot(args: &[String], mem: &str, append: &str) -> Qemu {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Qemu::boot(
        Opts::new()
            .mem(mem)
            .smp(2)
            .args(&args)
            .append(append)
            .timeout(Duration::from_secs(60)),
    )
}

#[test]
fn two_memory_backed_nodes() {
    let mut q = boot(&numa_args(false), "1G", "");
    for (file, want) in [
        ("possible", "0-1"),
        ("online", "0-1"),
        ("has_memory", "0-1"),
        ("has_cpu", "0-1"),
        ("node0/distance", "10 21"),
        ("node1/distance", "21 10"),
        ("node0/cpulist", "0"),
        ("node1/cpulist", "1"),
    ] {
        let got = q.read(&format!("{NODE}/{file}"));
        assert_eq!(got.trim_end(), want, "{file}");
    }
    // Node 1's memory is 0x60000000-0x7fffffff: its blocks and theirs.
    let block = common::block_id(0x6000_0000);
    let ls = q.run_ok(&format!("ls {NODE}/node1"));
    assert!(ls.contains(&format!("memory{block}")), "{ls}");
    let ls = q.run_ok(&format!("ls /sys/devices/system/memory/memory{block}"));
    assert!(ls.contains("node1"), "{ls}");
    let first = common::block_id(0x4000_0000);
    let ls = q.run_ok(&format!("ls /sys/devices/system/memory/memory{first}"));
    assert!(ls.contains("node0"), "{ls}");
    let zoneinfo = q.read("/proc/zoneinfo");
    assert!(zoneinfo.contains("Node 1, zone   Normal"), "{zoneinfo}");
    let buddyinfo = q.read("/proc/buddyinfo");
    assert!(buddyinfo.contains("Node 1, zone   Normal"), "{buddyinfo}");

    // Per-node figures add up to the totals.
    let total = q.meminfo_kb("MemTotal");
    let (t0, t1) = (
        node_kb(&mut q, 0, "MemTotal"),
        node_kb(&mut q, 1, "MemTotal"),
    );
    assert_eq!(t0 + t1, total);
    assert!(t1 > 500 * 1024 && t1 <= 512 * 1024, "node 1: {t1} kB");

    // CPU 0's allocations come from node 0 while it has memory.
    let (f0, f1) = (node_kb(&mut q, 0, "MemFree"), node_kb(&mut q, 1, "MemFree"));
    let hit0 = numastat(&mut q, 0, "numa_hit");
    q.run_ok("pin 64M");
    let (g0, g1) = (node_kb(&mut q, 0, "MemFree"), node_kb(&mut q, 1, "MemFree"));
    assert!(
        f0 - g0 >= 64 * 1024 && f0 - g0 < 66 * 1024,
        "node 0: {f0} -> {g0} kB"
    );
    assert_eq!(g1, f1, "node 1's memory moved for CPU 0's pin");
    assert!(numastat(&mut q, 0, "numa_hit") >= hit0 + 16384);
    q.run_ok("unpin");

    // CPU 1's (the stress worker's) come from node 1: node 1 counts local
    // hits, node 0 no allocation by another node's CPU.
    let (hit1, other0) = (
        numastat(&mut q, 1, "local_node"),
        numastat(&mut q, 0, "other_node"),
    );
    let out = q.run_ok("stress --workers-only 300 1");
    assert!(out.contains("errors: 0"), "{out}");
    let hits = numastat(&mut q, 1, "local_node") - hit1;
    assert!(hits > 100, "CPU 1 allocated {hits} times on node 1: {out}");
    assert_eq!(numastat(&mut q, 0, "other_node"), other0);
    assert_eq!(numastat(&mut q, 1, "other_node"), 0);
    q.assert_no_misuse("after the two-node run");
    q.poweroff();
}

/// `numa=off`: one node, whatever QEMU describes.
#[test]
fn numa_off_folds_every_node_into_node_0() {
    let mut q = boot(&numa_args(true), "1G", "numa=off");
    for file in ["possible", "online", "has_memory", "has_cpu"] {
        assert_eq!(q.read(&format!("{NODE}/{file}")).trim_end(), "0", "{file}");
    }
    assert_eq!(q.read(&format!("{NODE}/node0/cpulist")).trim_end(), "0-1");
    assert_eq!(node_kb(&mut q, 0, "MemTotal"), q.meminfo_kb("MemTotal"));
    q.poweroff();
}

/// Removes the QMP socket when the test ends.
struct Sock(PathBuf);

impl Drop for Sock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Polls QMP until vm0 has `want` bytes plugged.
fn wait_plugged(q: &mut Qemu, qmp: &mut Qmp, want: u64) {
    let t0 = Instant::now();
    loop {
        let dev = qmp.memory_device("vm0").unwrap_or_else(|e| q.fail(&e));
        if dev.get("size").and_then(|v| v.as_u64()) == Some(want) {
            return;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            q.fail(&format!("vm0 not at {want:#x}: {dev:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn memoryless_node_filled_by_virtio_mem() {
    let sock = Sock(std::env::temp_dir().join(format!("hpk-numa-{}.qmp", std::process::id())));
    let _ = std::fs::remove_file(&sock.0);
    let mut args = numa_args(true);
    args.extend([
        "-object".into(),
        "memory-backend-ram,id=vmem,size=1G".into(),
        "-device".into(),
        "virtio-mem-pci,id=vm0,memdev=vmem,node=2,requested-size=0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sock.0.display()),
    ]);
    let mut q = boot(&args, "1G,maxmem=4G", "memhp_default_state=online_movable");
    let mut qmp = Qmp::connect(&sock.0, Duration::from_secs(10)).unwrap_or_else(|e| q.fail(&e));
    assert_eq!(q.read(&format!("{NODE}/possible")).trim_end(), "0-2");
    assert_eq!(q.read(&format!("{NODE}/online")).trim_end(), "0-1");
    q.run_err(&format!("cat {NODE}/node2/meminfo"), "ENOENT");
    let total = q.meminfo_kb("MemTotal");

    // Sizes in MiB: whole blocks, part of one (sub-block mode), none.
    for (step, mib) in [256u64, 384, 192, 0, 128].into_iter().enumerate() {
        qmp.qom_set("vm0", "requested-size", &(mib * MIB).to_string())
            .unwrap_or_else(|e| q.fail(&e));
        wait_plugged(&mut q, &mut qmp, mib * MIB);
        // The driver's report ends its log lines: the console is quiet.
        q.wait_for(
            &format!("plugged {mib} MiB of {mib} MiB requested"),
            Duration::from_secs(30),
        );
        q.wait_for("\n", Duration::from_secs(5));
        // The line editor redraws its prompt after log lines.
        q.wait_prompt();
        let online = q.read(&format!("{NODE}/online"));
        if mib == 0 {
            assert_eq!(online.trim_end(), "0-1", "step {step}: node 2 left online");
            q.run_err(&format!("cat {NODE}/node2/meminfo"), "ENOENT");
            assert_eq!(q.meminfo_kb("MemTotal"), total);
            continue;
        }
        assert_eq!(online.trim_end(), "0-2", "step {step}");
        assert_eq!(q.read(&format!("{NODE}/has_memory")).trim_end(), "0-2");
        assert_eq!(node_kb(&mut q, 2, "MemTotal"), mib * 1024, "step {step}");
        assert_eq!(q.meminfo_kb("MemTotal"), total + mib * 1024, "step {step}");
        assert_eq!(
            q.read(&format!("{NODE}/node2/distance")).trim_end(),
            "31 41 10"
        );
        assert_eq!(q.read(&format!("{NODE}/node2/cpulist")), "\n");
        let ls = q.run_ok(&format!("ls {NODE}/node2"));
        let blocks = ls.matches("memory").count() as u64;
        assert_eq!(blocks, mib.div_ceil(common::block_size() / MIB), "{ls}");
    }
    q.assert_no_misuse("after filling node 2");
    q.poweroff();
}
