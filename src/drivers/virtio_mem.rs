//! virtio-mem (virtio 1.2, 5.15): memory the device plugs and unplugs in
//! device blocks at the host's request. The driver follows
//! `requested_size` like Linux's sub-block mode: a memory block is hot-added
//! and onlined (movable, so it can go again) when its first device block is
//! plugged, and only its plugged device blocks (always a prefix) reach the
//! buddy allocator; the rest stay logically offline. Shrinking takes the
//! last device blocks back (or offlines and removes the whole block) and
//! unplugs them. Memory that cannot be taken back stays plugged and is
//! reported; the next change or timer tick retries.

use alloc::collections::{BTreeMap, BTreeSet};

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{InterruptStatus, Transport};

use super::virtio_hal::KernelHal;
use crate::arch::aarch64 as cpu;
use crate::console::Result;
use crate::mm::layout::{MEMORY_BLOCK_SIZE, PAGE_SHIFT};
use crate::mm::page::Zone;
use crate::{bail, err, pr_info};

pub const RESOURCE: &str = "System RAM (virtio_mem)";

bitflags::bitflags! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Features: u64 {
        const UNPLUGGED_INACCESSIBLE = 1 << 1;
        const VERSION_1 = 1 << 32;
    }
}

const REQ_PLUG: u16 = 0;
const REQ_UNPLUG: u16 = 1;
const REQ_UNPLUG_ALL: u16 = 2;
const RESP_ACK: u16 = 0;

/// The device's configuration (5.15.4), little-endian.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub block_size: u64,
    pub addr: u64,
    pub region_size: u64,
    pub usable_region_size: u64,
    pub plugged_size: u64,
    pub requested_size: u64,
}

pub struct VirtioMem<T: Transport> {
    transport: T,
    queue: VirtQueue<KernelHal, 8>,
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
    let t0 = cpu::counter();
    let r = f();
    *total += cpu::counter() - t0;
    r
}

fn read_u64<T: Transport>(t: &T, offset: usize) -> virtio_drivers::Result<u64> {
    let lo: u32 = t.read_config_space(offset)?;
    let hi: u32 = t.read_config_space(offset + 4)?;
    Ok(((hi as u64) << 32) | lo as u64)
}

impl<T: Transport> VirtioMem<T> {
    /// Initialises the device and unplugs everything (5.15.6.1).
    pub fn new(mut transport: T) -> Result<Self> {
        let features = transport.begin_init(Features::VERSION_1 | Features::UNPLUGGED_INACCESSIBLE);
        if !features.contains(Features::UNPLUGGED_INACCESSIBLE) {
            pr_info!("virtio_mem: device allows access to unplugged memory");
        }
        let queue = VirtQueue::new(&mut transport, 0, false, false)
            .map_err(|e| err!(EIO, "virtio_mem: no request queue: {e:?}"))?;
        transport.finish_init();
        let mut dev = Self {
            transport,
            queue,
            config: Config::default(),
            plugged: BTreeMap::new(),
            busy: BTreeSet::new(),
            ticks: (0, 0),
        };
        dev.read_config()?;
        let bs = dev.config.block_size;
        if bs == 0 || !MEMORY_BLOCK_SIZE.is_multiple_of(bs) || bs < 1 << PAGE_SHIFT {
            // Linux's big-block mode (device blocks spanning memory
            // blocks) is not implemented.
            bail!(ENODEV, "virtio_mem: device block size {bs:#x} does not divide the memory block size {MEMORY_BLOCK_SIZE:#x}");
        }
        if dev.request(REQ_UNPLUG_ALL, 0, 0)? != RESP_ACK {
            bail!(EIO, "virtio_mem: UNPLUG_ALL refused");
        }
        dev.read_config()?;
        pr_info!(
            "virtio_mem: region {:#x}-{:#x}, device block size {:#x}",
            dev.config.addr,
            dev.config.addr + dev.config.region_size - 1,
            dev.config.block_size
        );
        Ok(dev)
    }

    fn read_config(&mut self) -> Result<()> {
        let t = &self.transport;
        let read = || -> virtio_drivers::Result<Config> {
            Ok(Config {
                block_size: read_u64(t, 0)?,
                addr: read_u64(t, 16)?,
                region_size: read_u64(t, 24)?,
                usable_region_size: read_u64(t, 32)?,
                plugged_size: read_u64(t, 40)?,
                requested_size: read_u64(t, 48)?,
            })
        };
        self.config = t
            .read_consistent(read)
            .map_err(|e| err!(EIO, "virtio_mem: config: {e:?}"))?;
        Ok(())
    }

    /// One request on the queue; the response type.
    fn request(&mut self, kind: u16, addr: u64, nb_blocks: u16) -> Result<u16> {
        let mut req = [0u8; 24];
        req[0..2].copy_from_slice(&kind.to_le_bytes());
        req[8..16].copy_from_slice(&addr.to_le_bytes());
        req[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
        let mut resp = [0u8; 10];
        let (queue, transport) = (&mut self.queue, &mut self.transport);
        timed(&mut self.ticks.0, || {
            queue.add_notify_wait_pop(&[&req], &mut [&mut resp], transport)
        })
        .map_err(|e| err!(EIO, "virtio_mem: request failed: {e:?}"))?;
        Ok(u16::from_le_bytes([resp[0], resp[1]]))
    }

    /// Acknowledges the interrupt; whether the configuration changed.
    pub fn interrupt(&mut self) -> bool {
        self.transport
            .ack_interrupt()
            .contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT)
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
    fn sub_blocks(&self, id: u64, from: u64, to: u64) -> (u64, u64, u64) {
        let start = id * MEMORY_BLOCK_SIZE + from * self.config.block_size;
        let end = id * MEMORY_BLOCK_SIZE + to * self.config.block_size;
        (start, start >> PAGE_SHIFT, end >> PAGE_SHIFT)
    }

    /// Moves plugged memory towards `requested_size`. Returns whether it is
    /// reached (false: some memory is busy; try again later).
    pub fn step(&mut self) -> Result<bool> {
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
            self.plug(id, n, k)?;
        }
        self.busy.clear();
        let candidates: alloc::vec::Vec<(u64, u64)> =
            self.plugged.iter().rev().map(|(&id, &n)| (id, n)).collect();
        for (id, n) in candidates {
            if self.have() <= self.wanted() {
                break;
            }
            let k = (self.have() - self.wanted()).min(n);
            if !self.unplug(id, n, k)? {
                self.busy.insert(id);
            }
        }
        self.read_config()?;
        pr_info!(
            "virtio_mem: plugged {} MiB of {} MiB requested (device requests {} us, hotplug {} us){}",
            self.config.plugged_size >> 20,
            self.config.requested_size >> 20,
            self.ticks.0 * 1_000_000 / cpu::counter_freq(),
            self.ticks.1 * 1_000_000 / cpu::counter_freq(),
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
    fn plug(&mut self, id: u64, n: u64, k: u64) -> Result<()> {
        let (start, spfn, epfn) = self.sub_blocks(id, n, n + k);
        if self.request(REQ_PLUG, start, k as u16)? != RESP_ACK {
            bail!(EIO, "virtio_mem: device refused to plug {start:#x}");
        }
        let block = id * MEMORY_BLOCK_SIZE;
        let added = timed(&mut self.ticks.1, || {
            crate::init::with_mm(|mm| {
                if n > 0 {
                    return mm.online_pages_range(id, spfn, epfn);
                }
                mm.add_memory_driver_managed(block, MEMORY_BLOCK_SIZE, RESOURCE)?;
                mm.online_block_partial(id, Zone::Movable, epfn)
                    .inspect_err(|_| {
                        let _ = mm.remove_memory_driver_managed(block, MEMORY_BLOCK_SIZE, RESOURCE);
                    })
            })
        });
        if let Err(e) = added {
            self.request(REQ_UNPLUG, start, k as u16)?;
            return Err(e);
        }
        self.plugged.insert(id, n + k);
        Ok(())
    }

    /// Unplugs the last `k` of the `n` plugged sub-blocks of block `id`:
    /// all of them means offlining and removing the block; fewer, taking
    /// their pages back from the buddy allocator. `false` if they are busy.
    fn unplug(&mut self, id: u64, n: u64, k: u64) -> Result<bool> {
        let (start, spfn, epfn) = self.sub_blocks(id, n - k, n);
        let block = id * MEMORY_BLOCK_SIZE;
        let removed = timed(&mut self.ticks.1, || {
            crate::init::with_mm(|mm| {
                if k < n {
                    return mm.offline_pages_range(id, spfn, epfn);
                }
                mm.offline_block(id)?;
                mm.remove_memory_driver_managed(block, MEMORY_BLOCK_SIZE, RESOURCE)
            })
        });
        match removed {
            Ok(()) => {}
            Err(e) if e.errno == crate::console::Errno::EBUSY => return Ok(false),
            Err(e) => return Err(e),
        }
        if self.request(REQ_UNPLUG, start, k as u16)? != RESP_ACK {
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
