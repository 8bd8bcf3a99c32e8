//! Host tests of memory hotplug as a whole, over the booted arena system
//! of [`super::test_system`]: probe / online / offline / remove and `devmem
//! map` / `unmap`, with fault injection at every allocation and a property
//! test against a model. The tests are by topic in the submodules.

#![cfg(not(any(feature = "granule-16k", feature = "granule-64k")))]

mod altmap;
mod bad_input;
mod cycles;
mod deferred;
mod devmem;
mod faults;
mod heap_faults;
mod migrate;
mod misuse;
mod model;
mod online;
mod reserved;

use super::altmap::VmemAltmap;
use super::layout::*;
use super::page::{PageFlags, Zone};
use super::pgtable::unmap::UnmapWarnings;
use super::pgtable::VaRange;
use super::system::{block_pfns, block_range, BlockState, DevMapKind, MemInfo, MemorySystem};
use super::testing::ArenaTranslation;
use crate::error::{Errno, Result};
use crate::mm::layout::MARKERS;

use super::addr::{Pfn, PhysAddr, PhysRange, VirtAddr};
use super::test_system::*;

/// The fixture every test starts from.
fn boot() -> Fx {
    TestSystem::boot()
}

type Fx = TestSystem;

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

/// Whether the kernel log holds a line ending with `msg`.
fn logged(msg: &str) -> bool {
    let mut text = String::new();
    crate::log::for_each_chunk(|b| text.push_str(&String::from_utf8_lossy(b)));
    text.lines().any(|l| l.ends_with(msg))
}

/// A digest of the struct pages that describe present memory: online
/// blocks, the self-hosted struct pages of offline ones (the rest of an
/// offline block's struct pages are initialised only when it is onlined),
/// mapped device memory. Blind to what does not describe state: free-list
/// links, the stale order of pages that are no free block's head.
fn memmap_digest(mm: &MemorySystem<ArenaTranslation>) -> u64 {
    let mut ranges: Vec<(Pfn, Pfn)> = Vec::new();
    for (&id, b) in &mm.blocks {
        match (b.state, &b.altmap) {
            (BlockState::Online(_), _) => ranges.push(block_pfns(id)),
            (BlockState::Offline, Some(a)) => ranges.push((a.base_pfn + a.reserve, a.next_pfn())),
            (BlockState::Offline, None) => {}
        }
    }
    for d in mm.devmem.iter().filter(|d| d.mapping.is_some()) {
        ranges.push((Pfn::down(d.range.base), Pfn::down(d.range.end())));
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |v: u64| h = (h ^ v).wrapping_mul(0x0100_0000_01b3);
    for (s, e) in ranges {
        mix(s.as_u64());
        for pfn in Pfn::range(s, e) {
            // SAFETY: present memory has its vmemmap populated; `read`
            // applies the rule of deferred struct pages.
            let p = unsafe { mm.memmap.read(pfn) };
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
    table_pages: Vec<(usize, PhysAddr)>,
    /// Every leaf of the kernel half: `(va, size, level, descriptor)`.
    leaves: Vec<(VirtAddr, u64, usize, u64)>,
    ptdump: String,
    nr_free: [u64; 2],
    managed: [u64; 2],
    /// The free blocks `(pfn, order, zone)`, sorted.
    free_blocks: Vec<(Pfn, u32, Zone)>,
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
    let kernel_half = VaRange::new(VirtAddr::new(PAGE_OFFSET), VirtAddr::new(u64::MAX));
    mm.pt.for_each_leaf(kernel_half, |va, size, level, d| {
        leaves.push((va, size, level, d.0))
    });
    let mut free_blocks = Vec::new();
    for zone in Zone::BUDDY_ZONES {
        mm.buddy
            .lock()
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
        nr_free: Zone::BUDDY_ZONES.map(|z| mm.buddy.lock().nr_free(z)),
        managed: Zone::BUDDY_ZONES.map(|z| mm.buddy.lock().managed(z)),
        free_blocks,
        bad_frees: mm.buddy.lock().stats().bad_frees,
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
fn errno<T: core::fmt::Debug, E: Into<crate::error::Error>>(
    r: core::result::Result<T, E>,
) -> Errno {
    match r {
        Ok(v) => panic!("the operation must fail, gave {v:?}"),
        Err(e) => e.into().errno,
    }
}

fn block_state(mm: &MemorySystem<ArenaTranslation>, id: u64) -> Option<BlockState> {
    mm.blocks.get(&id).map(|b| b.state)
}
