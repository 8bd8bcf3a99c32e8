//! Teardown by tables (`remove_pgd_mapping`, `unmap_hotplug_range_free_tables`)
//! and population by tables (`map_pages_with`): the invalidations they issue,
//! what they free and when.

use super::*;
use crate::arch::trace::{invalidations, zeroed_barriers};
use crate::mm::frame::FrameAllocator;
use crate::mm::layout::PAGE_OFFSET;

/// The last-level tables below `[start, end)`, by address.
fn last_level_tables<G: Granule>(env: &Env<G>, start: VirtAddr, end: VirtAddr) -> Vec<PhysAddr> {
    let mut v = Vec::new();
    let mut va = start.align_down(block::<G>());
    while va < end {
        let mut table = env.pt.root_pa();
        for level in G::START_LEVEL..3 {
            let d = Descriptor(
                env.arena
                    .read_u64(table + 8 * G::index(va.as_u64(), level) as u64),
            );
            assert!(d.is_table(level), "{va:#x}: no table at level {level}");
            table = d.output_address();
        }
        v.push(table);
        va += block::<G>();
    }
    v
}

/// The linear map's teardown: a last-level table the range covers whole is
/// detached with one walk-cache invalidation and freed without its leaves
/// being cleared; a subtree of several tables with one invalidation of
/// everything; the tables left are exactly those `free_empty_tables` keeps.
pub(super) fn whole_table_detach_is_one_invalidation<G: Granule>() {
    let mut env = Env::<G>::new();
    let (p, b) = (page::<G>(), block::<G>());
    let (floor, ceiling) = (VirtAddr::new(PAGE_OFFSET), VirtAddr::new(0));
    // Pages in two last-level tables; the second starts a block in.
    env.map(
        VA0 + b,
        VA0 + 3 * b,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    let l3 = last_level_tables(&env, VA0 + b, VA0 + 3 * b);
    let tables = env.pt.stats.tables;
    assert_eq!(tables, 1 + (2 - G::START_LEVEL) as u64 + 2);

    // The second table, whole: its entry cleared, one invalidation of the
    // walk through it, then the range's own invalidation.
    let ops = env.pt.stats.tlbi_ops;
    let calls = invalidations();
    let freed = env.pt.stats.tables_freed;
    env.pt.remove_pgd_mapping(
        VA0 + 2 * b,
        VA0 + 3 * b,
        floor,
        ceiling,
        &mut env.frames,
        &mut env.w,
    );
    assert_eq!(env.pt.stats.tlbi_ops - ops, 1 + range_ops::<G>(b));
    assert_eq!(invalidations() - calls, 2);
    assert_eq!(env.pt.stats.tables, tables - 1);
    assert_eq!(env.pt.stats.tables_freed - freed, 1);
    assert!(!env.frames.is_allocated(l3[1]));
    // Detached, not cleared: the freed page still holds its leaves.
    let last = (b / p - 1) * 8;
    assert_ne!(env.arena.read_u64(l3[1]), 0);
    assert_ne!(env.arena.read_u64(l3[1] + last), 0);
    assert_eq!(env.pt.translate(VA0 + 2 * b), None);
    assert_eq!(env.pt.translate(VA0 + b).map(|t| t.0), Some(PA0));
    env.check_tables(true);

    // The whole first-level entry: the level-2 table and the last-level
    // table below it (which the range start does not reach) go with one
    // invalidation of everything; a level-1 table between them and the
    // root is emptied and freed as free_empty_tables would.
    let top = VA0.align_down(G::level_size(1));
    let ops = env.pt.stats.tlbi_ops;
    let calls = invalidations();
    env.pt.remove_pgd_mapping(
        top,
        top + G::level_size(1),
        floor,
        ceiling,
        &mut env.frames,
        &mut env.w,
    );
    let above = (1 - G::START_LEVEL) as u64;
    assert_eq!(env.pt.stats.tlbi_ops - ops, 1 + above + 1);
    assert_eq!(invalidations() - calls, 1 + above + 1);
    assert_eq!(env.pt.stats.tables, 1);
    assert_eq!(env.frames.in_use(), 1);
    assert_eq!(env.pt.stats.tables_freed, tables - 1);
    assert_eq!(env.leaves(top, top + G::level_size(1)), vec![]);
    env.check_tables(true);
    assert_eq!(env.w, UnmapWarnings::default());
}

/// The bounds hold for a detach as for `free_empty_tables`: a table whose
/// span leaves `[floor, ceiling)` is cleared entry by entry and kept.
pub(super) fn detach_respects_floor_and_ceiling<G: Granule>() {
    let mut env = Env::<G>::new();
    let (p, b) = (page::<G>(), block::<G>());
    env.map(VA0, VA0 + b, PA0, Attributes::KERNEL_RW, MapHints::pages())
        .unwrap();
    let tables = env.pt.stats.tables;
    let ops = env.pt.stats.tlbi_ops;
    env.pt.remove_pgd_mapping(
        VA0,
        VA0 + b,
        VA0 + p,
        VirtAddr::new(0),
        &mut env.frames,
        &mut env.w,
    );
    assert_eq!(env.pt.stats.tables, tables);
    assert_eq!(env.pt.stats.tlbi_ops - ops, range_ops::<G>(b));
    assert!(env.leaves(VA0, VA0 + b).is_empty());
    // Within the bounds, now: freed as empty (one walk-cache invalidation
    // each, then the range's).
    env.pt.remove_pgd_mapping(
        VA0,
        VA0 + b,
        VirtAddr::new(PAGE_OFFSET),
        VirtAddr::new(0),
        &mut env.frames,
        &mut env.w,
    );
    assert_eq!(env.pt.stats.tables, 1);
    env.check_tables(true);
}

/// A frame allocator that records the order of frees.
struct RecordingFrames<'a> {
    inner: &'a mut ArenaFrames,
    frees: Vec<PhysAddr>,
}

impl FrameAllocator for RecordingFrames<'_> {
    fn alloc_pages(&mut self, order: u32) -> Option<PhysAddr> {
        self.inner.alloc_pages(order)
    }

    fn free_pages(&mut self, pa: PhysAddr, order: u32) {
        self.frees.push(pa);
        self.inner.free_pages(pa, order);
    }
}

/// The vmemmap's teardown (backing freed): one range invalidation per
/// last-level table, before any of its pages goes back; then each emptied
/// table freed after the invalidation of the walk through it.
pub(super) fn vmemmap_teardown_invalidates_once_per_table<G: Granule>() {
    let pages_per_table = block::<G>() / page::<G>();
    let mut env = Env::<G>::with_blocks(1);
    let (p, b) = (page::<G>(), block::<G>());
    // Three pages at the end of one last-level table, five at the start of
    // the next, backed by the frame allocator.
    let (start, end) = (VA0 + b - 3 * p, VA0 + b + 5 * p);
    let mut backing = Vec::new();
    env.pt
        .map_pages_with(
            VaRange::new(start, end),
            Attributes::KERNEL_RW,
            &mut env.frames,
            &mut |f: &mut ArenaFrames, _| {
                let pa = f.alloc_pages(0);
                backing.extend(pa);
                pa.map(|pa| (pa, 1))
            },
        )
        .unwrap();
    assert_eq!(backing.len(), 8);
    assert!(pages_per_table > 5);
    let tables = env.pt.stats.tables;
    let l3 = last_level_tables(&env, start, end);
    assert_eq!(l3.len(), 2);

    // `arch::trace` panics if a page goes back before the invalidation
    // of the entry that mapped it (or of the walk through a table).
    let ops = env.pt.stats.tlbi_ops;
    let calls = invalidations();
    let mut frames = RecordingFrames {
        inner: &mut env.frames,
        frees: Vec::new(),
    };
    let (floor, ceiling) = (VirtAddr::new(PAGE_OFFSET), VirtAddr::new(0));
    env.pt.unmap_hotplug_range_free_tables(
        start,
        end,
        true,
        None,
        floor,
        ceiling,
        &mut frames,
        &mut env.w,
    );
    let freed = frames.frees;
    let delta = env.pt.stats.tlbi_ops - ops;
    // Per table: its range, then (emptied) the walk through it; then the
    // tables above, emptied too.
    let above = (2 - G::START_LEVEL) as u64;
    assert_eq!(
        delta,
        range_ops::<G>(3 * p) + 1 + range_ops::<G>(5 * p) + 1 + above
    );
    // As calls: one range per table, not one per page.
    assert_eq!(invalidations() - calls, 2 + 2 + above);
    assert_eq!(env.pt.stats.tables, 1);
    assert_eq!(env.pt.stats.tables_freed, tables - 1);
    assert_eq!(env.frames.in_use(), 1);
    // Every backing page, in address order per table, before its table.
    assert_eq!(&freed[..3], &backing[..3]);
    assert_eq!(freed[3], l3[0]);
    assert_eq!(&freed[4..9], &backing[3..]);
    assert_eq!(freed[9], l3[1]);
    assert_eq!(env.w, UnmapWarnings::default());
}

/// `vmemmap_populate_basepages`' walk: every page of the range gets the
/// next backing page, tables are reserved up front (a refused or failed
/// reservation changes nothing and takes no backing), and backing running
/// out leaves what was mapped for the caller to tear down.
pub(super) fn map_pages_with_descends_once_per_table<G: Granule>() {
    let mut env = Env::<G>::with_blocks(3);
    let (p, b) = (page::<G>(), block::<G>());
    let baseline = env.snapshot();
    // Across two last-level-table boundaries.
    let (start, end) = (VA0 + b - 2 * p, VA0 + 2 * b + 3 * p);
    let n = ((end - start) / p) as usize;
    let mut backing = Vec::new();
    let mut take = |f: &mut ArenaFrames, _| {
        let pa = f.alloc_pages(0);
        backing.extend(pa);
        pa.map(|pa| (pa, 1))
    };
    env.pt
        .map_pages_with(
            VaRange::new(start, end),
            Attributes::KERNEL_RW,
            &mut env.frames,
            &mut take,
        )
        .unwrap();
    assert_eq!(backing.len(), n);
    let tables = env.pt.stats.tables;
    assert_eq!(tables, 1 + (2 - G::START_LEVEL) as u64 + 3);
    for (i, &pa) in backing.iter().enumerate() {
        assert_maps(&env, start + i as u64 * p, pa, 3, Attributes::KERNEL_RW);
    }
    assert_eq!(env.leaves(start - p, end + p).len(), n);
    assert_eq!(env.frames.in_use() as u64, tables + n as u64);

    // Overlap: refused before any table or backing is taken.
    let before = env.snapshot();
    let mut calls = 0;
    let mut counting = |f: &mut ArenaFrames, _| {
        calls += 1;
        f.alloc_pages(0).map(|pa| (pa, 1))
    };
    let r = env.pt.map_pages_with(
        VaRange::new(end - 2 * p, end + 4 * b),
        Attributes::KERNEL_RW,
        &mut env.frames,
        &mut counting,
    );
    assert_eq!(r, Err(MapError::AlreadyMapped(end - 2 * p)));
    assert_eq!(calls, 0);
    assert!(env.snapshot() == before);

    // No memory for the tables: nothing changes.
    let (s2, e2) = (top_boundary::<G>() - p, top_boundary::<G>() + 2 * p);
    for k in 0..(3 - G::START_LEVEL) {
        env.frames.fail_after = Some(k);
        let mut calls = 0;
        let r = env.pt.map_pages_with(
            VaRange::new(s2, e2),
            Attributes::KERNEL_RW,
            &mut env.frames,
            &mut |f: &mut ArenaFrames, _| {
                calls += 1;
                f.alloc_pages(0).map(|pa| (pa, 1))
            },
        );
        env.frames.fail_after = None;
        assert_eq!(r, Err(MapError::NoMemory), "table allocation {k} failing");
        assert_eq!(calls, 0);
        assert!(env.snapshot() == before);
    }

    // No backing for the first page: the tables reserved for the far side
    // of the boundary are given back, those descended through stay (empty)
    // and the teardown takes them back.
    let mut left = 0;
    let r = env.pt.map_pages_with(
        VaRange::new(s2, e2),
        Attributes::KERNEL_RW,
        &mut env.frames,
        &mut |f: &mut ArenaFrames, _| {
            if left == 0 {
                return None;
            }
            left -= 1;
            f.alloc_pages(0).map(|pa| (pa, 1))
        },
    );
    assert_eq!(r, Err(MapError::NoMemory));
    assert_eq!(env.leaves(s2, e2).len(), 0);
    let mapped = (env.pt.stats.tables as usize) + n;
    assert_eq!(env.frames.in_use(), mapped, "a reserved table leaked");
    let (floor, ceiling) = (VirtAddr::new(PAGE_OFFSET), VirtAddr::new(0));
    for (s, e) in [(s2, e2), (start, end)] {
        env.pt.unmap_hotplug_range_free_tables(
            s,
            e,
            true,
            None,
            floor,
            ceiling,
            &mut env.frames,
            &mut env.w,
        );
    }
    let now = env.snapshot();
    assert_eq!(now.in_use, baseline.in_use);
    assert_eq!((now.tables, now.dump), (baseline.tables, baseline.dump));
    env.check_tables(true);
}

/// Populate by tables publishes its zeroed table pages with one barrier per
/// map call (Linux issues one per table page), none when it adds no table;
/// and `map_pages_with` takes backing a run at a time, never asked for more
/// than is left of the current last-level table.
pub(super) fn one_barrier_per_map_call_for_new_tables<G: Granule>() {
    let mut env = Env::<G>::with_blocks(1);
    let (p, b) = (page::<G>(), block::<G>());
    let upper = (2 - G::START_LEVEL) as u64;
    // Pages over three last-level tables, all of them new.
    let (tables, barriers) = (env.pt.stats.tables, zeroed_barriers());
    env.map(
        VA0 + b - p,
        VA0 + 3 * b + p,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    assert_eq!(env.pt.stats.tables - tables, upper + 4);
    assert_eq!(zeroed_barriers() - barriers, 1);
    // Into tables that exist: no barrier for zeroed pages.
    let barriers = zeroed_barriers();
    env.map(
        VA0 + 3 * b + 2 * p,
        VA0 + 3 * b + 4 * p,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    assert_eq!(zeroed_barriers() - barriers, 0);

    // map_pages_with over two new last-level tables, backing in runs of at
    // most three pages (outputs nobody reads: the range is torn down
    // without freeing them).
    let (start, end) = (VA0 + 8 * b - 4 * p, VA0 + 8 * b + 5 * p);
    let (tables, barriers) = (env.pt.stats.tables, zeroed_barriers());
    let mut next = PA0;
    let mut asked = Vec::new();
    env.pt
        .map_pages_with(
            VaRange::new(start, end),
            Attributes::KERNEL_RW,
            &mut env.frames,
            &mut |_: &mut ArenaFrames, max| {
                let run = (next, max.min(3));
                asked.push(max);
                next += run.1 * p;
                Some(run)
            },
        )
        .unwrap();
    assert_eq!(env.pt.stats.tables - tables, 2);
    assert_eq!(zeroed_barriers() - barriers, 1);
    // 4 pages to the first table's end (3 + 1), then 5 into the next.
    assert_eq!(asked, [4, 1, 5, 2]);
    for i in 0..(end - start) / p {
        assert_maps(&env, start + i * p, PA0 + i * p, 3, Attributes::KERNEL_RW);
    }
    env.unmap(start, end, false, None);
    env.unmap(VA0 + b - p, VA0 + 3 * b + 4 * p, false, None);
    env.free_tables(VA0, VA0 + 10 * b);
    env.check_tables(true);
}

/// `remove_pgd_mapping_unflushed` leaves its range invalidation pending:
/// the next invalidation the table issues covers it in the same call (here
/// a free-mapped teardown's, before its backing goes back), and a map
/// issues it before writing anything, so no stale entry outlives a new
/// mapping.
pub(super) fn unflushed_removal_rides_on_the_next_invalidation<G: Granule>() {
    use crate::arch::trace::unflushed;
    let mut env = Env::<G>::new();
    let b = block::<G>();
    let (floor, ceiling) = (VirtAddr::new(PAGE_OFFSET), VirtAddr::new(0));
    let attrs = Attributes::KERNEL_RW;
    env.map(VA0, VA0 + b, PA0, attrs, MapHints::pages())
        .unwrap();
    let backed = VA0 + 4 * b;
    let frame = env.frames.alloc_pages(0).unwrap();
    env.map(
        backed,
        backed + page::<G>(),
        frame,
        attrs,
        MapHints::pages(),
    )
    .unwrap();
    let calls = invalidations();
    let (start, end) = (VA0 + page::<G>(), VA0 + 3 * page::<G>());
    env.pt
        .remove_pgd_mapping_unflushed(start, end, floor, ceiling, &mut env.frames, &mut env.w);
    assert_eq!(invalidations(), calls);
    assert_eq!(unflushed(), 2);
    env.pt.unmap_hotplug_range(
        backed,
        backed + page::<G>(),
        true,
        None,
        &mut env.frames,
        &mut env.w,
    );
    assert_eq!(invalidations() - calls, 1);
    assert_eq!(unflushed(), 0);
    assert!(!env.frames.is_allocated(frame));
    // Pending again; a map of the same addresses issues it first.
    env.pt
        .remove_pgd_mapping_unflushed(start, end, floor, ceiling, &mut env.frames, &mut env.w);
    env.pt
        .remove_pgd_mapping_unflushed(VA0, start, floor, ceiling, &mut env.frames, &mut env.w);
    assert_eq!(unflushed(), 1);
    let calls = invalidations();
    env.map(VA0, end, PA0, attrs, MapHints::pages()).unwrap();
    assert_eq!((invalidations() - calls, unflushed()), (1, 0));
    env.pt.flush_pending();
    assert_eq!(invalidations() - calls, 1);
}
