//! Mapping: pages, blocks where aligned, and ranges refused as misaligned or
//! overlapping without a change.

use super::*;

pub(super) fn map_pages_and_translate_back<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let b = block::<G>();
    // Eight pages across a last-level table boundary, output not congruent.
    let (start, end) = (VA0 + b - 3 * p, VA0 + b + 5 * p);
    let pa = PA0 + 7 * p;
    env.map(
        start,
        end,
        pa,
        Attributes::KERNEL_RO,
        MapHints::blocks(b).with_contiguous(),
    )
    .unwrap();
    for i in 0..8 {
        let va = start + i * p;
        assert_maps(&env, va, pa + i * p, 3, Attributes::KERNEL_RO);
        assert_maps(
            &env,
            va + p / 2 + 8,
            pa + i * p + p / 2 + 8,
            3,
            Attributes::KERNEL_RO,
        );
        assert!(!env.pt.translate(va).unwrap().1.is_contiguous());
    }
    assert_eq!(env.pt.translate(start - p), None);
    assert_eq!(env.pt.translate(end), None);
    let leaves = env.leaves(start - b, end + b);
    assert_eq!(leaves.len(), 8);
    assert!(leaves
        .iter()
        .all(|&(_, size, level, _)| size == p && level == 3));
    // Root, one table per middle level, two last-level tables.
    let expected = 1 + (2 - G::START_LEVEL as u64) + 2;
    assert_eq!(env.pt.stats.tables, expected);
    env.check_tables(true);
}

pub(super) fn map_blocks_where_aligned<G: Granule>() {
    let p = page::<G>();
    let b = block::<G>();
    let (start, end) = (VA0 + b - 2 * p, VA0 + 3 * b + 3 * p);
    let pa = PA0 + (start - VA0);

    let mut env = Env::<G>::new();
    env.map(start, end, pa, Attributes::DEVICE, MapHints::blocks(b))
        .unwrap();
    let got: Vec<_> = env
        .leaves(VA0, VA0 + 4 * b)
        .iter()
        .map(|&(va, size, level, _)| (va, size, level))
        .collect();
    let mut want = vec![
        (start, p, 3),
        (start + p, p, 3),
        (VA0 + b, b, 2),
        (VA0 + 2 * b, b, 2),
    ];
    want.extend((0..3).map(|i| (VA0 + 3 * b + i * p, p, 3)));
    assert_eq!(got, want);
    for &(va, size, level) in &want {
        for off in [0, size / 2, size - 8] {
            assert_maps(
                &env,
                va + off,
                pa + (va - start) + off,
                level,
                Attributes::DEVICE,
            );
        }
    }
    env.check_tables(true);

    // Pages only, when the hints say so or the output is not congruent.
    for (hints, pa) in [
        (MapHints::pages(), pa),
        (MapHints::blocks(b / 2), pa),
        (MapHints::blocks(b), pa + p),
        (MapHints::blocks(b).with_contiguous(), pa + p),
    ] {
        let mut env = Env::<G>::new();
        env.map(start, end, pa, Attributes::KERNEL_RW, hints)
            .unwrap();
        let leaves = env.leaves(start, end);
        assert_eq!(leaves.len() as u64, (end - start) / p, "{hints:?}");
        assert!(leaves.iter().all(|&(_, _, level, _)| level == 3));
        assert_maps(
            &env,
            VA0 + 2 * b + 5 * p,
            pa + (VA0 + 2 * b + 5 * p - start),
            3,
            Attributes::KERNEL_RW,
        );
        env.check_tables(true);
    }

    // Every level that allows blocks (level 1 too with 4K), only when hinted.
    for level in G::START_LEVEL..3 {
        if !G::block_allowed(level) {
            continue;
        }
        let size = G::level_size(level);
        let mut env = Env::<G>::new();
        env.map(
            VA0,
            VA0 + 2 * size,
            PA0,
            Attributes::KERNEL_RW,
            MapHints::blocks(size),
        )
        .unwrap();
        let leaves = env.leaves(VA0, VA0 + 2 * size);
        assert_eq!(
            leaves.iter().map(|l| (l.0, l.1, l.2)).collect::<Vec<_>>(),
            [(VA0, size, level), (VA0 + size, size, level)]
        );
        assert_maps(
            &env,
            VA0 + size + 3 * p,
            PA0 + size + 3 * p,
            level,
            Attributes::KERNEL_RW,
        );
        assert_eq!(env.pt.stats.tables, 1 + (level - G::START_LEVEL) as u64);
        env.check_tables(true);
    }
}

pub(super) fn misaligned_is_refused<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    env.map(
        VA0,
        VA0 + 4 * p,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    let before = env.snapshot();
    let h = p / 2;
    for (start, end, pa) in [
        (VA0 + 8 * p + h, VA0 + 16 * p, PA0),
        (VA0 + 8 * p, VA0 + 16 * p + h, PA0),
        (VA0 + 8 * p, VA0 + 16 * p, PA0 + h),
        (VA0 + 8 * p, VA0 + 16 * p, PA0 + 8),
        (VA0 + 8 * p, VA0 + 8 * p, PA0),
        (VA0 + 16 * p, VA0 + 8 * p, PA0),
        // Misaligned and overlapping: alignment is checked first.
        (VA0 + h, VA0 + 2 * p, PA0),
        // Output beyond the 48 bits a descriptor holds.
        (VA0 + 8 * p, VA0 + 16 * p, pa(1 << 48)),
        (VA0 + 8 * p, VA0 + 16 * p, pa((1 << 48) - 4 * p)),
        (VA0 + 8 * p, VA0 + 16 * p, pa(!(p - 1))),
    ] {
        for hints in [
            MapHints::pages(),
            MapHints::blocks(block::<G>()).with_contiguous(),
        ] {
            let r = env.map(start, end, pa, Attributes::KERNEL_RW, hints);
            assert_eq!(
                r,
                Err(MapError::Misaligned),
                "{start:#x}..{end:#x} -> {pa:#x}"
            );
            assert_eq!(env.snapshot(), before);
        }
    }
    // Up to the very last page is fine.
    env.map(
        VA0 + 8 * p,
        VA0 + 16 * p,
        pa((1 << 48) - 8 * p),
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    assert_maps(
        &env,
        VA0 + 15 * p,
        pa((1 << 48) - p),
        3,
        Attributes::KERNEL_RW,
    );
}

pub(super) fn overlap_is_refused_and_changes_nothing<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let b = block::<G>();
    let pages = (VA0 + b - 4 * p, VA0 + b + 4 * p);
    env.map(
        pages.0,
        pages.1,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    env.map(
        VA0 + 4 * b,
        VA0 + 5 * b,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::blocks(b),
    )
    .unwrap();
    let before = env.snapshot();

    let blocks = MapHints::blocks(b).with_contiguous();
    for (start, end, hints, first) in [
        // Fresh territory first (it would need new tables), then overlap.
        (VA0 - 2 * b - 3 * p, pages.0 + p, MapHints::pages(), pages.0),
        (VA0 - 2 * b, pages.0 + p, blocks, pages.0),
        (pages.1 - p, pages.1 + b, MapHints::pages(), pages.1 - p),
        (
            pages.0 + 2 * p,
            pages.0 + 3 * p,
            MapHints::pages(),
            pages.0 + 2 * p,
        ),
        // Inside a block leaf, from its middle or over all of it.
        (
            VA0 + 4 * b + 5 * p,
            VA0 + 4 * b + 6 * p,
            MapHints::pages(),
            VA0 + 4 * b + 5 * p,
        ),
        (VA0 + 4 * b, VA0 + 5 * b, blocks, VA0 + 4 * b),
        (VA0 + 2 * b, VA0 + 8 * b, blocks, VA0 + 4 * b),
        // A large range: the first overlap is reported.
        (VA0, VA0 + 8 * b, blocks, pages.0),
        (VA0 - 64 * b, VA0 + 8 * b, blocks, pages.0),
    ] {
        let r = env.map(start, end, PA0 + 64 * b, Attributes::KERNEL_RW, hints);
        assert_eq!(
            r,
            Err(MapError::AlreadyMapped(first)),
            "{start:#x}..{end:#x} {hints:?}"
        );
        assert_eq!(env.snapshot(), before, "{start:#x}..{end:#x} {hints:?}");
    }
    // Tables left empty by an unmap are no obstacle: they are reused.
    env.unmap(pages.0, pages.1, false, None);
    env.map(
        pages.0,
        pages.1,
        PA0 + p,
        Attributes::KERNEL_RO,
        MapHints::pages(),
    )
    .unwrap();
    let after = env.snapshot();
    assert_eq!(after.stats.tables, before.stats.tables);
    assert_eq!(after.in_use, before.in_use);
    assert_maps(&env, pages.0, PA0 + p, 3, Attributes::KERNEL_RO);
    env.check_tables(true);
}
