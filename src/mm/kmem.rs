//! Device memory as System RAM: Linux's kmem driver (`drivers/dax/kmem.c`),
//! what `daxctl reconfigure-device --mode=system-ram` binds. The whole
//! memory blocks inside a device-memory region are hot-added as
//! driver-managed memory (`add_memory_driver_managed`, `System RAM (kmem)`
//! in `/proc/iomem` under the device's resource) and onlined by the
//! auto-online policy; `--mode=devdax` offlines them (as daxctl does
//! before unbinding) and removes them, all or nothing.

use alloc::vec::Vec;

use super::addr::PhysAddr;
use super::layout::MEMORY_BLOCK_SIZE;
use super::pgtable::Translation;
use super::system::{block_id, block_range, BlockState, MemorySystem, PlugMask};
use crate::error::Result;
use crate::{bail, err};

/// kmem's resource name, and the owner of the blocks it adds.
pub const KMEM_RESOURCE: &str = "System RAM (kmem)";

impl<T: Translation> MemorySystem<T> {
    /// The memory blocks `[first, last)` of device memory `id` that kmem
    /// uses: those wholly inside it (kmem aligns the range inwards).
    fn kmem_blocks(&self, id: usize) -> Result<(u64, u64)> {
        let dev = self
            .devmem
            .get(id)
            .ok_or_else(|| err!(ENODEV, "no device memory region {id}"))?;
        let first = block_id(dev.range.base.align_up(MEMORY_BLOCK_SIZE));
        let last = block_id(dev.range.end().align_down(MEMORY_BLOCK_SIZE));
        if first >= last {
            bail!(
                EINVAL,
                "device memory {id} holds no whole memory block of {MEMORY_BLOCK_SIZE:#x}"
            );
        }
        Ok((first, last))
    }

    /// Whether device memory `id` is System RAM through kmem.
    pub fn is_kmem(&self, id: usize) -> bool {
        self.kmem_blocks(id).is_ok_and(|(first, last)| {
            (first..last).any(|b| {
                self.blocks
                    .get(&b)
                    .is_some_and(|b| b.owner == Some(KMEM_RESOURCE))
            })
        })
    }

    /// `dev_dax_kmem_probe`: device memory `id` becomes System RAM.
    pub fn dev_dax_kmem_probe(&mut self, id: usize) -> Result<()> {
        let (first, last) = self.kmem_blocks(id)?;
        if self.devmem[id].mapping.is_some() {
            bail!(EBUSY, "device memory {id} is mapped as ZONE_DEVICE");
        }
        if self.is_kmem(id) {
            bail!(EBUSY, "device memory {id} is system-ram already");
        }
        if let Some(b) = (first..last).find(|b| self.blocks.contains_key(b)) {
            bail!(EEXIST, "memory{b} is present already");
        }
        let owner = Some((KMEM_RESOURCE, PlugMask::full()));
        let nid = self.node_for_add(None, super::system::block_range(first).base);
        self.add_memory_blocks(nid, first, last, KMEM_RESOURCE, owner)?;
        self.auto_online(first, last);
        Ok(())
    }

    /// `dev_dax_kmem_remove` after daxctl's offlining: every block of
    /// device memory `id` offline, then removed. If a block stays busy the
    /// ones offlined are onlined again in their zones and nothing changes.
    pub fn dev_dax_kmem_remove(&mut self, id: usize) -> Result<()> {
        let (first, last) = self.kmem_blocks(id)?;
        if !self.is_kmem(id) {
            bail!(EINVAL, "device memory {id} is not system-ram");
        }
        // Room for every block first: the list of those offlined never
        // fails to grow once one is.
        let mut offlined = Vec::new();
        offlined
            .try_reserve_exact((last - first) as usize)
            .map_err(|_| err!(ENOMEM, "no kernel memory to offline device memory {id}"))?;
        for b in first..last {
            let Some(BlockState::Online(zone)) = self.blocks.get(&b).map(|b| b.state) else {
                continue;
            };
            if let Err(e) = self.offline_block(b) {
                for &(b, zone) in offlined.iter().rev() {
                    // Just offlined: its pages are all free, online cannot fail.
                    let _ = self.online_block(b, zone);
                }
                return Err(e.into());
            }
            offlined.push((b, zone));
        }
        let start: PhysAddr = block_range(first).base;
        self.remove_memory_driver_managed(start, (last - first) * MEMORY_BLOCK_SIZE, KMEM_RESOURCE)
    }
}
