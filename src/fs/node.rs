//! `/sys/devices/system/node` (Linux's `drivers/base/node.c`): the node
//! lists, and a `nodeN` directory for each online node with its
//! `meminfo`, `distance`, `cpulist`, `numastat` and a `memoryM` entry for
//! each of its memory blocks (Linux's symlinks to the blocks'
//! directories, here the block's directory itself).

use core::fmt::Write;

use super::Files;
use crate::error::Result;
use crate::mm::layout::PAGE_SHIFT;
use crate::mm::node::NodeMask;
use crate::mm::pgtable::Translation;

pub const NODE_DIR: &str = "/sys/devices/system/node";

pub type NodeShow<T> = fn(&Files<T>, usize, &mut dyn Write) -> Result<()>;

/// The files of every `nodeN` directory.
pub fn node_attrs<T: Translation>() -> [(&'static str, NodeShow<T>); 4] {
    [
        ("cpulist", cpulist),
        ("distance", distance),
        ("meminfo", meminfo),
        ("numastat", numastat),
    ]
}

/// `nodeN` and what follows it, for paths under [`NODE_DIR`].
pub fn node_path(path: &str) -> Option<(usize, Option<&str>)> {
    let (n, file) =
        super::memory::indexed(path.strip_prefix(NODE_DIR)?.strip_prefix('/')?, "node")?;
    Some((usize::try_from(n).ok()?, file))
}

fn mask(out: &mut dyn Write, m: NodeMask) -> Result<()> {
    Ok(writeln!(out, "{m}")?)
}

pub fn online<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    mask(out, f.mm.node_online())
}

pub fn possible<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    mask(out, f.mm.node_possible())
}

pub fn has_memory<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    mask(out, f.mm.node_has_memory())
}

pub fn has_cpu<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    let mut m = NodeMask::none();
    for nid in f.mm.node_online().iter() {
        if node_cpus(f, nid) != 0 {
            m.set(nid);
        }
    }
    mask(out, m)
}

/// The running CPUs of node `nid`, bit n for CPU n.
fn node_cpus<T: Translation>(f: &Files<T>, nid: usize) -> u64 {
    let topo = f.mm.topology();
    topo.cpus_of(nid)
        .filter(|&c| c < 64)
        .fold(0, |m, c| m | (1 << c))
        & f.cpus_online
}

fn cpulist<T: Translation>(f: &Files<T>, nid: usize, out: &mut dyn Write) -> Result<()> {
    Ok(writeln!(out, "{}", super::CpuList(node_cpus(f, nid)))?)
}

/// Linux's `node_read_distance`: to every online node, in order.
fn distance<T: Translation>(f: &Files<T>, nid: usize, out: &mut dyn Write) -> Result<()> {
    let topo = f.mm.topology();
    let mut sep = "";
    for to in f.mm.node_online().iter() {
        write!(out, "{sep}{}", topo.distance(nid, to))?;
        sep = " ";
    }
    Ok(writeln!(out)?)
}

/// Linux's `node_read_meminfo`, the lines the kernel has: MemTotal,
/// MemFree (pages on per-CPU lists count as free, as in `/proc/meminfo`),
/// MemUsed.
fn meminfo<T: Translation>(f: &Files<T>, nid: usize, out: &mut dyn Write) -> Result<()> {
    let (total, free) = f.mm.node_meminfo(nid);
    let kb = |pages: u64| pages << (PAGE_SHIFT - 10);
    for (name, pages) in [
        ("MemTotal:", total),
        ("MemFree:", free),
        ("MemUsed:", total - free),
    ] {
        writeln!(out, "Node {nid} {name:<15} {:>8} kB", kb(pages))?;
    }
    Ok(())
}

/// Linux's `node_read_numastat`.
fn numastat<T: Translation>(f: &Files<T>, nid: usize, out: &mut dyn Write) -> Result<()> {
    let s = f.mm.numa_stat(nid);
    for (name, v) in [
        ("numa_hit", s.numa_hit),
        ("numa_miss", s.numa_miss),
        ("numa_foreign", s.numa_foreign),
        ("interleave_hit", 0),
        ("local_node", s.local_node),
        ("other_node", s.other_node),
    ] {
        writeln!(out, "{name} {v}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use alloc::format;
    use alloc::string::String;

    use super::*;
    use crate::error::Errno;
    use crate::mm::node_tests::two_nodes_and_a_memoryless_one;
    use crate::mm::page::Zone;
    use crate::mm::test_system::{start_of, BLOCK, BLOCK_PAGES, HOT_FIRST};

    use crate::fs::read_for_test as read;

    #[test]
    fn node_files_speak_linux_formats() {
        let mut fx = two_nodes_and_a_memoryless_one();
        let mut f = Files {
            mm: &mut fx.mm,
            cpus_online: 0b11,
        };
        let d = NODE_DIR;
        for (file, want) in [
            ("possible", "0-2\n"),
            ("online", "0-1\n"),
            ("has_cpu", "0-1\n"),
            ("has_memory", "0\n"),
        ] {
            assert_eq!(read(&mut f, &format!("{d}/{file}")), want, "{file}");
        }
        let ls = f.list(d).unwrap();
        assert!(ls.contains(&"node0/".into()) && ls.contains(&"node1/".into()));
        assert!(!ls.contains(&"node2/".into()), "{ls:?}");
        let e = f.read(&format!("{d}/node2/meminfo"), &mut String::new());
        assert_eq!(e.unwrap_err().errno, Errno::ENOENT);
        assert_eq!(read(&mut f, &format!("{d}/node0/distance")), "10 21\n");
        assert_eq!(read(&mut f, &format!("{d}/node1/distance")), "21 10\n");
        assert_eq!(read(&mut f, &format!("{d}/node1/cpulist")), "1\n");
        let meminfo = read(&mut f, &format!("{d}/node1/meminfo"));
        assert_eq!(
            meminfo,
            "Node 1 MemTotal:              0 kB\nNode 1 MemFree:               0 kB\nNode 1 MemUsed:               0 kB\n"
        );
        let numastat = read(&mut f, &format!("{d}/node0/numastat"));
        let names: alloc::vec::Vec<_> = numastat.lines().map(|l| l.split(' ').next()).collect();
        assert_eq!(
            names,
            [
                "numa_hit",
                "numa_miss",
                "numa_foreign",
                "interleave_hit",
                "local_node",
                "other_node"
            ]
            .map(Some)
        );

        // A block on node 1: in its directory, and its node in the block's.
        let id = HOT_FIRST + 1;
        f.write(
            "/sys/devices/system/memory/probe",
            &format!("{:#x}", start_of(id)),
        )
        .unwrap();
        f.mm.online_block(id, Zone::Movable).unwrap();
        assert_eq!(read(&mut f, &format!("{d}/has_memory")), "0-1\n");
        let kb = BLOCK_PAGES << (PAGE_SHIFT - 10);
        let total = read(&mut f, &format!("{d}/node1/meminfo"));
        assert!(
            total.starts_with(&format!(
                "Node 1 MemTotal:       {kb:>8} kB\nNode 1 MemFree:        {kb:>8} kB\n"
            )),
            "{total}"
        );
        let node1 = f.list(&format!("{d}/node1")).unwrap();
        assert_eq!(node1.last().unwrap(), &format!("memory{id}/"));
        let block = format!("/sys/devices/system/memory/memory{id}");
        assert!(f.list(&block).unwrap().contains(&"node1/".into()));
        assert_eq!(f.list(&format!("{block}/node1")).unwrap(), node1);
        assert!(f.list(&format!("{block}/node0")).is_err());
        let via_node = format!("{d}/node1/memory{id}/state");
        assert_eq!(read(&mut f, &via_node), "online\n");
        f.write(&via_node, "offline").unwrap();
        assert_eq!(read(&mut f, &format!("{block}/state")), "offline\n");
        assert_eq!(read(&mut f, &format!("{d}/has_memory")), "0\n");
        let e = f.read(&format!("{d}/node0/memory{id}/state"), &mut String::new());
        assert_eq!(e.unwrap_err().errno, Errno::ENOENT);
        // Every entry `ls` lists under the node's block opens, the node
        // link included, however often it is followed.
        let via = format!("{d}/node1/memory{id}");
        for name in f.list(&via).unwrap() {
            let path = format!("{via}/{}", name.trim_end_matches('/'));
            if name.ends_with('/') {
                assert_eq!(f.list(&path).unwrap(), node1, "{path}");
            } else {
                f.read(&path, &mut String::new()).unwrap();
            }
        }
        let deep = format!("{via}/node1/memory{id}/node1/memory{id}/state");
        assert_eq!(read(&mut f, &deep), "offline\n");
        let e = f.read(&format!("{via}/node0"), &mut String::new());
        assert_eq!(e.unwrap_err().errno, Errno::ENOENT);
    }

    /// `/proc/zoneinfo` and `/proc/buddyinfo` by node, as Linux's.
    #[test]
    fn zoneinfo_and_buddyinfo_by_node() {
        let mut fx = two_nodes_and_a_memoryless_one();
        let id = HOT_FIRST + 1;
        fx.mm.add_memory(start_of(id), BLOCK).unwrap();
        fx.mm.online_block(id, Zone::Movable).unwrap();
        let mut f = Files {
            mm: &mut fx.mm,
            cpus_online: 0b11,
        };
        let buddy = read(&mut f, "/proc/buddyinfo");
        let heads: alloc::vec::Vec<_> = buddy.lines().map(|l| &l[..21]).collect();
        assert_eq!(heads, ["Node 0, zone   Normal", "Node 1, zone  Movable"]);
        let zoneinfo = read(&mut f, "/proc/zoneinfo");
        let zones: alloc::vec::Vec<_> = zoneinfo
            .lines()
            .filter(|l| l.starts_with("Node "))
            .collect();
        assert_eq!(
            zones,
            [
                "Node 0, zone   Normal",
                "Node 0, zone  Movable",
                "Node 0, zone   Device",
                "Node 1, zone   Normal",
                "Node 1, zone  Movable",
                "Node 1, zone   Device"
            ]
        );
        let node1 = &zoneinfo[zoneinfo.find("Node 1, zone  Movable").unwrap()..];
        assert!(
            node1.contains(&format!("present  {BLOCK_PAGES}\n")),
            "{node1}"
        );
        assert!(node1.contains("per-node stats"));
    }
}
