//! The machine's memory as one object: the kernel page table, the struct
//! pages, the buddy allocator, memory blocks and device memory. Generic over
//! how table pages are reached, so that all of it runs in host tests.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::altmap::VmemAltmap;
use super::buddy::BuddyAllocator;
use super::frame::FrameAllocator;
use super::granule::KernelGranule;
use super::iomem::IoMem;
use super::layout::*;
use super::page::{Memmap, PageFlags, Zone};
use super::pgtable::unmap::UnmapWarnings;
use super::pgtable::{MapError, PageTable, Translation};
use crate::platform::PhysRange;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    Online(Zone),
    Offline,
}

/// One memory block (`/sys/devices/system/memory/memoryN`), one section.
#[derive(Clone, Debug)]
pub struct MemoryBlock {
    pub state: BlockState,
    /// Present since boot: never removable.
    pub boot: bool,
    /// `memmap_on_memory`: the block's struct pages live at its start.
    pub altmap: Option<VmemAltmap>,
    /// The driver that added it (its `/proc/iomem` name), if not `probe`.
    pub owner: Option<&'static str>,
}

pub fn block_pfns(id: u64) -> (u64, u64) {
    let start = phys_to_pfn(id * MEMORY_BLOCK_SIZE);
    (start, start + PAGES_PER_SECTION)
}

/// How `devmem map` keeps the struct pages of device memory (ndctl's words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevMapKind {
    /// On the device itself, through an altmap.
    Dev,
    /// In system RAM.
    Mem,
}

/// A device-memory region: `memmap=` pmem or a device BAR.
#[derive(Clone, Debug)]
pub struct DevMem {
    pub range: PhysRange,
    pub owner: &'static str,
    /// `Some` while mapped as ZONE_DEVICE (Linux's `memremap_pages`).
    pub mapping: Option<(DevMapKind, Option<VmemAltmap>)>,
}

/// Counters for `/proc/vmstat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    pub hotplug_add: u64,
    pub hotplug_remove: u64,
    pub online: u64,
    pub offline: u64,
    pub devmem_map: u64,
    pub devmem_unmap: u64,
}

pub struct MemorySystem<T: Translation> {
    pub pt: PageTable<T, KernelGranule>,
    pub buddy: BuddyAllocator,
    pub memmap: Memmap,
    pub blocks: BTreeMap<u64, MemoryBlock>,
    pub iomem: IoMem,
    /// RAM the platform describes that boot left alone (above `mem=`).
    pub hotpluggable: Vec<PhysRange>,
    pub devmem: Vec<DevMem>,
    /// Default for hot-added blocks (boot parameter and sysfs file).
    pub memmap_on_memory: bool,
    pub warnings: UnmapWarnings,
    pub events: Events,
    /// Fault injection: the allocation this many allocations from now fails.
    pub fail_nth_alloc: Option<u64>,
}

/// The frame allocator every mm operation uses: the buddy allocator's
/// Normal zone, with fault injection.
pub struct Frames<'a> {
    buddy: &'a mut BuddyAllocator,
    fail_nth: &'a mut Option<u64>,
}

impl FrameAllocator for Frames<'_> {
    fn alloc_pages(&mut self, order: u32) -> Option<u64> {
        match self.fail_nth {
            Some(0) => {
                *self.fail_nth = None;
                return None;
            }
            Some(n) => *n -= 1,
            None => {}
        }
        self.buddy.alloc_pages(order)
    }

    fn free_pages(&mut self, pa: u64, order: u32) {
        self.buddy.free_pages(pa, order)
    }

    fn is_reserved(&self, pa: u64) -> bool {
        self.buddy.is_reserved(pa)
    }
}

/// Disjoint borrows of the parts an operation needs at once.
pub struct Parts<'a, T: Translation> {
    pub pt: &'a mut PageTable<T, KernelGranule>,
    pub frames: Frames<'a>,
    pub warnings: &'a mut UnmapWarnings,
}

/// What `/proc/meminfo` shows, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub page_tables: u64,
    pub vmemmap: u64,
    pub vmemmap_altmap: u64,
    pub device_mem: u64,
}

impl MemInfo {
    pub const FIELDS: [&'static str; 6] = [
        "MemTotal",
        "MemFree",
        "PageTables",
        "Vmemmap",
        "VmemmapAltmap",
        "DeviceMem",
    ];

    pub fn values(&self) -> [u64; 6] {
        [
            self.total,
            self.free,
            self.page_tables,
            self.vmemmap,
            self.vmemmap_altmap,
            self.device_mem,
        ]
    }
}

impl<T: Translation> MemorySystem<T> {
    pub fn new(pt: PageTable<T, KernelGranule>, buddy: BuddyAllocator, memmap: Memmap) -> Self {
        Self {
            pt,
            buddy,
            memmap,
            blocks: BTreeMap::new(),
            iomem: IoMem::default(),
            hotpluggable: Vec::new(),
            devmem: Vec::new(),
            memmap_on_memory: false,
            warnings: UnmapWarnings::default(),
            events: Events::default(),
            fail_nth_alloc: None,
        }
    }

    pub fn parts(&mut self) -> Parts<'_, T> {
        Parts {
            pt: &mut self.pt,
            frames: Frames {
                buddy: &mut self.buddy,
                fail_nth: &mut self.fail_nth_alloc,
            },
            warnings: &mut self.warnings,
        }
    }

    /// Every altmap in use, with the name `/sys/kernel/debug/vmemmap` gives.
    pub fn altmaps(&self) -> impl Iterator<Item = (&VmemAltmap, &'static str)> {
        let blocks = self
            .blocks
            .values()
            .filter_map(|b| b.altmap.as_ref().map(|a| (a, "memmap_on_memory")));
        let devs = self.devmem.iter().filter_map(|d| match &d.mapping {
            Some((_, Some(a))) => Some((a, d.owner)),
            _ => None,
        });
        blocks.chain(devs)
    }

    /// Which altmap, if any, backs the vmemmap page at `pa`: one that
    /// handed it out, not merely one whose range holds it (an online
    /// `memmap_on_memory` block gives the rest of its pages to the buddy
    /// allocator, and so to other blocks' struct pages).
    pub fn altmap_owner(&self, pa: u64) -> Option<&'static str> {
        self.altmaps()
            .find(|(a, _)| a.is_allocated(phys_to_pfn(pa)))
            .map(|(_, owner)| owner)
    }

    /// Calls `f(va, size, pa, owner)` for each vmemmap leaf, `owner` naming
    /// the altmap that backs it (`None`: system RAM).
    pub fn for_each_vmemmap_leaf(&self, mut f: impl FnMut(u64, u64, u64, Option<&'static str>)) {
        let range = super::pgtable::VaRange::new(VMEMMAP_START, VMEMMAP_END);
        self.pt.for_each_leaf(range, |va, size, _, d| {
            let pa = d.output_address();
            f(va, size, pa, self.altmap_owner(pa));
        });
    }

    pub fn meminfo(&self) -> MemInfo {
        let (mut vmemmap, mut vmemmap_altmap) = (0, 0);
        self.for_each_vmemmap_leaf(|_, size, _, owner| match owner {
            Some(_) => vmemmap_altmap += size,
            None => vmemmap += size,
        });
        let managed = Zone::BUDDY_ZONES
            .iter()
            .map(|&z| self.buddy.managed(z))
            .sum::<u64>();
        MemInfo {
            total: managed * PAGE_SIZE,
            free: self.buddy.nr_free_total() * PAGE_SIZE,
            page_tables: self.pt.stats.tables * PAGE_SIZE,
            vmemmap,
            vmemmap_altmap,
            device_mem: self
                .devmem
                .iter()
                .filter(|d| d.mapping.is_some())
                .map(|d| d.range.size)
                .sum(),
        }
    }

    /// Marks `[start_pfn, end_pfn)` with fresh struct pages.
    pub fn init_struct_pages(
        &mut self,
        start_pfn: u64,
        end_pfn: u64,
        zone: Zone,
        flags: PageFlags,
    ) {
        // SAFETY: callers populate the vmemmap of the range first.
        unsafe { self.memmap.init_range(start_pfn, end_pfn, zone, flags) }
    }

    pub fn page_flags_set(&mut self, pfn: u64, flags: PageFlags) {
        // SAFETY: only called for pfns whose vmemmap is populated.
        unsafe { self.memmap.get(pfn) }.set_flags(flags);
    }
}

/// A walker error as the errno the console reports.
pub fn map_errno(e: MapError) -> crate::console::Error {
    match e {
        MapError::NoMemory => crate::err!(ENOMEM, "out of memory for page tables or struct pages"),
        MapError::AlreadyMapped(va) => crate::err!(EEXIST, "{va:#x} is mapped already"),
        MapError::Misaligned => crate::err!(EINVAL, "range not page aligned"),
    }
}
