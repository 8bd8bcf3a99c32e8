//! Memory hotplug in the shape of Linux's arm64 code: `arch_add_memory`
//! maps the range and populates its vmemmap, `arch_remove_memory` undoes
//! both; online and offline move pages in and out of the buddy allocator;
//! `memremap_pages` / `memunmap_pages` make device memory ZONE_DEVICE.
//! Every operation validates first and rolls back exactly on failure.

use super::addr::{memmap_range, Pfn, PhysAddr, PhysRange, VirtAddr};
use super::altmap::VmemAltmap;
use super::buddy::{BuddyAllocator, OnlineCheck};
use super::granule::{Granule, KernelGranule};
use super::layout::*;
use super::node::NodeMask;
use super::page::{PageFlags, Zone, MAX_ORDER_NR_PAGES};
use super::pcp::Pcp;
use super::pgtable::{Attributes, MapHints, Translation, VaRange};
use super::system::{
    block_id, block_pfns, block_range, BlockState, DevMapKind, MemoryBlock, MemorySystem, PlugMask,
};
use super::vmemmap::{vmemmap_free, vmemmap_populate};
use crate::error::{Error, Result};
use crate::log::{self, LineBuf};
use crate::{bail, err, pr_warn};

/// Why pages could not be taken offline. Callers that retry (virtio-mem,
/// Linux's `offline_pages` loop) decide on the variant, not an errno.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OfflineError {
    /// A page of memory block `id` is in use: nothing changed; it may be
    /// free later.
    Busy { id: u64, pfn: Pfn },
    /// The request itself is wrong (no such block, not online, ...).
    Invalid(Error),
}

impl From<Error> for OfflineError {
    fn from(e: Error) -> Self {
        OfflineError::Invalid(e)
    }
}

impl From<OfflineError> for Error {
    fn from(e: OfflineError) -> Self {
        match e {
            OfflineError::Busy { id, pfn } => {
                err!(EBUSY, "memory{id}: page {:#x} is in use", pfn.phys())
            }
            OfflineError::Invalid(e) => e,
        }
    }
}

/// The largest leaf of a hot-added linear map: one memory block, so that
/// blocks can be taken down one at a time. With 4K pages that means 2 MiB
/// blocks (a 1 GiB one would span eight memory blocks), with 16K 32 MiB,
/// with 64K one 512 MiB block per memory block.
const HOTPLUG_LINEAR_LEAF: u64 = MEMORY_BLOCK_SIZE;

/// The kernel heap could not hold an operation's records.
fn no_heap() -> Error {
    err!(ENOMEM, "no kernel memory for the records")
}

/// Pages of struct pages one memory block needs.
pub const fn vmemmap_pages_per_block() -> u64 {
    (PAGES_PER_SECTION << STRUCT_PAGE_SHIFT) >> PAGE_SHIFT
}

impl<T: Translation> MemorySystem<T> {
    /// Maps `[start, start + size)` in the linear map and populates its
    /// struct pages (through `altmap` when given). On failure nothing is
    /// left behind.
    pub fn arch_add_memory(
        &mut self,
        start: PhysAddr,
        size: u64,
        altmap: Option<&mut VmemAltmap>,
    ) -> Result<()> {
        self.add_linear_map(start, size)?;
        if let Err(e) = self.add_vmemmap(start, size, altmap) {
            self.remove_linear_map(start, size);
            return Err(e);
        }
        Ok(())
    }

    /// The linear map part of [`arch_add_memory`](Self::arch_add_memory):
    /// blocks of up to a memory block, in contiguous groups where a group
    /// fits in one (4K: 16 x 2 MiB), so that a range mapped in one walk
    /// never has a group that removing one of its blocks must break up.
    fn add_linear_map(&mut self, start: PhysAddr, size: u64) -> Result<()> {
        let p = self.parts();
        let va = VaRange::new(start.to_virt(), (start + size).to_virt());
        let mut hints = MapHints::blocks(HOTPLUG_LINEAR_LEAF);
        let group = KernelGranule::level_size(2) * KernelGranule::contiguous_entries(2) as u64;
        if group <= MEMORY_BLOCK_SIZE {
            hints = hints.with_contiguous();
        }
        let mut frames = p.frames;
        p.pt.map_range(va, start, Attributes::KERNEL_RW, hints, &mut frames)?;
        Ok(())
    }

    /// The struct pages part of [`arch_add_memory`](Self::arch_add_memory);
    /// on failure the vmemmap is as it was.
    fn add_vmemmap(
        &mut self,
        start: PhysAddr,
        size: u64,
        altmap: Option<&mut VmemAltmap>,
    ) -> Result<()> {
        let p = self.parts();
        let mut frames = p.frames;
        let (vstart, vend) = memmap_range(Pfn::down(start), Pfn::down(start + size));
        vmemmap_populate(p.pt, vstart, vend, altmap, &mut frames)?;
        Ok(())
    }

    /// Unmaps the linear map of `[start, start + size)` and its struct
    /// pages (returning their backing to `altmap` or the buddy allocator),
    /// freeing emptied tables. Linux removes the struct pages first; here
    /// the linear map goes first, its invalidation left pending, so that
    /// the one the vmemmap needs before its backing is freed covers both.
    pub fn arch_remove_memory(
        &mut self,
        start: PhysAddr,
        size: u64,
        altmap: Option<&mut VmemAltmap>,
    ) {
        self.remove_linear_map_unflushed(start, size);
        self.remove_vmemmap(start, start + size, altmap);
        self.parts().pt.flush_pending();
    }

    /// Linux's `vmemmap_free` of the struct pages of `[start, end)`: its
    /// invalidation (before the backing goes back) also covers whatever
    /// the page table left pending.
    fn remove_vmemmap(&mut self, start: PhysAddr, end: PhysAddr, altmap: Option<&mut VmemAltmap>) {
        let p = self.parts();
        let mut frames = p.frames;
        let (vstart, vend) = memmap_range(Pfn::down(start), Pfn::down(end));
        vmemmap_free(p.pt, vstart, vend, altmap, &mut frames, p.warnings);
    }

    /// Linux's `__remove_pgd_mapping` of the linear map of `[start, start +
    /// size)`.
    fn remove_linear_map(&mut self, start: PhysAddr, size: u64) {
        self.remove_linear_map_unflushed(start, size);
        self.parts().pt.flush_pending();
    }

    /// [`remove_linear_map`](Self::remove_linear_map) with its invalidation
    /// left pending (`PageTable::remove_pgd_mapping_unflushed`).
    fn remove_linear_map_unflushed(&mut self, start: PhysAddr, size: u64) {
        let p = self.parts();
        let mut frames = p.frames;
        let (vstart, vend) = (start.to_virt(), (start + size).to_virt());
        let (floor, ceiling) = (VirtAddr::new(PAGE_OFFSET), VirtAddr::new(PAGE_END));
        p.pt.remove_pgd_mapping_unflushed(vstart, vend, floor, ceiling, &mut frames, p.warnings);
    }

    /// Checks that `[start, start + size)` is whole memory blocks; their ids
    /// `[first, last)`.
    fn check_block_range(start: PhysAddr, size: u64) -> Result<(u64, u64)> {
        if size == 0
            || !start.is_aligned(MEMORY_BLOCK_SIZE)
            || !size.is_multiple_of(MEMORY_BLOCK_SIZE)
        {
            bail!(EINVAL, "{start:#x}+{size:#x} is not aligned to the memory block size {MEMORY_BLOCK_SIZE:#x}");
        }
        match start.checked_add(size) {
            Some(end) if end.as_u64() <= PHYS_LIMIT => Ok((block_id(start), block_id(end))),
            _ => bail!(
                ERANGE,
                "{start:#x}+{size:#x} is beyond the physical address range"
            ),
        }
    }

    /// Linux's `probe`: hot-adds the memory blocks of `[start, start +
    /// size)` from RAM held back at boot, all or nothing, then onlines them
    /// as `auto_online_blocks` says; on the DT's node for `start`
    /// (`memory_add_physaddr_to_nid`).
    pub fn add_memory(&mut self, start: PhysAddr, size: u64) -> Result<()> {
        let (first, last) = self.check_addable(start, size)?;
        let range = PhysRange::new(start, size);
        if !self.hotpluggable.iter().any(|r| r.covers(&range)) {
            bail!(
                EINVAL,
                "{start:#x}-{:#x} is not RAM held back from boot (mem=)",
                range.end() - 1
            );
        }
        let nid = self.topo.memory_add_physaddr_to_nid(start);
        self.add_memory_blocks(nid, first, last, "System RAM", None)?;
        self.auto_online(first, last);
        Ok(())
    }

    /// Linux's `add_memory_driver_managed`: memory a driver plugged (the
    /// region is the driver's, not held back RAM), shown in `/proc/iomem`
    /// as `resource`; only the driver may remove it. Every block of the
    /// range starts with `plugged` as the parts its device has plugged, and
    /// is onlined as `auto_online_blocks` says. On node `nid`, or (`None`,
    /// Linux's `NUMA_NO_NODE`) the DT's node for `start`.
    pub fn add_memory_driver_managed(
        &mut self,
        nid: Option<usize>,
        start: PhysAddr,
        size: u64,
        resource: &'static str,
        plugged: PlugMask,
    ) -> Result<()> {
        self.add_memory_driver_managed_offline(nid, start, size, resource, plugged)?;
        let (first, last) = (block_id(start), block_id(start + size));
        self.auto_online(first, last);
        Ok(())
    }

    /// [`add_memory_driver_managed`](Self::add_memory_driver_managed)
    /// leaving the blocks offline, whatever the policy: for a driver
    /// putting back blocks as they were.
    pub fn add_memory_driver_managed_offline(
        &mut self,
        nid: Option<usize>,
        start: PhysAddr,
        size: u64,
        resource: &'static str,
        plugged: PlugMask,
    ) -> Result<()> {
        let (first, last) = self.check_addable(start, size)?;
        let nid = self.node_for_add(nid, start);
        self.add_memory_blocks(nid, first, last, resource, Some((resource, plugged)))
    }

    /// Whole blocks, not device memory, none present.
    fn check_addable(&self, start: PhysAddr, size: u64) -> Result<(u64, u64)> {
        let (first, last) = Self::check_block_range(start, size)?;
        let range = PhysRange::new(start, size);
        if let Some(d) = self.devmem.iter().find(|d| d.range.overlaps(&range)) {
            bail!(
                EBUSY,
                "{:#x}-{:#x} is device memory ({})",
                d.range.base,
                d.range.end() - 1,
                d.owner
            );
        }
        if let Some(id) = (first..last).find(|id| self.blocks.contains_key(id)) {
            bail!(EEXIST, "memory{id} is present already");
        }
        if let Some(r) = self.reserved.iter().find(|r| r.overlaps(&range)) {
            bail!(
                EBUSY,
                "{:#x}-{:#x} is reserved by the firmware",
                r.base,
                r.end() - 1
            );
        }
        Ok((first, last))
    }

    /// Adds blocks `[first, last)` to node `nid`, all or none, as
    /// `resource` in `/proc/iomem`; the node comes online with its first
    /// memory (Linux's `__try_online_node`).
    pub(in crate::mm) fn add_memory_blocks(
        &mut self,
        nid: usize,
        first: u64,
        last: u64,
        resource: &'static str,
        owner: Option<(&'static str, PlugMask)>,
    ) -> Result<()> {
        // The linear map of the whole range in one walk (Linux's
        // `arch_add_memory` maps a range), then each block's struct pages.
        let (start, end) = (block_range(first).base, block_range(last - 1).end());
        self.add_linear_map(start, end - start)?;
        for id in first..last {
            if let Err(e) = self.add_memory_block(nid, id, resource, owner) {
                if id > first {
                    self.remove_memory_blocks(first, id);
                }
                let rest = block_range(id).base;
                self.remove_linear_map(rest, end - rest);
                return Err(e);
            }
        }
        // Logged once the whole range is in (a rolled-back add says nothing
        // but its one error), in one line, not one per block, and without
        // `core::fmt`: formatted, a line cost as much as adding a block on
        // 64K (2 us; 0.3 us now).
        let mut line = LineBuf::new();
        line.str("memory").dec(first);
        if last - first > 1 {
            line.str("-").dec(last - 1);
        }
        line.str(": added ")
            .hex(start.as_u64())
            .str("-")
            .hex(end.as_u64() - 1);
        log::log_line(6, &line);
        self.node_set_online(nid);
        self.events.hotplug_add += last - first;
        Ok(())
    }

    fn add_memory_block(
        &mut self,
        nid: usize,
        id: u64,
        resource: &'static str,
        owner: Option<(&'static str, PlugMask)>,
    ) -> Result<()> {
        let (spfn, epfn) = block_pfns(id);
        let range = block_range(id);
        let plugged = owner.map(|(_, m)| m);
        let hosts_memmap = plugged.is_none_or(Self::hosts_memmap);
        let mut altmap = (self.memmap_on_memory && hosts_memmap)
            .then(|| VmemAltmap::try_new(spfn, epfn, 0, vmemmap_pages_per_block()))
            .transpose()
            .map_err(|_| no_heap())?;
        // Room for the block's records first: past the mapping nothing fails.
        self.blocks.try_reserve(1).map_err(|_| no_heap())?;
        self.iomem.try_reserve(1).map_err(|_| no_heap())?;
        self.iomem.try_reserve_child(range).map_err(|_| no_heap())?;
        // The caller mapped the block in the linear map.
        self.add_vmemmap(range.base, range.size, altmap.as_mut())?;
        // The kernel's new vmemmap backing holds whatever the memory held;
        // the host test system's memmap outlives a block, so it is made
        // garbage here, as the kernel's is.
        #[cfg(test)]
        // SAFETY: the block's vmemmap was just populated; no reference to
        // its struct pages exists yet.
        unsafe {
            self.memmap.poison_range(spfn, epfn)
        };
        // As in Linux, the struct pages of the block are initialised when it
        // is onlined, once its zone is known; until then only the pages that
        // hold the struct pages are marked (and stay reserved for good).
        if let Some(a) = &altmap {
            let flags =
                PageFlags::RESERVED | PageFlags::VMEMMAP_SELF_HOSTED | PageFlags::ALTMAP_BACKED;
            self.init_struct_pages(a.base_pfn + a.reserve, a.next_pfn(), Zone::Normal, flags);
        }
        // Room was reserved above: neither allocates. Inside a device's
        // resource (kmem), the RAM is its child.
        if !self.iomem.insert(range, resource) {
            self.iomem.insert_child(range, resource);
        }
        let block = MemoryBlock {
            state: BlockState::Offline,
            boot: false,
            altmap,
            owner: owner.map(|(o, _)| o),
            plugged,
            nid,
            onlined: false,
        };
        let _ = self.blocks.try_insert(id, block);
        Ok(())
    }

    /// Whether a driver-owned block may keep its struct pages on itself
    /// (`memmap_on_memory`): only in plugged memory that stays plugged while
    /// any of the block is, i.e. its first sub-block, plugged, and holding
    /// all of them. The driver unplugs that sub-block last (after removing
    /// the block), as it is the lowest and unplugging goes downwards.
    ///
    /// Where struct pages need more than one sub-block (1 MiB device
    /// blocks, 4K pages: 2 MiB of struct pages), they go to system RAM for
    /// that block, as Linux's sub-block mode always does: several
    /// sub-blocks pinned for the struct pages would keep memory plugged
    /// that the device asked back whenever fewer are wanted in the block.
    fn hosts_memmap(plugged: PlugMask) -> bool {
        plugged.get(0) && plugged.sub_size() >= vmemmap_pages_per_block() << PAGE_SHIFT
    }

    /// Hot-removes the (offline) blocks of `[start, start + size)`. All or
    /// nothing: every block is checked before any is removed. Memory a
    /// driver manages is the driver's to remove.
    pub fn remove_memory(&mut self, start: PhysAddr, size: u64) -> Result<()> {
        self.remove_memory_checked(start, size, None)
    }

    /// Linux's `offline_and_remove_memory` minus the offlining: removes
    /// offline blocks that the driver `resource` added.
    pub fn remove_memory_driver_managed(
        &mut self,
        start: PhysAddr,
        size: u64,
        resource: &'static str,
    ) -> Result<()> {
        self.remove_memory_checked(start, size, Some(resource))
    }

    fn remove_memory_checked(
        &mut self,
        start: PhysAddr,
        size: u64,
        driver: Option<&'static str>,
    ) -> Result<()> {
        let (first, last) = Self::check_block_range(start, size)?;
        for id in first..last {
            match self.blocks.get(&id) {
                None => bail!(EINVAL, "memory{id} is not present"),
                Some(b) if b.boot => {
                    bail!(EPERM, "memory{id} is boot memory and cannot be removed")
                }
                Some(b) if b.owner != driver => {
                    bail!(
                        EBUSY,
                        "memory{id} is managed by {}",
                        b.owner.unwrap_or("the console")
                    )
                }
                Some(b) if b.state != BlockState::Offline => bail!(EBUSY, "memory{id} is online"),
                Some(_) => {}
            }
        }
        let mut nodes = NodeMask::none();
        for id in first..last {
            nodes.set(self.blocks[&id].nid);
        }
        self.remove_memory_blocks(first, last);
        for nid in nodes.iter() {
            self.try_offline_node(nid);
        }
        for id in first..last {
            self.events.hotplug_remove += 1;
            let r = block_range(id);
            let mut line = LineBuf::new();
            line.str("memory")
                .dec(id)
                .str(": removed ")
                .hex(r.base.as_u64());
            log::log_line(6, line.str("-").hex(r.end().as_u64() - 1));
        }
        Ok(())
    }

    /// Removes present blocks `[first, last)`: Linux's `arch_remove_memory`
    /// over the range, and over each block with its own altmap. The linear
    /// map of the whole range goes first, its invalidation pending; then
    /// the struct pages of each run of blocks without an altmap in one
    /// walk, and of each block with one on its own. So a removal of many
    /// blocks takes one TLB invalidation (two with altmaps: one per block),
    /// plus one per table freed, where Linux takes one per 2 MiB of the
    /// linear map.
    fn remove_memory_blocks(&mut self, first: u64, last: u64) {
        let (start, end) = (block_range(first).base, block_range(last - 1).end());
        self.remove_linear_map_unflushed(start, end - start);
        let mut id = first;
        while id < last {
            let mut altmap = self.blocks.get_mut(&id).and_then(|b| b.altmap.take());
            let run_end = match altmap {
                Some(_) => id + 1,
                None => (id + 1..last)
                    .find(|i| self.blocks.get(i).is_none_or(|b| b.altmap.is_some()))
                    .unwrap_or(last),
            };
            let (s, e) = (block_range(id).base, block_range(run_end - 1).end());
            self.remove_vmemmap(s, e, altmap.as_mut());
            if let Some(a) = altmap.filter(|a| a.alloc != 0) {
                pr_warn!("memory{id}: {} altmap pages not given back", a.alloc);
            }
            id = run_end;
        }
        self.parts().pt.flush_pending();
        for id in first..last {
            if let Some(block) = self.blocks.remove(&id) {
                let owner = block.owner.unwrap_or("System RAM");
                self.iomem.remove_named(block_range(id), owner);
            }
        }
    }

    /// Gives an offline block's pages to the buddy allocator in `zone`:
    /// for a driver-owned block only the plugged parts, the rest logically
    /// offline (Linux's `virtio_mem_online_page_cb`); never the block's own
    /// struct pages.
    pub fn online_block(&mut self, id: u64, zone: Zone) -> Result<()> {
        let block = self
            .blocks
            .get(&id)
            .ok_or_else(|| err!(ENOENT, "memory{id} is not present"))?;
        if block.state != BlockState::Offline {
            bail!(EINVAL, "memory{id} is online already");
        }
        if zone.buddy_index().is_none() {
            bail!(EINVAL, "memory{id} cannot be onlined in {}", zone.name());
        }
        let (spfn, _) = block_pfns(id);
        let first = block.altmap.as_ref().map_or(spfn, |a| a.next_pfn());
        let mask = block.plugged.unwrap_or_else(PlugMask::full);
        let (nid, onlined) = (block.nid, block.onlined);
        // A run of sub-blocks alike at a time: one `online_pages` over a
        // plugged run writes only the heads of its whole max-order blocks
        // (`page.rs`), where one call per sub-block smaller than a
        // max-order block (virtio-mem's 2 MiB) would write every struct
        // page. Unplugged runs first: freeing a plugged run reads the
        // struct pages of its buddies, which may lie in them, and a struct
        // page never written holds whatever its backing page held before.
        let runs = |plugged: bool| {
            mask.runs()
                .filter(move |r| r.0 == plugged)
                .map(|(_, i, n)| (mask.pfns(id, i).0.max(first), mask.pfns(id, i + n - 1).1))
                .filter(|(s, e)| s < e)
        };
        for (s, e) in runs(false) {
            let flags = PageFlags::RESERVED | PageFlags::LOGICALLY_OFFLINE;
            self.init_struct_pages_on(s, e, zone, nid, flags);
        }
        // All or nothing, in one hold of the zone lock: the plugged runs
        // after the first are checked, then the first is checked as it is
        // onlined (a refusal there changes nothing), then the others go.
        // Refused, the block stays offline (its unplugged runs' struct
        // pages, just written, are offline pages).
        let check = if onlined {
            OnlineCheck::All
        } else {
            OnlineCheck::NotHeads
        };
        let mut buddy = self.buddy.lock();
        let mut plugged = runs(true);
        let first_run = plugged.next();
        let refused = runs(true)
            .skip(1)
            .find_map(|(s, e)| buddy.check_online_run(s, e, onlined).err())
            .map_or(Ok(0), Err)
            .and_then(|_| {
                first_run.map_or(Ok(0), |(s, e)| {
                    buddy.online_pages_with(s, e - s, zone, nid, check)
                })
            });
        if let Err(pfn) = refused {
            drop(buddy);
            bail!(
                EBUSY,
                "memory{id}: pfn {pfn:#x} is the page allocator's already"
            );
        }
        for (s, e) in plugged {
            let _ = buddy.online_pages_with(s, e - s, zone, nid, OnlineCheck::Done);
        }
        drop(buddy);
        let block = self.blocks.get_mut(&id).expect("checked");
        block.state = BlockState::Online(zone);
        block.onlined = true;
        self.events.online += 1;
        Ok(())
    }

    /// The plug mask of driver-owned block `id` and its state, after
    /// checking that sub-blocks `[first, first + n)` exist and are all
    /// `plugged` (`want`).
    fn sub_blocks_in_state(
        &self,
        id: u64,
        first: u64,
        n: u64,
        want: bool,
    ) -> Result<(PlugMask, BlockState)> {
        let block = self
            .blocks
            .get(&id)
            .ok_or_else(|| err!(ENOENT, "memory{id} is not present"))?;
        let Some(mask) = block.plugged else {
            bail!(EINVAL, "memory{id} is not driver-managed");
        };
        let end = first.checked_add(n).filter(|&e| n > 0 && e <= mask.len());
        let Some(end) = end else {
            bail!(EINVAL, "memory{id} has no sub-blocks {first}+{n}");
        };
        if let Some(i) = (first..end).find(|&i| mask.get(i) != want) {
            let what = if want { "unplugged" } else { "plugged" };
            bail!(EINVAL, "memory{id}: sub-block {i} is {what} already");
        }
        Ok((mask, block.state))
    }

    /// The device plugged sub-blocks `[first, first + n)` of driver-owned
    /// block `id`: marked plugged, and given to the buddy allocator if the
    /// block is online (an offline block gets them when onlined).
    pub fn plug_sub_blocks(&mut self, id: u64, first: u64, n: u64) -> Result<()> {
        let (mut mask, state) = self.sub_blocks_in_state(id, first, n, false)?;
        if let BlockState::Online(zone) = state {
            let (s, _) = mask.pfns(id, first);
            let (_, e) = mask.pfns(id, first + n - 1);
            let nid = self.blocks[&id].nid;
            self.buddy.lock().online_pages(s, e - s, zone, nid);
        }
        for i in first..first + n {
            mask.set(i, true);
        }
        self.blocks.get_mut(&id).expect("checked").plugged = Some(mask);
        Ok(())
    }

    /// Takes sub-blocks `[first, first + n)` of driver-owned block `id`
    /// back so that the device may unplug them: from the buddy allocator if
    /// the block is online (anonymous pages migrated out first; `Busy`,
    /// nothing changed, while another page is in use), logically offline. Never the sub-block holding the block's
    /// struct pages.
    pub fn unplug_sub_blocks(
        &mut self,
        id: u64,
        first: u64,
        n: u64,
    ) -> core::result::Result<(), OfflineError> {
        let (mut mask, state) = self.sub_blocks_in_state(id, first, n, true)?;
        let (s, _) = mask.pfns(id, first);
        let (_, e) = mask.pfns(id, first + n - 1);
        let altmap = self.blocks[&id].altmap.as_ref();
        if let Some(a) = altmap.filter(|a| s < a.next_pfn() && a.base_pfn < e) {
            return Err(err!(
                EINVAL,
                "memory{id}: {:#x} holds its struct pages",
                a.base_pfn.phys()
            )
            .into());
        }
        if let BlockState::Online(zone) = state {
            self.take_free_range_migrating(id, s, e)?;
            let flags = PageFlags::RESERVED | PageFlags::LOGICALLY_OFFLINE;
            // Under the zone lock: a free merging in the rest of the
            // max-order block reads these struct pages as its buddies.
            let zone_lock = self.buddy.lock();
            self.init_struct_pages(s, e, zone, flags);
            drop(zone_lock);
        }
        for i in first..first + n {
            mask.set(i, false);
        }
        self.blocks.get_mut(&id).expect("checked").plugged = Some(mask);
        Ok(())
    }

    /// arm64 Linux refuses to offline boot memory
    /// (`prevent_bootmem_remove_notifier`): it can never be removed, so an
    /// offline would only strand it. `EBUSY` as there; the one error line
    /// says what Linux logs.
    fn refuse_boot_offline(id: u64) -> Error {
        let r = block_range(id);
        err!(
            EBUSY,
            "memory{id}: boot memory [{:#x}-{:#x}] cannot be offlined",
            r.base,
            r.end() - 1
        )
    }

    /// Takes an online block's pages back from the buddy allocator,
    /// migrating its anonymous pages elsewhere first (`migrate.rs`);
    /// `EBUSY`, with nothing changed, while any other page is in use or the
    /// block is boot memory.
    pub fn offline_block(&mut self, id: u64) -> core::result::Result<(), OfflineError> {
        let block = self
            .blocks
            .get(&id)
            .ok_or_else(|| err!(ENOENT, "memory{id} is not present"))?;
        if block.state == BlockState::Offline {
            return Err(err!(EINVAL, "memory{id} is offline already").into());
        }
        if block.boot {
            return Err(Self::refuse_boot_offline(id).into());
        }
        let (spfn, epfn) = block_pfns(id);
        self.take_free_range_migrating(id, spfn, epfn)?;
        self.finish_offline(id);
        Ok(())
    }

    /// Takes the pages `s..e` of block `id` from the buddy allocator,
    /// migrating its anonymous pages out first if any page is in use
    /// (`migrate.rs`); `Busy`, nothing taken, while another page is.
    fn take_free_range_migrating(
        &mut self,
        id: u64,
        s: Pfn,
        e: Pfn,
    ) -> core::result::Result<(), OfflineError> {
        let taken = take_free_range(self.pcp, &mut self.buddy.lock(), s, e);
        if taken.is_err() {
            self.migrate_range_out(id, s, e)?;
            let taken = take_free_range(self.pcp, &mut self.buddy.lock(), s, e);
            if let Err(pfn) = taken {
                return Err(OfflineError::Busy { id, pfn });
            }
        }
        Ok(())
    }

    /// Writes block `id`'s struct pages offline, once the buddy allocator
    /// gave all its pages up, and records it offline.
    fn finish_offline(&mut self, id: u64) {
        let (spfn, epfn) = block_pfns(id);
        let defer = self.deferred_memmap_init();
        let mut head = spfn;
        while head < epfn {
            let end = (head + MAX_ORDER_NR_PAGES).min(epfn);
            // SAFETY: present blocks have their vmemmap populated, and no
            // struct page reference is live.
            let (h, deferred) = unsafe {
                let head_page = self.memmap.read(head);
                (head_page, self.memmap.deferred_head(head).is_some())
            };
            // Isolation took every managed page, so a managed head of order
            // `MAX_ORDER` was one free block: nothing in its tails is kept.
            let whole = end - head == MAX_ORDER_NR_PAGES
                && !h.flags.intersects(PageFlags::UNMANAGED)
                && h.order() == MAX_ORDER;
            if (deferred || whole) && defer {
                // One store: the tails read as offline pages (`page.rs`),
                // where writing them costs 64 bytes a page.
                // SAFETY: as above; the head is aligned.
                unsafe { self.memmap.init_deferred(head, h.offline_head()) };
            } else if deferred || whole {
                // The same offline pages, written out (eager struct pages).
                let zone = h.zone().unwrap_or(Zone::Normal);
                self.init_struct_pages_on(head, end, zone, h.nid(), PageFlags::RESERVED);
            } else {
                for pfn in Pfn::range(head, end) {
                    // SAFETY: as above.
                    let page = unsafe { self.memmap.get(pfn) };
                    page.set_flags(PageFlags::RESERVED);
                    page.clear_flags(PageFlags::ONLINE);
                }
            }
            head += MAX_ORDER_NR_PAGES;
        }
        if let Some(b) = self.blocks.get_mut(&id) {
            b.state = BlockState::Offline;
        }
        self.events.offline += 1;
    }

    /// Starts taking block `id` offline while its pages may still be in
    /// use: nothing more is allocated from it and what is freed into it is
    /// held (Linux's page isolation). [`offline_try_finish`] completes it
    /// once every page is back; [`offline_abort`] gives up.
    ///
    /// [`offline_try_finish`]: Self::offline_try_finish
    /// [`offline_abort`]: Self::offline_abort
    pub fn offline_begin(&mut self, id: u64) -> Result<()> {
        match self.blocks.get(&id) {
            None => bail!(ENOENT, "memory{id} is not present"),
            Some(b) if b.state == BlockState::Offline => {
                bail!(EINVAL, "memory{id} is offline already")
            }
            Some(b) if b.boot => return Err(Self::refuse_boot_offline(id)),
            Some(_) => {}
        }
        let (spfn, epfn) = block_pfns(id);
        let mut buddy = self.buddy.lock();
        buddy.try_reserve_isolating().map_err(|_| no_heap())?;
        buddy.start_isolate_page_range(spfn, epfn);
        // The range's blocks off the per-CPU lists, and frees into it put
        // aside, for the buddy allocator to hold.
        self.pcp.isolate(&mut buddy, spfn, epfn);
        Ok(())
    }

    /// Offlines block `id` if all its pages have come back since
    /// [`offline_begin`](Self::offline_begin); `false` while some are out.
    pub fn offline_try_finish(&mut self, id: u64) -> bool {
        let (spfn, epfn) = block_pfns(id);
        let mut buddy = self.buddy.lock();
        self.pcp.collect_isolated(&mut buddy);
        if !buddy.test_pages_isolated(spfn, epfn) {
            return false;
        }
        self.pcp.unisolate(&mut buddy, spfn, epfn);
        buddy.undo_isolate_page_range(spfn, epfn);
        // In the same hold of the zone lock: no CPU refills from the block
        // between the isolation's end and the offline.
        let taken = take_free_range(self.pcp, &mut buddy, spfn, epfn);
        drop(buddy);
        match taken {
            Ok(_) => {
                self.finish_offline(id);
                true
            }
            Err(pfn) => {
                // Cannot happen: every page was held a moment ago.
                pr_warn!("memory{id}: {:#x} in use after isolation", pfn.phys());
                false
            }
        }
    }

    pub fn offline_abort(&mut self, id: u64) {
        let (spfn, epfn) = block_pfns(id);
        let mut buddy = self.buddy.lock();
        self.pcp.unisolate(&mut buddy, spfn, epfn);
        buddy.undo_isolate_page_range(spfn, epfn);
    }

    /// Linux's `memremap_pages` for device memory `id`: linear map, struct
    /// pages on the device (`Dev`, through an altmap) or in system RAM
    /// (`Mem`), every page ZONE_DEVICE and never given to the buddy.
    pub fn memremap_pages(&mut self, id: usize, kind: DevMapKind) -> Result<()> {
        let dev = self
            .devmem
            .get(id)
            .ok_or_else(|| err!(ENODEV, "no device memory region {id}"))?;
        if dev.mapping.is_some() {
            bail!(EBUSY, "device memory {id} is mapped already");
        }
        let r = dev.range;
        Self::check_block_range(r.base, r.size).map_err(|_| {
            err!(
                EINVAL,
                "device memory {id} is not aligned to sections of {SECTION_SIZE:#x}"
            )
        })?;
        if let Some(id) =
            (block_id(r.base)..block_id(r.end())).find(|b| self.blocks.contains_key(b))
        {
            bail!(EBUSY, "device memory overlaps memory{id}");
        }
        let (spfn, epfn) = (Pfn::down(r.base), Pfn::down(r.end()));
        let struct_page_pages = ((epfn - spfn) << STRUCT_PAGE_SHIFT) >> PAGE_SHIFT;
        let mut altmap = (kind == DevMapKind::Dev)
            .then(|| VmemAltmap::try_new(spfn, epfn, 0, struct_page_pages))
            .transpose()
            .map_err(|_| no_heap())?;
        self.arch_add_memory(r.base, r.size, altmap.as_mut())?;
        self.init_struct_pages(spfn, epfn, Zone::Device, PageFlags::DEVICE);
        for pfn in Pfn::range(spfn, epfn) {
            // SAFETY: just populated.
            unsafe { self.memmap.get(pfn) }.set_private(id as u64);
        }
        if let Some(a) = &altmap {
            for pfn in Pfn::range(a.base_pfn + a.reserve, a.next_pfn()) {
                self.page_flags_set(pfn, PageFlags::ALTMAP_BACKED);
            }
        }
        self.devmem[id].mapping = Some((kind, altmap));
        self.events.devmem_map += 1;
        Ok(())
    }

    /// Undoes [`memremap_pages`](Self::memremap_pages) exactly.
    pub fn memunmap_pages(&mut self, id: usize) -> Result<()> {
        let dev = self
            .devmem
            .get_mut(id)
            .ok_or_else(|| err!(ENODEV, "no device memory region {id}"))?;
        let (_, mut altmap) = dev
            .mapping
            .take()
            .ok_or_else(|| err!(EINVAL, "device memory {id} is not mapped"))?;
        let r = dev.range;
        self.arch_remove_memory(r.base, r.size, altmap.as_mut());
        if let Some(a) = altmap.filter(|a| a.alloc != 0) {
            pr_warn!("devmem {id}: {} altmap pages not given back", a.alloc);
        }
        self.events.devmem_unmap += 1;
        Ok(())
    }
}

/// Takes `s..e`'s pages from the buddy allocator, after giving back those
/// on the CPUs' lists (free pages there look in use to it; Linux's
/// `offline_pages` drains them too), in one hold of the zone lock so that
/// no CPU refills from the range in between; `Err(pfn)` while `pfn` is in
/// use.
fn take_free_range(
    pcp: &Pcp,
    buddy: &mut BuddyAllocator,
    s: Pfn,
    e: Pfn,
) -> core::result::Result<u64, Pfn> {
    pcp.drain_range(buddy, s, e);
    buddy.isolate_range(s, e)
}
