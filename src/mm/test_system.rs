//! A booted [`MemorySystem`] over a simulated physical arena, for host
//! tests of everything that works on memory: hotplug, drivers, commands,
//! the kernel's files. Booted the way `init` boots the kernel.
//!
//! Struct pages live in a host `Vec<Page>` covering every pfn of the arena
//! (the kernel's vmemmap is virtual), while the page table still gets the
//! vmemmap mappings and their backing pages, exactly as in the kernel.
//!
//! The geometry follows the granule's memory block (a section: 128 MiB with
//! 4K and 16K, 512 MiB with 64K). With 128 MiB blocks (a 2 GiB arena):
//!
//! ```text
//! 0x4000_0000  block 8        boot memory, online Normal, never removable
//! 0x4800_0000  blocks 9..=19  RAM held back from boot (`probe` may add it)
//! 0x8000_0000  (1 GiB line)   4K: the second GiB needs a linear-map PMD table
//! 0xa000_0000  blocks 20, 21  device memory (`memmap=` pmem)
//! 0xb000_0000  blocks 22, 23  neither: `probe` must refuse it
//! ```
//!
//! With 512 MiB blocks (64K; a 4 GiB arena, as calloc'd host memory costs
//! only the pages a test touches):
//!
//! ```text
//! 0x0_4000_0000  block 2       boot memory
//! 0x0_6000_0000  blocks 3..=5  RAM held back from boot
//! 0x0_c000_0000  blocks 6, 7   device memory
//! 0x1_0000_0000  blocks 8, 9   neither
//! ```
//!
//! The boot tables (root, linear tables, vmemmap tables) come from the
//! buddy allocator, as do the boot block's struct pages.

use alloc::vec;
use alloc::vec::Vec;

use super::addr::{memmap_range, Pfn, PhysAddr, PhysRange};
use super::buddy::BuddyAllocator;
use super::layout::*;
use super::page::{Memmap, Page, PageFlags, Zone};
use super::pgtable::{Attributes, MapHints, PageTable, VaRange};
use super::system::{block_id, block_pfns, block_range, MemorySystem};
use super::testing::{Arena, ArenaTranslation};
use super::vmemmap::vmemmap_populate;

pub const MIB: u64 = 1 << 20;
pub const ARENA_BASE: PhysAddr = PhysAddr::new(0x4000_0000);
pub const BLOCK: u64 = MEMORY_BLOCK_SIZE;
pub const BLOCK_PAGES: u64 = PAGES_PER_SECTION;
/// The boot block's id (`memory8`, `memory2` with 64K).
pub const BOOT: u64 = ARENA_BASE.as_u64() / BLOCK;
/// Pages at the start of boot memory left reserved (kernel image, DTB).
pub const BOOT_RESERVED: u64 = 16;
/// RAM held back from boot: blocks `HOT_FIRST..HOT_END`.
pub const HOT_FIRST: u64 = BOOT + 1;
pub const HOT_END: u64 = HOT_FIRST + if BLOCK == 128 * MIB { 11 } else { 3 };
pub const DEV_BASE: PhysAddr = PhysAddr::new(HOT_END * BLOCK);
pub const DEV_SIZE: u64 = 2 * BLOCK;
/// Arena memory that is neither boot, held back nor device memory.
pub const NOT_RAM: PhysAddr = PhysAddr::new(DEV_BASE.as_u64() + DEV_SIZE);
pub const ARENA_END: PhysAddr = PhysAddr::new(NOT_RAM.as_u64() + 2 * BLOCK);
pub const ARENA_SIZE: u64 = ARENA_END.as_u64() - ARENA_BASE.as_u64();
/// Where the boot tables stop covering the linear map: with 4K a level-1
/// entry maps 1 GiB, so the second GiB needs a PMD table of its own; with
/// 16K (64 GiB) and 64K (4 TiB) the boot tables cover the whole arena.
pub const GIB2: PhysAddr = match PAGE_SHIFT {
    12 => PhysAddr::new(0x8000_0000),
    _ => ARENA_END,
};
/// Table pages after boot. 4K: root, linear PUD + PMD, vmemmap PUD + PMD
/// (2 MiB vmemmap blocks). 16K: root, linear L1 + L2, vmemmap L1 + L2 + L3
/// (base pages). 64K (three levels): root, linear L2, vmemmap L2 + L3.
pub const BOOT_TABLES: u64 = match PAGE_SHIFT {
    12 => 5,
    14 => 6,
    _ => 4,
};
// The geometry above exists for 128 and 512 MiB blocks only.
const _: () = assert!(BLOCK == 128 * MIB || BLOCK == 512 * MIB);

/// Struct pages of one block, in bytes.
pub const MEMMAP_PER_BLOCK: u64 = BLOCK / PAGE_SIZE * 64;

pub fn start_of(id: u64) -> PhysAddr {
    block_range(id).base
}

pub fn block_of(pfn: Pfn) -> u64 {
    block_id(pfn.phys())
}

pub fn dev_pfns() -> (Pfn, Pfn) {
    (Pfn::down(DEV_BASE), Pfn::down(DEV_BASE + DEV_SIZE))
}

/// The system and the host memory behind it (dropped after it).
pub struct TestSystem {
    pub mm: MemorySystem<ArenaTranslation>,
    /// The id of the `memmap=` pmem region.
    pub dev: usize,
    _pages: Vec<Page>,
    _arena: Arena,
}

impl TestSystem {
    /// Boots a system the way `init` does: every struct page of the boot
    /// block `RESERVED | ONLINE`, what is free (all but the first pages) given
    /// to the buddy allocator, then the boot block's linear map and vmemmap
    /// from it.
    pub fn boot() -> Self {
        let nr_pages = (ARENA_SIZE / PAGE_SIZE) as usize;
        let arena = Arena::new(ARENA_BASE, nr_pages, PAGE_SIZE);
        // Every pfn of the arena has a struct page; only those of present
        // memory are ever initialised and looked at.
        let mut pages = vec![Page::new(Zone::Normal, PageFlags::RESERVED); nr_pages];
        let memmap = Memmap::for_slice(&mut pages, Pfn::down(ARENA_BASE));
        let (bs, be) = block_pfns(BOOT);
        // Struct pages are never zeroed: what a block finds in them before
        // they are initialised is garbage, so that reading one without the
        // rule of deferred struct pages (`page.rs`) shows.
        // SAFETY: `pages` covers the arena and nothing references it yet.
        unsafe { memmap.poison_range(memmap.start_pfn(), memmap.end_pfn()) };
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
            buddy.online_pages(
                bs + BOOT_RESERVED,
                be - (bs + BOOT_RESERVED),
                Zone::Normal,
                0
            ),
            BLOCK_PAGES - BOOT_RESERVED
        );
        let mut pt = PageTable::new(arena.translation(), &mut buddy).expect("root table");
        let linear = VaRange::new(ARENA_BASE.to_virt(), (ARENA_BASE + BLOCK).to_virt());
        pt.map_range(
            linear,
            ARENA_BASE,
            Attributes::KERNEL_RW,
            MapHints::blocks(1 << 30).with_contiguous(),
            &mut buddy,
        )
        .expect("boot linear map");
        let (vstart, vend) = memmap_range(bs, be);
        vmemmap_populate(&mut pt, vstart, vend, None, &mut buddy).expect("boot vmemmap");
        assert_eq!(pt.stats.tables, BOOT_TABLES);

        let mut mm = MemorySystem::new(pt, buddy, memmap);
        mm.register_boot_memory(PhysRange::new(ARENA_BASE, BLOCK));
        mm.add_hotpluggable_range(PhysRange::new(
            start_of(HOT_FIRST),
            (HOT_END - HOT_FIRST) * BLOCK,
        ));
        let pmem = PhysRange::new(DEV_BASE, DEV_SIZE);
        let dev = mm.register_device_memory(pmem, "pmem", "Persistent Memory (legacy)");
        TestSystem {
            mm,
            dev,
            _pages: pages,
            _arena: arena,
        }
    }
}
