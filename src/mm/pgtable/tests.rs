//! Host tests of the generic walker, the hotplug teardown and ptdump, each
//! run for the 4K, 16K and 64K granules over a simulated arena.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;

use super::dump::Marker;
use super::unmap::{free_hotplug_page_range, UnmapWarnings};
use super::{Attributes, Descriptor, MapError, MapHints, PageTable, TableStats, VaRange};
use crate::arch::tlb::MAX_TLBI_OPS;
use crate::mm::altmap::VmemAltmap;
use crate::mm::frame::FrameAllocator;
use crate::mm::granule::{Granule, Granule16K, Granule4K, Granule64K};
use crate::mm::layout::{PAGE_END, PAGE_OFFSET};
use crate::mm::testing::{Arena, ArenaFrames, ArenaTranslation};

/// Where arenas live: an unusual physical base, aligned to every block size.
const ARENA_BASE: u64 = 0x8_4000_0000;
/// A linear-map address aligned to 1 TiB (every block and group size but
/// the 64K granule's 4 TiB level-1 entry).
const VA0: u64 = PAGE_OFFSET + (1 << 40);
/// Output addresses of leaves not backed by the arena (the walker never
/// touches leaf memory): aligned to 64 GiB, so to every group span.
const PA0: u64 = 0x3000_0000_0000;
/// Table pages the small arenas hold below and above the block area.
const SPARE_PAGES: usize = 64;

fn page<G: Granule>() -> u64 {
    G::PAGE_SIZE
}

/// Size of a level-2 block, and the span of one last-level table.
fn block<G: Granule>() -> u64 {
    G::level_size(2)
}

/// Start of the second entry of the first level: crossing it needs new
/// tables at every level.
fn top_boundary<G: Granule>() -> u64 {
    PAGE_OFFSET + G::level_size(G::START_LEVEL)
}

/// TLBI ops one `flush_kernel_range` of `len` bytes issues.
fn range_ops<G: Granule>(len: u64) -> u64 {
    let pages = len.div_ceil(G::PAGE_SIZE);
    if pages > MAX_TLBI_OPS {
        1
    } else {
        pages
    }
}

/// The whole kernel half up to its last 64 KiB, as ptdump markers.
const ALL: [Marker; 2] = [
    Marker {
        addr: PAGE_OFFSET,
        name: "start",
    },
    Marker {
        addr: 0xffff_ffff_ffff_0000,
        name: "end",
    },
];

/// A page table over an arena, with the allocator the tables come from.
struct Env<G: Granule> {
    pt: PageTable<ArenaTranslation, G>,
    frames: ArenaFrames,
    w: UnmapWarnings,
    arena: Arena,
}

/// Everything a failed operation must leave untouched.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    stats: TableStats,
    in_use: usize,
    allocations: Vec<(u64, u32)>,
    tables: Vec<(usize, u64, Vec<u64>)>,
    dump: String,
}

impl<G: Granule> Env<G> {
    /// Room for `blocks` naturally aligned level-2 blocks between
    /// [`SPARE_PAGES`] pages on each side (tables come from the low ones).
    fn with_blocks(blocks: usize) -> Self {
        let per_block = (block::<G>() / page::<G>()) as usize;
        let base = ARENA_BASE - SPARE_PAGES as u64 * page::<G>();
        let arena = Arena::new(base, 2 * SPARE_PAGES + blocks * per_block, page::<G>());
        let mut frames = arena.frames();
        let pt = PageTable::new(arena.translation(), &mut frames).expect("root table");
        assert_eq!(pt.root_pa(), base);
        Self {
            pt,
            frames,
            w: UnmapWarnings::default(),
            arena,
        }
    }

    fn new() -> Self {
        Self::with_blocks(0)
    }

    fn map(
        &mut self,
        start: u64,
        end: u64,
        pa: u64,
        attrs: Attributes,
        hints: MapHints,
    ) -> Result<(), MapError> {
        self.pt
            .map_range(VaRange::new(start, end), pa, attrs, hints, &mut self.frames)
    }

    fn unmap(&mut self, start: u64, end: u64, free_mapped: bool, altmap: Option<&mut VmemAltmap>) {
        self.pt.unmap_hotplug_range(
            start,
            end,
            free_mapped,
            altmap,
            &mut self.frames,
            &mut self.w,
        );
    }

    /// `free_empty_tables` with the whole kernel half as floor and ceiling.
    fn free_tables(&mut self, start: u64, end: u64) {
        self.pt
            .free_empty_tables(start, end, PAGE_OFFSET, 0, &mut self.frames);
    }

    fn count_tables(&self) -> u64 {
        let mut n = 0;
        self.pt.for_each_table(|_, _| n += 1);
        n
    }

    fn leaves(&self, start: u64, end: u64) -> Vec<(u64, u64, usize, Descriptor)> {
        let mut v = Vec::new();
        self.pt
            .for_each_leaf(VaRange::new(start, end), |va, size, level, d| {
                v.push((va, size, level, d))
            });
        v
    }

    fn dump(&self, markers: &[Marker]) -> String {
        let mut s = String::new();
        self.pt.dump(markers, &mut s).unwrap();
        s
    }

    fn snapshot(&self) -> Snapshot {
        let mut tables = Vec::new();
        self.pt.for_each_table(|level, pa| {
            let entries = (0..G::ENTRIES)
                .map(|i| self.arena.read_u64(pa + 8 * i as u64))
                .collect();
            tables.push((level, pa, entries));
        });
        Snapshot {
            stats: self.pt.stats,
            in_use: self.frames.in_use(),
            allocations: self.frames.allocations(),
            tables,
            dump: self.dump(&ALL),
        }
    }

    /// Table count bookkeeping agrees with the tables reachable, and (when
    /// only tables come from the allocator) with the frames in use.
    fn check_tables(&self, only_tables_allocated: bool) {
        assert_eq!(
            self.pt.stats.tables,
            self.count_tables(),
            "stats vs for_each_table"
        );
        assert_eq!(
            self.pt.stats.tables,
            self.pt.stats.tables_allocated - self.pt.stats.tables_freed,
            "tables = allocated - freed"
        );
        if only_tables_allocated {
            assert_eq!(
                self.frames.in_use() as u64,
                self.pt.stats.tables,
                "frames in use vs tables"
            );
        }
    }

    fn check_contiguous(&self, start: u64, end: u64) {
        if let Err(e) = contiguous_consistent(&self.pt, start, end) {
            panic!("{e}");
        }
    }
}

/// Every leaf with the contiguous bit sits in a whole, aligned group of
/// contiguous leaves of its level, same attributes, whose output is one
/// aligned block.
fn contiguous_consistent<G: Granule>(
    pt: &PageTable<ArenaTranslation, G>,
    start: u64,
    end: u64,
) -> Result<(), String> {
    let mut leaves = Vec::new();
    pt.for_each_leaf(VaRange::new(start, end), |va, size, level, d| {
        leaves.push((va, size, level, d))
    });
    let by_va: BTreeMap<u64, (u64, usize, Descriptor)> = leaves
        .iter()
        .map(|&(va, size, level, d)| (va, (size, level, d)))
        .collect();
    for &(va, size, level, d) in &leaves {
        if !d.is_contiguous() {
            continue;
        }
        let n = G::contiguous_entries(level) as u64;
        let span = size * n;
        let group = va & !(span - 1);
        let group_pa = d.output_address().wrapping_sub(va - group);
        if group_pa & (span - 1) != 0 {
            return Err(std::format!("CONT leaf {va:#x}: output not group aligned"));
        }
        for i in 0..n {
            let e = group + i * size;
            let Some((esize, elevel, ed)) = by_va
                .get(&e)
                .copied()
                .or_else(|| pt.translate(e).map(|(_, d, l)| (G::level_size(l), l, d)))
            else {
                return Err(std::format!(
                    "CONT leaf {va:#x}: group entry {e:#x} unmapped"
                ));
            };
            if (esize, elevel) != (size, level)
                || !ed.is_contiguous()
                || ed.output_address() != group_pa + i * size
                || ed.attrs() != d.attrs()
            {
                return Err(std::format!("CONT group {group:#x}: entry {e:#x} is {ed:x?} at level {elevel}, leaf {va:#x} is {d:x?}"));
            }
        }
    }
    Ok(())
}

/// Asserts `va` translates to `pa` with a leaf at `level` carrying `attrs`.
fn assert_maps<G: Granule>(env: &Env<G>, va: u64, pa: u64, level: usize, attrs: Attributes) {
    let (out, d, l) = env
        .pt
        .translate(va)
        .unwrap_or_else(|| panic!("{va:#x} does not translate"));
    assert_eq!(out, pa, "output of {va:#x}");
    assert_eq!(l, level, "level of {va:#x}");
    assert_eq!(
        d.attrs().leaf_attrs(),
        attrs.leaf_attrs(),
        "attributes of {va:#x}"
    );
    assert!(d.is_valid());
    assert_eq!(
        d.attrs().contains(Attributes::TABLE_OR_PAGE),
        level == 3,
        "page vs block bit of {va:#x}"
    );
}

// ---------------------------------------------------------------------------
// Mapping

fn map_pages_and_translate_back<G: Granule>() {
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

fn map_blocks_where_aligned<G: Granule>() {
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

fn contiguous_only_on_whole_aligned_groups<G: Granule>() {
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

fn misaligned_is_refused<G: Granule>() {
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
        (VA0 + 8 * p, VA0 + 16 * p, 1 << 48),
        (VA0 + 8 * p, VA0 + 16 * p, (1 << 48) - 4 * p),
        (VA0 + 8 * p, VA0 + 16 * p, !(p - 1)),
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
        (1 << 48) - 8 * p,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    assert_maps(&env, VA0 + 15 * p, (1 << 48) - p, 3, Attributes::KERNEL_RW);
}

fn overlap_is_refused_and_changes_nothing<G: Granule>() {
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

fn no_memory_at_every_table_rolls_back<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let b = block::<G>();
    let x = top_boundary::<G>();
    // Something already there, so that some tables exist and some do not.
    env.map(
        x + 3 * b + p,
        x + 3 * b + 2 * p,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    let (start, end) = (x - p, x + 2 * b + p);
    for hints in [MapHints::pages(), MapHints::blocks(b).with_contiguous()] {
        let before = env.snapshot();
        let mut n = 0;
        loop {
            env.frames.fail_after = Some(n);
            let failed = env.frames.failed;
            let r = env.map(
                start,
                end,
                PA0 + 16 * b - (x - start),
                Attributes::KERNEL_RW,
                hints,
            );
            env.frames.fail_after = None;
            match r {
                Err(MapError::NoMemory) => {
                    assert_eq!(
                        env.frames.failed,
                        failed + 1,
                        "the injected failure was hit"
                    );
                    assert_eq!(
                        env.snapshot(),
                        before,
                        "NoMemory after {n} tables changed something"
                    );
                    n += 1;
                    assert!(n < 32, "never succeeds");
                }
                Ok(()) => {
                    assert_eq!(env.pt.stats.tables - before.stats.tables, n as u64);
                    assert_eq!(env.frames.in_use() - before.in_use, n);
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        // Both sides of the boundary needed new tables.
        assert!(n >= 3, "only {n} tables needed");
        for va in [start, x, x + b - p, x + b + 2 * p, end - p] {
            assert!(env.pt.translate(va).is_some());
        }
        env.check_tables(true);
        env.unmap(start, end, false, None);
        env.free_tables(start, end);
        assert_eq!(env.pt.translate(x + b), None);
        assert!(env.pt.translate(x + 3 * b + p).is_some());
        assert_eq!(env.pt.stats.tables, before.stats.tables);
        assert_eq!(env.frames.in_use(), before.in_use);
    }
}

// ---------------------------------------------------------------------------
// Hotplug teardown

fn unmap_then_free_tables_leaves_only_the_root<G: Granule>() {
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

fn small_unmap_flushes_page_by_page<G: Granule>() {
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

fn free_mapped_returns_frames<G: Granule>() {
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
    // One invalidation per leaf, before its backing is freed.
    assert_eq!(env.pt.stats.tlbi_ops - ops, 6);
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

/// An altmap over a device range outside the frame allocator, with an odd
/// reserve so that a block allocation needs padding.
fn device_altmap<G: Granule>(blocks: u64) -> VmemAltmap {
    let base_pfn = PA0 >> G::PAGE_SHIFT;
    let per_block = block::<G>() / page::<G>();
    let reserve = 3;
    // Room for the padding before a block and a few contiguous groups.
    let free = (blocks + 1) * per_block + 512;
    VmemAltmap::new(base_pfn, base_pfn + reserve + free + 5, reserve, free)
}

fn altmap_backing_goes_back_to_the_altmap<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let b = block::<G>();
    let shift = G::PAGE_SHIFT;
    let mut altmap = device_altmap::<G>(1);
    let fresh = altmap.clone();
    let baseline = env.snapshot();

    for i in 0..5 {
        let pa = altmap.alloc_pfns(1).unwrap() << shift;
        env.map(
            VA0 + i * p,
            VA0 + (i + 1) * p,
            pa,
            Attributes::KERNEL_RW,
            MapHints::blocks(b),
        )
        .unwrap();
    }
    let blk = altmap.alloc_pfns(b / p).unwrap() << shift;
    assert_eq!(blk & (b - 1), 0);
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
    let grp = altmap.alloc_pfns(n3).unwrap() << shift;
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
    // One per leaf, plus the group's unfolding before its first free.
    assert_eq!(
        env.pt.stats.tlbi_ops - ops,
        5 + 1 + range_ops::<G>(n3 * p) + n3
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

fn altmap_without_free_mapped_is_counted<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let mut altmap = device_altmap::<G>(0);
    let first = altmap.alloc_pfns(4).unwrap();
    env.map(
        VA0,
        VA0 + 4 * p,
        first << G::PAGE_SHIFT,
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

fn reserved_page_is_counted_not_freed<G: Granule>() {
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
        altmap.base_pfn << G::PAGE_SHIFT,
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

fn free_empty_tables_respects_floor_and_ceiling<G: Granule>() {
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
    let free = |env: &mut Env<G>, floor: u64, ceiling: u64| {
        env.pt
            .free_empty_tables(va, va + p, floor, ceiling, &mut env.frames);
        env.check_tables(true);
        env.pt.stats.tables
    };
    // The last-level table spans [y + b, y + 2b).
    assert_eq!(
        free(&mut env, y + b + p, 0),
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
    assert_eq!(free(&mut env, y + b, 0), tables - 1);
    assert_eq!(free(&mut env, y, y + G::level_size(1) - p), tables - 1);
    assert_eq!(free(&mut env, y, y + G::level_size(1)), tables - 2);
    assert_eq!(free(&mut env, PAGE_OFFSET, 0), 1);
    assert_eq!(env.frames.in_use(), 1);
}

fn partial_unmap_splits_a_contiguous_group<G: Granule>() {
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
    let grp = altmap.alloc_pfns(n3).unwrap() << G::PAGE_SHIFT;
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
    window: (u64, u64),
    frees: u64,
}

impl<G: Granule> FrameAllocator for CheckingFrames<'_, G> {
    fn alloc_pages(&mut self, order: u32) -> Option<u64> {
        self.inner.alloc_pages(order)
    }

    fn free_pages(&mut self, pa: u64, order: u32) {
        if let Err(e) = contiguous_consistent(&self.view, self.window.0, self.window.1) {
            panic!("page {pa:#x} freed while a contiguous group is inconsistent: {e}");
        }
        self.frees += 1;
        self.inner.free_pages(pa, order);
    }

    fn is_reserved(&self, pa: u64) -> bool {
        self.inner.is_reserved(pa)
    }
}

fn free_mapped_unfolds_contiguous_groups_before_freeing<G: Granule>() {
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
    // Each group unfolded once, then one invalidation per leaf.
    assert_eq!(
        env.pt.stats.tlbi_ops - ops,
        2 * range_ops::<G>(span) + 2 * n3 - 2
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

// ---------------------------------------------------------------------------
// ptdump

/// The linear-map part of the kernel's markers.
fn linear_markers() -> &'static [Marker] {
    &crate::mm::layout::MARKERS[..2]
}

/// Lines are runs that tile the dumped range exactly, none empty.
fn check_dump_shape(dump: &str, first: u64, last: u64) {
    let mut at = first;
    for line in dump.lines().filter(|l| l.starts_with("0x")) {
        let (range, rest) = line.split_at(37);
        let start = u64::from_str_radix(&range[2..18], 16).unwrap();
        let end = u64::from_str_radix(&range[21..37], 16).unwrap();
        assert_eq!(&range[18..21], "-0x", "{line}");
        assert_eq!(start, at, "runs must tile the range: {line}");
        assert!(end > start, "empty run: {line}");
        assert!(rest.starts_with("   "), "{line}");
        at = end;
    }
    assert_eq!(at, last);
}

fn dump_tiles_the_range<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let b = block::<G>();
    let markers = linear_markers();
    // An empty table dumps as one hole.
    let dump = env.dump(markers);
    check_dump_shape(&dump, PAGE_OFFSET, PAGE_END);
    assert_eq!(dump.lines().count(), 3, "{dump}");

    // The very first entry mapped (no empty run may be printed before it).
    env.map(
        PAGE_OFFSET,
        PAGE_OFFSET + p,
        0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    env.map(
        VA0 + b,
        VA0 + 2 * b,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::blocks(b),
    )
    .unwrap();
    env.map(
        VA0 + 2 * b,
        VA0 + 2 * b + 3 * p,
        PA0,
        Attributes::DEVICE,
        MapHints::pages(),
    )
    .unwrap();
    let dump = env.dump(markers);
    check_dump_shape(&dump, PAGE_OFFSET, PAGE_END);
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines[0], "---[ Linear Mapping start ]---");
    assert_eq!(*lines.last().unwrap(), "---[ Linear Mapping end ]---");
    let size = |n: u64| {
        let (mut v, mut u) = (n >> 10, 0);
        while v % 1024 == 0 && u < 5 {
            v >>= 10;
            u += 1;
        }
        std::format!("{v:>9}{}", ['K', 'M', 'G', 'T', 'P', 'E'][u])
    };
    assert!(lines[1].starts_with(&std::format!(
        "0x{PAGE_OFFSET:016x}-0x{:016x}   {} PTE       RW",
        PAGE_OFFSET + p,
        size(p)
    )));
    let blk = std::format!(
        "0x{:016x}-0x{:016x}   {} PMD       RW NX SHD AF        BLK UXN    MEM/NORMAL",
        VA0 + b,
        VA0 + 2 * b,
        size(b)
    );
    assert!(lines.contains(&blk.as_str()), "{dump}");
    let dev = std::format!(
        "0x{:016x}-0x{:016x}   {} PTE       RW NX     AF            UXN    DEVICE/nGnRE",
        VA0 + 2 * b,
        VA0 + 2 * b + 3 * p,
        size(3 * p)
    );
    assert!(lines.contains(&dev.as_str()), "{dump}");
    // The first level is the PGD whatever the granule (64K folds level 0;
    // 16K has a single first-level entry for the whole linear map).
    if G::level_size(G::START_LEVEL) < PAGE_END - PAGE_OFFSET {
        assert!(lines.iter().any(|l| l.ends_with(" PGD")), "{dump}");
    }
    assert!(!lines.iter().any(|l| l.contains(" PUD")) || G::LEVELS == 4);
}

#[test]
fn dump_matches_linux_arm64_ptdump() {
    let mut env = Env::<Granule4K>::new();
    let rw = Attributes::KERNEL_RW;
    env.map(
        0xffff_0000_4000_0000,
        0xffff_0000_4020_0000,
        0x4000_0000,
        rw,
        MapHints::blocks(2 << 20),
    )
    .unwrap();
    env.map(
        0xffff_0000_4020_0000,
        0xffff_0000_4020_4000,
        0x4020_0000,
        rw,
        MapHints::blocks(2 << 20),
    )
    .unwrap();
    let ro_cont = MapHints::pages().with_contiguous();
    env.map(
        0xffff_0000_4021_0000,
        0xffff_0000_4022_0000,
        0x4021_0000,
        Attributes::KERNEL_RO,
        ro_cont,
    )
    .unwrap();
    env.map(
        0xffff_0000_4022_0000,
        0xffff_0000_4022_2000,
        0x4022_0000,
        Attributes::KERNEL_ROX,
        ro_cont,
    )
    .unwrap();
    let dump = env.dump(linear_markers());
    let want = "\
---[ Linear Mapping start ]---
0xffff000000000000-0xffff000040000000           1G PUD
0xffff000040000000-0xffff000040200000           2M PMD       RW NX SHD AF        BLK UXN    MEM/NORMAL
0xffff000040200000-0xffff000040204000          16K PTE       RW NX SHD AF            UXN    MEM/NORMAL
0xffff000040204000-0xffff000040210000          48K PTE
0xffff000040210000-0xffff000040220000          64K PTE       ro NX SHD AF    CON     UXN    MEM/NORMAL
0xffff000040220000-0xffff000040222000           8K PTE       ro x  SHD AF            UXN    MEM/NORMAL
0xffff000040222000-0xffff000040400000        1912K PTE
0xffff000040400000-0xffff000080000000        1020M PMD
0xffff000080000000-0xffff008000000000         510G PUD
0xffff008000000000-0xffff800000000000      130560G PGD
---[ Linear Mapping end ]---
";
    assert_eq!(dump, want, "\n{dump}");
}

#[test]
fn dump_prints_every_marker_it_crosses() {
    let mut env = Env::<Granule4K>::new();
    env.map(
        VA0,
        VA0 + 0x1000,
        0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    let markers = [
        Marker {
            addr: VA0 - (1 << 30),
            name: "a",
        },
        Marker {
            addr: VA0,
            name: "b",
        },
        Marker {
            addr: VA0 + 0x1000,
            name: "c",
        },
        Marker {
            addr: VA0 + (1 << 30),
            name: "d",
        },
    ];
    let dump = env.dump(&markers);
    let want = std::format!(
        "---[ a ]---\n\
         0x{:016x}-0x{:016x}           1G PGD\n\
         ---[ b ]---\n\
         0x{:016x}-0x{:016x}           4K PTE       RW NX SHD AF            UXN    MEM/NORMAL\n\
         ---[ c ]---\n\
         0x{:016x}-0x{:016x}        2044K PTE\n\
         0x{:016x}-0x{:016x}        1022M PMD\n\
         ---[ d ]---\n",
        VA0 - (1 << 30),
        VA0,
        VA0,
        VA0 + 0x1000,
        VA0 + 0x1000,
        VA0 + 0x20_0000,
        VA0 + 0x20_0000,
        VA0 + (1 << 30)
    );
    assert_eq!(dump, want, "\n{dump}");
}

// ---------------------------------------------------------------------------
// Property tests against a model

/// What is mapped: extents `start -> (end, pa, attrs)`, disjoint.
#[derive(Clone, Debug, Default)]
struct Model {
    ext: BTreeMap<u64, (u64, u64, Attributes)>,
}

impl Model {
    /// The lowest mapped address in `[s, e)`.
    fn first_overlap(&self, s: u64, e: u64) -> Option<u64> {
        if let Some((_, &(end, _, _))) = self.ext.range(..=s).next_back() {
            if end > s {
                return Some(s);
            }
        }
        self.ext.range(s..e).next().map(|(&st, _)| st)
    }

    fn lookup(&self, va: u64) -> Option<(u64, u64, u64, Attributes)> {
        let (&st, &(end, pa, attrs)) = self.ext.range(..=va).next_back()?;
        (va < end).then_some((st, end, pa + (va - st), attrs))
    }

    fn insert(&mut self, s: u64, e: u64, pa: u64, attrs: Attributes) {
        assert!(self.first_overlap(s, e).is_none());
        self.ext.insert(s, (e, pa, attrs));
    }

    fn remove(&mut self, s: u64, e: u64) {
        let hit: Vec<_> = self
            .ext
            .iter()
            .filter(|(&st, &(end, _, _))| st < e && end > s)
            .map(|(&st, &v)| (st, v))
            .collect();
        for (st, (end, pa, attrs)) in hit {
            self.ext.remove(&st);
            if st < s {
                self.ext.insert(st, (s, pa, attrs));
            }
            if end > e {
                self.ext.insert(e, (end, pa + (e - st), attrs));
            }
        }
    }

    fn total(&self) -> u64 {
        self.ext.iter().map(|(&s, &(e, _, _))| e - s).sum()
    }
}

#[derive(Clone, Copy, Debug)]
enum Hint {
    Pages,
    PagesCont,
    Blocks,
    BlocksCont,
}

impl Hint {
    fn hints<G: Granule>(self) -> MapHints {
        match self {
            Hint::Pages => MapHints::pages(),
            Hint::PagesCont => MapHints::pages().with_contiguous(),
            Hint::Blocks => MapHints::blocks(block::<G>()),
            Hint::BlocksCont => MapHints::blocks(block::<G>()).with_contiguous(),
        }
    }
}

const ATTRS: [Attributes; 3] = [
    Attributes::KERNEL_RW,
    Attributes::KERNEL_RO,
    Attributes::DEVICE,
];

#[derive(Clone, Debug)]
enum Op {
    /// Map `len` units from unit `start` of the window; `pa_shift` units of
    /// output offset break congruence; `fail` injects an allocation failure.
    /// `snap` widens the range to whole unmap units (blocks), so that
    /// block leaves are common.
    Map {
        start: u64,
        len: u64,
        hint: Hint,
        attrs: usize,
        pa_shift: u64,
        fail: Option<usize>,
        snap: bool,
    },
    Unmap {
        start: u64,
        len: u64,
    },
}

/// The window a property runs in and the units its operations use.
struct Shape {
    window: (u64, u64),
    /// Map ranges are multiples of this, at multiples of it.
    map_unit: u64,
    /// Unmap ranges likewise: a leaf is never split.
    unmap_unit: u64,
}

fn ops(units: u64, unmap_units: u64, max_len: u64) -> impl Strategy<Value = Vec<Op>> {
    let hint = prop_oneof![
        Just(Hint::Pages),
        Just(Hint::PagesCont),
        Just(Hint::Blocks),
        Just(Hint::BlocksCont)
    ];
    let map = (
        0..units,
        1..=max_len,
        hint,
        0..ATTRS.len(),
        prop_oneof![3 => Just(0u64), 1 => 0..4u64],
        proptest::option::weighted(0.2, 0..6usize),
        any::<bool>(),
    )
        .prop_map(|(start, len, hint, attrs, pa_shift, fail, snap)| Op::Map {
            start,
            len,
            hint,
            attrs,
            pa_shift,
            fail,
            snap,
        });
    let unmap = (0..unmap_units, 1..=unmap_units).prop_map(|(start, len)| Op::Unmap { start, len });
    proptest::collection::vec(prop_oneof![3 => map, 2 => unmap], 1..24)
}

fn check_model<G: Granule>(
    env: &Env<G>,
    model: &Model,
    shape: &Shape,
    samples: &[u64],
) -> Result<(), TestCaseError> {
    let (ws, we) = shape.window;
    let p = page::<G>();
    let mut total = 0;
    for (va, size, _, d) in env.leaves(ws, we) {
        total += size;
        let (_, end, pa, attrs) = model
            .lookup(va)
            .ok_or_else(|| TestCaseError::fail(std::format!("leaf {va:#x} not in model")))?;
        prop_assert!(
            va + size <= end,
            "leaf {:#x}+{:#x} past its extent",
            va,
            size
        );
        prop_assert_eq!(
            d.output_address() & (size - 1),
            0,
            "leaf {:#x}: output not aligned to its size",
            va
        );
        prop_assert_eq!(d.output_address(), pa, "output of leaf {:#x}", va);
        prop_assert_eq!(d.attrs().leaf_attrs(), attrs.leaf_attrs());
    }
    prop_assert_eq!(total, model.total(), "bytes mapped");
    let probe = |va: u64| -> Result<(), TestCaseError> {
        let got = env.pt.translate(va).map(|(pa, _, _)| pa);
        prop_assert_eq!(got, model.lookup(va).map(|m| m.2), "translate {:#x}", va);
        Ok(())
    };
    for (&s, &(e, _, _)) in &model.ext {
        probe(s)?;
        probe(e - p)?;
        probe(s - p)?;
        probe(e)?;
    }
    for &off in samples {
        probe(ws + (off % ((we - ws) / p)) * p)?;
    }
    env.check_tables(true);
    env.check_contiguous(ws, we);
    Ok(())
}

fn run_ops<G: Granule>(shape: &Shape, ops: &[Op], samples: &[u64]) -> Result<(), TestCaseError> {
    let mut env = Env::<G>::new();
    let mut model = Model::default();
    let (ws, we) = shape.window;
    let p = page::<G>();
    for op in ops {
        match *op {
            Op::Map {
                start,
                len,
                hint,
                attrs,
                pa_shift,
                fail,
                snap,
            } => {
                let mut s = ws + start * shape.map_unit;
                let mut e = (s + len * shape.map_unit).min(we);
                if snap {
                    let u = shape.unmap_unit;
                    s = ws + (s - ws) / u * u;
                    e = (ws + (e - ws).div_ceil(u) * u).min(we);
                }
                // Congruent with the window start (so with every block and
                // group) unless shifted.
                let pa = PA0 + (s - ws) + pa_shift * p;
                let attrs = ATTRS[attrs];
                let before = env.snapshot();
                env.frames.fail_after = fail;
                let r = env.map(s, e, pa, attrs, hint.hints::<G>());
                env.frames.fail_after = None;
                match model.first_overlap(s, e) {
                    Some(first) => {
                        prop_assert_eq!(r, Err(MapError::AlreadyMapped(first)));
                        prop_assert!(env.snapshot() == before, "failed map changed the tables");
                    }
                    None => {
                        let tables = env.pt.stats.tables;
                        match r {
                            Ok(()) => {
                                if let Some(k) = fail {
                                    prop_assert!(tables - before.stats.tables <= k as u64);
                                }
                            }
                            Err(MapError::NoMemory) => {
                                let k = fail.expect("NoMemory without fault injection");
                                prop_assert!(
                                    env.snapshot() == before,
                                    "NoMemory changed the tables"
                                );
                                env.map(s, e, pa, attrs, hint.hints::<G>()).unwrap();
                                prop_assert!(env.pt.stats.tables - tables > k as u64);
                            }
                            Err(e) => return Err(TestCaseError::fail(std::format!("{e:?}"))),
                        }
                        model.insert(s, e, pa, attrs);
                    }
                }
            }
            Op::Unmap { start, len } => {
                let s = ws + start * shape.unmap_unit;
                let e = (s + len * shape.unmap_unit).min(we);
                env.unmap(s, e, false, None);
                env.free_tables(s, e);
                model.remove(s, e);
                prop_assert!(env.leaves(s, e).is_empty());
            }
        }
        check_model(&env, &model, shape, samples)?;
    }
    // Everything away: back to the root alone.
    env.unmap(ws, we, false, None);
    env.free_tables(ws, we);
    prop_assert_eq!(env.pt.stats.tables, 1);
    prop_assert_eq!(env.count_tables(), 1);
    prop_assert_eq!(env.frames.in_use(), 1);
    prop_assert_eq!(env.w, UnmapWarnings::default());
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Page-granular maps and unmaps (contiguous hints included) in a window
/// of 128 pages straddling the first level's boundary, so that every level
/// gets two tables.
fn property_pages<G: Granule>() {
    let p = page::<G>();
    let x = top_boundary::<G>();
    let n3 = G::contiguous_entries(3) as u64;
    // Wide enough to hold whole contiguous groups on both sides.
    let half = 2 * n3 * p;
    let shape = Shape {
        window: (x - half, x + half),
        map_unit: p,
        unmap_unit: p,
    };
    let units = 2 * half / p;
    let strategy = (
        ops(units, units, units / 2),
        proptest::collection::vec(any::<u64>(), 16),
    );
    runner(48)
        .run(&strategy, |(ops, samples)| {
            // Blocks cannot appear: the window holds no aligned block... but
            // the hints still go through the block paths of the walker.
            run_ops::<G>(&shape, &ops, &samples)
        })
        .unwrap();
}

/// Block-aligned unmaps over maps of any alignment and hints, in a window
/// of eight blocks straddling the first level's boundary.
fn property_blocks<G: Granule>() {
    let b = block::<G>();
    let x = top_boundary::<G>();
    let n3 = G::contiguous_entries(3) as u64 * page::<G>();
    let shape = Shape {
        window: (x - 4 * b, x + 4 * b),
        map_unit: n3,
        unmap_unit: b,
    };
    let units = 8 * b / n3;
    let strategy = (
        ops(units, 8, 3 * b / n3),
        proptest::collection::vec(any::<u64>(), 16),
    );
    runner(32)
        .run(&strategy, |(ops, samples)| {
            run_ops::<G>(&shape, &ops, &samples)
        })
        .unwrap();
}

// ---------------------------------------------------------------------------

macro_rules! for_each_granule {
    ($($name:ident),* $(,)?) => {
        mod granule_4k {
            $( #[test] fn $name() { super::$name::<super::Granule4K>() } )*
        }
        mod granule_16k {
            $( #[test] fn $name() { super::$name::<super::Granule16K>() } )*
        }
        mod granule_64k {
            $( #[test] fn $name() { super::$name::<super::Granule64K>() } )*
        }
    };
}

for_each_granule!(
    map_pages_and_translate_back,
    map_blocks_where_aligned,
    contiguous_only_on_whole_aligned_groups,
    misaligned_is_refused,
    overlap_is_refused_and_changes_nothing,
    no_memory_at_every_table_rolls_back,
    unmap_then_free_tables_leaves_only_the_root,
    small_unmap_flushes_page_by_page,
    free_mapped_returns_frames,
    altmap_backing_goes_back_to_the_altmap,
    altmap_without_free_mapped_is_counted,
    reserved_page_is_counted_not_freed,
    free_empty_tables_respects_floor_and_ceiling,
    partial_unmap_splits_a_contiguous_group,
    free_mapped_unfolds_contiguous_groups_before_freeing,
    dump_tiles_the_range,
    property_pages,
    property_blocks,
);
