//! The contiguous bit: set only on whole aligned groups, and unfolded before
//! a group is split or its pages are freed.

use super::*;
use crate::mm::frame::FrameAllocator;

pub(super) fn contiguous_only_on_whole_aligned_groups<G: Granule>() {
    let p = page::<G>();
    let b = block::<G>();
    let n3 = G::contiguous_entries(3) as u64;
    let span3 = n3 * p;

    // Pages: a partial group, two whole groups, a partial group.
    let (start, end) = (VA0 + span3 - 2 * p, VA0 + 3 * span3 + p);
    let mut env = Env::<G>::new();
    env.map(
        start,
        end,
        PA0 + (start - VA0),
        Attributes::KERNEL_RW,
        MapHints::pages().with_contiguous(),
    )
    .unwrap();
    for (va, _, level, d) in env.leaves(start, end) {
        assert_eq!(level, 3);
        let whole = va >= VA0 + span3 && va < VA0 + 3 * span3;
        assert_eq!(d.is_contiguous(), whole, "CONT at {va:#x}");
        assert_maps(&env, va, PA0 + (va - VA0), 3, Attributes::KERNEL_RW);
    }
    env.check_contiguous(start, end);

    // Not congruent: no group at all.
    let mut env = Env::<G>::new();
    env.map(
        start,
        end,
        PA0 + (start - VA0) + p,
        Attributes::KERNEL_RW,
        MapHints::pages().with_contiguous(),
    )
    .unwrap();
    assert!(env.leaves(start, end).iter().all(|l| !l.3.is_contiguous()));

    // Without the hint: none either.
    let mut env = Env::<G>::new();
    env.map(
        start,
        end,
        PA0 + (start - VA0),
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    assert!(env.leaves(start, end).iter().all(|l| !l.3.is_contiguous()));

    // Blocks: a page group before a block group, then one lone block.
    let n2 = G::contiguous_entries(2) as u64;
    let span2 = n2 * b;
    let (start, end) = (VA0 + span2 - span3, VA0 + 2 * span2 + b);
    let pa = PA0 + span2 - span3;
    let mut env = Env::<G>::new();
    env.map(
        start,
        end,
        pa,
        Attributes::KERNEL_RW,
        MapHints::blocks(b).with_contiguous(),
    )
    .unwrap();
    let leaves = env.leaves(start, end);
    assert_eq!(leaves.len() as u64, n3 + n2 + 1);
    for &(va, size, level, d) in &leaves {
        let expect_cont = va < VA0 + 2 * span2;
        assert_eq!(d.is_contiguous(), expect_cont, "CONT at {va:#x}");
        assert_eq!(
            (size, level),
            if va < VA0 + span2 { (p, 3) } else { (b, 2) }
        );
        assert_maps(
            &env,
            va + size - p,
            pa + (va - start) + size - p,
            level,
            Attributes::KERNEL_RW,
        );
    }
    env.check_contiguous(start, end);
    env.check_tables(true);

    // A group with an entry that is an (empty) table gets no CONT, and the
    // table slot gets a page-level mapping of its own.
    let mut env = Env::<G>::new();
    env.map(
        VA0 + b,
        VA0 + b + p,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    env.unmap(VA0 + b, VA0 + b + p, false, None);
    env.map(
        VA0,
        VA0 + span2,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::blocks(b).with_contiguous(),
    )
    .unwrap();
    let leaves = env.leaves(VA0, VA0 + span2);
    assert_eq!(leaves.len() as u64, (n2 - 1) + b / p);
    for &(va, size, level, d) in &leaves {
        let in_table = (VA0 + b..VA0 + 2 * b).contains(&va);
        assert_eq!(
            (size, level),
            if in_table { (p, 3) } else { (b, 2) },
            "leaf at {va:#x}"
        );
        // Pages in the table form whole groups of their own.
        assert_eq!(d.is_contiguous(), in_table, "CONT at {va:#x}");
        assert_maps(&env, va, PA0 + (va - VA0), level, Attributes::KERNEL_RW);
    }
    env.check_contiguous(VA0, VA0 + span2);
    env.check_tables(true);
}

pub(super) fn partial_unmap_splits_a_contiguous_group<G: Granule>() {
    let p = page::<G>();
    let b = block::<G>();
    let n3 = G::contiguous_entries(3) as u64;
    let span3 = n3 * p;

    // Pages, free_mapped=false: one page out of the first group.
    let mut env = Env::<G>::new();
    env.map(
        VA0,
        VA0 + 2 * span3,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages().with_contiguous(),
    )
    .unwrap();
    let ops = env.pt.stats.tlbi_ops;
    env.unmap(VA0 + 3 * p, VA0 + 4 * p, false, None);
    // The group is invalidated whole, then the page itself.
    assert_eq!(env.pt.stats.tlbi_ops - ops, range_ops::<G>(span3) + 1);
    assert_eq!(env.pt.translate(VA0 + 3 * p), None);
    for i in (0..2 * n3).filter(|&i| i != 3) {
        let (pa, d, _) = env.pt.translate(VA0 + i * p).expect("still mapped");
        assert_eq!(pa, PA0 + i * p);
        assert_eq!(d.is_contiguous(), i >= n3, "page {i}");
    }
    env.check_contiguous(VA0, VA0 + 2 * span3);

    // Pages from an altmap, free_mapped=true: the freed pfns go back.
    let mut env = Env::<G>::new();
    let mut altmap = device_altmap::<G>(0);
    let grp = pfn_phys::<G>(altmap.alloc_pfns(n3).unwrap());
    env.map(
        VA0,
        VA0 + span3,
        grp,
        Attributes::KERNEL_RW,
        MapHints::pages().with_contiguous(),
    )
    .unwrap();
    assert!(env
        .leaves(VA0, VA0 + span3)
        .iter()
        .all(|l| l.3.is_contiguous()));
    let ops = env.pt.stats.tlbi_ops;
    env.unmap(VA0 + 5 * p, VA0 + 7 * p, true, Some(&mut altmap));
    assert_eq!(env.pt.stats.tlbi_ops - ops, range_ops::<G>(span3) + 2);
    assert_eq!(altmap.alloc, n3 - 2);
    let leaves = env.leaves(VA0, VA0 + span3);
    assert_eq!(leaves.len() as u64, n3 - 2);
    assert!(leaves
        .iter()
        .all(|l| !l.3.is_contiguous() && l.3.output_address() == grp + (l.0 - VA0)));
    env.unmap(VA0, VA0 + span3, true, Some(&mut altmap));
    assert_eq!(altmap.alloc, 0);
    env.free_tables(VA0, VA0 + span3);
    assert_eq!(env.frames.in_use(), 1);

    // Blocks: one block out of a block group.
    let n2 = G::contiguous_entries(2) as u64;
    let span2 = n2 * b;
    let mut env = Env::<G>::new();
    env.map(
        VA0,
        VA0 + span2,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::blocks(b).with_contiguous(),
    )
    .unwrap();
    let ops = env.pt.stats.tlbi_ops;
    env.unmap(VA0 + b, VA0 + 2 * b, false, None);
    assert_eq!(
        env.pt.stats.tlbi_ops - ops,
        range_ops::<G>(span2) + range_ops::<G>(b)
    );
    let leaves = env.leaves(VA0, VA0 + span2);
    assert_eq!(leaves.len() as u64, n2 - 1);
    for (va, size, level, d) in leaves {
        assert_eq!((size, level), (b, 2));
        assert!(!d.is_contiguous(), "{va:#x} kept CONT");
        assert_maps(&env, va + p, PA0 + (va - VA0) + p, 2, Attributes::KERNEL_RW);
    }
    assert_eq!(env.pt.translate(VA0 + b + p), None);

    // Unmapping whole groups leaves neighbouring groups alone.
    let mut env = Env::<G>::new();
    env.map(
        VA0,
        VA0 + 3 * span3,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages().with_contiguous(),
    )
    .unwrap();
    let ops = env.pt.stats.tlbi_ops;
    env.unmap(VA0 + span3, VA0 + 2 * span3, false, None);
    assert_eq!(env.pt.stats.tlbi_ops - ops, range_ops::<G>(span3));
    assert!(env
        .leaves(VA0, VA0 + 3 * span3)
        .iter()
        .all(|l| l.3.is_contiguous()));
    assert_eq!(env.leaves(VA0, VA0 + 3 * span3).len() as u64, 2 * n3);
}

/// A frame allocator that checks, at every free, that the page table it
/// serves holds no inconsistent contiguous group in `window`.
struct CheckingFrames<'a, G: Granule> {
    inner: &'a mut ArenaFrames,
    view: PageTable<ArenaTranslation, G>,
    window: (VirtAddr, VirtAddr),
    frees: u64,
}

impl<G: Granule> FrameAllocator for CheckingFrames<'_, G> {
    fn alloc_pages(&mut self, order: u32) -> Option<PhysAddr> {
        self.inner.alloc_pages(order)
    }

    fn free_pages(&mut self, pa: PhysAddr, order: u32) {
        if let Err(e) = contiguous_consistent(&self.view, self.window.0, self.window.1) {
            panic!("page {pa:#x} freed while a contiguous group is inconsistent: {e}");
        }
        self.frees += 1;
        self.inner.free_pages(pa, order);
    }

    fn is_reserved(&self, pa: PhysAddr) -> bool {
        self.inner.is_reserved(pa)
    }
}

pub(super) fn free_mapped_unfolds_contiguous_groups_before_freeing<G: Granule>() {
    let mut env = Env::<G>::with_blocks(1);
    let p = page::<G>();
    let n3 = G::contiguous_entries(3) as u64;
    let span = n3 * p;
    // Allocated a group at a time, freed a leaf at a time.
    env.frames.strict_order = false;
    let g1 = env.frames.alloc_pages(n3.trailing_zeros()).unwrap();
    let g2 = env.frames.alloc_pages(n3.trailing_zeros()).unwrap();
    let cont = MapHints::pages().with_contiguous();
    env.map(VA0, VA0 + span, g1, Attributes::KERNEL_RW, cont)
        .unwrap();
    env.map(VA0 + span, VA0 + 2 * span, g2, Attributes::KERNEL_RW, cont)
        .unwrap();
    assert!(env
        .leaves(VA0, VA0 + 2 * span)
        .iter()
        .all(|l| l.3.is_contiguous()));
    let tables = env.pt.stats.tables;

    // Part of the first group and all of the second.
    let view = PageTable::<_, G>::from_root(env.arena.translation(), env.pt.root_pa());
    let mut frames = CheckingFrames {
        inner: &mut env.frames,
        view,
        window: (VA0, VA0 + 2 * span),
        frees: 0,
    };
    let ops = env.pt.stats.tlbi_ops;
    env.pt.unmap_hotplug_range(
        VA0 + 2 * p,
        VA0 + 2 * span,
        true,
        None,
        &mut frames,
        &mut env.w,
    );
    assert_eq!(frames.frees, 2 * n3 - 2);
    // The group the range covers in part is unfolded; the whole one keeps
    // its bit (nothing is freed before the table's one range invalidation).
    assert_eq!(
        env.pt.stats.tlbi_ops - ops,
        range_ops::<G>(span) + range_ops::<G>(2 * span - 2 * p)
    );
    let leaves = env.leaves(VA0, VA0 + 2 * span);
    assert_eq!(leaves.len(), 2);
    assert!(leaves.iter().all(|l| !l.3.is_contiguous()));
    assert_eq!(env.frames.in_use() as u64, tables + 2);
    assert_eq!(env.w, UnmapWarnings::default());

    env.unmap(VA0, VA0 + 2 * p, true, None);
    env.free_tables(VA0, VA0 + 2 * span);
    assert_eq!(env.frames.in_use(), 1);
}
