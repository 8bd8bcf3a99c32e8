//! virtio-mem (virtio 1.2, 5.15): memory the device plugs and unplugs in
//! blocks at the host's request. The driver follows `requested_size` in
//! whole memory blocks: plug the device blocks of a memory block, then
//! hot-add and online it (movable, so it can go again); to shrink, offline
//! and remove a block, then unplug it. A block that cannot be offlined
//! stays plugged and is reported; the next change or timer tick retries.

use alloc::collections::BTreeSet;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{InterruptStatus, Transport};

use super::virtio_hal::KernelHal;
use crate::arch::aarch64 as cpu;
use crate::console::Result;
use crate::mm::layout::MEMORY_BLOCK_SIZE;
use crate::mm::page::Zone;
use crate::{bail, err, pr_info, pr_warn};

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
    /// Memory blocks plugged and added.
    plugged: BTreeSet<u64>,
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
            plugged: BTreeSet::new(),
            busy: BTreeSet::new(),
            ticks: (0, 0),
        };
        dev.read_config()?;
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

    /// Memory blocks the device asks for, capped by the usable region.
    fn wanted(&self) -> usize {
        (self
            .config
            .requested_size
            .min(self.config.usable_region_size)
            / MEMORY_BLOCK_SIZE) as usize
    }

    /// Whether plugged memory differs from what the device asks for.
    pub fn unsatisfied(&self) -> bool {
        self.plugged.len() != self.wanted()
    }

    fn device_blocks(&self) -> u16 {
        (MEMORY_BLOCK_SIZE / self.config.block_size) as u16
    }

    /// Moves plugged memory towards `requested_size`. Returns whether it is
    /// reached (false: some blocks are busy; try again later).
    pub fn step(&mut self) -> Result<bool> {
        self.ticks = (0, 0);
        self.read_config()?;
        if !self.config.requested_size.is_multiple_of(MEMORY_BLOCK_SIZE) {
            pr_warn!(
                "virtio_mem: requested size {:#x} is not a multiple of the memory block size {:#x}; following {:#x}",
                self.config.requested_size,
                MEMORY_BLOCK_SIZE,
                self.wanted() as u64 * MEMORY_BLOCK_SIZE
            );
        }
        let first = self.config.addr / MEMORY_BLOCK_SIZE;
        let last = first + self.config.usable_region_size / MEMORY_BLOCK_SIZE;
        while self.plugged.len() < self.wanted() {
            let Some(id) = (first..last).find(|id| !self.plugged.contains(id)) else {
                break;
            };
            self.plug(id)?;
        }
        self.busy.clear();
        let mut candidates: alloc::vec::Vec<u64> = self.plugged.iter().rev().copied().collect();
        while self.plugged.len() > self.wanted() {
            let Some(id) = candidates.first().copied() else {
                break;
            };
            candidates.remove(0);
            if !self.unplug(id)? {
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
                alloc::format!(
                    "; {} MiB busy, stays plugged: {:?}",
                    (self.busy.len() as u64 * MEMORY_BLOCK_SIZE) >> 20,
                    self.busy
                )
            }
        );
        Ok(!self.unsatisfied())
    }

    fn plug(&mut self, id: u64) -> Result<()> {
        let start = id * MEMORY_BLOCK_SIZE;
        if self.request(REQ_PLUG, start, self.device_blocks())? != RESP_ACK {
            bail!(EIO, "virtio_mem: device refused to plug {start:#x}");
        }
        let added = timed(&mut self.ticks.1, || {
            crate::init::with_mm(|mm| {
                mm.add_memory_driver_managed(start, MEMORY_BLOCK_SIZE, RESOURCE)?;
                mm.online_block(id, Zone::Movable).inspect_err(|_| {
                    let _ = mm.remove_memory_driver_managed(start, MEMORY_BLOCK_SIZE, RESOURCE);
                })
            })
        });
        if let Err(e) = added {
            self.request(REQ_UNPLUG, start, self.device_blocks())?;
            return Err(e);
        }
        self.plugged.insert(id);
        Ok(())
    }

    /// Offlines, removes and unplugs block `id`; `false` if it is busy.
    fn unplug(&mut self, id: u64) -> Result<bool> {
        let start = id * MEMORY_BLOCK_SIZE;
        let removed = timed(&mut self.ticks.1, || {
            crate::init::with_mm(|mm| {
                mm.offline_block(id)?;
                mm.remove_memory_driver_managed(start, MEMORY_BLOCK_SIZE, RESOURCE)
            })
        });
        match removed {
            Ok(()) => {}
            Err(e) if e.errno == crate::console::Errno::EBUSY => return Ok(false),
            Err(e) => return Err(e),
        }
        if self.request(REQ_UNPLUG, start, self.device_blocks())? != RESP_ACK {
            bail!(EIO, "virtio_mem: device refused to unplug {start:#x}");
        }
        self.plugged.remove(&id);
        Ok(true)
    }
}
