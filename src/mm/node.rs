//! NUMA nodes: which nodes exist, their distances, the node of each CPU
//! and of each range of memory the device tree describes (Linux's
//! `drivers/of/of_numa.c`, `numa_distance`, `build_zonelists`,
//! `memory_add_physaddr_to_nid`).
//!
//! Shape. Linux gives every node a `pg_data_t` holding its zones, each
//! with its own free lists. Here the one [`BuddyAllocator`] keeps its free
//! lists and counters per (node, zone) pair, and a struct page records its
//! node next to its zone (Linux's `page_to_nid`, from `page->flags`): the
//! allocator's invariants, its isolation and its deferred struct pages stay
//! as they are, a free finds its list from the page alone (also on the
//! per-CPU fast path, without the memory lock), and buddies of different
//! nodes never merge. What is per node is counted per node, so that
//! `MemTotal`/`MemFree` stay the exact sums. The [`Topology`] is a plain
//! value (no allocation), read once from the DT, which the allocator keeps
//! to walk nodes by distance from the allocating CPU's node.
//!
//! Bad or missing NUMA properties never stop boot: each is logged and
//! replaced (node 0, or Linux's default distances of 10 local and 20
//! remote); `numa=off` puts everything on node 0.
//!
//! [`BuddyAllocator`]: super::buddy::BuddyAllocator

use core::fmt;

use super::addr::{PhysAddr, PhysRange};
use crate::arch::MAX_CPUS;
use crate::pr_warn;

/// Node ids `0..MAX_NUMNODES` (arm64's default `NODES_SHIFT` of 4).
pub const MAX_NUMNODES: usize = 16;
/// Linux's `LOCAL_DISTANCE` and `REMOTE_DISTANCE`.
pub const LOCAL_DISTANCE: u8 = 10;
pub const REMOTE_DISTANCE: u8 = 20;
/// Memory ranges with a node that the topology keeps (the DT's regions).
pub const MAX_NODE_RANGES: usize = 16;

/// A set of nodes (Linux's `nodemask_t`), shown as Linux's lists (`0-2,4`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeMask(u32);

const _: () = assert!(MAX_NUMNODES <= 32);

impl NodeMask {
    pub const fn none() -> Self {
        NodeMask(0)
    }

    pub fn set(&mut self, nid: usize) {
        if nid < MAX_NUMNODES {
            self.0 |= 1 << nid;
        }
    }

    pub fn clear(&mut self, nid: usize) {
        if nid < MAX_NUMNODES {
            self.0 &= !(1 << nid);
        }
    }

    pub fn contains(&self, nid: usize) -> bool {
        nid < MAX_NUMNODES && self.0 & (1 << nid) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_NUMNODES).filter(move |&n| self.contains(n))
    }
}

/// Linux's `%*pbl`: runs as `a-b`, separated by commas; empty for none.
impl fmt::Display for NodeMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_list(f, self.iter())
    }
}

/// Writes ascending numbers as Linux's list format (`0-2,4`).
pub fn write_list(f: &mut dyn fmt::Write, items: impl Iterator<Item = usize>) -> fmt::Result {
    let mut run: Option<(usize, usize)> = None;
    let mut first = true;
    let mut flush = |f: &mut dyn fmt::Write, (a, b): (usize, usize)| {
        let sep = if core::mem::take(&mut first) { "" } else { "," };
        match a == b {
            true => write!(f, "{sep}{a}"),
            false => write!(f, "{sep}{a}-{b}"),
        }
    };
    for n in items {
        run = match run {
            Some((a, b)) if n == b + 1 => Some((a, n)),
            Some(r) => {
                flush(f, r)?;
                Some((n, n))
            }
            None => Some((n, n)),
        };
    }
    run.map_or(Ok(()), |r| flush(f, r))
}

/// What the DT says, unchecked: the input of [`Topology::build`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NumaDesc<'a> {
    /// Each memory range with its `numa-node-id`, if it has one.
    pub memory: &'a [(PhysRange, Option<u32>)],
    /// Each CPU's `numa-node-id` (logical CPU order), if it has one.
    pub cpus: &'a [Option<u32>],
    /// `distance-map`'s `distance-matrix` entries (node, node, distance).
    pub distances: &'a [(u32, u32, u32)],
    /// A `distance-map` whose matrix is not a whole number of entries, or
    /// whose compatible is not `numa-distance-map-v1`.
    pub distance_map_malformed: bool,
}

/// The machine's nodes. Plain data, `Copy`, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    possible: NodeMask,
    distance: [[u8; MAX_NUMNODES]; MAX_NUMNODES],
    cpu_node: [u8; MAX_CPUS],
    cpus: usize,
    /// Each node's fallback list (Linux's zonelist order): itself first,
    /// then the others by distance; `possible.count()` entries used.
    order: [[u8; MAX_NUMNODES]; MAX_NUMNODES],
    nr_possible: usize,
    memory: [(PhysRange, u8); MAX_NODE_RANGES],
    nr_memory: usize,
}

impl Default for Topology {
    fn default() -> Self {
        Self::single()
    }
}

impl Topology {
    /// One node, 0, holding everything (`numa=off`, a DT without NUMA).
    pub const fn single() -> Self {
        let mut distance = [[REMOTE_DISTANCE; MAX_NUMNODES]; MAX_NUMNODES];
        let mut i = 0;
        while i < MAX_NUMNODES {
            distance[i][i] = LOCAL_DISTANCE;
            i += 1;
        }
        Topology {
            possible: NodeMask(1),
            distance,
            cpu_node: [0; MAX_CPUS],
            cpus: MAX_CPUS,
            order: [[0; MAX_NUMNODES]; MAX_NUMNODES],
            nr_possible: 1,
            memory: [(PhysRange::new(PhysAddr::new(0), 0), 0); MAX_NODE_RANGES],
            nr_memory: 0,
        }
    }

    /// Checks the DT's NUMA description and builds the topology from it;
    /// every property that cannot be taken is logged and replaced. With
    /// `numa_off`, or no NUMA property at all, one node.
    pub fn build(desc: &NumaDesc, numa_off: bool) -> Self {
        let mut t = Self::single();
        t.cpus = desc.cpus.len().min(MAX_CPUS);
        let any = desc.memory.iter().any(|m| m.1.is_some())
            || desc.cpus.iter().any(Option::is_some)
            || !desc.distances.is_empty();
        if numa_off || !any {
            if numa_off && any {
                pr_warn!("NUMA: numa=off: every CPU and all memory on node 0");
            }
            for &(range, _) in desc.memory.iter().take(MAX_NODE_RANGES) {
                t.push_memory(range, 0);
            }
            return t;
        }
        let valid = |what: fmt::Arguments, nid: Option<u32>| -> usize {
            match nid {
                Some(n) if (n as usize) < MAX_NUMNODES => n as usize,
                Some(n) => {
                    pr_warn!("NUMA: {what}: invalid numa-node-id {n}; using node 0");
                    0
                }
                None => {
                    pr_warn!("NUMA: {what}: no numa-node-id; using node 0");
                    0
                }
            }
        };
        for &(range, nid) in desc.memory {
            let (base, last) = (range.base, range.end() - 1);
            let nid = valid(format_args!("memory {base:#x}-{last:#x}"), nid);
            t.possible.set(nid);
            if t.nr_memory == MAX_NODE_RANGES {
                pr_warn!("NUMA: more than {MAX_NODE_RANGES} memory ranges; {base:#x}-{last:#x} on node 0");
                continue;
            }
            t.push_memory(range, nid as u8);
        }
        for (cpu, &nid) in desc.cpus.iter().enumerate().take(MAX_CPUS) {
            let nid = valid(format_args!("cpu{cpu}"), nid);
            t.possible.set(nid);
            t.cpu_node[cpu] = nid as u8;
        }
        if desc.distance_map_malformed {
            pr_warn!("NUMA: malformed distance-map; default distances");
        }
        for &(a, b, d) in desc.distances {
            let (an, bn) = (a as usize, b as usize);
            let bad = if an >= MAX_NUMNODES || bn >= MAX_NUMNODES {
                Some("node out of range")
            } else if d > u8::MAX as u32 {
                Some("distance out of range")
            } else if (a == b) != (d == LOCAL_DISTANCE as u32) || d < LOCAL_DISTANCE as u32 {
                Some("local distance must be 10 and remote ones above it")
            } else {
                None
            };
            if let Some(why) = bad {
                pr_warn!("NUMA: distance-map entry {a} {b} {d} ignored: {why}");
                continue;
            }
            t.possible.set(an);
            t.possible.set(bn);
            t.distance[an][bn] = d as u8;
            // As Linux's of_numa: an entry sets the reverse distance too,
            // unless the map names it (later, or earlier with the lower
            // node first).
            if bn > an {
                t.distance[bn][an] = d as u8;
            }
        }
        t.build_order();
        t
    }

    fn push_memory(&mut self, range: PhysRange, nid: u8) {
        if self.nr_memory < MAX_NODE_RANGES && range.size > 0 {
            self.memory[self.nr_memory] = (range, nid);
            self.nr_memory += 1;
        }
    }

    /// Each node's fallback list, Linux's `find_next_best_node`: by
    /// distance, the nodes below the one allocating a little further
    /// ("prefer the next node"), nodes with CPUs a little further than
    /// headless ones at the same distance (memory-only nodes are there to
    /// be used); ties by node id.
    fn build_order(&mut self) {
        let mut has_cpu = NodeMask::none();
        for &n in &self.cpu_node[..self.cpus] {
            has_cpu.set(n as usize);
        }
        let nodes = self.possible;
        self.nr_possible = nodes.iter().count();
        for n in 0..MAX_NUMNODES {
            let mut list = [0u8; MAX_NUMNODES];
            let mut len = 0;
            for m in nodes.iter() {
                list[len] = m as u8;
                len += 1;
            }
            let key = |m: usize| {
                if m == n {
                    return 0;
                }
                let d = self.distance[n][m] as u32;
                (d + u32::from(m < n) + u32::from(has_cpu.contains(m))) * 64 + m as u32
            };
            list[..len].sort_unstable_by_key(|&m| key(m as usize));
            self.order[n] = list;
        }
    }

    pub fn possible(&self) -> NodeMask {
        self.possible
    }

    /// Linux's `node_distance`.
    pub fn distance(&self, a: usize, b: usize) -> u8 {
        match (a < MAX_NUMNODES, b < MAX_NUMNODES) {
            (true, true) => self.distance[a][b],
            _ => REMOTE_DISTANCE,
        }
    }

    /// Linux's `cpu_to_node`.
    pub fn cpu_node(&self, cpu: usize) -> usize {
        self.cpu_node.get(cpu).copied().unwrap_or(0) as usize
    }

    /// The CPUs of `nid` (of those the DT lists).
    pub fn cpus_of(&self, nid: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.cpus).filter(move |&c| self.cpu_node[c] as usize == nid)
    }

    /// Nodes to allocate from for a CPU of `nid`, nearest first.
    pub fn fallback(&self, nid: usize) -> &[u8] {
        let nid = if self.possible.contains(nid) { nid } else { 0 };
        &self.order[nid][..self.nr_possible]
    }

    /// The node of the DT memory range holding `pa`, if one does.
    pub fn phys_to_node(&self, pa: PhysAddr) -> Option<usize> {
        self.memory[..self.nr_memory]
            .iter()
            .find(|(r, _)| r.contains(pa))
            .map(|&(_, n)| n as usize)
    }

    /// Linux's `memory_add_physaddr_to_nid`: the DT's node for hot-added
    /// memory at `pa`, else node 0 (logged, as Linux's "Unknown node").
    pub fn memory_add_physaddr_to_nid(&self, pa: PhysAddr) -> usize {
        self.phys_to_node(pa).unwrap_or_else(|| {
            if self.nr_possible > 1 {
                pr_warn!("NUMA: unknown node for memory at {pa:#x}, assuming node 0");
            }
            0
        })
    }

    /// Calls `f(start, end, nid)` for the parts of `[start, end)` by node
    /// (memory outside the DT's ranges on node 0).
    pub fn for_each_node_run(
        &self,
        start: PhysAddr,
        end: PhysAddr,
        mut f: impl FnMut(PhysAddr, PhysAddr, usize),
    ) {
        let mut at = start;
        while at < end {
            let nid = self.phys_to_node(at).unwrap_or(0);
            // The next boundary: the end of the range holding `at`, or the
            // start of the next range above it.
            let next = self.memory[..self.nr_memory]
                .iter()
                .flat_map(|(r, _)| [r.base, r.end()])
                .filter(|&b| b > at)
                .min()
                .unwrap_or(end)
                .min(end);
            f(at, next, nid);
            at = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use core::fmt::Write;

    fn r(base: u64, size: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(base), size)
    }

    fn list(m: NodeMask) -> String {
        let mut s = String::new();
        write!(s, "{m}").unwrap();
        s
    }

    #[test]
    fn masks_print_as_linux_lists() {
        let mut m = NodeMask::none();
        assert_eq!(list(m), "");
        for n in [0, 1, 2, 4, 6, 7] {
            m.set(n);
        }
        assert_eq!(list(m), "0-2,4,6-7");
        m.clear(1);
        m.set(99);
        assert_eq!(list(m), "0,2,4,6-7");
    }

    /// QEMU's `-numa node,memdev=m0,cpus=0 -numa node,memdev=m1,cpus=1
    /// -numa node` with distances 21/31/41 (what `dumpdtb` shows).
    #[test]
    fn two_memory_nodes_and_a_memoryless_one() {
        let memory = [
            (r(0x4000_0000, 512 << 20), Some(0)),
            (r(0x6000_0000, 512 << 20), Some(1)),
        ];
        let cpus = [Some(0), Some(1)];
        let distances = [
            (0, 0, 10),
            (0, 1, 21),
            (0, 2, 31),
            (1, 0, 21),
            (1, 1, 10),
            (1, 2, 41),
            (2, 0, 31),
            (2, 1, 41),
            (2, 2, 10),
        ];
        let desc = NumaDesc {
            memory: &memory,
            cpus: &cpus,
            distances: &distances,
            distance_map_malformed: false,
        };
        let t = Topology::build(&desc, false);
        assert_eq!(list(t.possible()), "0-2");
        assert_eq!(
            (t.distance(0, 1), t.distance(2, 1), t.distance(2, 2)),
            (21, 41, 10)
        );
        assert_eq!((t.cpu_node(0), t.cpu_node(1)), (0, 1));
        assert_eq!(t.cpus_of(1).collect::<alloc::vec::Vec<_>>(), [1]);
        assert_eq!(t.fallback(0), [0, 1, 2]);
        assert_eq!(t.fallback(1), [1, 0, 2]);
        assert_eq!(t.fallback(2), [2, 0, 1]);
        assert_eq!(t.phys_to_node(PhysAddr::new(0x6000_1000)), Some(1));
        assert_eq!(t.memory_add_physaddr_to_nid(PhysAddr::new(0x9000_0000)), 0);
        let mut runs = alloc::vec::Vec::new();
        t.for_each_node_run(
            PhysAddr::new(0x5000_0000),
            PhysAddr::new(0x9000_0000),
            |s, e, n| runs.push((s.as_u64(), e.as_u64(), n)),
        );
        assert_eq!(
            runs,
            [
                (0x5000_0000, 0x6000_0000, 0),
                (0x6000_0000, 0x8000_0000, 1),
                (0x8000_0000, 0x9000_0000, 0)
            ]
        );
        // numa=off: one node, whatever the DT says.
        let off = Topology::build(&desc, true);
        assert_eq!(list(off.possible()), "0");
        assert_eq!((off.cpu_node(1), off.fallback(1)), (0, &[0u8][..]));
        assert_eq!(off.phys_to_node(PhysAddr::new(0x6000_1000)), Some(0));
    }

    /// Nodes without CPUs, non-contiguous memory of one node, no
    /// distance-map (Linux's defaults), a headless node preferred at equal
    /// distance.
    #[test]
    fn cpuless_and_non_contiguous_nodes() {
        let memory = [
            (r(0x4000_0000, 256 << 20), Some(0)),
            (r(0x5000_0000, 256 << 20), Some(1)),
            (r(0x6000_0000, 256 << 20), Some(0)),
            (r(0x7000_0000, 256 << 20), Some(2)),
        ];
        let cpus = [Some(0), Some(0), Some(1)];
        let desc = NumaDesc {
            memory: &memory,
            cpus: &cpus,
            ..Default::default()
        };
        let t = Topology::build(&desc, false);
        assert_eq!(list(t.possible()), "0-2");
        assert_eq!(
            (t.distance(0, 2), t.distance(1, 1)),
            (REMOTE_DISTANCE, LOCAL_DISTANCE)
        );
        assert_eq!(t.phys_to_node(PhysAddr::new(0x6800_0000)), Some(0));
        // Node 2 has no CPUs: first after the local node.
        assert_eq!(t.fallback(0), [0, 2, 1]);
        assert_eq!(t.fallback(1), [1, 2, 0]);
        assert_eq!(t.cpus_of(2).count(), 0);
    }

    /// Bad properties: logged and replaced, never a panic.
    #[test]
    fn bad_properties_fall_back() {
        let memory = [
            (r(0x4000_0000, 256 << 20), Some(0)),
            (r(0x5000_0000, 256 << 20), Some(400)),
            (r(0x6000_0000, 256 << 20), None),
        ];
        let cpus = [Some(1), Some(u32::MAX), None];
        let distances = [
            (0, 1, 5),
            (0, 0, 20),
            (0, 99, 30),
            (1, 0, 300),
            (0, 1, 0),
            (1, 0, 25),
        ];
        let desc = NumaDesc {
            memory: &memory,
            cpus: &cpus,
            distances: &distances,
            distance_map_malformed: true,
        };
        let t = Topology::build(&desc, false);
        assert_eq!(list(t.possible()), "0-1");
        assert_eq!(t.phys_to_node(PhysAddr::new(0x5000_0000)), Some(0));
        assert_eq!(t.phys_to_node(PhysAddr::new(0x6000_0000)), Some(0));
        assert_eq!((t.cpu_node(0), t.cpu_node(1), t.cpu_node(2)), (1, 0, 0));
        assert_eq!(
            (t.distance(0, 0), t.distance(0, 1), t.distance(1, 0)),
            (10, 20, 25)
        );
        assert_eq!(t.distance(99, 0), REMOTE_DISTANCE);
        assert_eq!(t.fallback(7), [0, 1]);
    }

    #[test]
    fn no_numa_properties_is_one_node() {
        let memory = [(r(0x4000_0000, 1 << 30), None)];
        let cpus = [None, None];
        let t = Topology::build(
            &NumaDesc {
                memory: &memory,
                cpus: &cpus,
                ..Default::default()
            },
            false,
        );
        assert_eq!(list(t.possible()), "0");
        assert_eq!(t.fallback(0), [0]);
        assert_eq!(t.phys_to_node(PhysAddr::new(0x4000_0000)), Some(0));
    }
}
