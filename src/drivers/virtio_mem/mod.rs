//! virtio-mem (virtio 1.2, 5.15): memory the device plugs and unplugs in
//! device blocks at the host's request. The driver follows
//! `requested_size` like Linux's sub-block mode: a memory block is hot-added
//! and onlined (movable, so it can go again) when its first device block is
//! plugged, and only its plugged device blocks (always a prefix) reach the
//! buddy allocator; the rest stay logically offline. Shrinking takes the
//! last device blocks back (or offlines and removes the whole block) and
//! unplugs them. Memory that cannot be taken back stays plugged and is
//! reported; the next change or timer tick retries.
//!
//! The driver talks to the device through [`MemDevice`] and to memory
//! through a [`MemorySystem`] it is handed, so every decision it makes runs
//! in host tests over a fake device ([`pci`] is the real one).

#[cfg(target_os = "none")]
pub mod pci;
#[cfg(all(test, not(any(feature = "granule-16k", feature = "granule-64k"))))]
mod tests;

use alloc::collections::{BTreeMap, BTreeSet};

use crate::arch;
use crate::error::Result;
use crate::mm::addr::{Pfn, PhysAddr};
use crate::mm::hotplug::OfflineError;
use crate::mm::layout::{MEMORY_BLOCK_SIZE, PAGE_SHIFT};
use crate::mm::page::Zone;
use crate::mm::pgtable::Translation;
use crate::mm::system::{block_range, MemorySystem};
use crate::{bail, pr_info};

pub const RESOURCE: &str = "System RAM (virtio_mem)";

/// The device's configuration (5.15.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub block_size: u64,
    pub addr: u64,
    pub region_size: u64,
    pub usable_region_size: u64,
    pub plugged_size: u64,
    pub requested_size: u64,
}

/// A request on the device's queue (5.15.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Plug { addr: u64, nb_blocks: u16 },
    Unplug { addr: u64, nb_blocks: u16 },
    UnplugAll,
}

/// The device's answer (`VIRTIO_MEM_RESP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    Ack,
    Nack,
    Busy,
    Error,
}

impl Response {
    pub fn from_raw(v: u16) -> Self {
        match v {
            0 => Response::Ack,
            1 => Response::Nack,
            2 => Response::Busy,
            _ => Response::Error,
        }
    }
}

/// A virtio-mem device as the driver uses it.
pub trait MemDevice {
    /// Reads the configuration (consistently, across a generation change).
    fn config(&mut self) -> Result<Config>;
    /// Sends one request and waits for its answer.
    fn request(&mut self, req: Request) -> Result<Response>;
}

pub struct VirtioMem<D: MemDevice> {
    dev: D,
    config: Config,
    /// Memory blocks added, with how many of their device blocks
    /// (sub-blocks) are plugged: always the first ones.
    plugged: BTreeMap<u64, u64>,
    /// Blocks that could not be offlined on the last attempt.
    busy: BTreeSet<u64>,
    /// Timer ticks of the current step spent waiting for the device and
    /// spent hot-plugging, reported with its result.
    ticks: (u64, u64),
}

/// Runs `f`, adding the generic-timer ticks it took to `total`.
fn timed<R>(total: &mut u64, f: impl FnOnce() -> R) -> R {
    let t0 = arch::counter();
    let r = f();
    *total += arch::counter() - t0;
    r
}

impl<D: MemDevice> VirtioMem<D> {
    /// Checks the device's geometry and unplugs everything (5.15.6.1).
    pub fn new(dev: D) -> Result<Self> {
        let mut vm = Self {
            dev,
            config: Config::default(),
            plugged: BTreeMap::new(),
            busy: BTreeSet::new(),
            ticks: (0, 0),
        };
        vm.read_config()?;
        let bs = vm.config.block_size;
        if bs == 0 || !MEMORY_BLOCK_SIZE.is_multiple_of(bs) || bs < 1 << PAGE_SHIFT {
            // Linux's big-block mode (device blocks spanning memory
            // blocks) is not implemented.
            bail!(ENODEV, "virtio_mem: device block size {bs:#x} does not divide the memory block size {MEMORY_BLOCK_SIZE:#x}");
        }
        if vm.request(Request::UnplugAll)? != Response::Ack {
            bail!(EIO, "virtio_mem: UNPLUG_ALL refused");
        }
        vm.read_config()?;
        pr_info!(
            "virtio_mem: region {:#x}-{:#x}, device block size {:#x}",
            vm.config.addr,
            vm.config.addr + vm.config.region_size - 1,
            vm.config.block_size
        );
        Ok(vm)
    }

    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }

    fn read_config(&mut self) -> Result<()> {
        self.config = self.dev.config()?;
        Ok(())
    }

    fn request(&mut self, req: Request) -> Result<Response> {
        let dev = &mut self.dev;
        timed(&mut self.ticks.0, || dev.request(req))
    }

    /// Device blocks the device asks for, capped by the usable region.
    fn wanted(&self) -> u64 {
        self.config
            .requested_size
            .min(self.config.usable_region_size)
            / self.config.block_size
    }

    /// Device blocks plugged.
    fn have(&self) -> u64 {
        self.plugged.values().sum()
    }

    /// Whether plugged memory differs from what the device asks for.
    pub fn unsatisfied(&self) -> bool {
        self.have() != self.wanted()
    }

    /// Device blocks (sub-blocks) per memory block.
    fn per_block(&self) -> u64 {
        MEMORY_BLOCK_SIZE / self.config.block_size
    }

    /// Physical address and pfn range of sub-blocks `[from, to)` of `id`.
    fn sub_blocks(&self, id: u64, from: u64, to: u64) -> (PhysAddr, Pfn, Pfn) {
        let block = block_range(id).base;
        let start = block + from * self.config.block_size;
        let end = block + to * self.config.block_size;
        (start, Pfn::down(start), Pfn::down(end))
    }

    /// Moves plugged memory towards `requested_size`. Returns whether it is
    /// reached (false: some memory is busy; try again later).
    pub fn step<T: Translation>(&mut self, mm: &mut MemorySystem<T>) -> Result<bool> {
        self.ticks = (0, 0);
        self.read_config()?;
        let per_block = self.per_block();
        let first = self.config.addr / MEMORY_BLOCK_SIZE;
        let last = first + self.config.usable_region_size / MEMORY_BLOCK_SIZE;
        while self.have() < self.wanted() {
            // Fill a partly plugged block first, else start a new one.
            let partial = self
                .plugged
                .iter()
                .rev()
                .find(|(_, &n)| n < per_block)
                .map(|(&id, &n)| (id, n));
            let Some((id, n)) = partial.or_else(|| {
                (first..last)
                    .find(|id| !self.plugged.contains_key(id))
                    .map(|id| (id, 0))
            }) else {
                break;
            };
            let k = (self.wanted() - self.have()).min(per_block - n);
            self.plug(mm, id, n, k)?;
        }
        self.busy.clear();
        let candidates: alloc::vec::Vec<(u64, u64)> =
            self.plugged.iter().rev().map(|(&id, &n)| (id, n)).collect();
        for (id, n) in candidates {
            if self.have() <= self.wanted() {
                break;
            }
            let k = (self.have() - self.wanted()).min(n);
            if !self.unplug(mm, id, n, k)? {
                self.busy.insert(id);
            }
        }
        self.read_config()?;
        pr_info!(
            "virtio_mem: plugged {} MiB of {} MiB requested (device requests {} us, hotplug {} us){}",
            self.config.plugged_size >> 20,
            self.config.requested_size >> 20,
            self.ticks.0 * 1_000_000 / arch::counter_freq(),
            self.ticks.1 * 1_000_000 / arch::counter_freq(),
            if self.busy.is_empty() {
                alloc::string::String::new()
            } else {
                let busy_mib: u64 = self.busy.iter().map(|id| self.plugged[id] * self.config.block_size).sum::<u64>() >> 20;
                alloc::format!("; {busy_mib} MiB busy, stays plugged: {:?}", self.busy)
            }
        );
        Ok(!self.unsatisfied())
    }

    /// Plugs sub-blocks `[n, n + k)` of block `id` (whose first `n` are
    /// plugged) and gives them to the buddy allocator, adding and onlining
    /// the block when it is new. Undone on failure.
    fn plug<T: Translation>(
        &mut self,
        mm: &mut MemorySystem<T>,
        id: u64,
        n: u64,
        k: u64,
    ) -> Result<()> {
        let (start, spfn, epfn) = self.sub_blocks(id, n, n + k);
        let nb_blocks = k as u16;
        let addr = start.as_u64();
        if self.request(Request::Plug { addr, nb_blocks })? != Response::Ack {
            bail!(EIO, "virtio_mem: device refused to plug {start:#x}");
        }
        let block = block_range(id);
        let added = timed(&mut self.ticks.1, || {
            if n > 0 {
                return mm.online_block_pages(id, spfn, epfn);
            }
            mm.add_memory_driver_managed(block.base, block.size, RESOURCE)?;
            mm.online_block_partial(id, Zone::Movable, epfn)
                .inspect_err(|_| {
                    let _ = mm.remove_memory_driver_managed(block.base, block.size, RESOURCE);
                })
        });
        if let Err(e) = added {
            self.request(Request::Unplug { addr, nb_blocks })?;
            return Err(e);
        }
        self.plugged.insert(id, n + k);
        Ok(())
    }

    /// Unplugs the last `k` of the `n` plugged sub-blocks of block `id`:
    /// all of them means offlining and removing the block; fewer, taking
    /// their pages back from the buddy allocator. `false` if they are busy.
    fn unplug<T: Translation>(
        &mut self,
        mm: &mut MemorySystem<T>,
        id: u64,
        n: u64,
        k: u64,
    ) -> Result<bool> {
        let (start, spfn, epfn) = self.sub_blocks(id, n - k, n);
        let block = block_range(id);
        let removed = timed(&mut self.ticks.1, || {
            if k < n {
                return mm.offline_block_pages(id, spfn, epfn);
            }
            mm.offline_block(id)?;
            Ok(mm.remove_memory_driver_managed(block.base, block.size, RESOURCE)?)
        });
        match removed {
            Ok(()) => {}
            Err(OfflineError::Busy { .. }) => return Ok(false),
            Err(OfflineError::Invalid(e)) => return Err(e),
        }
        let nb_blocks = k as u16;
        let addr = start.as_u64();
        if self.request(Request::Unplug { addr, nb_blocks })? != Response::Ack {
            bail!(EIO, "virtio_mem: device refused to unplug {start:#x}");
        }
        if k < n {
            self.plugged.insert(id, n - k);
        } else {
            self.plugged.remove(&id);
        }
        Ok(true)
    }
}
