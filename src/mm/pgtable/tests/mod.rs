//! Host tests of the generic walker, the hotplug teardown and ptdump, each
//! run for the 4K, 16K and 64K granules over a simulated arena: the shared
//! fixtures here, the tests by topic in the submodules.

mod contiguous;
mod dump;
mod faults;
mod map;
mod model;
mod teardown;
mod unmap;
mod vmemmap;

use std::collections::BTreeMap;

use self::{contiguous::*, dump::*, faults::*, map::*, model::*, teardown::*, unmap::*};
use super::unmap::UnmapWarnings;
use super::{Attributes, Descriptor, MapError, MapHints, PageTable, TableStats, VaRange};
use crate::arch::tlb::MAX_TLBI_OPS;
use crate::mm::addr::{Pfn, PhysAddr, VirtAddr};
use crate::mm::altmap::VmemAltmap;
use crate::mm::granule::{Granule, Granule16K, Granule4K, Granule64K};
use crate::mm::layout::{Marker, PAGE_OFFSET};
use crate::mm::testing::{Arena, ArenaFrames, ArenaTranslation};

/// Where arenas live: an unusual physical base, aligned to every block size.
const ARENA_BASE: PhysAddr = PhysAddr::new(0x8_4000_0000);
/// A linear-map address aligned to 1 TiB (every block and group size but
/// the 64K granule's 4 TiB level-1 entry).
const VA0: VirtAddr = VirtAddr::new(PAGE_OFFSET + (1 << 40));
/// Output addresses of leaves not backed by the arena (the walker never
/// touches leaf memory): aligned to 64 GiB, so to every group span.
const PA0: PhysAddr = PhysAddr::new(0x3000_0000_0000);
/// Table pages the small arenas hold below and above the block area.
const SPARE_PAGES: usize = 64;

fn va(v: u64) -> VirtAddr {
    VirtAddr::new(v)
}

fn pa(v: u64) -> PhysAddr {
    PhysAddr::new(v)
}

/// The first byte of `pfn` in pages of `G` (altmaps in these tests count
/// in the walker's pages, whatever the kernel's granule).
fn pfn_phys<G: Granule>(pfn: Pfn) -> PhysAddr {
    pa(pfn.as_u64() << G::PAGE_SHIFT)
}

fn page<G: Granule>() -> u64 {
    G::PAGE_SIZE
}

/// Size of a level-2 block, and the span of one last-level table.
fn block<G: Granule>() -> u64 {
    G::level_size(2)
}

/// Start of the second entry of the first level: crossing it needs new
/// tables at every level.
fn top_boundary<G: Granule>() -> VirtAddr {
    VirtAddr::new(PAGE_OFFSET + G::level_size(G::START_LEVEL))
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
    allocations: Vec<(PhysAddr, u32)>,
    tables: Vec<(usize, PhysAddr, Vec<u64>)>,
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
        start: VirtAddr,
        end: VirtAddr,
        pa: PhysAddr,
        attrs: Attributes,
        hints: MapHints,
    ) -> Result<(), MapError> {
        self.pt
            .map_range(VaRange::new(start, end), pa, attrs, hints, &mut self.frames)
    }

    fn unmap(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        free_mapped: bool,
        altmap: Option<&mut VmemAltmap>,
    ) {
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
    fn free_tables(&mut self, start: VirtAddr, end: VirtAddr) {
        let (floor, ceiling) = (VirtAddr::new(PAGE_OFFSET), VirtAddr::new(0));
        self.pt
            .free_empty_tables(start, end, floor, ceiling, &mut self.frames);
    }

    fn count_tables(&self) -> u64 {
        let mut n = 0;
        self.pt.for_each_table(|_, _| n += 1);
        n
    }

    fn leaves(&self, start: VirtAddr, end: VirtAddr) -> Vec<(VirtAddr, u64, usize, Descriptor)> {
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

    fn check_contiguous(&self, start: VirtAddr, end: VirtAddr) {
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
    start: VirtAddr,
    end: VirtAddr,
) -> Result<(), String> {
    let mut leaves = Vec::new();
    pt.for_each_leaf(VaRange::new(start, end), |va, size, level, d| {
        leaves.push((va, size, level, d))
    });
    let by_va: BTreeMap<VirtAddr, (u64, usize, Descriptor)> = leaves
        .iter()
        .map(|&(va, size, level, d)| (va, (size, level, d)))
        .collect();
    for &(va, size, level, d) in &leaves {
        if !d.is_contiguous() {
            continue;
        }
        let n = G::contiguous_entries(level) as u64;
        let span = size * n;
        let group = va.align_down(span);
        let group_pa = PhysAddr::new(d.output_address().as_u64().wrapping_sub(va - group));
        if !group_pa.is_aligned(span) {
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
fn assert_maps<G: Granule>(
    env: &Env<G>,
    va: VirtAddr,
    pa: PhysAddr,
    level: usize,
    attrs: Attributes,
) {
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

/// An altmap over a device range outside the frame allocator, with an odd
/// reserve so that a block allocation needs padding.
fn device_altmap<G: Granule>(blocks: u64) -> VmemAltmap {
    // In pages of `G`, like the table the altmap backs.
    let base_pfn = Pfn::new(PA0.as_u64() >> G::PAGE_SHIFT);
    let per_block = block::<G>() / page::<G>();
    let reserve = 3;
    // Room for the padding before a block and a few contiguous groups.
    let free = (blocks + 1) * per_block + 512;
    VmemAltmap::new(base_pfn, base_pfn + reserve + free + 5, reserve, free)
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
    partial_leaf_is_refused_and_counted,
    free_mapped_unfolds_contiguous_groups_before_freeing,
    dump_tiles_the_range,
    property_pages,
    property_blocks,
    whole_table_detach_is_one_invalidation,
    detach_respects_floor_and_ceiling,
    vmemmap_teardown_invalidates_once_per_table,
    map_pages_with_descends_once_per_table,
    one_barrier_per_map_call_for_new_tables,
    unflushed_removal_rides_on_the_next_invalidation,
);

/// An adopted hierarchy (the boot page table) counts its root, as a new
/// one does: `PageTables` in meminfo starts from it.
#[test]
fn an_adopted_hierarchy_counts_its_root() {
    let env = Env::<Granule4K>::new();
    let adopted = PageTable::<_, Granule4K>::from_root(env.arena.translation(), env.pt.root_pa());
    let want = TableStats {
        tables: 1,
        ..TableStats::default()
    };
    assert_eq!(adopted.stats, want);
    assert_eq!(env.pt.stats.tables, 1);
}
