//! The node-aware allocator over a booted test system: allocations from
//! each CPU land on its node while it has memory, then on the nearest;
//! per-node figures add up to the exact totals; a memory-less node comes
//! online with its first hot-added memory and goes with its last.

use super::addr::Pfn;
use super::addr::PhysRange;
use super::layout::PAGE_SIZE;
use super::node::*;
use super::page::Zone;
use super::system::{block_pfns, MemorySystem, PlugMask};
use super::test_system::*;
use super::testing::ArenaTranslation;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

type Mm = MemorySystem<ArenaTranslation>;
const ZONES: &[Zone] = &[Zone::Movable, Zone::Normal];

/// What `global::alloc` does on `cpu`: the list, else the memory lock.
fn alloc(mm: &mut Mm, cpu: usize, order: u32) -> Option<Pfn> {
    let memmap = *mm.buddy().memmap();
    let got = mm.pcp().alloc_fast(&memmap, cpu, order, ZONES);
    let got = got.or_else(|| mm.pcp_alloc(cpu, order, ZONES));
    mm.pcp().update_hints(&mm.buddy());
    got
}

fn free(mm: &mut Mm, cpu: usize, pfn: Pfn, order: u32) -> bool {
    let memmap = *mm.buddy().memmap();
    let ok = mm.pcp().free_fast(&memmap, cpu, pfn, order) || mm.pcp_free(cpu, pfn, order);
    mm.pcp().update_hints(&mm.buddy());
    ok
}

/// Per-node MemTotal and MemFree add up to `/proc/meminfo`'s.
fn check_sums(mm: &Mm) {
    let (mut total, mut free) = (0, 0);
    for nid in 0..MAX_NUMNODES {
        let (t, f) = mm.node_meminfo(nid);
        total += t;
        free += f;
    }
    let info = mm.meminfo();
    assert_eq!(
        (total * PAGE_SIZE, free * PAGE_SIZE),
        (info.total, info.free)
    );
}

fn node_of(mm: &Mm, pfn: Pfn) -> usize {
    mm.page(pfn).unwrap().nid()
}

fn s(m: NodeMask) -> String {
    m.to_string()
}

/// Node 0: the boot block and the first held-back one; node 1 (CPU 1):
/// the next two; node 2: no CPU, no memory in the DT.
pub(crate) fn two_nodes_and_a_memoryless_one() -> TestSystem {
    let mut fx = TestSystem::boot();
    let memory = [
        (PhysRange::new(start_of(BOOT), 2 * BLOCK), Some(0)),
        (PhysRange::new(start_of(HOT_FIRST + 1), 2 * BLOCK), Some(1)),
    ];
    let distances = [(0, 1, 21), (0, 2, 31), (1, 2, 41)];
    let desc = NumaDesc {
        memory: &memory,
        cpus: &[Some(0), Some(1)],
        distances: &distances,
        distance_map_malformed: false,
    };
    fx.mm.set_topology(Topology::build(&desc, false));
    fx
}

#[test]
fn allocations_land_on_the_cpus_node_then_the_nearest() {
    let mut fx = two_nodes_and_a_memoryless_one();
    let mm = &mut fx.mm;
    assert_eq!(
        (s(mm.node_possible()), s(mm.node_online())),
        ("0-2".into(), "0-1".into())
    );
    assert_eq!(
        (s(mm.node_has_memory()), s(mm.node_has_cpu())),
        ("0".into(), "0-1".into())
    );
    // CPU 1's node has no memory yet: its pages come from node 0.
    let p = alloc(mm, 1, 0).unwrap();
    assert_eq!(node_of(mm, p), 0);
    assert_eq!(
        (mm.numa_stat(0).numa_miss, mm.numa_stat(1).numa_foreign),
        (1, 1)
    );
    assert!(free(mm, 1, p, 0));
    assert_eq!(mm.pcp().nr_pages_on(1), 0, "a node-0 page on CPU 1's list");

    // `probe` puts the block on the DT's node.
    let id = HOT_FIRST + 1;
    mm.add_memory(start_of(id), BLOCK).unwrap();
    assert_eq!(mm.blocks()[&id].nid, 1);
    mm.online_block(id, Zone::Movable).unwrap();
    assert_eq!(s(mm.node_has_memory()), "0-1");
    assert_eq!(mm.node_meminfo(1), (BLOCK_PAGES, BLOCK_PAGES));
    check_sums(mm);

    let (mut on0, mut on1) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        on0.push(alloc(mm, 0, 0).unwrap());
        on1.push(alloc(mm, 1, 0).unwrap());
    }
    assert!(on0.iter().all(|&p| node_of(mm, p) == 0));
    assert!(on1.iter().all(|&p| node_of(mm, p) == 1));
    let (b1s, b1e) = block_pfns(id);
    assert!(on1.iter().all(|&p| b1s <= p && p < b1e));
    assert!(mm.numa_stat(1).numa_hit >= 100);
    check_sums(mm);
    assert_eq!(mm.node_meminfo(1).1, BLOCK_PAGES - 100);
    // Frees across nodes: never onto the other node's CPU lists.
    for (&a, &b) in on0.iter().zip(&on1) {
        assert!(free(mm, 1, a, 0));
        assert!(free(mm, 0, b, 0));
        check_sums(mm);
    }
    assert_eq!(mm.node_meminfo(1), (BLOCK_PAGES, BLOCK_PAGES));

    // Node 1 exhausted: CPU 1 goes on to node 0, then to nothing.
    let mut held = Vec::new();
    while let Some(p) = alloc(mm, 1, 0) {
        held.push(p);
        if node_of(mm, p) == 0 {
            break;
        }
    }
    assert_eq!(mm.node_meminfo(1).1, 0);
    assert_eq!(node_of(mm, *held.last().unwrap()), 0);
    assert!(held[..held.len() - 1].iter().all(|&p| node_of(mm, p) == 1));
    for p in held {
        assert!(free(mm, 1, p, 0));
    }
    check_sums(mm);
    assert_eq!(mm.node_meminfo(1), (BLOCK_PAGES, BLOCK_PAGES));
}

#[test]
fn a_memoryless_node_comes_online_with_its_first_memory() {
    let mut fx = two_nodes_and_a_memoryless_one();
    let mm = &mut fx.mm;
    // In node 1's DT range (64K has only three hot blocks): the driver's
    // node wins over the address's.
    let id = HOT_FIRST + 2;
    let (start, full) = (start_of(id), PlugMask::full());
    mm.add_memory_driver_managed(Some(2), start, BLOCK, "System RAM (test)", full)
        .unwrap();
    assert_eq!(mm.blocks()[&id].nid, 2);
    assert_eq!(s(mm.node_online()), "0-2");
    assert_eq!(s(mm.node_has_memory()), "0");
    mm.online_block(id, Zone::Movable).unwrap();
    assert_eq!(s(mm.node_has_memory()), "0,2");
    assert_eq!(mm.node_meminfo(2), (BLOCK_PAGES, BLOCK_PAGES));
    check_sums(mm);
    // A node-2 page, freed by CPU 0, stays node 2's.
    let p = mm.buddy.lock().alloc_nodes(0, ZONES, 2).unwrap();
    assert_eq!(node_of(mm, p), 2);
    assert!(free(mm, 0, p, 0));
    assert_eq!(mm.node_meminfo(2).1, BLOCK_PAGES);
    mm.offline_block(id).unwrap();
    assert_eq!(mm.node_meminfo(2), (0, 0));
    assert_eq!(s(mm.node_has_memory()), "0");
    mm.remove_memory_driver_managed(start, BLOCK, "System RAM (test)")
        .unwrap();
    assert_eq!(s(mm.node_online()), "0-1");
    check_sums(mm);
    // A node the DT does not have: the DT's node for the address.
    let id = HOT_FIRST + 2;
    mm.add_memory_driver_managed(Some(9), start_of(id), BLOCK, "System RAM (test)", full)
        .unwrap();
    assert_eq!(mm.blocks()[&id].nid, 1);
}
