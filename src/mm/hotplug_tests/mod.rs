//! Host tests of memory hotplug as a whole: a [`MemorySystem`] over a 2 GiB
//! simulated physical arena, booted the way `init.rs` boots the kernel, then
//! driven through probe / online / offline / remove and `devmem map` /
//! `unmap`, with fault injection at every allocation and a property test
//! against a model. The fixtures are here, the tests by topic in the
//! submodules.
//!
//! Struct pages live in a host `Vec<Page>` covering every pfn of the arena
//! (the kernel's vmemmap is virtual), while the page table still gets the
//! vmemmap mappings and their backing pages, exactly as in the kernel.
//!
//! The geometry (4K granule; a block is a 128 MiB section):
//!
//! ```text
//! 0x4000_0000  block 8        boot memory, online Normal, never removable
//! 0x4800_0000  blocks 9..=19  RAM held back from boot (`probe` may add it)
//! 0x8000_0000  (1 GiB line)   the second GiB needs a linear-map PMD table
//! 0xa000_0000  blocks 20, 21  device memory (`memmap=` pmem)
//! 0xb000_0000  blocks 22, 23  neither: `probe` must refuse it
//! ```
//!
//! The boot tables (root, linear PUD and PMD, vmemmap PUD and PMD) come from
//! the buddy allocator, as do the boot block's 2 MiB of struct pages.

#![cfg(not(any(feature = "granule-16k", feature = "granule-64k")))]

mod altmap;
mod bad_input;
mod cycles;
mod devmem;
mod faults;
mod files;
mod model;
mod online;

use super::altmap::VmemAltmap;
use super::buddy::BuddyAllocator;
use super::layout::*;
use super::page::{Memmap, Page, PageFlags, Zone};
use super::pgtable::unmap::UnmapWarnings;
use super::pgtable::{Attributes, MapHints, PageTable, VaRange};
use super::system::{block_pfns, BlockState, DevMapKind, MemInfo, MemoryBlock, MemorySystem};
use super::testing::{Arena, ArenaTranslation};
use super::vmemmap::vmemmap_populate;
use crate::console::{Errno, Result};
use crate::mm::layout::MARKERS;
use crate::platform::PhysRange;

const ARENA_BASE: u64 = 0x4000_0000;
const ARENA_SIZE: u64 = 2 << 30;
const BLOCK: u64 = MEMORY_BLOCK_SIZE;
const BLOCK_PAGES: u64 = PAGES_PER_SECTION;
/// The boot block's id (`memory8`).
const BOOT: u64 = ARENA_BASE / BLOCK;
/// Pages at the start of boot memory left reserved (kernel image, DTB).
const BOOT_RESERVED: u64 = 16;
/// RAM held back from boot: blocks `HOT_FIRST..HOT_END`.
const HOT_FIRST: u64 = 9;
const HOT_END: u64 = 20;
/// The second GiB of the arena: its linear map needs a PMD table of its own.
const GIB2: u64 = 0x8000_0000;
const DEV_BASE: u64 = 0xa000_0000;
const DEV_SIZE: u64 = 2 * BLOCK;
/// Arena memory that is neither boot, held back nor device memory.
const NOT_RAM: u64 = 0xb000_0000;
/// Table pages after boot: root, linear PUD + PMD, vmemmap PUD + PMD.
const BOOT_TABLES: u64 = 5;
/// Struct pages of one block, in bytes (one 2 MiB vmemmap block).
const MEMMAP_PER_BLOCK: u64 = BLOCK / PAGE_SIZE * 64;
const MIB: u64 = 1 << 20;

fn start_of(id: u64) -> u64 {
    id * BLOCK
}

fn block_of(pfn: u64) -> u64 {
    pfn_to_phys(pfn) / BLOCK
}

fn dev_pfns() -> (u64, u64) {
    (phys_to_pfn(DEV_BASE), phys_to_pfn(DEV_BASE + DEV_SIZE))
}

/// The system and the host memory behind it (dropped after it).
struct Fx {
    mm: MemorySystem<ArenaTranslation>,
    dev: usize,
    _pages: Vec<Page>,
    _arena: Arena,
}

/// Boots a system the way `init.rs` does: every struct page of the boot
/// block `RESERVED | ONLINE`, what is free (all but the first pages) given
/// to the buddy allocator, then the boot block's linear map and vmemmap
/// from it.
fn boot() -> Fx {
    assert_eq!(PAGE_SIZE, 4096, "the geometry assumes the 4K granule");
    assert_eq!(BLOCK, 128 * MIB);
    let nr_pages = (ARENA_SIZE / PAGE_SIZE) as usize;
    let arena = Arena::new(ARENA_BASE, nr_pages, PAGE_SIZE);
    // Every pfn of the arena has a struct page; only those of present
    // memory are ever initialised and looked at.
    let mut pages = vec![Page::new(Zone::Normal, PageFlags::RESERVED); nr_pages];
    let memmap = Memmap::for_slice(&mut pages, phys_to_pfn(ARENA_BASE));
    let (bs, be) = block_pfns(BOOT);
    // SAFETY: `pages` covers the range and nothing references it yet.
    unsafe {
        memmap.init_range(
            bs,
            be,
            Zone::Normal,
            PageFlags::RESERVED | PageFlags::ONLINE,
        )
    };
    // SAFETY: the pages outlive the allocator (both live in the fixture, the
    // allocator dropped first), and every struct page it touches (the boot
    // block) is initialised.
    let mut buddy = unsafe { BuddyAllocator::new(memmap) };
    assert_eq!(
        buddy.online_pages(bs + BOOT_RESERVED, be, Zone::Normal),
        BLOCK_PAGES - BOOT_RESERVED
    );
    let mut pt = PageTable::new(arena.translation(), &mut buddy).expect("root table");
    let linear = VaRange::new(phys_to_virt(ARENA_BASE), phys_to_virt(ARENA_BASE + BLOCK));
    pt.map_range(
        linear,
        ARENA_BASE,
        Attributes::KERNEL_RW,
        MapHints::blocks(1 << 30).with_contiguous(),
        &mut buddy,
    )
    .expect("boot linear map");
    vmemmap_populate(&mut pt, bs, be, None, &mut buddy).expect("boot vmemmap");
    assert_eq!(pt.stats.tables, BOOT_TABLES);

    let mut mm = MemorySystem::new(pt, buddy, memmap);
    mm.blocks.insert(
        BOOT,
        MemoryBlock {
            state: BlockState::Online(Zone::Normal),
            boot: true,
            altmap: None,
            owner: None,
        },
    );
    mm.iomem
        .insert(ARENA_BASE, ARENA_BASE + BLOCK, "System RAM");
    mm.hotpluggable.push(PhysRange {
        base: start_of(HOT_FIRST),
        size: (HOT_END - HOT_FIRST) * BLOCK,
    });
    let dev = mm.add_devmem(DEV_BASE, DEV_SIZE, "pmem", "Persistent Memory (legacy)");
    Fx {
        mm,
        dev,
        _pages: pages,
        _arena: arena,
    }
}

fn ptdump(mm: &MemorySystem<ArenaTranslation>) -> String {
    let mut s = String::new();
    mm.pt.dump(MARKERS, &mut s).expect("ptdump");
    s
}

fn iomem(mm: &MemorySystem<ArenaTranslation>) -> String {
    let mut s = String::new();
    mm.iomem.show(&mut s).expect("iomem");
    s
}

/// A digest of the struct pages that describe present memory: online
/// blocks, the self-hosted struct pages of offline ones (the rest of an
/// offline block's struct pages are initialised only when it is onlined),
/// mapped device memory. Blind to what does not describe state: free-list
/// links, the stale order of pages that are no free block's head.
fn memmap_digest(mm: &MemorySystem<ArenaTranslation>) -> u64 {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (&id, b) in &mm.blocks {
        match (b.state, &b.altmap) {
            (BlockState::Online(_), _) => ranges.push(block_pfns(id)),
            (BlockState::Offline, Some(a)) => ranges.push((a.base_pfn + a.reserve, a.next_pfn())),
            (BlockState::Offline, None) => {}
        }
    }
    for d in mm.devmem.iter().filter(|d| d.mapping.is_some()) {
        ranges.push((phys_to_pfn(d.range.base), phys_to_pfn(d.range.end())));
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |v: u64| h = (h ^ v).wrapping_mul(0x0100_0000_01b3);
    for (s, e) in ranges {
        mix(s);
        for pfn in s..e {
            // SAFETY: present memory has initialised struct pages.
            let p = unsafe { &*mm.memmap.page(pfn) };
            let order = if p.is_buddy() { p.order() as u64 } else { 0 };
            mix(p.flags().bits() as u64 | (p.zone as u64) << 32 | order << 40);
            mix(p.refcount() as u64 | p.private() << 32);
        }
    }
    h
}

/// How a device-memory region is mapped, if it is.
type DevMapping = Option<(DevMapKind, Option<VmemAltmap>)>;

/// Everything an operation that fails, or a sequence that returns to the
/// start, must leave exactly as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snap {
    meminfo: MemInfo,
    tables: u64,
    /// `tables_allocated - tables_freed`.
    table_balance: u64,
    /// Every table page, `(level, pa)`, root first.
    table_pages: Vec<(usize, u64)>,
    /// Every leaf of the kernel half: `(va, size, level, descriptor)`.
    leaves: Vec<(u64, u64, usize, u64)>,
    ptdump: String,
    nr_free: [u64; 2],
    managed: [u64; 2],
    /// The free blocks `(pfn, order, zone)`, sorted.
    free_blocks: Vec<(u64, u32, Zone)>,
    bad_frees: u64,
    blocks: Vec<(u64, BlockState, bool, Option<VmemAltmap>)>,
    devmem: Vec<(PhysRange, DevMapping)>,
    iomem: String,
    warnings: UnmapWarnings,
    memmap: u64,
}

fn snap(mm: &MemorySystem<ArenaTranslation>) -> Snap {
    let mut table_pages = Vec::new();
    mm.pt
        .for_each_table(|level, pa| table_pages.push((level, pa)));
    let mut leaves = Vec::new();
    mm.pt
        .for_each_leaf(VaRange::new(PAGE_OFFSET, u64::MAX), |va, size, level, d| {
            leaves.push((va, size, level, d.0))
        });
    let mut free_blocks = Vec::new();
    for zone in Zone::BUDDY_ZONES {
        mm.buddy
            .for_each_free_block(zone, |pfn, order| free_blocks.push((pfn, order, zone)));
    }
    free_blocks.sort_unstable();
    Snap {
        meminfo: mm.meminfo(),
        tables: mm.pt.stats.tables,
        table_balance: mm.pt.stats.tables_allocated - mm.pt.stats.tables_freed,
        table_pages,
        leaves,
        ptdump: ptdump(mm),
        nr_free: Zone::BUDDY_ZONES.map(|z| mm.buddy.nr_free(z)),
        managed: Zone::BUDDY_ZONES.map(|z| mm.buddy.managed(z)),
        free_blocks,
        bad_frees: mm.buddy.stats().bad_frees,
        blocks: mm
            .blocks
            .iter()
            .map(|(&id, b)| (id, b.state, b.boot, b.altmap.clone()))
            .collect(),
        devmem: mm
            .devmem
            .iter()
            .map(|d| (d.range, d.mapping.clone()))
            .collect(),
        iomem: iomem(mm),
        warnings: mm.warnings,
        memmap: memmap_digest(mm),
    }
}

/// Asserts two snapshots equal, naming the first field that differs (the
/// whole `Debug` of a snapshot is far too long to read).
#[track_caller]
fn assert_same(what: &str, got: &Snap, want: &Snap) {
    macro_rules! field {
        ($($f:ident),*) => {$(
            assert!(got.$f == want.$f, "{what}: {} differs\n got: {:?}\nwant: {:?}",
                stringify!($f), got.$f, want.$f);
        )*};
    }
    field!(
        meminfo,
        tables,
        table_balance,
        table_pages,
        nr_free,
        managed,
        bad_frees,
        blocks,
        devmem,
        iomem,
        warnings,
        memmap
    );
    assert!(
        got.ptdump == want.ptdump,
        "{what}: ptdump differs\n got:\n{}\nwant:\n{}",
        got.ptdump,
        want.ptdump
    );
    assert!(
        got.leaves == want.leaves,
        "{what}: page-table leaves differ"
    );
    assert!(
        got.free_blocks == want.free_blocks,
        "{what}: buddy free blocks differ"
    );
}

#[track_caller]
fn errno<T: core::fmt::Debug>(r: Result<T>) -> Errno {
    r.expect_err("the operation must fail").errno
}

fn block_state(mm: &MemorySystem<ArenaTranslation>, id: u64) -> Option<BlockState> {
    mm.blocks.get(&id).map(|b| b.state)
}
