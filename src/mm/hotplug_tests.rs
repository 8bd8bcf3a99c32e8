//! Host tests of memory hotplug as a whole: a [`MemorySystem`] over a 2 GiB
//! simulated physical arena, booted the way `init.rs` boots the kernel, then
//! driven through probe / online / offline / remove and `devmem map` /
//! `unmap`, with fault injection at every allocation and a property test
//! against a model.
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

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::altmap::VmemAltmap;
use super::buddy::{BadFree, BuddyAllocator};
use super::hotplug::vmemmap_pages_per_block;
use super::layout::*;
use super::page::{Memmap, Page, PageFlags, Zone};
use super::pgtable::unmap::UnmapWarnings;
use super::pgtable::{Attributes, MapHints, PageTable, VaRange};
use super::system::{block_pfns, BlockState, DevMapKind, MemInfo, MemoryBlock, MemorySystem};
use super::testing::{Arena, ArenaTranslation};
use super::vmemmap::{vmemmap_backing, vmemmap_populate};
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

// ---------------------------------------------------------------------------
// 1. Whole cycles return to the start.

/// probe, online, offline, remove of one block, struct pages in system RAM
/// or on the block itself, in either GiB (the second needs a table).
fn cycle_one_block(id: u64, memmap_on_memory: bool, zone: Zone) {
    let mut fx = boot();
    let base = snap(&fx.mm);
    let events = fx.mm.events;
    let (spfn, epfn) = block_pfns(id);
    let start = start_of(id);
    let new_tables = u64::from(start >= GIB2);

    fx.mm.memmap_on_memory = memmap_on_memory;
    fx.mm.add_memory(start, BLOCK).expect("probe");
    let probed = snap(&fx.mm);
    let mi = probed.meminfo;
    assert_eq!(block_state(&fx.mm, id), Some(BlockState::Offline));
    assert_eq!(probed.tables, base.tables + new_tables);
    assert_eq!(
        mi.page_tables,
        base.meminfo.page_tables + new_tables * PAGE_SIZE
    );
    assert_eq!(
        mi.total, base.meminfo.total,
        "an offline block adds no MemTotal"
    );
    assert_eq!(mi.device_mem, 0);
    if memmap_on_memory {
        // No system RAM for struct pages: only the table pages.
        assert_eq!(mi.vmemmap, base.meminfo.vmemmap);
        assert_eq!(
            mi.vmemmap_altmap,
            base.meminfo.vmemmap_altmap + MEMMAP_PER_BLOCK
        );
        assert_eq!(mi.free, base.meminfo.free - new_tables * PAGE_SIZE);
        assert!(new_tables <= 1);
        let a = fx.mm.blocks[&id].altmap.as_ref().expect("altmap");
        assert_eq!((a.base_pfn, a.end_pfn, a.reserve), (spfn, epfn, 0));
        assert_eq!(a.alloc, vmemmap_pages_per_block());
        assert_eq!(a.next_pfn(), spfn + vmemmap_pages_per_block());
        // The block's struct pages are its own first 2 MiB.
        assert_eq!(vmemmap_backing(&fx.mm.pt, spfn), Some((start, 2 * MIB)));
        assert_eq!(fx.mm.altmap_owner(start), Some("memmap_on_memory"));
        for pfn in spfn..epfn {
            // SAFETY: present block.
            let hosted = unsafe { fx.mm.memmap.get(pfn) }
                .has(PageFlags::VMEMMAP_SELF_HOSTED | PageFlags::ALTMAP_BACKED);
            assert_eq!(
                hosted,
                pfn < spfn + vmemmap_pages_per_block(),
                "pfn {pfn:#x}"
            );
        }
    } else {
        assert_eq!(mi.vmemmap, base.meminfo.vmemmap + MEMMAP_PER_BLOCK);
        assert_eq!(mi.vmemmap_altmap, 0);
        assert_eq!(
            mi.free,
            base.meminfo.free - MEMMAP_PER_BLOCK - new_tables * PAGE_SIZE
        );
        assert!(fx.mm.blocks[&id].altmap.is_none());
        let (pa, size) = vmemmap_backing(&fx.mm.pt, spfn).expect("vmemmap mapped");
        assert_eq!(size, 2 * MIB);
        assert_eq!(
            block_of(phys_to_pfn(pa)),
            BOOT,
            "struct pages from boot RAM"
        );
    }
    assert_eq!(
        fx.mm
            .pt
            .translate(phys_to_virt(start + 0x1234))
            .map(|t| t.0),
        Some(start + 0x1234)
    );
    assert_eq!(
        fx.mm
            .pt
            .translate(phys_to_virt(start + BLOCK - 8))
            .map(|t| t.0),
        Some(start + BLOCK - 8)
    );

    fx.mm.online_block(id, zone).expect("online");
    let hosted = if memmap_on_memory {
        vmemmap_pages_per_block()
    } else {
        0
    };
    let mi = fx.mm.meminfo();
    assert_eq!(block_state(&fx.mm, id), Some(BlockState::Online(zone)));
    assert_eq!(mi.total, base.meminfo.total + BLOCK - hosted * PAGE_SIZE);
    assert_eq!(mi.free, probed.meminfo.free + BLOCK - hosted * PAGE_SIZE);
    let z = zone.buddy_index().unwrap();
    assert_eq!(
        fx.mm.buddy.managed(zone),
        base.managed[z] + BLOCK_PAGES - hosted
    );
    // The self-hosted struct pages never enter the buddy allocator.
    for pfn in spfn..spfn + hosted {
        assert!(
            !fx.mm.buddy.is_free(pfn),
            "self-hosted pfn {pfn:#x} is free"
        );
    }
    if hosted != 0 {
        assert!(matches!(
            fx.mm.buddy.check_free(spfn, 0),
            Err(BadFree::NeverBuddy(_))
        ));
        assert!(fx.mm.buddy.is_free(spfn + hosted));
    }

    fx.mm.offline_block(id).expect("offline");
    assert_same("after offline", &snap(&fx.mm), &probed);

    fx.mm.remove_memory(start, BLOCK).expect("remove");
    assert_same("after remove", &snap(&fx.mm), &base);
    assert_eq!(fx.mm.pt.translate(phys_to_virt(start)), None);
    assert_eq!(fx.mm.pt.translate(pfn_to_page_va(spfn)), None);
    assert_eq!(fx.mm.pt.translate(pfn_to_page_va(epfn - 1)), None);
    let ev = fx.mm.events;
    assert_eq!(
        (ev.hotplug_add, ev.hotplug_remove, ev.online, ev.offline),
        (
            events.hotplug_add + 1,
            events.hotplug_remove + 1,
            events.online + 1,
            events.offline + 1
        )
    );
}

#[test]
fn cycle_one_block_returns_to_the_start() {
    for id in [HOT_FIRST, 16, HOT_END - 1] {
        for mom in [false, true] {
            for zone in Zone::BUDDY_ZONES {
                cycle_one_block(id, mom, zone);
            }
        }
    }
}

/// Several blocks at once across the GiB line, mixed `memmap_on_memory`,
/// removed in another order than added: still exactly the start.
#[test]
fn cycle_many_blocks_returns_to_the_start() {
    let mut fx = boot();
    let base = snap(&fx.mm);
    fx.mm.memmap_on_memory = true;
    fx.mm.add_memory(start_of(14), 2 * BLOCK).unwrap();
    fx.mm.memmap_on_memory = false;
    fx.mm.add_memory(start_of(16), 3 * BLOCK).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + 1);
    let mi = fx.mm.meminfo();
    assert_eq!(mi.vmemmap, base.meminfo.vmemmap + 3 * MEMMAP_PER_BLOCK);
    assert_eq!(mi.vmemmap_altmap, 2 * MEMMAP_PER_BLOCK);
    for (id, zone) in [
        (14, Zone::Movable),
        (15, Zone::Normal),
        (16, Zone::Normal),
        (18, Zone::Movable),
    ] {
        fx.mm.online_block(id, zone).unwrap();
    }
    // Some churn through the new memory.
    let got: Vec<u64> = (0..64)
        .map(|i| {
            let zone = if i % 2 == 0 {
                Zone::Movable
            } else {
                Zone::Normal
            };
            fx.mm.buddy.alloc(i % 3, zone).unwrap()
        })
        .collect();
    for (i, pfn) in got.into_iter().enumerate().rev() {
        assert!(fx.mm.buddy.free(pfn, i as u32 % 3));
    }
    for id in [18, 14, 16, 15] {
        fx.mm.offline_block(id).unwrap();
    }
    // The last block of the second GiB keeps its table until it goes.
    fx.mm.remove_memory(start_of(16), BLOCK).unwrap();
    fx.mm.remove_memory(start_of(18), BLOCK).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + 1);
    fx.mm.remove_memory(start_of(17), BLOCK).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES);
    fx.mm.remove_memory(start_of(14), 2 * BLOCK).unwrap();
    assert_same("after removing everything", &snap(&fx.mm), &base);
}

#[test]
fn devmem_map_dev_keeps_struct_pages_on_the_device() {
    let mut fx = boot();
    let base = snap(&fx.mm);
    let (ds, de) = dev_pfns();
    fx.mm
        .memremap_pages(fx.dev, DevMapKind::Dev)
        .expect("devmem map --map=dev");
    let s = snap(&fx.mm);
    let mi = s.meminfo;
    // Its linear map is the second GiB's first: one PMD table, nothing else.
    assert_eq!(s.tables, base.tables + 1);
    assert_eq!(mi.vmemmap, base.meminfo.vmemmap);
    assert_eq!(mi.vmemmap_altmap, DEV_SIZE / 64);
    assert_eq!(mi.device_mem, DEV_SIZE);
    assert_eq!(mi.total, base.meminfo.total);
    assert_eq!(mi.free, base.meminfo.free - PAGE_SIZE);
    assert_eq!(s.nr_free, [base.nr_free[0] - 1, base.nr_free[1]]);
    let Some((DevMapKind::Dev, Some(a))) = &fx.mm.devmem[fx.dev].mapping else {
        panic!("not mapped on the device")
    };
    assert_eq!(a.alloc, (de - ds) * 64 / PAGE_SIZE);
    assert_eq!(a.next_pfn(), ds + a.alloc);
    assert_eq!(vmemmap_backing(&fx.mm.pt, ds), Some((DEV_BASE, 2 * MIB)));
    assert_eq!(
        vmemmap_backing(&fx.mm.pt, de - 1),
        Some((DEV_BASE + 2 * MIB, 2 * MIB))
    );
    for pfn in [ds, ds + 1, ds + 1023, ds + 1024, de - 1] {
        // SAFETY: mapped device memory.
        let p = unsafe { fx.mm.memmap.get(pfn) };
        assert_eq!(p.zone(), Some(Zone::Device));
        assert!(p.has(PageFlags::DEVICE));
        assert_eq!(p.private(), fx.dev as u64);
        assert_eq!(p.has(PageFlags::ALTMAP_BACKED), pfn < ds + 1024);
    }
    device_pages_never_enter_the_buddy(&mut fx);
    assert_eq!(
        errno(fx.mm.memremap_pages(fx.dev, DevMapKind::Mem)),
        Errno::EBUSY
    );
    assert_eq!(
        errno(fx.mm.memremap_pages(fx.dev + 1, DevMapKind::Dev)),
        Errno::ENODEV
    );
    let mut s2 = snap(&fx.mm);
    s2.bad_frees = s.bad_frees;
    assert_same("refused map", &s2, &s);

    fx.mm.memunmap_pages(fx.dev).expect("unmap");
    let mut after = snap(&fx.mm);
    assert_eq!(after.bad_frees, base.bad_frees + 2);
    after.bad_frees = base.bad_frees;
    assert_same("after devmem unmap", &after, &base);
    assert_eq!(fx.mm.pt.translate(phys_to_virt(DEV_BASE)), None);
    assert_eq!(fx.mm.pt.translate(pfn_to_page_va(ds)), None);
    assert_eq!(errno(fx.mm.memunmap_pages(fx.dev)), Errno::EINVAL);
}

/// Freeing a device page to the buddy allocator is refused and counted, and
/// changes nothing else; handing the whole region over gives nothing.
fn device_pages_never_enter_the_buddy(fx: &mut Fx) {
    let (ds, de) = dev_pfns();
    let before = snap(&fx.mm);
    assert!(!fx.mm.buddy.free(ds + 2048, 0));
    assert!(!fx.mm.buddy.free(ds, 0), "an altmap-backed device page");
    assert!(matches!(
        fx.mm.buddy.check_free(de - 1, 0),
        Err(BadFree::NeverBuddy(_))
    ));
    assert_eq!(fx.mm.buddy.free_range(ds, de, Zone::Normal), 0);
    let mut after = snap(&fx.mm);
    assert_eq!(after.bad_frees, before.bad_frees + 2);
    after.bad_frees = before.bad_frees;
    assert_same("refused device frees", &after, &before);
    assert!((ds..de).all(|pfn| !fx.mm.buddy.is_free(pfn)));
}

#[test]
fn devmem_map_mem_puts_struct_pages_in_system_ram() {
    let mut fx = boot();
    let base = snap(&fx.mm);
    fx.mm
        .memremap_pages(fx.dev, DevMapKind::Mem)
        .expect("devmem map --map=mem");
    let s = snap(&fx.mm);
    assert_eq!(s.tables, base.tables + 1);
    assert_eq!(s.meminfo.vmemmap, base.meminfo.vmemmap + DEV_SIZE / 64);
    assert_eq!(s.meminfo.vmemmap_altmap, 0);
    assert_eq!(s.meminfo.device_mem, DEV_SIZE);
    assert_eq!(s.meminfo.total, base.meminfo.total);
    assert_eq!(
        s.meminfo.free,
        base.meminfo.free - DEV_SIZE / 64 - PAGE_SIZE
    );
    assert!(matches!(
        fx.mm.devmem[fx.dev].mapping,
        Some((DevMapKind::Mem, None))
    ));
    device_pages_never_enter_the_buddy(&mut fx);
    fx.mm.memunmap_pages(fx.dev).expect("unmap");
    let mut after = snap(&fx.mm);
    after.bad_frees = base.bad_frees;
    assert_same("after devmem unmap", &after, &base);
}

/// Device memory and hot-added RAM share the second GiB's PMD table: it
/// goes only when both are gone.
#[test]
fn shared_table_is_freed_only_when_empty() {
    let mut fx = boot();
    let base = snap(&fx.mm);
    fx.mm.add_memory(start_of(17), BLOCK).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + 1);
    fx.mm.memremap_pages(fx.dev, DevMapKind::Dev).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + 1);
    fx.mm.remove_memory(start_of(17), BLOCK).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + 1);
    assert_eq!(
        fx.mm.pt.translate(phys_to_virt(DEV_BASE)).map(|t| t.0),
        Some(DEV_BASE)
    );
    fx.mm.memunmap_pages(fx.dev).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES);
    assert_same("after both", &snap(&fx.mm), &base);
}

/// `unmap_hotplug_range` with an altmap but without `free_mapped` is a
/// caller bug: counted, not ignored, and the altmap untouched.
#[test]
fn altmap_without_free_mapped_is_counted() {
    let mut fx = boot();
    fx.mm.memremap_pages(fx.dev, DevMapKind::Dev).unwrap();
    let before = snap(&fx.mm);
    let mut altmap = VmemAltmap::new(phys_to_pfn(NOT_RAM), phys_to_pfn(NOT_RAM + BLOCK), 0, 512);
    let fresh = altmap.clone();
    let (va, end) = (phys_to_virt(NOT_RAM), phys_to_virt(NOT_RAM + BLOCK));
    let p = fx.mm.parts();
    let mut frames = p.frames;
    p.pt.unmap_hotplug_range(va, end, false, Some(&mut altmap), &mut frames, p.warnings);
    assert_eq!(fx.mm.warnings.altmap_without_free_mapped, 1);
    assert_eq!(altmap, fresh);
    let mut after = snap(&fx.mm);
    after.warnings = before.warnings;
    assert_same("altmap without free_mapped", &after, &before);
}

// ---------------------------------------------------------------------------
// 2. Bad input: the right errno, and nothing changes.

#[test]
fn bad_input_gets_the_right_errno_and_changes_nothing() {
    let mut fx = boot();
    // memory9 offline, memory10 offline with its memmap on itself, memory11
    // online Movable with a page in use, memory13 online Normal.
    fx.mm.add_memory(start_of(9), BLOCK).unwrap();
    fx.mm.memmap_on_memory = true;
    fx.mm.add_memory(start_of(10), BLOCK).unwrap();
    fx.mm.memmap_on_memory = false;
    fx.mm.add_memory(start_of(11), BLOCK).unwrap();
    fx.mm.online_block(11, Zone::Movable).unwrap();
    fx.mm.add_memory(start_of(13), BLOCK).unwrap();
    fx.mm.online_block(13, Zone::Normal).unwrap();
    let user = fx.mm.buddy.alloc(0, Zone::Movable).expect("a user page");
    assert_eq!(block_of(user), 11);

    type Op = fn(&mut MemorySystem<ArenaTranslation>) -> Result<()>;
    let cases: &[(&str, Errno, Op)] = &[
        ("probe misaligned", Errno::EINVAL, |m| {
            m.add_memory(start_of(12) + PAGE_SIZE, BLOCK)
        }),
        ("probe half a block", Errno::EINVAL, |m| {
            m.add_memory(start_of(12), BLOCK / 2)
        }),
        ("probe a block and a page", Errno::EINVAL, |m| {
            m.add_memory(start_of(12), BLOCK + PAGE_SIZE)
        }),
        ("probe nothing", Errno::EINVAL, |m| {
            m.add_memory(start_of(12), 0)
        }),
        ("probe RAM not held back", Errno::EINVAL, |m| {
            m.add_memory(NOT_RAM, BLOCK)
        }),
        ("probe boot RAM", Errno::EEXIST, |m| {
            m.add_memory(ARENA_BASE, BLOCK)
        }),
        (
            "probe from boot RAM into held-back RAM",
            Errno::EEXIST,
            |m| m.add_memory(start_of(HOT_FIRST - 1), 2 * BLOCK),
        ),
        ("probe device memory", Errno::EBUSY, |m| {
            m.add_memory(DEV_BASE, BLOCK)
        }),
        ("probe into device memory", Errno::EBUSY, |m| {
            m.add_memory(start_of(HOT_END - 1), 2 * BLOCK)
        }),
        ("probe beyond PHYS_LIMIT", Errno::ERANGE, |m| {
            m.add_memory(PHYS_LIMIT, BLOCK)
        }),
        ("probe across PHYS_LIMIT", Errno::ERANGE, |m| {
            m.add_memory(PHYS_LIMIT - BLOCK, 2 * BLOCK)
        }),
        ("probe wrapping", Errno::ERANGE, |m| {
            m.add_memory(align_down(u64::MAX, BLOCK), BLOCK)
        }),
        ("probe present", Errno::EEXIST, |m| {
            m.add_memory(start_of(9), BLOCK)
        }),
        ("probe online", Errno::EEXIST, |m| {
            m.add_memory(start_of(11), BLOCK)
        }),
        ("probe absent then present", Errno::EEXIST, |m| {
            m.add_memory(start_of(12), 2 * BLOCK)
        }),
        ("online online", Errno::EINVAL, |m| {
            m.online_block(11, Zone::Normal)
        }),
        ("online boot", Errno::EINVAL, |m| {
            m.online_block(BOOT, Zone::Normal)
        }),
        ("online absent", Errno::ENOENT, |m| {
            m.online_block(12, Zone::Normal)
        }),
        ("offline offline", Errno::EINVAL, |m| m.offline_block(9)),
        ("offline absent", Errno::ENOENT, |m| m.offline_block(12)),
        ("offline with a page in use", Errno::EBUSY, |m| {
            m.offline_block(11)
        }),
        ("offline boot", Errno::EBUSY, |m| m.offline_block(BOOT)),
        ("remove online", Errno::EBUSY, |m| {
            m.remove_memory(start_of(11), BLOCK)
        }),
        ("remove boot", Errno::EPERM, |m| {
            m.remove_memory(ARENA_BASE, BLOCK)
        }),
        ("remove absent", Errno::EINVAL, |m| {
            m.remove_memory(start_of(12), BLOCK)
        }),
        ("remove offline, offline, online", Errno::EBUSY, |m| {
            m.remove_memory(start_of(9), 3 * BLOCK)
        }),
        ("remove boot then offline", Errno::EPERM, |m| {
            m.remove_memory(ARENA_BASE, 2 * BLOCK)
        }),
        ("remove misaligned", Errno::EINVAL, |m| {
            m.remove_memory(start_of(9) + PAGE_SIZE, BLOCK)
        }),
        ("remove beyond PHYS_LIMIT", Errno::ERANGE, |m| {
            m.remove_memory(PHYS_LIMIT, BLOCK)
        }),
        ("remove device memory", Errno::EINVAL, |m| {
            m.remove_memory(DEV_BASE, BLOCK)
        }),
        ("unmap unmapped devmem", Errno::EINVAL, |m| {
            m.memunmap_pages(0)
        }),
        ("map a devmem that is not", Errno::ENODEV, |m| {
            m.memremap_pages(7, DevMapKind::Dev)
        }),
    ];
    for &(what, want, op) in cases {
        let before = snap(&fx.mm);
        let events = fx.mm.events;
        let got = errno(op(&mut fx.mm));
        assert_eq!(got, want, "{what}");
        assert_same(what, &snap(&fx.mm), &before);
        assert_eq!(fx.mm.events, events, "{what}: events");
    }

    // Once the user lets go, the same offline works.
    assert!(fx.mm.buddy.free(user, 0));
    fx.mm.offline_block(11).unwrap();
}

/// A device region not made of whole sections cannot be mapped.
#[test]
fn misaligned_device_memory_is_refused() {
    let mut fx = boot();
    let id = fx
        .mm
        .add_devmem(NOT_RAM + 2 * MIB, BLOCK, "ivshmem", "ivshmem BAR 2");
    let before = snap(&fx.mm);
    assert_eq!(
        errno(fx.mm.memremap_pages(id, DevMapKind::Dev)),
        Errno::EINVAL
    );
    assert_eq!(
        errno(fx.mm.memremap_pages(id, DevMapKind::Mem)),
        Errno::EINVAL
    );
    assert_same("misaligned devmem", &snap(&fx.mm), &before);
}

// ---------------------------------------------------------------------------
// 3. Fault injection at every allocation.

/// What happened when the n-th allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The operation failed with ENOMEM and changed nothing.
    Failed,
    /// It got round the failure (a vmemmap block fell back to base pages).
    Survived,
}

/// Runs `op` with the n-th allocation failing, for n = 0, 1, ... until an
/// n beyond the operation's last allocation. A failure must be ENOMEM with
/// nothing changed; a success is checked with `check`, undone with `undo`,
/// and must then be back at the start. Returns the outcome for each n that
/// hit an allocation.
fn every_nth_allocation_fails(
    fx: &mut Fx,
    op: &dyn Fn(&mut Fx) -> Result<()>,
    check: &dyn Fn(&Fx, &Snap),
    undo: &dyn Fn(&mut Fx),
) -> Vec<Outcome> {
    let base = snap(&fx.mm);
    let mut outcomes = Vec::new();
    for n in 0.. {
        assert!(n < 2000, "the operation never got past its allocations");
        let events = fx.mm.events;
        fx.mm.fail_nth_alloc = Some(n);
        let r = op(fx);
        let fired = fx.mm.fail_nth_alloc.is_none();
        fx.mm.fail_nth_alloc = None;
        match r {
            Err(e) => {
                assert!(fired, "n={n}: failed without an injected failure: {e:?}");
                assert_eq!(e.errno, Errno::ENOMEM, "n={n}");
                assert_same(&format!("n={n}: failed"), &snap(&fx.mm), &base);
                assert_eq!(fx.mm.events, events, "n={n}: events after a failure");
                outcomes.push(Outcome::Failed);
            }
            Ok(()) => {
                check(fx, &base);
                undo(fx);
                assert_same(&format!("n={n}: done and undone"), &snap(&fx.mm), &base);
                if !fired {
                    return outcomes;
                }
                outcomes.push(Outcome::Survived);
            }
        }
    }
    unreachable!()
}

fn probe_under_fault_injection(first: u64, n: u64, memmap_on_memory: bool) -> Vec<Outcome> {
    let mut fx = boot();
    fx.mm.memmap_on_memory = memmap_on_memory;
    let (start, size) = (start_of(first), n * BLOCK);
    let new_tables = u64::from(start + size > GIB2);
    every_nth_allocation_fails(
        &mut fx,
        &|fx| fx.mm.add_memory(start, size),
        &|fx, base| {
            let mi = fx.mm.meminfo();
            for id in first..first + n {
                assert_eq!(block_state(&fx.mm, id), Some(BlockState::Offline));
                let a = fx.mm.blocks[&id].altmap.as_ref();
                assert_eq!(
                    a.map(|a| a.alloc),
                    memmap_on_memory.then(vmemmap_pages_per_block)
                );
            }
            let memmap = n * MEMMAP_PER_BLOCK;
            if memmap_on_memory {
                assert_eq!(mi.vmemmap, base.meminfo.vmemmap);
                assert_eq!(mi.vmemmap_altmap, memmap);
                assert_eq!(fx.mm.pt.stats.tables, base.tables + new_tables);
                assert_eq!(mi.free, base.meminfo.free - new_tables * PAGE_SIZE);
            } else {
                // Base pages where a block could not be had: maybe a PTE
                // table more per block, never a page of struct pages more.
                assert_eq!(mi.vmemmap, base.meminfo.vmemmap + memmap);
                let tables = fx.mm.pt.stats.tables - base.tables;
                assert!((new_tables..=new_tables + n).contains(&tables));
                assert_eq!(mi.free, base.meminfo.free - memmap - tables * PAGE_SIZE);
            }
            assert_eq!(mi.total, base.meminfo.total);
        },
        &|fx| fx.mm.remove_memory(start, size).expect("remove"),
    )
}

#[test]
fn probe_fails_cleanly_at_every_allocation() {
    use Outcome::*;
    // In the first GiB nothing but struct pages is allocated: losing the
    // 2 MiB block falls back to base pages.
    assert_eq!(probe_under_fault_injection(9, 1, false), [Survived]);
    assert_eq!(probe_under_fault_injection(9, 1, true), []);
    // The second GiB's PMD table comes first.
    assert_eq!(
        probe_under_fault_injection(16, 1, false),
        [Failed, Survived]
    );
    assert_eq!(probe_under_fault_injection(16, 1, true), [Failed]);
    // Three blocks across the GiB line: a failure at the second block's
    // table takes the first one down again.
    assert_eq!(
        probe_under_fault_injection(15, 3, false),
        [Survived, Failed, Survived, Survived]
    );
    assert_eq!(probe_under_fault_injection(15, 3, true), [Failed]);
}

fn devmem_under_fault_injection(kind: DevMapKind) -> Vec<Outcome> {
    let mut fx = boot();
    every_nth_allocation_fails(
        &mut fx,
        &|fx| fx.mm.memremap_pages(fx.dev, kind),
        &|fx, base| {
            let mi = fx.mm.meminfo();
            assert_eq!(mi.device_mem, DEV_SIZE);
            match kind {
                DevMapKind::Dev => {
                    assert_eq!(mi.vmemmap, base.meminfo.vmemmap);
                    assert_eq!(mi.vmemmap_altmap, DEV_SIZE / 64);
                }
                DevMapKind::Mem => {
                    assert_eq!(mi.vmemmap, base.meminfo.vmemmap + DEV_SIZE / 64);
                    assert_eq!(mi.vmemmap_altmap, 0);
                }
            }
        },
        &|fx| fx.mm.memunmap_pages(fx.dev).expect("unmap"),
    )
}

#[test]
fn devmem_map_fails_cleanly_at_every_allocation() {
    use Outcome::*;
    assert_eq!(devmem_under_fault_injection(DevMapKind::Dev), [Failed]);
    assert_eq!(
        devmem_under_fault_injection(DevMapKind::Mem),
        [Failed, Survived, Survived]
    );
}

/// `arch_add_memory` far from everything (64 GiB up), so that the linear
/// map and the vmemmap each need a fresh PMD table: a failure at any
/// allocation, vmemmap tables included, leaves nothing behind, with and
/// without an altmap.
#[test]
fn arch_add_memory_with_fresh_tables_fails_cleanly() {
    const FAR: u64 = 64 << 30;
    let (spfn, epfn) = (phys_to_pfn(FAR), phys_to_pfn(FAR + 2 * BLOCK));
    for with_altmap in [false, true] {
        let fresh = VmemAltmap::new(spfn, epfn, 0, 2 * vmemmap_pages_per_block());
        let altmap = std::cell::RefCell::new(fresh.clone());
        let mut fx = boot();
        let outcomes = every_nth_allocation_fails(
            &mut fx,
            &|fx| {
                let mut a = altmap.borrow_mut();
                let r = fx
                    .mm
                    .arch_add_memory(FAR, FAR + 2 * BLOCK, with_altmap.then_some(&mut *a));
                if r.is_err() {
                    assert_eq!(*a, fresh, "the altmap after a failure");
                }
                r
            },
            &|fx, base| {
                let mi = fx.mm.meminfo();
                let tables = fx.mm.pt.stats.tables - base.tables;
                // Linear and vmemmap PMD tables, maybe PTE tables for base
                // pages.
                assert!((2..=4).contains(&tables), "{tables} new tables");
                // An altmap the system does not know of: meminfo counts its
                // pages as Vmemmap, the free pages tell them apart.
                assert_eq!(mi.vmemmap, base.meminfo.vmemmap + 2 * MEMMAP_PER_BLOCK);
                if with_altmap {
                    assert_eq!(altmap.borrow().alloc, 2 * vmemmap_pages_per_block());
                    assert_eq!(mi.free, base.meminfo.free - tables * PAGE_SIZE);
                } else {
                    let memmap = 2 * MEMMAP_PER_BLOCK;
                    assert_eq!(mi.free, base.meminfo.free - memmap - tables * PAGE_SIZE);
                }
            },
            &|fx| {
                let mut a = altmap.borrow_mut();
                fx.mm
                    .arch_remove_memory(FAR, FAR + 2 * BLOCK, with_altmap.then_some(&mut *a));
                assert_eq!(a.alloc, 0);
                assert_eq!(a.next_pfn(), spfn);
            },
        );
        assert!(outcomes.contains(&Outcome::Failed), "{outcomes:?}");
        assert!(outcomes.contains(&Outcome::Survived), "{outcomes:?}");
    }
}

/// The buddy allocator really running dry rather than one allocation
/// failing: with only `k` free Normal pages, none of them a 2 MiB block,
/// probing memory17 (struct pages in RAM) needs its linear-map table, the
/// PTE table of base-page struct pages and 512 pages for them. Below that
/// it must fail partway through the base pages and give back every one of
/// them; at exactly that it must succeed and go back exactly.
#[test]
fn probe_under_memory_pressure_rolls_back() {
    let mut fx = boot();
    let booted = snap(&fx.mm);
    let start = start_of(17);
    // Take every free page, then free every other one of k of them: single
    // pages whose buddies stay taken, so nothing coalesces.
    let mut held = Vec::new();
    while let Some(pfn) = fx.mm.buddy.alloc(0, Zone::Normal) {
        held.push(pfn);
    }
    held.sort_unstable();
    let (odd, mut even): (Vec<u64>, Vec<u64>) = held.iter().partition(|&&p| p % 2 == 1);
    let needed = 1 + 1 + vmemmap_pages_per_block();
    assert!(even.len() as u64 > needed);
    let mut given = 0;
    for k in 0..=needed {
        while given < k {
            assert!(fx.mm.buddy.free(even.pop().unwrap(), 0));
            given += 1;
        }
        assert_eq!(fx.mm.buddy.nr_free(Zone::Normal), k);
        let base = snap(&fx.mm);
        let r = fx.mm.add_memory(start, BLOCK);
        if k < needed {
            assert_eq!(errno(r), Errno::ENOMEM, "k={k}");
            assert_same(&format!("k={k}"), &snap(&fx.mm), &base);
        } else {
            r.unwrap();
            assert_eq!(fx.mm.buddy.nr_free(Zone::Normal), 0);
            assert_eq!(
                fx.mm.meminfo().vmemmap,
                base.meminfo.vmemmap + MEMMAP_PER_BLOCK
            );
            let (_, size) = vmemmap_backing(&fx.mm.pt, phys_to_pfn(start)).unwrap();
            assert_eq!(size, PAGE_SIZE, "base pages");
            fx.mm.remove_memory(start, BLOCK).unwrap();
            assert_same("done and undone", &snap(&fx.mm), &base);
        }
    }
    // With memmap_on_memory the struct pages cost no RAM: the table is all
    // a probe needs.
    fx.mm.memmap_on_memory = true;
    let mut spare = Vec::new();
    while let Some(pfn) = fx.mm.buddy.alloc(0, Zone::Normal) {
        spare.push(pfn);
    }
    let base = snap(&fx.mm);
    assert_eq!(errno(fx.mm.add_memory(start, BLOCK)), Errno::ENOMEM);
    assert_same("memmap_on_memory without RAM", &snap(&fx.mm), &base);
    assert!(fx.mm.buddy.free(spare.pop().unwrap(), 0));
    fx.mm.add_memory(start, BLOCK).unwrap();
    assert_eq!(fx.mm.buddy.nr_free(Zone::Normal), 0);
    fx.mm.remove_memory(start, BLOCK).unwrap();
    for pfn in spare.into_iter().chain(even).chain(odd) {
        assert!(fx.mm.buddy.free(pfn, 0));
    }
    assert_same("everything given back", &snap(&fx.mm), &booted);
}

// ---------------------------------------------------------------------------
// 4. An altmap that runs out midway.

#[test]
fn altmap_exhausted_midway_rolls_back() {
    for (start, new_tables) in [(start_of(12), 0), (start_of(17), 1)] {
        let mut fx = boot();
        let base = snap(&fx.mm);
        let (spfn, epfn) = (phys_to_pfn(start), phys_to_pfn(start + BLOCK));
        // 100 pages where the block's struct pages need 512: no 2 MiB
        // block, and base pages run out after 100.
        let mut altmap = VmemAltmap::new(spfn, epfn, 0, 100);
        let fresh = altmap.clone();
        let e = fx
            .mm
            .arch_add_memory(start, start + BLOCK, Some(&mut altmap));
        assert_eq!(errno(e), Errno::ENOMEM);
        assert_eq!(altmap, fresh);
        assert_eq!((altmap.alloc, altmap.align, altmap.misuse), (0, 0, 0));
        assert_eq!(altmap.next_pfn(), spfn);
        assert_same("altmap exhausted", &snap(&fx.mm), &base);
        // With room for exactly 512 it works, and goes back exactly.
        let mut altmap = VmemAltmap::new(spfn, epfn, 0, 512);
        fx.mm
            .arch_add_memory(start, start + BLOCK, Some(&mut altmap))
            .unwrap();
        assert_eq!(altmap.alloc, 512);
        assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + new_tables);
        assert_eq!(vmemmap_backing(&fx.mm.pt, spfn), Some((start, 2 * MIB)));
        // No system RAM but the tables. (The altmap is not the system's, so
        // meminfo cannot tell its pages from RAM: count free pages instead.)
        assert_eq!(
            fx.mm.buddy.nr_free_total(),
            base.nr_free[0] + base.nr_free[1] - new_tables
        );
        fx.mm
            .arch_remove_memory(start, start + BLOCK, Some(&mut altmap));
        assert_eq!(altmap, VmemAltmap::new(spfn, epfn, 0, 512));
        assert_same("altmap cycle", &snap(&fx.mm), &base);
    }
}

/// A reserve at the start of the device shifts the struct pages up, and
/// misalignment is padding that goes back too.
#[test]
fn altmap_with_reserve_goes_back_exactly() {
    let mut fx = boot();
    let base = snap(&fx.mm);
    let start = start_of(12);
    let (spfn, epfn) = (phys_to_pfn(start), phys_to_pfn(start + BLOCK));
    let mut altmap = VmemAltmap::new(spfn, epfn, 3, 1024);
    let fresh = altmap.clone();
    fx.mm
        .arch_add_memory(start, start + BLOCK, Some(&mut altmap))
        .unwrap();
    assert_eq!(altmap.alloc, 512);
    let (pa, size) = vmemmap_backing(&fx.mm.pt, spfn).unwrap();
    assert_eq!(size, 2 * MIB);
    assert_eq!(pa, start + 2 * MIB, "naturally aligned past the reserve");
    assert_eq!(altmap.align, 512 - 3);
    fx.mm
        .arch_remove_memory(start, start + BLOCK, Some(&mut altmap));
    assert_eq!(altmap, fresh);
    assert_same("altmap with reserve", &snap(&fx.mm), &base);
}

// ---------------------------------------------------------------------------
// 5. Random sequences against a model.

/// Blocks the property test plays with: both sides of the GiB line.
const P_FIRST: u64 = 14;
const P_LAST: u64 = HOT_END - 1;

#[derive(Clone, Debug)]
enum Op {
    Probe {
        first: u64,
        n: u64,
        memmap_on_memory: bool,
    },
    Online {
        id: Target,
        movable: bool,
    },
    Offline {
        id: Target,
    },
    Remove {
        first: Target,
        n: u64,
    },
    DevMap {
        mem: bool,
    },
    DevUnmap,
    Alloc {
        movable: bool,
    },
    Free {
        which: usize,
    },
    /// Free a page that must never be a buddy page (device, self-hosted
    /// struct pages, boot reserved).
    BadFree {
        which: usize,
    },
}

/// The block an operation is aimed at.
#[derive(Clone, Copy, Debug)]
enum Target {
    Id(u64),
    /// One of the blocks present when the operation runs (boot memory when
    /// none is), so that sequences do not spend themselves on absent ones.
    Present(usize),
}

impl Target {
    fn resolve(self, model: &Model) -> u64 {
        match self {
            Target::Id(id) => id,
            Target::Present(i) => model
                .blocks
                .keys()
                .copied()
                .nth(i % model.blocks.len().max(1))
                .unwrap_or(BOOT),
        }
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    // Block ids: the boot block, the playground, device memory; or one of
    // those present.
    let id = prop_oneof![
        1 => Just(Target::Id(BOOT)),
        6 => (P_FIRST..=P_LAST + 1).prop_map(Target::Id),
        9 => any::<usize>().prop_map(Target::Present),
    ];
    prop_oneof![
        3 => (P_FIRST..=P_LAST, 1u64..=2, any::<bool>()).prop_map(|(first, n, memmap_on_memory)| {
            Op::Probe { first, n, memmap_on_memory }
        }),
        4 => (id.clone(), any::<bool>()).prop_map(|(id, movable)| Op::Online { id, movable }),
        4 => id.clone().prop_map(|id| Op::Offline { id }),
        4 => (id, 1u64..=2).prop_map(|(first, n)| Op::Remove { first, n }),
        1 => any::<bool>().prop_map(|mem| Op::DevMap { mem }),
        1 => Just(Op::DevUnmap),
        2 => any::<bool>().prop_map(|movable| Op::Alloc { movable }),
        2 => any::<usize>().prop_map(|which| Op::Free { which }),
        1 => any::<usize>().prop_map(|which| Op::BadFree { which }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelBlock {
    state: BlockState,
    memmap_on_memory: bool,
}

#[derive(Debug)]
struct Model {
    blocks: BTreeMap<u64, ModelBlock>,
    dev: Option<DevMapKind>,
    /// User pages: pfn -> zone.
    user: BTreeMap<u64, Zone>,
    bad_frees: u64,
}

impl Model {
    fn hosted(&self, id: u64) -> u64 {
        if self.blocks[&id].memmap_on_memory {
            vmemmap_pages_per_block()
        } else {
            0
        }
    }

    /// Pages the buddy allocator manages in `zone`.
    fn managed(&self, zone: Zone) -> u64 {
        let boot = if zone == Zone::Normal {
            BLOCK_PAGES - BOOT_RESERVED
        } else {
            0
        };
        boot + self
            .blocks
            .iter()
            .filter(|(_, b)| b.state == BlockState::Online(zone))
            .map(|(&id, _)| BLOCK_PAGES - self.hosted(id))
            .sum::<u64>()
    }

    fn user_in(&self, zone: Zone) -> u64 {
        self.user.values().filter(|&&z| z == zone).count() as u64
    }

    /// The zone a pfn's block is online in, if it is.
    fn online_zone(&self, pfn: u64) -> Option<Zone> {
        match block_of(pfn) {
            BOOT => Some(Zone::Normal),
            id => match self.blocks.get(&id)?.state {
                BlockState::Online(z) => Some(z),
                BlockState::Offline => None,
            },
        }
    }
}

/// Pfns the kernel holds from the buddy allocator, read off the page table:
/// table pages and struct pages in system RAM.
fn kernel_pfns(mm: &MemorySystem<ArenaTranslation>) -> BTreeSet<u64> {
    let mut pfns = BTreeSet::new();
    mm.pt.for_each_table(|_, pa| {
        pfns.insert(phys_to_pfn(pa));
    });
    mm.for_each_vmemmap_leaf(|_, size, pa, owner| {
        if owner.is_none() {
            pfns.extend(phys_to_pfn(pa)..phys_to_pfn(pa + size));
        }
    });
    pfns
}

fn expect(
    got: Result<()>,
    want: core::result::Result<(), Errno>,
    op: &Op,
) -> core::result::Result<(), TestCaseError> {
    let got = got.map_err(|e| e.errno);
    prop_assert_eq!(got, want, "{:?}", op);
    Ok(())
}

fn apply(fx: &mut Fx, model: &mut Model, op: &Op) -> core::result::Result<(), TestCaseError> {
    let mm = &mut fx.mm;
    match *op {
        Op::Probe {
            first,
            n,
            memmap_on_memory,
        } => {
            let (start, end) = (start_of(first), start_of(first + n));
            let want = if start < DEV_BASE + DEV_SIZE && DEV_BASE < end {
                Err(Errno::EBUSY)
            } else if (first..first + n).any(|id| model.blocks.contains_key(&id)) {
                Err(Errno::EEXIST)
            } else {
                Ok(())
            };
            mm.memmap_on_memory = memmap_on_memory;
            expect(mm.add_memory(start, end - start), want, op)?;
            if want.is_ok() {
                for id in first..first + n {
                    model.blocks.insert(
                        id,
                        ModelBlock {
                            state: BlockState::Offline,
                            memmap_on_memory,
                        },
                    );
                }
            }
        }
        Op::Online { id, movable } => {
            let id = id.resolve(model);
            let zone = if movable { Zone::Movable } else { Zone::Normal };
            let want = match (id, model.blocks.get(&id)) {
                (BOOT, _) => Err(Errno::EINVAL),
                (_, None) => Err(Errno::ENOENT),
                (_, Some(b)) if b.state != BlockState::Offline => Err(Errno::EINVAL),
                _ => Ok(()),
            };
            expect(mm.online_block(id, zone), want, op)?;
            if want.is_ok() {
                model.blocks.get_mut(&id).unwrap().state = BlockState::Online(zone);
            }
        }
        Op::Offline { id } => {
            let id = id.resolve(model);
            let (s, e) = block_pfns(id);
            let busy = |mm: &MemorySystem<ArenaTranslation>| {
                model.user.range(s..e).next().is_some()
                    || kernel_pfns(mm).range(s..e).next().is_some()
            };
            let want = match (id, model.blocks.get(&id)) {
                (BOOT, _) => Err(Errno::EBUSY),
                (_, None) => Err(Errno::ENOENT),
                (_, Some(b)) if b.state == BlockState::Offline => Err(Errno::EINVAL),
                _ if busy(mm) => Err(Errno::EBUSY),
                _ => Ok(()),
            };
            expect(mm.offline_block(id), want, op)?;
            if want.is_ok() {
                model.blocks.get_mut(&id).unwrap().state = BlockState::Offline;
            }
        }
        Op::Remove { first, n } => {
            let first = first.resolve(model);
            let mut want = Ok(());
            for id in first..first + n {
                let e = match (id, model.blocks.get(&id)) {
                    (BOOT, _) => Some(Errno::EPERM),
                    (_, None) => Some(Errno::EINVAL),
                    (_, Some(b)) if b.state != BlockState::Offline => Some(Errno::EBUSY),
                    _ => None,
                };
                if let Some(e) = e {
                    want = Err(e);
                    break;
                }
            }
            expect(mm.remove_memory(start_of(first), n * BLOCK), want, op)?;
            if want.is_ok() {
                for id in first..first + n {
                    model.blocks.remove(&id);
                }
            }
        }
        Op::DevMap { mem } => {
            let kind = if mem {
                DevMapKind::Mem
            } else {
                DevMapKind::Dev
            };
            let want = if model.dev.is_some() {
                Err(Errno::EBUSY)
            } else {
                Ok(())
            };
            expect(mm.memremap_pages(fx.dev, kind), want, op)?;
            if want.is_ok() {
                model.dev = Some(kind);
            }
        }
        Op::DevUnmap => {
            let want = if model.dev.is_some() {
                Ok(())
            } else {
                Err(Errno::EINVAL)
            };
            expect(mm.memunmap_pages(fx.dev), want, op)?;
            model.dev = None;
        }
        Op::Alloc { movable } => {
            let zone = if movable { Zone::Movable } else { Zone::Normal };
            let kernel = if zone == Zone::Normal {
                kernel_pfns(mm).len() as u64
            } else {
                0
            };
            let free = model.managed(zone) - model.user_in(zone) - kernel;
            let got = mm.buddy.alloc(0, zone);
            prop_assert_eq!(
                got.is_some(),
                free > 0,
                "{:?}: {} pages should be free",
                op,
                free
            );
            if let Some(pfn) = got {
                prop_assert_eq!(
                    model.online_zone(pfn),
                    Some(zone),
                    "{:?} got {:#x}",
                    op,
                    pfn
                );
                prop_assert!(!model.user.contains_key(&pfn));
                prop_assert!(!kernel_pfns(mm).contains(&pfn));
                model.user.insert(pfn, zone);
            }
        }
        Op::Free { which } => {
            if !model.user.is_empty() {
                let pfn = *model.user.keys().nth(which % model.user.len()).unwrap();
                prop_assert!(mm.buddy.free(pfn, 0), "free of user page {:#x}", pfn);
                model.user.remove(&pfn);
            }
        }
        Op::BadFree { which } => {
            let (bs, _) = block_pfns(BOOT);
            let mut never = vec![bs, bs + BOOT_RESERVED - 1];
            if model.dev.is_some() {
                let (ds, de) = dev_pfns();
                never.extend([ds, ds + 1500, de - 1]);
            }
            for (&id, b) in &model.blocks {
                if b.memmap_on_memory {
                    let (s, _) = block_pfns(id);
                    never.extend([s, s + vmemmap_pages_per_block() - 1]);
                }
            }
            let pfn = never[which % never.len()];
            let before = snap(mm);
            prop_assert!(!mm.buddy.free(pfn, 0), "free of {:#x} accepted", pfn);
            model.bad_frees += 1;
            let mut after = snap(mm);
            prop_assert_eq!(after.bad_frees, before.bad_frees + 1);
            after.bad_frees = before.bad_frees;
            prop_assert!(after == before, "a refused free changed something");
        }
    }
    Ok(())
}

fn check_invariants(fx: &Fx, model: &Model) -> core::result::Result<(), TestCaseError> {
    let mm = &fx.mm;
    // Blocks: exactly the model's.
    let got: Vec<_> = mm
        .blocks
        .iter()
        .filter(|(&id, _)| id != BOOT)
        .map(|(&id, b)| (id, b.state, b.boot, b.altmap.is_some()))
        .collect();
    let want: Vec<_> = model
        .blocks
        .iter()
        .map(|(&id, b)| (id, b.state, false, b.memmap_on_memory))
        .collect();
    prop_assert_eq!(got, want);
    prop_assert_eq!(
        block_state(mm, BOOT),
        Some(BlockState::Online(Zone::Normal))
    );
    // Altmaps hold exactly the struct pages of their range.
    for (&id, b) in &mm.blocks {
        if let Some(a) = &b.altmap {
            prop_assert_eq!(
                (a.base_pfn, a.alloc),
                (block_pfns(id).0, vmemmap_pages_per_block())
            );
        }
    }
    let dev = &mm.devmem[fx.dev].mapping;
    prop_assert_eq!(dev.as_ref().map(|m| m.0), model.dev);
    if let Some((kind, altmap)) = dev {
        prop_assert_eq!(altmap.is_some(), *kind == DevMapKind::Dev);
        if let Some(a) = altmap {
            prop_assert_eq!(a.alloc, DEV_SIZE / PAGE_SIZE * 64 / PAGE_SIZE);
        }
    }

    // meminfo, field by field.
    let mi = mm.meminfo();
    let (hosted, in_ram) = model.blocks.values().fold((0, 1), |(h, r), b| {
        if b.memmap_on_memory {
            (h + 1, r)
        } else {
            (h, r + 1)
        }
    });
    let dev_memmap = DEV_SIZE / 64;
    let want = MemInfo {
        total: (model.managed(Zone::Normal) + model.managed(Zone::Movable)) * PAGE_SIZE,
        free: mm.buddy.nr_free_total() * PAGE_SIZE,
        page_tables: mm.pt.stats.tables * PAGE_SIZE,
        vmemmap: in_ram * MEMMAP_PER_BLOCK
            + if model.dev == Some(DevMapKind::Mem) {
                dev_memmap
            } else {
                0
            },
        vmemmap_altmap: hosted * MEMMAP_PER_BLOCK
            + if model.dev == Some(DevMapKind::Dev) {
                dev_memmap
            } else {
                0
            },
        device_mem: if model.dev.is_some() { DEV_SIZE } else { 0 },
    };
    prop_assert_eq!(mi, want);

    // Free pages: what is managed less what users and the kernel hold.
    let kernel = kernel_pfns(mm);
    prop_assert_eq!(
        kernel.len() as u64,
        mm.pt.stats.tables + mi.vmemmap / PAGE_SIZE
    );
    for zone in Zone::BUDDY_ZONES {
        prop_assert_eq!(mm.buddy.managed(zone), model.managed(zone));
        let held = if zone == Zone::Normal {
            kernel.len() as u64
        } else {
            0
        };
        prop_assert_eq!(
            mm.buddy.nr_free(zone),
            model.managed(zone) - model.user_in(zone) - held,
            "free pages in {:?}",
            zone
        );
        // Every free page lies in a block online in its zone, and is
        // neither the kernel's nor a user's.
        let mut bad = None;
        mm.buddy.for_each_free_block(zone, |pfn, order| {
            let end = pfn + (1 << order);
            let ok = block_of(pfn) == block_of(end - 1)
                && model.online_zone(pfn) == Some(zone)
                && kernel.range(pfn..end).next().is_none()
                && model.user.range(pfn..end).next().is_none();
            if !ok && bad.is_none() {
                bad = Some((pfn, order));
            }
        });
        prop_assert_eq!(bad, None, "a misplaced free block in {:?}", zone);
    }
    for &pfn in model.user.keys() {
        // SAFETY: user pages lie in online blocks.
        prop_assert_eq!(unsafe { mm.memmap.get(pfn) }.refcount(), 1);
    }

    // Tables: the second GiB's PMD table exists exactly while something
    // there is mapped; the counters agree with the tree.
    let gib2_used = model.dev.is_some() || model.blocks.keys().any(|&id| start_of(id) >= GIB2);
    prop_assert_eq!(mm.pt.stats.tables, BOOT_TABLES + u64::from(gib2_used));
    prop_assert_eq!(
        mm.pt.stats.tables,
        mm.pt.stats.tables_allocated - mm.pt.stats.tables_freed
    );
    let mut counted = 0;
    mm.pt.for_each_table(|_, _| counted += 1);
    prop_assert_eq!(counted, mm.pt.stats.tables);

    // Present memory translates, absent memory does not.
    for id in P_FIRST..=P_LAST + 2 {
        let present = if start_of(id) >= DEV_BASE {
            model.dev.is_some()
        } else {
            model.blocks.contains_key(&id)
        };
        let (s, e) = block_pfns(id);
        let pa = start_of(id) + 0x1238;
        prop_assert_eq!(
            mm.pt.translate(phys_to_virt(pa)).map(|t| t.0),
            present.then_some(pa),
            "linear map of memory{}",
            id
        );
        prop_assert_eq!(mm.pt.translate(pfn_to_page_va(s)).is_some(), present);
        prop_assert_eq!(mm.pt.translate(pfn_to_page_va(e - 1)).is_some(), present);
        if start_of(id) < DEV_BASE {
            let name = mm
                .iomem
                .find(start_of(id), start_of(id + 1))
                .map(|r| r.name);
            prop_assert_eq!(name, present.then_some("System RAM"));
        }
    }
    prop_assert_eq!(mm.warnings, UnmapWarnings::default());
    prop_assert_eq!(mm.buddy.stats().bad_frees, model.bad_frees);
    Ok(())
}

/// Back to the start: users let go, device memory unmapped, every added
/// block offlined and removed. A block holding the kernel's pages (a table,
/// another block's struct pages) goes once their owner has gone.
fn tear_down(fx: &mut Fx, model: &mut Model) -> core::result::Result<(), TestCaseError> {
    for (pfn, _) in std::mem::take(&mut model.user) {
        prop_assert!(fx.mm.buddy.free(pfn, 0));
    }
    if model.dev.take().is_some() {
        fx.mm.memunmap_pages(fx.dev).unwrap();
    }
    while !model.blocks.is_empty() {
        let mut progress = false;
        for id in model.blocks.keys().copied().collect::<Vec<_>>() {
            if model.blocks[&id].state != BlockState::Offline {
                let busy = kernel_pfns(&fx.mm)
                    .range(block_pfns(id).0..block_pfns(id).1)
                    .next()
                    .is_some();
                let r = fx.mm.offline_block(id);
                prop_assert_eq!(r.is_err(), busy, "offline memory{}", id);
                if busy {
                    continue;
                }
            }
            fx.mm.remove_memory(start_of(id), BLOCK).unwrap();
            model.blocks.remove(&id);
            progress = true;
        }
        prop_assert!(
            progress,
            "blocks left that cannot be removed: {:?}",
            model.blocks
        );
    }
    Ok(())
}

#[test]
fn random_sequences_match_the_model_and_return_to_the_start() {
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(op_strategy(), 1..64);
    runner
        .run(&strategy, |ops| {
            let mut fx = boot();
            let base = snap(&fx.mm);
            let mut model = Model {
                blocks: BTreeMap::new(),
                dev: None,
                user: BTreeMap::new(),
                bad_frees: 0,
            };
            for op in &ops {
                apply(&mut fx, &mut model, op)?;
                check_invariants(&fx, &model)?;
            }
            tear_down(&mut fx, &mut model)?;
            check_invariants(&fx, &model)?;
            let mut end = snap(&fx.mm);
            prop_assert_eq!(end.bad_frees, base.bad_frees + model.bad_frees);
            end.bad_frees = base.bad_frees;
            // The free lists as sets, meminfo, tables and ptdump: exactly
            // as booted.
            prop_assert!(
                end == base,
                "not back at the start:\n{:?}\n{:?}",
                end.meminfo,
                base.meminfo
            );
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// The console's files over the same machine: Linux's formats.

#[test]
fn files_speak_linux_formats() {
    use crate::console::files::Files;
    let mut fx = boot();
    let mut files = Files {
        mm: &mut fx.mm,
        cpus_online: 0b1011,
    };
    let read = |files: &mut Files<ArenaTranslation>, path: &str| {
        let mut s = String::new();
        files
            .read(path, &mut s)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        s
    };
    let meminfo = read(&mut files, "/proc/meminfo");
    for line in meminfo.lines() {
        // `Name:` padded to 16 columns, the value right-aligned in 8.
        assert_eq!(line.len(), 27, "{line:?}");
        assert!(
            line.ends_with(" kB") && line[..16].trim_end().ends_with(':'),
            "{line:?}"
        );
    }
    assert_eq!(
        read(&mut files, "/sys/devices/system/cpu/online"),
        "0-1,3\n"
    );
    assert_eq!(
        read(&mut files, "/sys/devices/system/memory/block_size_bytes"),
        format!("{BLOCK:x}\n")
    );
    assert_eq!(
        read(
            &mut files,
            &format!("/sys/devices/system/memory/memory{BOOT}/phys_index")
        ),
        format!("{BOOT:08x}\n")
    );
    let buddyinfo = read(&mut files, "/proc/buddyinfo");
    let normal = buddyinfo.lines().next().unwrap();
    assert!(normal.starts_with("Node 0, zone   Normal "), "{normal:?}");
    assert_eq!(
        normal.split_whitespace().count(),
        4 + MAX_ORDER as usize + 1,
        "{normal:?}"
    );
    files
        .write(
            "/sys/devices/system/memory/probe",
            &format!("{:#x}", start_of(HOT_FIRST)),
        )
        .unwrap();
    files
        .write(
            &format!("/sys/devices/system/memory/memory{HOT_FIRST}/state"),
            "online_movable",
        )
        .unwrap();
    let buddyinfo = read(&mut files, "/proc/buddyinfo");
    assert!(
        buddyinfo
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("Node 0, zone  Movable ")),
        "{buddyinfo}"
    );
    assert_eq!(
        read(
            &mut files,
            &format!("/sys/devices/system/memory/memory{HOT_FIRST}/valid_zones")
        ),
        "Movable\n"
    );
    let ls = files.list("/sys/devices/system/memory").unwrap();
    assert!(ls.contains(&format!("memory{HOT_FIRST}/")), "{ls:?}");
    let err = files.write("/proc/meminfo", "1").unwrap_err();
    assert_eq!(err.errno, Errno::EPERM);
    let err = files.read("/nope", &mut String::new()).unwrap_err();
    assert_eq!(err.errno, Errno::ENOENT);
}

// ---------------------------------------------------------------------------
// Blocks only partly online (virtio-mem's sub-blocks).

#[test]
fn partly_online_blocks_grow_shrink_and_return_to_the_start() {
    const SUB: u64 = (2 << 20) / PAGE_SIZE;
    for memmap_on_memory in [false, true] {
        let mut fx = boot();
        let base = snap(&fx.mm);
        let id = HOT_FIRST;
        let (spfn, epfn) = block_pfns(id);
        fx.mm.memmap_on_memory = memmap_on_memory;
        fx.mm.add_memory(start_of(id), BLOCK).expect("probe");
        let own = if memmap_on_memory {
            MEMMAP_PER_BLOCK / PAGE_SIZE
        } else {
            0
        };
        // Three sub-blocks online, the rest logically offline.
        fx.mm
            .online_block_partial(id, Zone::Movable, spfn + 3 * SUB)
            .unwrap();
        assert_eq!(fx.mm.buddy.managed(Zone::Movable), 3 * SUB - own);
        // Grow by two sub-blocks, shrink by one.
        fx.mm
            .online_pages_range(id, spfn + 3 * SUB, spfn + 5 * SUB)
            .unwrap();
        assert_eq!(fx.mm.buddy.managed(Zone::Movable), 5 * SUB - own);
        // Online pages cannot be onlined again, nor anything outside.
        let before = snap(&fx.mm);
        assert_eq!(
            errno(fx.mm.online_pages_range(id, spfn + 4 * SUB, spfn + 6 * SUB)),
            Errno::EINVAL
        );
        assert_eq!(
            errno(fx.mm.online_pages_range(id, epfn, epfn + SUB)),
            Errno::EINVAL
        );
        assert_same("refused online_pages_range", &snap(&fx.mm), &before);
        // A page in use keeps its sub-block: EBUSY, nothing changed.
        let used = fx.mm.buddy.alloc(0, Zone::Movable).unwrap();
        let sub = (used - spfn) / SUB;
        let before = snap(&fx.mm);
        assert_eq!(
            errno(
                fx.mm
                    .offline_pages_range(id, spfn + sub * SUB, spfn + (sub + 1) * SUB)
            ),
            Errno::EBUSY
        );
        assert_same("busy offline_pages_range", &snap(&fx.mm), &before);
        assert!(fx.mm.buddy.free(used, 0));
        fx.mm
            .offline_pages_range(id, spfn + 4 * SUB, spfn + 5 * SUB)
            .unwrap();
        assert_eq!(fx.mm.buddy.managed(Zone::Movable), 4 * SUB - own);
        // Offlining the block skips what is logically offline.
        fx.mm.offline_block(id).unwrap();
        fx.mm.remove_memory(start_of(id), BLOCK).unwrap();
        assert_same(
            "partly online block, back to the start",
            &snap(&fx.mm),
            &base,
        );
    }
}
