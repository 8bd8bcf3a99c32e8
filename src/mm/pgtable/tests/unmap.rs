//! Hotplug teardown: unmapping, freeing what was mapped (to the frame
//! allocator or an altmap), and freeing empty tables.

use super::super::unmap::free_hotplug_page_range;
use super::*;
use crate::mm::frame::FrameAllocator;

pub(super) fn unmap_then_free_tables_leaves_only_the_root<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let b = block::<G>();
    let x = top_boundary::<G>();
    let baseline = env.snapshot();
    assert_eq!(baseline.in_use, 1);
    let (start, end) = (x - b - 3 * p, x + 2 * b + 5 * p);
    let pa = PA0 + (start - (x - 4 * b));
    env.map(
        start,
        end,
        pa,
        Attributes::KERNEL_RW,
        MapHints::blocks(b).with_contiguous(),
    )
    .unwrap();
    let n3 = G::contiguous_entries(3) as u64 * p;
    let (cs, ce) = (VA0 + n3, VA0 + 3 * n3);
    env.map(
        cs,
        ce,
        PA0,
        Attributes::KERNEL_RO,
        MapHints::pages().with_contiguous(),
    )
    .unwrap();
    env.check_contiguous(start, end);
    env.check_contiguous(cs, ce);
    let tables = env.pt.stats.tables;
    assert!(tables > 4);
    assert!(env.leaves(start, end).iter().any(|l| l.2 == 2));

    // Without free_mapped: a single invalidation for the whole range.
    let ops = env.pt.stats.tlbi_ops;
    assert!((end - start) / p > MAX_TLBI_OPS);
    env.unmap(start, end, false, None);
    assert_eq!(env.pt.stats.tlbi_ops - ops, 1);
    let ops = env.pt.stats.tlbi_ops;
    env.unmap(cs, ce, false, None);
    assert_eq!(env.pt.stats.tlbi_ops - ops, range_ops::<G>(ce - cs));
    for (s, e) in [(start, end), (cs, ce)] {
        let mut va = s;
        while va < e {
            assert_eq!(env.pt.translate(va), None, "{va:#x} still translates");
            va += p;
        }
        assert!(env.leaves(s, e).is_empty());
    }
    // Tables stay until freed.
    assert_eq!(env.pt.stats.tables, tables);
    env.check_tables(true);
    assert_eq!(env.w, UnmapWarnings::default());

    let ops = env.pt.stats.tlbi_ops;
    env.free_tables(start, end);
    env.free_tables(cs, ce);
    assert_eq!(env.pt.stats.tables, 1);
    assert_eq!(env.count_tables(), 1);
    assert_eq!(env.frames.in_use(), baseline.in_use);
    assert_eq!(env.frames.allocations(), baseline.allocations);
    assert_eq!(env.pt.stats.tables_freed, tables - 1);
    // One walk-cache invalidation per table freed.
    assert_eq!(env.pt.stats.tlbi_ops - ops, tables - 1);
    let now = env.snapshot();
    assert_eq!((now.tables, now.dump), (baseline.tables, baseline.dump));

    // Freeing again, or unmapping nothing, changes nothing but the TLB.
    env.free_tables(start, end);
    env.unmap(start, end, false, None);
    assert_eq!(env.pt.stats.tables, 1);
}

pub(super) fn small_unmap_flushes_page_by_page<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    env.map(
        VA0,
        VA0 + 10 * p,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    let ops = env.pt.stats.tlbi_ops;
    env.unmap(VA0 + 2 * p, VA0 + 9 * p, false, None);
    assert_eq!(env.pt.stats.tlbi_ops - ops, 7);
    assert!(env.pt.translate(VA0 + p).is_some());
    assert!(env.pt.translate(VA0 + 9 * p).is_some());
    assert_eq!(env.pt.translate(VA0 + 2 * p), None);
}

pub(super) fn free_mapped_returns_frames<G: Granule>() {
    let mut env = Env::<G>::with_blocks(1);
    let p = page::<G>();
    let b = block::<G>();
    let order = G::level_shift(2) - G::PAGE_SHIFT;
    let blk = env.frames.alloc_pages(order).unwrap();
    assert_eq!(blk, ARENA_BASE);
    let mut pages = Vec::new();
    for i in 0..5 {
        let pa = env.frames.alloc_pages(0).unwrap();
        env.map(
            VA0 + b - 2 * p + i * p,
            VA0 + b - p + i * p,
            pa,
            Attributes::KERNEL_RW,
            MapHints::blocks(b),
        )
        .unwrap();
        pages.push(pa);
    }
    env.map(
        VA0 + 2 * b,
        VA0 + 3 * b,
        blk,
        Attributes::KERNEL_RW,
        MapHints::blocks(b),
    )
    .unwrap();
    assert_maps(&env, VA0 + 2 * b + p, blk + p, 2, Attributes::KERNEL_RW);
    let tables = env.pt.stats.tables;
    let frees = env.frames.frees;
    assert_eq!(env.frames.in_use() as u64, tables + 5 + b / p);

    let ops = env.pt.stats.tlbi_ops;
    env.unmap(VA0, VA0 + 4 * b, true, None);
    // One range invalidation per table before its leaves' backing is
    // freed: two pages in one last-level table, three in the next, and
    // the block (one page's worth).
    assert_eq!(
        env.pt.stats.tlbi_ops - ops,
        range_ops::<G>(2 * p) + range_ops::<G>(3 * p) + 1
    );
    assert_eq!(env.frames.frees - frees, 6);
    assert_eq!(env.frames.in_use() as u64, tables);
    assert!(pages.iter().all(|&pa| !env.frames.is_allocated(pa)));
    assert!(!env.frames.is_allocated(blk));
    assert_eq!(env.pt.translate(VA0 + b), None);
    assert_eq!(env.w, UnmapWarnings::default());

    let ops = env.pt.stats.tlbi_ops;
    env.free_tables(VA0, VA0 + 4 * b);
    assert_eq!(env.pt.stats.tlbi_ops - ops, tables - 1);
    assert_eq!(env.frames.in_use(), 1);
    env.check_tables(true);
}

pub(super) fn altmap_backing_goes_back_to_the_altmap<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let b = block::<G>();
    let mut altmap = device_altmap::<G>(1);
    let fresh = altmap.clone();
    let baseline = env.snapshot();

    for i in 0..5 {
        let pa = pfn_phys::<G>(altmap.alloc_pfns(1).unwrap());
        env.map(
            VA0 + i * p,
            VA0 + (i + 1) * p,
            pa,
            Attributes::KERNEL_RW,
            MapHints::blocks(b),
        )
        .unwrap();
    }
    let blk = pfn_phys::<G>(altmap.alloc_pfns(b / p).unwrap());
    assert_eq!(blk.as_u64() & (b - 1), 0);
    env.map(
        VA0 + b,
        VA0 + 2 * b,
        blk,
        Attributes::KERNEL_RW,
        MapHints::blocks(b),
    )
    .unwrap();
    // A contiguous group of pages too.
    let n3 = G::contiguous_entries(3) as u64;
    let grp = pfn_phys::<G>(altmap.alloc_pfns(n3).unwrap());
    let (gs, ge) = (VA0 + 2 * b, VA0 + 2 * b + n3 * p);
    env.map(
        gs,
        ge,
        grp,
        Attributes::KERNEL_RW,
        MapHints::pages().with_contiguous(),
    )
    .unwrap();
    assert!(env.pt.translate(gs).unwrap().1.is_contiguous());
    assert_eq!(altmap.alloc, 5 + b / p + n3);
    // Tables only from the frame allocator.
    env.check_tables(true);

    let frees = env.frames.frees;
    let ops = env.pt.stats.tlbi_ops;
    env.unmap(VA0, VA0 + 4 * b, true, Some(&mut altmap));
    // One range invalidation per table: the five pages, the block (one
    // page's worth drops it), the group (whole, so not unfolded).
    assert_eq!(
        env.pt.stats.tlbi_ops - ops,
        range_ops::<G>(5 * p) + 1 + range_ops::<G>(n3 * p)
    );
    assert_eq!(altmap.alloc, 0);
    assert_eq!(altmap.misuse, 0);
    assert_eq!(
        env.frames.frees, frees,
        "altmap pages went to the frame allocator"
    );
    assert_eq!(env.w, UnmapWarnings::default());
    env.check_tables(true);
    env.free_tables(VA0, VA0 + 4 * b);
    assert_eq!(env.frames.in_use(), baseline.in_use);
    assert_eq!(env.pt.stats.tables, 1);
    assert_eq!(
        altmap, fresh,
        "an add/remove cycle leaves the altmap as it was"
    );
}

pub(super) fn altmap_without_free_mapped_is_counted<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let mut altmap = device_altmap::<G>(0);
    let first = altmap.alloc_pfns(4).unwrap();
    env.map(
        VA0,
        VA0 + 4 * p,
        pfn_phys::<G>(first),
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    let frees = env.frames.frees;
    let ops = env.pt.stats.tlbi_ops;
    env.unmap(VA0, VA0 + 4 * p, false, Some(&mut altmap));
    assert_eq!(env.w.altmap_without_free_mapped, 1);
    assert_eq!(
        env.w,
        UnmapWarnings {
            altmap_without_free_mapped: 1,
            ..Default::default()
        }
    );
    // Unmapped, one range flush, nothing freed anywhere.
    assert_eq!(env.pt.translate(VA0), None);
    assert_eq!(env.pt.stats.tlbi_ops - ops, 4);
    assert_eq!(altmap.alloc, 4);
    assert_eq!(env.frames.frees, frees);
    altmap.free_pfns(first, 4).unwrap();
    assert_eq!(altmap.alloc, 0);
    env.free_tables(VA0, VA0 + 4 * p);
    assert_eq!(env.frames.in_use(), 1);
}

pub(super) fn reserved_page_is_counted_not_freed<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let mut pas = Vec::new();
    for i in 0..3 {
        let pa = env.frames.alloc_pages(0).unwrap();
        env.map(
            VA0 + i * p,
            VA0 + (i + 1) * p,
            pa,
            Attributes::KERNEL_RW,
            MapHints::pages(),
        )
        .unwrap();
        pas.push(pa);
    }
    let tables = env.pt.stats.tables as usize;
    env.frames.reserved.insert(pas[1]);
    env.unmap(VA0, VA0 + 3 * p, true, None);
    assert_eq!(
        env.w,
        UnmapWarnings {
            reserved_page_freed: 1,
            ..Default::default()
        }
    );
    assert_eq!(env.frames.in_use(), tables + 1);
    assert!(env.frames.is_allocated(pas[1]));
    assert!(!env.frames.is_allocated(pas[0]) && !env.frames.is_allocated(pas[2]));
    assert_eq!(env.pt.translate(VA0 + p), None);

    // Directly, too; and an altmap refusing a pfn it never handed out.
    free_hotplug_page_range::<G>(pas[1], p, None, &mut env.frames, &mut env.w);
    assert_eq!(env.w.reserved_page_freed, 2);
    assert!(env.frames.is_allocated(pas[1]));
    let mut altmap = device_altmap::<G>(0);
    let before = altmap.clone();
    free_hotplug_page_range::<G>(
        pfn_phys::<G>(altmap.base_pfn),
        p,
        Some(&mut altmap),
        &mut env.frames,
        &mut env.w,
    );
    assert_eq!(env.w.altmap_bad_free, 1);
    assert_eq!(altmap.misuse, 1);
    let mut unchanged = altmap.clone();
    unchanged.misuse = 0;
    assert_eq!(
        unchanged, before,
        "a refused free leaves the altmap as it was"
    );

    env.frames.reserved.clear();
    env.frames.free_pages(pas[1], 0);
    env.free_tables(VA0, VA0 + 3 * p);
    assert_eq!(env.frames.in_use(), 1);
}

pub(super) fn free_empty_tables_respects_floor_and_ceiling<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let b = block::<G>();
    let y = top_boundary::<G>();
    let va = y + b + 5 * p;
    env.map(va, va + p, PA0, Attributes::KERNEL_RW, MapHints::pages())
        .unwrap();
    let tables = env.pt.stats.tables;
    assert_eq!(tables, 1 + (3 - G::START_LEVEL) as u64);
    env.unmap(va, va + p, false, None);
    let free = |env: &mut Env<G>, floor: VirtAddr, ceiling: VirtAddr| {
        env.pt
            .free_empty_tables(va, va + p, floor, ceiling, &mut env.frames);
        env.check_tables(true);
        env.pt.stats.tables
    };
    // The last-level table spans [y + b, y + 2b).
    assert_eq!(
        free(&mut env, y + b + p, VirtAddr::new(0)),
        tables,
        "span crosses the floor"
    );
    assert_eq!(
        free(&mut env, y + b, y + 2 * b - p),
        tables,
        "span crosses the ceiling"
    );
    assert_eq!(
        free(&mut env, y + b, y + 2 * b),
        tables - 1,
        "exactly the span"
    );
    // Its parent spans [y, y + level_size(1)).
    assert_eq!(free(&mut env, y + b, VirtAddr::new(0)), tables - 1);
    assert_eq!(free(&mut env, y, y + G::level_size(1) - p), tables - 1);
    assert_eq!(free(&mut env, y, y + G::level_size(1)), tables - 2);
    assert_eq!(
        free(&mut env, VirtAddr::new(PAGE_OFFSET), VirtAddr::new(0)),
        1
    );
    assert_eq!(env.frames.in_use(), 1);
}

/// A range that covers part of a block leaf must not clear (and free) the
/// whole block: refused in release builds too, counted, nothing changed.
pub(super) fn partial_leaf_is_refused_and_counted<G: Granule>() {
    let mut env = Env::<G>::new();
    let (p, b) = (page::<G>(), block::<G>());
    let start = VA0 + 4 * b;
    env.map(
        start,
        start + b,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::blocks(b),
    )
    .unwrap();
    assert_eq!(env.leaves(start, start + b).len(), 1);
    let before = env.snapshot();
    for (s, e) in [
        (start, start + p),
        (start + p, start + b),
        (start + b / 2, start + b),
    ] {
        env.unmap(s, e, true, None);
        env.unmap(s, e, false, None);
    }
    assert_eq!(env.w.partial_leaf, 6);
    assert_eq!(env.pt.translate(start + p).map(|t| t.0), Some(PA0 + p));
    let after = env.snapshot();
    assert_eq!(after.in_use, before.in_use);
    assert_eq!(after.allocations, before.allocations);
    env.unmap(start, start + b, false, None);
    assert_eq!(env.w.partial_leaf, 6);
    assert!(env.leaves(start, start + b).is_empty());
}
