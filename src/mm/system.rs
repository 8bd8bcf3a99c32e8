//! The machine's memory as one object: the kernel page table, the struct
//! pages, the buddy allocator, memory blocks and device memory. Generic over
//! how table pages are reached, so that all of it runs in host tests.

use alloc::collections::TryReserveError;
use alloc::vec::Vec;

use super::addr::{Pfn, PhysAddr, PhysRange, VirtAddr};
use super::altmap::VmemAltmap;
use super::buddy::{BuddyAllocator, ZoneLock};
use super::frame::FrameAllocator;
use super::granule::KernelGranule;
use super::iomem::IoMem;
use super::layout::*;
use super::node::{NodeMask, Topology, MAX_NUMNODES};
use super::page::{Memmap, PageFlags, Zone};
use super::pgtable::unmap::UnmapWarnings;
use super::pgtable::{PageTable, Translation};
use crate::arch::lock::FairLockGuard;

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
    /// For driver-owned memory, which parts its device has plugged: every
    /// online (the driver's or a user's `echo online > state`) gives only
    /// those to the buddy allocator. `None`: all of it is memory.
    pub plugged: Option<PlugMask>,
    /// The NUMA node (Linux's `memory_block->nid`): the DT's for boot
    /// memory and `probe`, the device's for a driver's.
    pub nid: usize,
    /// Onlined since it was added (boot memory: from the start): the heads
    /// of its max-order blocks are written struct pages (`page.rs`).
    pub onlined: bool,
}

/// The parts of a driver-owned memory block that its device has plugged,
/// in sub-blocks of `1 << sub_shift` bytes. Linux's virtio-mem keeps this
/// in the driver and answers the mm through an online-page callback; kept
/// here, every online path asks the same question without the mm calling
/// into a driver. Fixed size: at most [`PlugMask::MAX_SUB_BLOCKS`]
/// sub-blocks (a driver with smaller device blocks groups them, as Linux's
/// sub-block size is at least a pageblock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlugMask {
    sub_shift: u32,
    bits: [u64; PlugMask::WORDS],
}

impl PlugMask {
    pub const MAX_SUB_BLOCKS: u64 = 512;
    const WORDS: usize = (Self::MAX_SUB_BLOCKS / 64) as usize;

    /// An empty mask of sub-blocks of `sub_size` bytes: a power of two
    /// from [`MEMORY_BLOCK_SIZE`] / 512 (and a page) to the memory block.
    pub fn new(sub_size: u64) -> Option<Self> {
        let fits = sub_size.is_power_of_two()
            && (PAGE_SIZE..=MEMORY_BLOCK_SIZE).contains(&sub_size)
            && MEMORY_BLOCK_SIZE / sub_size <= Self::MAX_SUB_BLOCKS;
        fits.then(|| PlugMask {
            sub_shift: sub_size.trailing_zeros(),
            bits: [0; Self::WORDS],
        })
    }

    /// The whole block plugged, as one sub-block.
    pub fn full() -> Self {
        let mut m = Self::new(MEMORY_BLOCK_SIZE).expect("the block is one sub-block");
        m.set(0, true);
        m
    }

    pub fn sub_size(&self) -> u64 {
        1 << self.sub_shift
    }

    /// Sub-blocks per memory block.
    pub fn len(&self) -> u64 {
        MEMORY_BLOCK_SIZE >> self.sub_shift
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    pub fn get(&self, i: u64) -> bool {
        i < self.len() && self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// An index past the block is refused in every build: it would name
    /// pages outside the block ([`pfns`](Self::pfns)).
    pub fn set(&mut self, i: u64, on: bool) {
        if i >= self.len() {
            return;
        }
        let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
        if on {
            self.bits[w] |= b;
        } else {
            self.bits[w] &= !b;
        }
    }

    /// Plugged sub-blocks.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// The runs of sub-blocks alike, in order: `(plugged, first, count)`.
    pub fn runs(&self) -> impl Iterator<Item = (bool, u64, u64)> + '_ {
        let mut i = 0;
        core::iter::from_fn(move || {
            let first = i;
            let plugged = self.get(first);
            while i < self.len() && self.get(i) == plugged {
                i += 1;
            }
            (i > first).then(|| (plugged, first, i - first))
        })
    }

    /// The pfns of sub-block `i` of block `id`.
    pub fn pfns(&self, id: u64, i: u64) -> (Pfn, Pfn) {
        let start = Pfn::down(block_range(id).base + (i << self.sub_shift));
        (start, start + (self.sub_size() >> PAGE_SHIFT))
    }
}

/// The memory blocks by id: a sorted vector with a fallible insert (a
/// `BTreeMap` cannot report a failed allocation: it aborts), read like a
/// `BTreeMap`. A hot-add reserves its room first and fails with `ENOMEM`
/// and nothing changed.
#[derive(Clone, Debug, Default)]
pub struct BlockMap(Vec<(u64, MemoryBlock)>);

impl BlockMap {
    fn find(&self, id: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, |(k, _)| *k)
    }

    pub fn get(&self, id: &u64) -> Option<&MemoryBlock> {
        self.find(*id).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, id: &u64) -> Option<&mut MemoryBlock> {
        self.find(*id).ok().map(|i| &mut self.0[i].1)
    }

    pub fn contains_key(&self, id: &u64) -> bool {
        self.find(*id).is_ok()
    }

    /// Room for `n` more blocks, so that as many inserts cannot fail.
    pub fn try_reserve(&mut self, n: usize) -> Result<(), TryReserveError> {
        self.0.try_reserve(n)
    }

    /// Inserts or replaces block `id`; `Err` (nothing changed) when there
    /// is no memory for it.
    pub fn try_insert(&mut self, id: u64, block: MemoryBlock) -> Result<(), TryReserveError> {
        match self.find(id) {
            Ok(i) => self.0[i].1 = block,
            Err(i) => {
                self.0.try_reserve(1)?;
                self.0.insert(i, (id, block));
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, id: &u64) -> Option<MemoryBlock> {
        self.find(*id).ok().map(|i| self.0.remove(i).1)
    }

    /// `(id, block)` in id order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&u64, &MemoryBlock)> + Clone {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &u64> + Clone {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &MemoryBlock> + Clone {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No spare room: the next insert must allocate (fault-injection tests,
    /// which run on the 4K host build).
    #[cfg(all(test, not(any(feature = "granule-16k", feature = "granule-64k"))))]
    pub(in crate::mm) fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl core::ops::Index<&u64> for BlockMap {
    type Output = MemoryBlock;

    /// Like `BTreeMap`'s: for ids known to be present.
    fn index(&self, id: &u64) -> &MemoryBlock {
        self.get(id).expect("no such memory block")
    }
}

impl<'a> IntoIterator for &'a BlockMap {
    type Item = (&'a u64, &'a MemoryBlock);
    type IntoIter = core::iter::Map<
        core::slice::Iter<'a, (u64, MemoryBlock)>,
        fn(&'a (u64, MemoryBlock)) -> (&'a u64, &'a MemoryBlock),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// The physical range of memory block `id`.
pub fn block_range(id: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(id * MEMORY_BLOCK_SIZE), MEMORY_BLOCK_SIZE)
}

/// The memory block that holds `pa`.
pub fn block_id(pa: PhysAddr) -> u64 {
    pa.as_u64() / MEMORY_BLOCK_SIZE
}

/// The pfns of memory block `id`, `[start, end)`.
pub fn block_pfns(id: u64) -> (Pfn, Pfn) {
    let start = Pfn::down(block_range(id).base);
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

/// Fields are the mm core's own: the rest of the kernel goes through the
/// boot API, the hotplug operations and the read accessors below.
pub struct MemorySystem<T: Translation> {
    pub(in crate::mm) pt: PageTable<T, KernelGranule>,
    /// The page allocator, behind its own lock (`buddy.rs`): reached by the
    /// per-CPU lists' slow paths without the memory lock, so shared rather
    /// than owned.
    pub(in crate::mm) buddy: &'static ZoneLock,
    /// The allocator's NUMA topology, fixed at boot: read without the
    /// zone lock.
    pub(in crate::mm) topo: Topology,
    pub(in crate::mm) memmap: Memmap,
    pub(in crate::mm) blocks: BlockMap,
    pub(in crate::mm) iomem: IoMem,
    /// RAM the platform describes that boot left alone (above `mem=`).
    pub(in crate::mm) hotpluggable: Vec<PhysRange>,
    pub(in crate::mm) devmem: Vec<DevMem>,
    /// What the firmware reserves (the DT): never hot-added.
    pub(in crate::mm) reserved: Vec<PhysRange>,
    /// Default for hot-added blocks (boot parameter and sysfs file).
    pub(in crate::mm) memmap_on_memory: bool,
    /// `auto_online_blocks` and the online policy.
    pub(in crate::mm) online_config: super::online::OnlineConfig,
    pub(in crate::mm) warnings: UnmapWarnings,
    pub(in crate::mm) events: Events,
    /// Fault injection: the allocation this many allocations from now fails.
    pub(in crate::mm) fail_nth_alloc: Option<u64>,
    /// The per-CPU page lists: reached without the memory lock by their
    /// fast paths, so shared rather than owned.
    pub(in crate::mm) pcp: &'static super::pcp::Pcp,
    /// Linux's `N_ONLINE`: nodes with memory or CPUs at boot, and those
    /// memory was hot-added to since (until it is all removed again).
    pub(in crate::mm) node_online: NodeMask,
    /// Anonymous memory (`memhog`) and its migration counters.
    pub(in crate::mm) anon: super::anon::AnonMm,
}

/// The frame allocator every mm operation uses: the buddy allocator's
/// Normal zone, with fault injection.
/// Takes the zone lock for each call, not for a whole walk.
pub struct Frames<'a> {
    buddy: &'static ZoneLock,
    fail_nth: &'a mut Option<u64>,
    pcp: &'static super::pcp::Pcp,
}

impl FrameAllocator for Frames<'_> {
    fn alloc_pages(&mut self, order: u32) -> Option<PhysAddr> {
        if fail_nth_hit(self.fail_nth) {
            return None;
        }
        self.pcp
            .or_drain(&mut self.buddy.lock(), |b| b.alloc_pages(order))
    }

    /// The largest block `max` allows, split; one page (from the per-CPU
    /// lists if need be) when no such block is free.
    fn alloc_page_run(&mut self, max: u64) -> Option<(PhysAddr, u64)> {
        let order = max.max(1).ilog2().min(MAX_ORDER);
        if order > 0 {
            if fail_nth_hit(self.fail_nth) {
                return None;
            }
            let mut buddy = self.buddy.lock();
            if let Some(pfn) = buddy.alloc(order, Zone::Normal) {
                buddy.split_page(pfn, order);
                return Some((pfn.phys(), 1 << order));
            }
        }
        self.alloc_pages(0).map(|pa| (pa, 1))
    }

    fn free_pages(&mut self, pa: PhysAddr, order: u32) {
        crate::arch::trace::check_free(pa.as_u64(), PAGE_SIZE << order);
        self.buddy.lock().free_pages(pa, order)
    }

    fn is_reserved(&self, pa: PhysAddr) -> bool {
        self.buddy.lock().is_reserved(pa)
    }
}

/// Fault injection (`fail_nth_alloc`): counts one allocation down; whether
/// it is the one to fail.
pub(in crate::mm) fn fail_nth_hit(fail_nth: &mut Option<u64>) -> bool {
    match fail_nth {
        Some(0) => {
            *fail_nth = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}

/// Disjoint borrows of the parts an operation needs at once.
pub(in crate::mm) struct Parts<'a, T: Translation> {
    pub pt: &'a mut PageTable<T, KernelGranule>,
    pub frames: Frames<'a>,
    pub warnings: &'a mut UnmapWarnings,
}

/// What `/proc/meminfo` shows, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    /// Anonymous memory mapped (`memhog`), Linux's `AnonPages:`.
    pub anon: u64,
    /// The kernel heap's blocks (Linux's `Slab:`, the kernel's own objects).
    pub slab: u64,
    pub page_tables: u64,
    pub vmemmap: u64,
    pub vmemmap_altmap: u64,
    pub device_mem: u64,
}

impl MemInfo {
    pub const FIELDS: [&'static str; 8] = [
        "MemTotal",
        "MemFree",
        "AnonPages",
        "Slab",
        "PageTables",
        "Vmemmap",
        "VmemmapAltmap",
        "DeviceMem",
    ];

    pub fn values(&self) -> [u64; 8] {
        [
            self.total,
            self.free,
            self.anon,
            self.slab,
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
            topo: *buddy.topology(),
            buddy: super::buddy::new_zone(buddy),
            memmap,
            blocks: BlockMap::default(),
            iomem: IoMem::default(),
            hotpluggable: Vec::new(),
            devmem: Vec::new(),
            reserved: Vec::new(),
            memmap_on_memory: false,
            online_config: Default::default(),
            warnings: UnmapWarnings::default(),
            events: Events::default(),
            fail_nth_alloc: None,
            pcp: super::pcp::new_pcp(),
            node_online: {
                let mut m = NodeMask::none();
                m.set(0);
                m
            },
            anon: Default::default(),
        }
    }

    pub(in crate::mm) fn parts(&mut self) -> Parts<'_, T> {
        Parts {
            pt: &mut self.pt,
            frames: Frames {
                buddy: self.buddy,
                fail_nth: &mut self.fail_nth_alloc,
                pcp: self.pcp,
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
    pub fn altmap_owner(&self, pa: PhysAddr) -> Option<&'static str> {
        self.altmaps()
            .find(|(a, _)| a.is_allocated(Pfn::down(pa)))
            .map(|(_, owner)| owner)
    }

    /// Calls `f(va, size, pa, owner)` for each vmemmap leaf, `owner` naming
    /// the altmap that backs it (`None`: system RAM).
    pub fn for_each_vmemmap_leaf(
        &self,
        mut f: impl FnMut(VirtAddr, u64, PhysAddr, Option<&'static str>),
    ) {
        let range =
            super::pgtable::VaRange::new(VirtAddr::new(VMEMMAP_START), VirtAddr::new(VMEMMAP_END));
        self.pt.for_each_leaf(range, |va, size, _, d| {
            let pa = d.output_address();
            f(va, size, pa, self.altmap_owner(pa));
        });
    }

    /// Free pages as `MemFree:` counts them: pages on per-CPU lists are
    /// free too (see `pcp`).
    pub fn nr_free_pages(&self) -> u64 {
        self.buddy.lock().nr_free_total() + self.pcp.nr_pages()
    }

    pub fn meminfo(&self) -> MemInfo {
        let (mut vmemmap, mut vmemmap_altmap) = (0, 0);
        self.for_each_vmemmap_leaf(|_, size, _, owner| match owner {
            Some(_) => vmemmap_altmap += size,
            None => vmemmap += size,
        });
        let buddy = self.buddy.lock();
        let managed = Zone::BUDDY_ZONES
            .iter()
            .map(|&z| buddy.managed(z))
            .sum::<u64>();
        drop(buddy);
        MemInfo {
            total: managed * PAGE_SIZE,
            free: self.nr_free_pages() * PAGE_SIZE,
            anon: self.anon.nr_pages() * PAGE_SIZE,
            slab: super::heap::kernel().map_or(0, |h| h.stats().bytes),
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
        start_pfn: Pfn,
        end_pfn: Pfn,
        zone: Zone,
        flags: PageFlags,
    ) {
        self.init_struct_pages_on(start_pfn, end_pfn, zone, 0, flags)
    }

    /// [`init_struct_pages`](Self::init_struct_pages) for node `nid`.
    pub fn init_struct_pages_on(
        &mut self,
        start_pfn: Pfn,
        end_pfn: Pfn,
        zone: Zone,
        nid: usize,
        flags: PageFlags,
    ) {
        // SAFETY: callers populate the vmemmap of the range first.
        unsafe {
            self.memmap
                .init_range_on(start_pfn, end_pfn, zone, nid, flags)
        }
    }

    pub fn page_flags_set(&mut self, pfn: Pfn, flags: PageFlags) {
        // SAFETY: only called for pfns whose vmemmap is populated.
        unsafe {
            self.memmap.ensure_init(pfn);
            self.memmap.get(pfn).set_flags(flags);
        }
    }

    /// Whether onlining defers struct pages (`page.rs`); on by default,
    /// off to compare against (tests, `bench`).
    pub fn deferred_memmap_init(&self) -> bool {
        self.buddy.lock().defer_init()
    }

    pub fn set_deferred_memmap_init(&mut self, on: bool) {
        self.buddy.lock().set_defer_init(on);
    }
}

/// Boot: what init tells the memory system about the machine, once, before
/// anything else uses it.
impl<T: Translation> MemorySystem<T> {
    /// RAM present at boot: its sections become online, unremovable memory
    /// blocks (their struct pages are initialised by then) and System RAM
    /// in `/proc/iomem`.
    pub fn register_boot_memory(&mut self, range: PhysRange) {
        let first = block_id(range.base);
        let last = block_id(range.end().align_up(MEMORY_BLOCK_SIZE));
        for id in first..last {
            let nid = self.topology().phys_to_node(block_range(id).base);
            let nid = nid.unwrap_or(0);
            self.node_set_online(nid);
            // Boot: nothing to roll back to, and the heap has its spare.
            let _ = self.blocks.try_insert(
                id,
                MemoryBlock {
                    state: BlockState::Online(Zone::Normal),
                    boot: true,
                    altmap: None,
                    owner: None,
                    plugged: None,
                    nid,
                    onlined: true,
                },
            );
        }
        self.iomem.insert(range, "System RAM");
    }

    /// A named part of boot RAM in `/proc/iomem` (`Kernel code`, ...).
    pub fn register_boot_resource(&mut self, range: PhysRange, name: &'static str) {
        self.iomem.insert_child(range, name);
    }

    /// Memory the firmware reserves (the DT's `/memreserve/` and
    /// `/reserved-memory`): hot-add refuses it, and `/proc/iomem` shows it
    /// as `reserved`, as Linux does: inside System RAM where boot RAM
    /// (`boot_ram`) holds it, else at the top level (`no-map` regions,
    /// memory held back by `mem=`), only where the platform has RAM
    /// (`ram`).
    pub fn register_reserved(
        &mut self,
        range: PhysRange,
        ram: &[PhysRange],
        boot_ram: &[PhysRange],
    ) {
        self.reserved.push(range);
        let clip = |a: &PhysRange, b: &PhysRange| {
            PhysRange::from_bounds(a.base.max(b.base), a.end().min(b.end()))
        };
        for part in ram.iter().map(|m| clip(&range, m)).filter(|p| p.size > 0) {
            let mut at = part.base;
            for b in boot_ram
                .iter()
                .map(|b| clip(&part, b))
                .filter(|b| b.size > 0)
            {
                if b.base > at {
                    self.iomem
                        .insert(PhysRange::from_bounds(at, b.base), "reserved");
                }
                self.iomem.insert_child(b, "reserved");
                at = b.end();
            }
            if at < part.end() {
                self.iomem
                    .insert(PhysRange::from_bounds(at, part.end()), "reserved");
            }
        }
    }

    /// RAM the platform has that boot left out (`mem=`): what `probe` may add.
    pub fn add_hotpluggable_range(&mut self, range: PhysRange) {
        self.hotpluggable.push(range);
    }

    /// Device memory (`memmap=` pmem, a BAR) that `devmem map` may make
    /// ZONE_DEVICE; shown in `/proc/iomem` as `resource`. Returns its id.
    pub fn register_device_memory(
        &mut self,
        range: PhysRange,
        owner: &'static str,
        resource: &'static str,
    ) -> usize {
        self.iomem.insert(range, resource);
        self.devmem.push(DevMem {
            range,
            owner,
            mapping: None,
        });
        self.devmem.len() - 1
    }

    /// Maps `[pa, pa + size)` as device memory in the ioremap window; the
    /// virtual address of `pa` (`ENOMEM` with the window full).
    pub fn ioremap(&mut self, pa: PhysAddr, size: u64) -> crate::error::Result<VirtAddr> {
        let mut p = self.parts();
        super::ioremap::ioremap(p.pt, pa, size, &mut p.frames)
    }

    /// Maps `size` bytes of fresh pages at `va` (a kernel stack below its
    /// guard page); the top, or `None` with nothing changed.
    pub fn map_kernel_pages(&mut self, va: VirtAddr, size: u64) -> Option<VirtAddr> {
        let size = align_up(size, PAGE_SIZE);
        let order = super::frame::get_order(size, PAGE_SHIFT);
        let mut p = self.parts();
        let pa = p.frames.alloc_pages(order)?;
        let range = super::pgtable::VaRange::new(va, va + size);
        let hints = super::pgtable::MapHints::pages();
        let attrs = super::pgtable::Attributes::KERNEL_RW;
        if p.pt
            .map_range(range, pa, attrs, hints, &mut p.frames)
            .is_err()
        {
            p.frames.free_pages(pa, order);
            return None;
        }
        Some(va + size)
    }
}

/// Reading the state, and the few knobs the kernel's files turn.
impl<T: Translation> MemorySystem<T> {
    pub fn page_table(&self) -> &PageTable<T, KernelGranule> {
        &self.pt
    }

    /// The page allocator, locked (never with it held already).
    pub fn buddy(&self) -> FairLockGuard<'static, BuddyAllocator> {
        self.buddy.lock()
    }

    pub fn blocks(&self) -> &BlockMap {
        &self.blocks
    }

    pub fn iomem(&self) -> &IoMem {
        &self.iomem
    }

    pub fn hotpluggable(&self) -> &[PhysRange] {
        &self.hotpluggable
    }

    pub fn devmem(&self) -> &[DevMem] {
        &self.devmem
    }

    /// What the firmware reserves.
    pub fn reserved(&self) -> &[PhysRange] {
        &self.reserved
    }

    pub fn events(&self) -> Events {
        self.events
    }

    pub fn warnings(&self) -> UnmapWarnings {
        self.warnings
    }

    pub fn memmap_on_memory(&self) -> bool {
        self.memmap_on_memory
    }

    pub fn set_memmap_on_memory(&mut self, on: bool) {
        self.memmap_on_memory = on;
    }

    /// Fault injection: `Some(n)` fails the allocation `n` allocations from now.
    pub fn fail_nth_alloc(&self) -> Option<u64> {
        self.fail_nth_alloc
    }

    pub fn set_fail_nth_alloc(&mut self, n: Option<u64>) {
        self.fail_nth_alloc = n;
    }

    /// The struct page of `pfn` if its vmemmap is populated (a present
    /// memory block or mapped device memory), else `None`; a copy, read
    /// under the rule of deferred struct pages (`page.rs`).
    pub fn page(&self, pfn: Pfn) -> Option<super::page::Page> {
        let pa = pfn.phys();
        let in_block = self.blocks.contains_key(&block_id(pa));
        let in_devmem = self
            .devmem
            .iter()
            .any(|d| d.mapping.is_some() && d.range.contains(pa));
        // SAFETY: the vmemmap of present blocks and mapped device memory is
        // populated.
        (in_block || in_devmem).then(|| unsafe { self.memmap.read(pfn) })
    }

    /// `2^order` pages from `zone`; their first pfn.
    pub fn alloc(&mut self, order: u32, zone: Zone) -> Option<Pfn> {
        self.pcp
            .or_drain(&mut self.buddy.lock(), |b| b.alloc(order, zone))
    }

    /// `2^order` pages from Movable if it has them, else Normal (where a
    /// process's pages go).
    pub fn alloc_movable_first(&mut self, order: u32) -> Option<Pfn> {
        let nid = self.topology().cpu_node(crate::arch::cpu_id());
        self.pcp.or_drain(&mut self.buddy.lock(), |b| {
            b.alloc_nodes(order, &[Zone::Movable, Zone::Normal], nid)
        })
    }

    /// Gives back what [`alloc`](Self::alloc) handed out; `false` (logged,
    /// counted, nothing changed) for a bad free.
    pub fn free(&mut self, pfn: Pfn, order: u32) -> bool {
        self.buddy.lock().free(pfn, order)
    }

    /// The page allocator's Normal zone by physical address, for DMA.
    pub fn alloc_pages(&mut self, order: u32) -> Option<PhysAddr> {
        self.pcp
            .or_drain(&mut self.buddy.lock(), |b| b.alloc_pages(order))
    }

    pub fn free_pages(&mut self, pa: PhysAddr, order: u32) {
        self.buddy.lock().free_pages(pa, order)
    }
}

/// NUMA nodes (`node.rs`): the topology, node states and per-node figures.
impl<T: Translation> MemorySystem<T> {
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// The machine's nodes, from the DT (boot, before memory is
    /// registered); nodes with CPUs are online from the start.
    pub fn set_topology(&mut self, topo: Topology) {
        self.buddy.lock().set_topology(topo);
        self.topo = topo;
        self.pcp.set_cpu_nodes(&topo);
        for nid in topo.possible().iter() {
            if topo.cpus_of(nid).next().is_some() {
                self.node_set_online(nid);
            }
        }
    }

    /// Linux's `N_POSSIBLE`.
    pub fn node_possible(&self) -> NodeMask {
        self.topology().possible()
    }

    /// Linux's `N_ONLINE`.
    pub fn node_online(&self) -> NodeMask {
        self.node_online
    }

    /// Linux's `N_MEMORY`: nodes with online memory.
    pub fn node_has_memory(&self) -> NodeMask {
        let mut m = NodeMask::none();
        for b in self.blocks.values() {
            if matches!(b.state, BlockState::Online(_)) {
                m.set(b.nid);
            }
        }
        m
    }

    /// Linux's `N_CPU`: nodes of the CPUs the DT lists.
    pub fn node_has_cpu(&self) -> NodeMask {
        let topo = self.topology();
        let mut m = NodeMask::none();
        for nid in topo.possible().iter() {
            if topo.cpus_of(nid).next().is_some() {
                m.set(nid);
            }
        }
        m
    }

    pub(in crate::mm) fn node_set_online(&mut self, nid: usize) {
        if nid < MAX_NUMNODES && !self.node_online.contains(nid) {
            self.node_online.set(nid);
            crate::pr_info!("NUMA: node {nid} online");
        }
    }

    /// Linux's `try_offline_node`: a node left without memory blocks and
    /// without CPUs goes offline.
    pub(in crate::mm) fn try_offline_node(&mut self, nid: usize) {
        let has_blocks = self.blocks.values().any(|b| b.nid == nid);
        if nid != 0 && !has_blocks && self.topology().cpus_of(nid).next().is_none() {
            self.node_online.clear(nid);
            crate::pr_info!("NUMA: node {nid} offline");
        }
    }

    /// The node hot-added memory at `start` goes to: `nid` if the DT has
    /// it (a device's node), else the DT's node for `start`
    /// (`memory_add_physaddr_to_nid`).
    pub fn node_for_add(&self, nid: Option<usize>, start: PhysAddr) -> usize {
        let topo = self.topology();
        match nid {
            Some(n) if topo.possible().contains(n) => n,
            Some(n) => {
                let fallback = topo.memory_add_physaddr_to_nid(start);
                crate::pr_warn!(
                    "NUMA: node {n} is not possible; memory at {start:#x} goes to node {fallback}"
                );
                fallback
            }
            None => topo.memory_add_physaddr_to_nid(start),
        }
    }

    /// Node `nid`'s `meminfo`: (MemTotal, MemFree) in pages; pages on the
    /// per-CPU lists count as free, as in `MemFree:`.
    pub fn node_meminfo(&self, nid: usize) -> (u64, u64) {
        let b = self.buddy.lock();
        let zones = Zone::BUDDY_ZONES;
        let total = zones.iter().map(|&z| b.managed_node(nid, z)).sum();
        let free = zones.iter().map(|&z| b.nr_free_node(nid, z)).sum::<u64>()
            + self.pcp.nr_pages_of_node(nid);
        (total, free)
    }

    /// Node `nid`'s `numastat` events: the allocator's and the per-CPU
    /// fast path's.
    pub fn numa_stat(&self, nid: usize) -> super::buddy::NumaStat {
        let mut s = self.buddy.lock().numa_stat(nid);
        let fast = self.pcp.fast_allocs(nid);
        s.numa_hit += fast;
        s.local_node += fast;
        s
    }
}
