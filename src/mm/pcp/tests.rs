//! Per-CPU lists over a booted test system, several "CPUs" driven from one
//! thread by index: `MemFree` exact with pages on lists, offline and
//! isolation leave no page of their range on any list, exhaustion drains
//! the lists before it fails.

use alloc::vec::Vec;

use super::*;
use crate::error::Errno;
use crate::mm::layout::PAGE_SIZE;
use crate::mm::system::block_pfns;
use crate::mm::test_system::*;

const MOVABLE_FIRST: &[Zone] = &[Zone::Movable, Zone::Normal];

/// What `global::alloc` does on `cpu`: the list, else the memory lock.
fn alloc(
    mm: &mut MemorySystem<crate::mm::testing::ArenaTranslation>,
    cpu: usize,
    order: u32,
    zones: &[Zone],
) -> Option<Pfn> {
    let memmap = *mm.buddy().memmap();
    mm.pcp()
        .alloc_fast(&memmap, cpu, order, zones)
        .or_else(|| mm.pcp_alloc(cpu, order, zones))
}

/// What `global::free` does on `cpu`.
fn free(
    mm: &mut MemorySystem<crate::mm::testing::ArenaTranslation>,
    cpu: usize,
    pfn: Pfn,
    order: u32,
) -> bool {
    let memmap = *mm.buddy().memmap();
    mm.pcp().free_fast(&memmap, cpu, pfn, order) || mm.pcp_free(cpu, pfn, order)
}

/// Free pages as `MemFree` counts them.
fn mem_free(mm: &MemorySystem<crate::mm::testing::ArenaTranslation>) -> u64 {
    mm.meminfo().free / PAGE_SIZE
}

/// Block `HOT_FIRST` added and online in Movable, the hints refreshed as
/// the kernel's memory lock does on release.
fn online_hot(mm: &mut MemorySystem<crate::mm::testing::ArenaTranslation>) -> (Pfn, Pfn) {
    mm.add_memory(start_of(HOT_FIRST), BLOCK).unwrap();
    mm.online_block(HOT_FIRST, Zone::Movable).unwrap();
    mm.pcp().update_hints(&mm.buddy());
    block_pfns(HOT_FIRST)
}

#[test]
fn memfree_counts_pages_on_lists() {
    let mut fx = TestSystem::boot();
    let mm = &mut fx.mm;
    let base = mem_free(mm);
    let available = mm.mem_available();
    let mut held = Vec::new();
    for i in 0..200u32 {
        let (cpu, order) = (1 + i as usize % 3, i % (PCP_MAX_ORDER + 2));
        let pfn = alloc(mm, cpu, order, &[Zone::Normal]).unwrap();
        held.push((pfn, order));
        let out: u64 = held.iter().map(|&(_, o)| 1u64 << o).sum();
        assert_eq!(mem_free(mm), base - out, "after {} allocations", i + 1);
    }
    assert!(mm.pcp().nr_pages() > 0, "refills left pages on the lists");
    // Freed on other CPUs than those that allocated.
    while let Some((pfn, order)) = held.pop() {
        assert!(free(mm, held.len() % 4, pfn, order));
        let out: u64 = held.iter().map(|&(_, o)| 1u64 << o).sum();
        assert_eq!(mem_free(mm), base - out);
    }
    assert!(mm.pcp().nr_pages() > 0);
    // MemAvailable counts free pages as MemFree does.
    assert_eq!(
        mm.mem_available(),
        available,
        "MemAvailable with pages on lists"
    );
    for cpu in 0..MAX_CPUS {
        assert!(mm.pcp().nr_pages_on(cpu) <= PCP_HIGH, "cpu {cpu} past high");
    }
    assert_eq!(
        mm.buddy().nr_free_total() + mm.pcp().nr_pages(),
        base,
        "buddy and lists together"
    );
    mm.drain_all_pages();
    assert_eq!(mm.pcp().nr_pages(), 0);
    assert_eq!(mm.buddy().nr_free_total(), base);
}

#[test]
fn double_free_is_refused_not_listed() {
    let mut fx = TestSystem::boot();
    let mm = &mut fx.mm;
    let pfn = alloc(mm, 1, 0, &[Zone::Normal]).unwrap();
    assert!(free(mm, 1, pfn, 0));
    let (before, bad) = (mem_free(mm), mm.buddy().stats().bad_frees);
    assert!(!free(mm, 1, pfn, 0), "a second free of a listed page");
    assert!(!free(mm, 2, pfn, 0), "from another CPU");
    assert_eq!(mem_free(mm), before);
    assert_eq!(mm.buddy().stats().bad_frees, bad + 2);
    // Wrong order: refused too.
    let pfn = alloc(mm, 1, 1, &[Zone::Normal]).unwrap();
    assert!(!free(mm, 1, pfn, 0));
    assert!(free(mm, 1, pfn, 1));
}

#[test]
fn offline_drains_every_list() {
    let mut fx = TestSystem::boot();
    let mm = &mut fx.mm;
    let base = mem_free(mm);
    let (s, e) = online_hot(mm);
    // Refills from the block onto two CPUs' lists, then everything back.
    let a = alloc(mm, 1, 0, MOVABLE_FIRST).unwrap();
    let b = alloc(mm, 2, 2, MOVABLE_FIRST).unwrap();
    assert!((s..e).contains(&a) && (s..e).contains(&b));
    assert!(free(mm, 1, a, 0) && free(mm, 3, b, 2));
    assert!(mm.pcp().holds_any(s, e), "the block's pages sit on lists");
    let online = mem_free(mm);
    mm.offline_block(HOT_FIRST).unwrap();
    assert!(!mm.pcp().holds_any(s, e));
    assert_eq!(mem_free(mm), online - (e - s));
    mm.remove_memory(start_of(HOT_FIRST), BLOCK).unwrap();
    assert_eq!(mem_free(mm), base);
}

#[test]
fn isolation_keeps_its_range_off_every_list() {
    let mut fx = TestSystem::boot();
    let mm = &mut fx.mm;
    let (s, e) = online_hot(mm);
    let held = alloc(mm, 1, 0, MOVABLE_FIRST).unwrap();
    let other = alloc(mm, 2, 1, MOVABLE_FIRST).unwrap();
    assert!(mm.pcp().holds_any(s, e));
    let before = mem_free(mm);
    mm.offline_begin(HOT_FIRST).unwrap();
    mm.pcp().update_hints(&mm.buddy());
    assert!(!mm.pcp().holds_any(s, e), "isolation drained the lists");
    let isolated = mem_free(mm);
    // Frees into the range bypass the lists, on any CPU: put aside by the
    // fast path, to the buddy allocator (which holds them) by the slow one.
    let memmap = *mm.buddy().memmap();
    assert!(mm.pcp().free_fast(&memmap, 1, held, 0));
    assert!(!mm.pcp().holds_any(s, e));
    assert_eq!(mem_free(mm), isolated, "a page put aside is not free yet");
    assert!(!mm.offline_try_finish(HOT_FIRST), "one page still out");
    assert!(free(mm, 3, other, 1));
    assert!(!mm.pcp().holds_any(s, e));
    // Allocation meanwhile comes from elsewhere, never the range.
    for cpu in 0..4 {
        let pfn = alloc(mm, cpu, 0, MOVABLE_FIRST).unwrap();
        assert!(!(s..e).contains(&pfn));
        assert!(free(mm, cpu, pfn, 0));
    }
    assert!(mm.offline_try_finish(HOT_FIRST));
    assert!(!mm.pcp().holds_any(s, e));
    assert_eq!(mem_free(mm), before + 3 - (e - s));
    mm.remove_memory(start_of(HOT_FIRST), BLOCK).unwrap();
}

/// A free into a range under isolation takes no memory lock: the block
/// waits on its CPU, still allocated, until the offline collects it.
#[test]
fn frees_into_isolation_wait_aside_for_the_offline() {
    let mut fx = TestSystem::boot();
    let mm = &mut fx.mm;
    let (s, e) = online_hot(mm);
    let a = alloc(mm, 1, 0, MOVABLE_FIRST).unwrap();
    let b = alloc(mm, 1, 2, MOVABLE_FIRST).unwrap();
    assert!((s..e).contains(&a) && (s..e).contains(&b));
    let before = mem_free(mm);
    mm.offline_begin(HOT_FIRST).unwrap();
    let isolated = mem_free(mm);
    let memmap = *mm.buddy().memmap();
    let (asides, bad) = (mm.pcp().nr_isolated_frees(), mm.buddy().stats().bad_frees);
    assert!(mm.pcp().free_fast(&memmap, 1, a, 0));
    assert_eq!(mm.pcp().nr_isolated_frees(), asides + 1);
    // Still allocated to the buddy allocator, and not free.
    assert!(!mm.buddy().test_pages_isolated(s, e));
    assert_eq!(mem_free(mm), isolated);
    // Put aside with refcount 0, as on a list: a second free is refused
    // (by the slow path, which the fast one sends it to).
    assert!(!mm.pcp().free_fast(&memmap, 2, a, 0));
    assert!(!mm.pcp().free_fast(&memmap, 1, a, 0));
    assert!(!mm.pcp_free(1, a, 0));
    assert_eq!(mm.buddy().stats().bad_frees, bad + 1);
    // Wrong order: not put aside.
    assert!(!mm.pcp().free_fast(&memmap, 1, b, 1));
    assert_eq!(mm.pcp().nr_isolated_frees(), asides + 1);
    assert!(!mm.offline_try_finish(HOT_FIRST), "b is still out");
    assert!(mm.pcp().free_fast(&memmap, 3, b, 2));
    assert!(mm.offline_try_finish(HOT_FIRST), "both collected");
    assert!(!mm.pcp().holds_any(s, e));
    assert_eq!(mem_free(mm), before - (e - s) + 5);
    mm.remove_memory(start_of(HOT_FIRST), BLOCK).unwrap();
}

/// An aborted offline gives what was put aside to the buddy allocator
/// (free again), and a CPU whose room is full sends the free to the
/// memory lock.
#[test]
fn aborted_isolation_frees_what_was_put_aside() {
    let mut fx = TestSystem::boot();
    let mm = &mut fx.mm;
    let (s, e) = online_hot(mm);
    let mut pfns = Vec::new();
    for _ in 0..=MAX_ISOLATED_FREES {
        pfns.push(alloc(mm, 1, 0, MOVABLE_FIRST).unwrap());
    }
    assert!(pfns.iter().all(|p| (s..e).contains(p)));
    let before = mem_free(mm);
    mm.offline_begin(HOT_FIRST).unwrap();
    let isolated = mem_free(mm);
    let memmap = *mm.buddy().memmap();
    let last = pfns.pop().unwrap();
    for &pfn in &pfns {
        assert!(mm.pcp().free_fast(&memmap, 1, pfn, 0));
    }
    assert!(!mm.pcp().free_fast(&memmap, 1, last, 0), "no room left");
    assert!(mm.pcp_free(1, last, 0));
    assert_eq!(mem_free(mm), isolated);
    mm.offline_abort(HOT_FIRST);
    assert_eq!(mem_free(mm), before + MAX_ISOLATED_FREES as u64 + 1);
    // Nothing stays aside: the next free goes on the list.
    let pfn = alloc(mm, 1, 0, MOVABLE_FIRST).unwrap();
    let asides = mm.pcp().nr_isolated_frees();
    assert!(mm.pcp().free_fast(&memmap, 1, pfn, 0));
    assert_eq!(mm.pcp().nr_isolated_frees(), asides);
    mm.offline_block(HOT_FIRST).unwrap();
    mm.remove_memory(start_of(HOT_FIRST), BLOCK).unwrap();
}

#[test]
fn aborted_isolation_lets_frees_back_on_lists() {
    let mut fx = TestSystem::boot();
    let mm = &mut fx.mm;
    let (s, e) = online_hot(mm);
    let pfn = alloc(mm, 1, 0, MOVABLE_FIRST).unwrap();
    mm.offline_begin(HOT_FIRST).unwrap();
    mm.offline_abort(HOT_FIRST);
    let memmap = *mm.buddy().memmap();
    assert!(mm.pcp().free_fast(&memmap, 1, pfn, 0));
    assert!(mm.pcp().holds_any(s, e));
}

#[test]
fn exhaustion_drains_lists_before_failing() {
    let mut fx = TestSystem::boot();
    let mm = &mut fx.mm;
    let base = mem_free(mm);
    // Pages onto two CPUs' lists, then the buddy allocator emptied under them.
    for cpu in [1, 2] {
        let pfn = alloc(mm, cpu, 0, &[Zone::Normal]).unwrap();
        assert!(free(mm, cpu, pfn, 0));
    }
    let listed = mm.pcp().nr_pages();
    assert!(listed > 0);
    let mut held = Vec::new();
    while let Some(pfn) = mm.buddy.lock().alloc(0, Zone::Normal) {
        held.push(pfn);
    }
    assert_eq!(mem_free(mm), listed);
    // A page-table allocation of a hot-add (struct pages on the block
    // itself) reaches the listed pages.
    mm.set_memmap_on_memory(true);
    mm.add_memory(GIB2, BLOCK)
        .expect("the lists' pages are free memory");
    mm.set_memmap_on_memory(false);
    assert_eq!(mm.pcp().nr_pages(), 0, "drained");
    mm.remove_memory(GIB2, BLOCK).unwrap();
    // Lists refilled on another CPU, then everything taken: ENOMEM.
    for pfn in held.drain(..) {
        assert!(mm.free(pfn, 0));
    }
    let pfn = alloc(mm, 5, 0, &[Zone::Normal]).unwrap();
    assert!(free(mm, 5, pfn, 0));
    assert!(mm.pcp().nr_pages_on(5) > 0);
    while let Some(pfn) = mm.alloc(0, Zone::Normal) {
        held.push(pfn);
    }
    assert_eq!(
        mm.pcp().nr_pages(),
        0,
        "the last allocations drained the lists"
    );
    assert_eq!(mem_free(mm), 0);
    assert_eq!(alloc(mm, 1, 0, MOVABLE_FIRST), None);
    let e = mm.add_memory(start_of(HOT_FIRST), BLOCK).unwrap_err();
    assert_eq!(e.errno, Errno::ENOMEM);
    for pfn in held {
        assert!(free(mm, 1, pfn, 0));
    }
    assert_eq!(mem_free(mm), base);
}

#[test]
fn fail_nth_still_fails_with_pages_on_lists() {
    let mut fx = TestSystem::boot();
    let mm = &mut fx.mm;
    let pfn = alloc(mm, 1, 0, &[Zone::Normal]).unwrap();
    assert!(free(mm, 1, pfn, 0));
    let before = mm.meminfo();
    mm.set_fail_nth_alloc(Some(0));
    // Its first allocation is the second GiB's linear-map table.
    let e = mm.add_memory(GIB2, BLOCK).unwrap_err();
    assert_eq!(e.errno, Errno::ENOMEM);
    assert_eq!(mm.meminfo(), before);
}
