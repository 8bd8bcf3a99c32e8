//! virtio-mem (virtio 1.2, 5.15): memory the device plugs and unplugs in
//! device blocks at the host's request. The driver follows
//! `requested_size` like Linux's `drivers/virtio/virtio_mem.c`:
//!
//! - **Sub-block mode** (device blocks smaller than a memory block): the
//!   driver plugs *units* (a device block, grouped so that a memory block
//!   has at most [`PlugMask::MAX_SUB_BLOCKS`], like Linux's sub-block size)
//!   and keeps one plugged bit per unit over the whole region. A memory
//!   block is hot-added (and onlined as `auto_online_blocks` says) when
//!   its first unit is plugged; the mm is told which parts are plugged ([`PlugMask`]), so any
//!   online of the block, the driver's or a user's, gives the buddy
//!   allocator only plugged memory. Plugging into a block fills partly
//!   plugged blocks first; unplugging goes from the highest unit down and
//!   takes whole blocks (offline, remove, unplug) when it can.
//! - **Big-block mode** (device blocks of one or more memory blocks): a
//!   unit is one device block, added and removed as whole memory blocks.
//!
//! Every refusal, the device's (NACK, BUSY, ERROR) or the kernel's (busy
//! pages, allocation failure), leaves the kernel matching the device
//! (re-added, re-onlined, pages given back) and is retried with a backoff;
//! one failing block never stops the others. Users may offline and online
//! driver-owned blocks; the driver plugs into and unplugs from an offline
//! block without onlining it.
//!
//! The driver talks to the device through [`MemDevice`] and to memory
//! through a [`MemorySystem`] it is handed, so every decision it makes runs
//! in host tests over a fake device ([`pci`] is the real one).

#[cfg(target_os = "none")]
pub mod pci;
#[cfg(test)]
mod tests;

use alloc::vec::Vec;

use crate::arch;
use crate::error::Result;
use crate::mm::addr::PhysAddr;
use crate::mm::hotplug::OfflineError;
use crate::mm::layout::{align_down, align_up, MEMORY_BLOCK_SIZE, PAGE_SIZE, PHYS_LIMIT};
use crate::mm::page::Zone;
use crate::mm::pgtable::Translation;
use crate::mm::system::{block_id, block_range, BlockState, MemorySystem, PlugMask};
use crate::{bail, err, pr_info, pr_warn};

pub const RESOURCE: &str = "System RAM (virtio_mem)";

/// The retry delay after a step that could not finish, doubled after each
/// such step up to the maximum. Linux goes from 50 s to 5 minutes
/// (`VIRTIO_MEM_RETRY_TIMER_{MIN,MAX}_MS`) because a retry there is costly
/// (it migrates pages off every block it tries to offline) and its memory
/// notifier retries at once when a block goes offline or online. Here a
/// retry costs a few device requests and offline attempts that stop at the
/// first busy page (nothing is migrated), and nothing else wakes the driver
/// when memory is freed (`unpin`) or a user offlines a block: a one-second
/// cap lets it follow such changes within a second.
pub const RETRY_MIN_MS: u64 = 100;
pub const RETRY_MAX_MS: u64 = 1000;

/// The most units a region may have (a 2 MiB bitmap).
const MAX_UNITS: u64 = 1 << 24;

/// The device's configuration (5.15.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub block_size: u64,
    /// The NUMA node of the device's memory (QEMU's `node=`).
    pub node_id: u16,
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
    State { addr: u64, nb_blocks: u16 },
}

/// What a `STATE` request reports of a range (`VIRTIO_MEM_STATE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlugState {
    Plugged,
    Unplugged,
    Mixed,
}

/// The device's answer (`VIRTIO_MEM_RESP_*`; an acknowledged `STATE`
/// request carries the state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    Ack,
    Nack,
    Busy,
    Error,
    State(PlugState),
}

impl Response {
    /// The answer to `req` from the response's `type` and `state` fields;
    /// anything unknown is an error.
    pub fn from_raw(req: Request, kind: u16, state: u16) -> Self {
        match (kind, req) {
            (0, Request::State { .. }) => match state {
                0 => Response::State(PlugState::Plugged),
                1 => Response::State(PlugState::Unplugged),
                2 => Response::State(PlugState::Mixed),
                _ => Response::Error,
            },
            (0, _) => Response::Ack,
            (1, _) => Response::Nack,
            (2, _) => Response::Busy,
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
    /// Tells the device the driver gave up on it (`FAILED`, 2.1.1).
    fn fail(&mut self);
}

/// How the driver cuts the region, fixed at probe.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// Bytes plugged at a time: a device block, or several in sub-block
    /// mode when device blocks are tiny.
    unit: u64,
    /// Device blocks per unit.
    per_unit: u64,
    /// The first and the end of the whole memory blocks (big-block mode:
    /// whole device blocks) in the region: the first rounded up, the end
    /// down.
    start: u64,
    end: u64,
}

impl Geometry {
    fn new(c: &Config) -> Result<Self> {
        let bs = c.block_size;
        if !bs.is_power_of_two() || bs < PAGE_SIZE || !c.addr.is_multiple_of(bs) {
            bail!(
                ENODEV,
                "virtio_mem: device block size {bs:#x} or region {:#x} not usable",
                c.addr
            );
        }
        let unit = if bs >= MEMORY_BLOCK_SIZE {
            bs
        } else {
            bs.max(MEMORY_BLOCK_SIZE / PlugMask::MAX_SUB_BLOCKS)
        };
        let align = unit.max(MEMORY_BLOCK_SIZE);
        let region_end = c
            .addr
            .checked_add(c.region_size)
            .filter(|&e| e <= PHYS_LIMIT)
            .ok_or_else(|| {
                err!(
                    ENODEV,
                    "virtio_mem: region {:#x}+{:#x} is beyond the physical address range",
                    c.addr,
                    c.region_size
                )
            })?;
        let start = align_up(c.addr, align);
        let end = align_down(region_end, align).max(start);
        if (end - start) / unit > MAX_UNITS {
            bail!(
                ENODEV,
                "virtio_mem: region {:#x}+{:#x} has too many device blocks",
                c.addr,
                c.region_size
            );
        }
        Ok(Geometry {
            unit,
            per_unit: unit / bs,
            start,
            end,
        })
    }

    fn units(&self) -> u64 {
        (self.end - self.start) / self.unit
    }

    /// Big-block mode: a unit is one or more whole memory blocks.
    fn big(&self) -> bool {
        self.unit >= MEMORY_BLOCK_SIZE
    }

    fn addr(&self, u: u64) -> u64 {
        self.start + u * self.unit
    }

    /// The memory blocks of unit `u`, `[first, end)`.
    fn blocks_of(&self, u: u64) -> (u64, u64) {
        let first = self.addr(u) / MEMORY_BLOCK_SIZE;
        (first, first + self.unit.div_ceil(MEMORY_BLOCK_SIZE))
    }

    /// Sub-block mode: the index of unit `u` in its memory block.
    fn sub(&self, u: u64) -> u64 {
        (self.addr(u) % MEMORY_BLOCK_SIZE) / self.unit
    }

    /// The units of memory block `id`, `[first, end)`.
    fn units_of(&self, id: u64) -> (u64, u64) {
        let base = block_range(id).base.as_u64();
        let first = (align_down(base, self.unit) - self.start) / self.unit;
        (first, first + (MEMORY_BLOCK_SIZE / self.unit).max(1))
    }
}

/// How a step is going.
#[derive(Default)]
struct Pass {
    /// Something could not be done: retry later.
    trouble: bool,
    /// The device refused (NACK, BUSY, transport error): no more requests
    /// this step.
    refused: bool,
}

/// The memory blocks taken down for an unplug, with their state before.
type TakenDown = Vec<(u64, BlockState)>;

enum TakeDown {
    Done(TakenDown),
    /// A page is in use; everything is as it was.
    Busy,
    /// Something else went wrong (logged); everything is as it was.
    Failed,
}

pub struct VirtioMem<D: MemDevice> {
    dev: D,
    config: Config,
    geo: Geometry,
    /// One bit per unit of `[geo.start, geo.end)`: plugged, as the device
    /// last acknowledged.
    bits: Vec<u64>,
    nr_plugged: u64,
    /// The device had memory plugged at probe and has not acknowledged
    /// `UNPLUG_ALL` yet: nothing is plugged until it has.
    unplug_all: bool,
    /// The delay the next failed step asks for.
    retry_ms: u64,
    /// Memory blocks whose pages were in use on the last step, ascending
    /// (for the report only: one the heap has no room for goes unnamed).
    busy: Vec<u64>,
    /// Timer ticks of the current step, reported with its result.
    ticks: Ticks,
}

/// Where a step's time went, in generic-timer ticks.
#[derive(Clone, Copy, Debug, Default)]
struct Ticks {
    /// Waiting for the device's answers.
    requests: u64,
    /// Kernel-side hotplug work, all of it.
    hotplug: u64,
    /// Of that: adding memory blocks (linear map, vmemmap) and onlining
    /// the added blocks.
    add: u64,
    online: u64,
}

impl<D: MemDevice> VirtioMem<D> {
    /// Checks the device's geometry and brings it to a known state
    /// (5.15.6.1): a device with memory plugged (after a reboot) is asked
    /// to unplug it all, and again on each step until it has. On failure
    /// the device is told (`FAILED`).
    pub fn new(dev: D) -> Result<Self> {
        let mut dev = dev;
        let probed = dev.config().and_then(|config| {
            let geo = Geometry::new(&config)?;
            let words = geo.units().div_ceil(64) as usize;
            let mut bits = Vec::new();
            bits.try_reserve_exact(words)
                .map_err(|_| err!(ENOMEM, "virtio_mem: no memory for the plugged bitmap"))?;
            bits.resize(words, 0);
            Ok((config, geo, bits))
        });
        let (config, geo, bits) = match probed {
            Ok(p) => p,
            Err(e) => {
                dev.fail();
                return Err(e);
            }
        };
        let mut vm = Self {
            dev,
            config,
            geo,
            bits,
            nr_plugged: 0,
            unplug_all: config.plugged_size != 0,
            retry_ms: RETRY_MIN_MS,
            busy: Vec::new(),
            ticks: Ticks::default(),
        };
        pr_info!(
            "virtio_mem {:#x}: region {:#x}-{:#x}, device block size {:#x}",
            config.addr,
            config.addr,
            (config.addr + config.region_size).saturating_sub(1),
            config.block_size
        );
        if config.node_id != 0 {
            pr_info!("virtio_mem {:#x}: node {}", config.addr, config.node_id);
        }
        if geo.units() == 0 {
            // Said once, here, not on every request (Linux warns at probe).
            pr_warn!(
                "virtio_mem {:#x}: the region holds no whole memory block of {MEMORY_BLOCK_SIZE:#x}: nothing can be plugged",
                config.addr
            );
        }
        if vm.unplug_all {
            vm.try_unplug_all();
        }
        Ok(vm)
    }

    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }

    /// What the driver believes the device has plugged.
    pub fn plugged_bytes(&self) -> u64 {
        self.nr_plugged * self.geo.unit
    }

    /// Whether the driver has work to do before the next config change.
    pub fn unsatisfied(&self) -> bool {
        self.unplug_all || self.nr_plugged != self.wanted()
    }

    fn name(&self) -> u64 {
        self.config.addr
    }

    fn plugged(&self, u: u64) -> bool {
        self.bits[(u / 64) as usize] & (1 << (u % 64)) != 0
    }

    fn set_plugged(&mut self, u: u64, on: bool) {
        if self.plugged(u) != on {
            self.bits[(u / 64) as usize] ^= 1 << (u % 64);
            if on {
                self.nr_plugged += 1;
            } else {
                self.nr_plugged -= 1;
            }
        }
    }

    /// Units that the usable region holds (it grows and shrinks with the
    /// request).
    fn usable_units(&self) -> u64 {
        let end = self
            .config
            .addr
            .saturating_add(self.config.usable_region_size);
        let end = align_down(end.min(self.geo.end), self.geo.unit.max(MEMORY_BLOCK_SIZE));
        end.saturating_sub(self.geo.start) / self.geo.unit
    }

    /// Units the device asks for, capped by what the usable region holds.
    fn wanted(&self) -> u64 {
        (self.config.requested_size / self.geo.unit).min(self.usable_units())
    }

    /// Memory blocks with plugged units, ascending; `None` when the heap
    /// has no room for the list (the caller retries the step later: a
    /// step driven from QMP must not abort the kernel).
    fn plugged_blocks(&self) -> Option<Vec<u64>> {
        let mut ids: Vec<u64> = Vec::new();
        if self.geo.units() > 0 {
            // Room for every block of the region: the pushes below never
            // allocate.
            let (lo, _) = self.geo.blocks_of(0);
            let (_, hi) = self.geo.blocks_of(self.geo.units() - 1);
            ids.try_reserve_exact((hi - lo) as usize).ok()?;
        }
        for (w, &word) in self.bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let u = w as u64 * 64 + word.trailing_zeros() as u64;
                word &= word - 1;
                let (first, end) = self.geo.blocks_of(u);
                for id in first..end {
                    if ids.last().is_none_or(|&l| l < id) {
                        ids.push(id);
                    }
                }
            }
        }
        Some(ids)
    }

    /// Records that block `id` had pages in use, if the heap has room.
    fn mark_busy(&mut self, id: u64) {
        if let Err(at) = self.busy.binary_search(&id) {
            if self.busy.try_reserve(1).is_ok() {
                self.busy.insert(at, id);
            }
        }
    }

    /// The mm's view of block `id`'s plugged parts, from the bitmap.
    fn mask_of(&self, id: u64) -> PlugMask {
        if self.geo.big() {
            return PlugMask::full();
        }
        let mut mask = PlugMask::new(self.geo.unit).expect("the unit fits a memory block");
        let (first, end) = self.geo.units_of(id);
        for u in first..end {
            mask.set(u - first, self.plugged(u));
        }
        mask
    }

    /// Plugged bytes in memory block `id`.
    fn plugged_in_block(&self, id: u64) -> u64 {
        let (first, end) = self.geo.units_of(id);
        let units = (first..end).filter(|&u| self.plugged(u)).count() as u64;
        (units * self.geo.unit).min(MEMORY_BLOCK_SIZE)
    }

    fn send(&mut self, req: Request) -> Result<Response> {
        let t0 = arch::counter();
        let r = self.dev.request(req);
        self.ticks.requests += arch::counter() - t0;
        r
    }

    /// Runs kernel-side hotplug work, timed.
    fn hotplug<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let t0 = arch::counter();
        let r = f(self);
        self.ticks.hotplug += arch::counter() - t0;
        r
    }

    fn try_unplug_all(&mut self) -> bool {
        match self.send(Request::UnplugAll) {
            Ok(Response::Ack) => {
                self.unplug_all = false;
                true
            }
            r => {
                pr_warn!(
                    "virtio_mem {:#x}: UNPLUG_ALL answered {r:?}; will retry",
                    self.name()
                );
                false
            }
        }
    }

    /// Asks the device to plug (or unplug) units `[u, u + n)`; whether it
    /// has. An ERROR (the driver's view of the range is not the device's)
    /// is checked with a STATE request and the device's word taken.
    fn change(&mut self, u: u64, n: u64, plug: bool, pass: &mut Pass) -> bool {
        let addr = self.geo.addr(u);
        let nb_blocks = (n * self.geo.per_unit) as u16;
        let req = if plug {
            Request::Plug { addr, nb_blocks }
        } else {
            Request::Unplug { addr, nb_blocks }
        };
        let resp = self.send(req);
        let done = match resp {
            Ok(Response::Ack) => true,
            Ok(Response::Error) => {
                let want = if plug {
                    PlugState::Plugged
                } else {
                    PlugState::Unplugged
                };
                self.send(Request::State { addr, nb_blocks }) == Ok(Response::State(want))
            }
            _ => false,
        };
        if done {
            for i in u..u + n {
                self.set_plugged(i, plug);
            }
            return true;
        }
        pr_warn!("virtio_mem {:#x}: {req:?} answered {resp:?}", self.name());
        pass.trouble = true;
        // NACK and BUSY are about the device as a whole; an ERROR only
        // about this range.
        pass.refused |= resp != Ok(Response::Error);
        false
    }

    /// Moves plugged memory towards `requested_size`. Returns when to call
    /// again (milliseconds) if it could not get there, `None` when it did
    /// (or cannot do better until the configuration changes).
    pub fn step<T: Translation>(&mut self, mm: &mut MemorySystem<T>) -> Option<u64> {
        self.ticks = Ticks::default();
        self.busy.clear();
        let mut pass = Pass::default();
        match self.dev.config() {
            Ok(c) => self.config = c,
            Err(e) => {
                pr_warn!("{e}");
                pass.trouble = true;
            }
        }
        if !pass.trouble && (!self.unplug_all || self.try_unplug_all()) {
            self.resync(&mut pass);
            self.sync(mm, &mut pass);
            let wanted = self.wanted();
            if self.nr_plugged < wanted {
                if self.geo.big() {
                    self.plug_big(mm, wanted, &mut pass);
                } else {
                    self.plug_sub(mm, wanted, &mut pass);
                }
            }
            if self.nr_plugged > wanted {
                self.unplug(mm, wanted, &mut pass);
            }
            pass.trouble |= self.nr_plugged != wanted;
        } else {
            pass.trouble = true;
        }
        if let Ok(c) = self.dev.config() {
            self.config = c;
        }
        self.report();
        if pass.trouble {
            let ms = self.retry_ms;
            self.retry_ms = (ms * 2).min(RETRY_MAX_MS);
            Some(ms)
        } else {
            self.retry_ms = RETRY_MIN_MS;
            None
        }
    }

    fn report(&self) {
        let freq = arch::counter_freq();
        let us = |ticks: u64| ticks * 1_000_000 / freq;
        // Written straight into the log line: nothing is allocated.
        struct Busy<'a>(&'a [u64], u64);
        impl core::fmt::Display for Busy<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let Some((first, rest)) = self.0.split_first() else {
                    return Ok(());
                };
                write!(f, "; {} MiB busy, stays plugged: {{{first}", self.1 >> 20)?;
                rest.iter().try_for_each(|id| write!(f, ", {id}"))?;
                f.write_str("}")
            }
        }
        let bytes: u64 = self.busy.iter().map(|&id| self.plugged_in_block(id)).sum();
        let busy = Busy(&self.busy, bytes);
        pr_info!(
            "virtio_mem {:#x}: plugged {} MiB of {} MiB requested (device requests {} us, hotplug {} us: add {} us, online {} us){busy}",
            self.name(),
            self.config.plugged_size >> 20,
            self.config.requested_size >> 20,
            us(self.ticks.requests),
            us(self.ticks.hotplug),
            us(self.ticks.add),
            us(self.ticks.online),
        );
    }

    /// The node the device's memory goes to: its config's `node_id`
    /// (the mm falls back to the DT's node for the address if the DT has
    /// no such node).
    fn nid(&self) -> Option<usize> {
        Some(self.config.node_id.into())
    }

    /// Adds memory block `id` with what is plugged of it; the mm onlines
    /// it as `auto_online_blocks` says (Linux's distributions pick
    /// `online_movable`, so that it can go again).
    fn add_block<T: Translation>(&mut self, mm: &mut MemorySystem<T>, id: u64) -> Result<()> {
        let base = block_range(id).base;
        self.add_range(mm, base, MEMORY_BLOCK_SIZE, self.mask_of(id))
    }

    /// Linux's `add_memory_driver_managed` of `[base, base + size)` with
    /// `plugged`, then the policy's online (as the mm's own
    /// `add_memory_driver_managed` does), each part timed.
    fn add_range<T: Translation>(
        &mut self,
        mm: &mut MemorySystem<T>,
        base: PhysAddr,
        size: u64,
        plugged: PlugMask,
    ) -> Result<()> {
        let t0 = arch::counter();
        mm.add_memory_driver_managed_offline(self.nid(), base, size, RESOURCE, plugged)?;
        let t1 = arch::counter();
        mm.auto_online(block_id(base), block_id(base + size));
        self.ticks.add += t1 - t0;
        self.ticks.online += arch::counter() - t1;
        Ok(())
    }

    /// A device whose answer got lost (it plugged, but said BUSY) has more
    /// plugged than the driver counted, and would NACK every plug after:
    /// when `plugged_size` says so, ask the device (STATE, a memory block
    /// at a time) and adopt what it has plugged; [`sync`](Self::sync)
    /// hands it to the kernel. (Memory counted but unplugged is settled by
    /// the next unplug of it: ERROR, then STATE.)
    fn resync(&mut self, pass: &mut Pass) {
        if self.config.plugged_size <= self.plugged_bytes() {
            return;
        }
        let max_run = (u16::MAX as u64 / self.geo.per_unit).max(1);
        let per_block = (MEMORY_BLOCK_SIZE / self.geo.unit).clamp(1, max_run);
        let before = self.nr_plugged;
        let mut u = 0;
        while u < self.geo.units() {
            let n = per_block.min(self.geo.units() - u);
            let one = |vm: &mut Self, u: u64, n: u64| {
                let addr = vm.geo.addr(u);
                let nb_blocks = (n * vm.geo.per_unit) as u16;
                vm.send(Request::State { addr, nb_blocks })
            };
            match one(self, u, n) {
                Ok(Response::State(PlugState::Plugged)) => {
                    (u..u + n).for_each(|i| self.set_plugged(i, true))
                }
                Ok(Response::State(PlugState::Unplugged)) => {}
                Ok(Response::State(PlugState::Mixed)) => {
                    for i in u..u + n {
                        if one(self, i, 1) == Ok(Response::State(PlugState::Plugged)) {
                            self.set_plugged(i, true);
                        }
                    }
                }
                r => {
                    pr_warn!("virtio_mem {:#x}: STATE answered {r:?}", self.name());
                    pass.trouble = true;
                    return;
                }
            }
            u += n;
        }
        pr_warn!(
            "virtio_mem {:#x}: the device had {} MiB plugged that the driver did not count",
            self.name(),
            ((self.nr_plugged - before) * self.geo.unit) >> 20
        );
    }

    /// Makes the kernel match the device where an earlier rollback could
    /// not: blocks with plugged units that are not present are added,
    /// plugged units the kernel still has as unplugged are given to it.
    fn sync<T: Translation>(&mut self, mm: &mut MemorySystem<T>, pass: &mut Pass) {
        let Some(ids) = self.plugged_blocks() else {
            pass.trouble = true;
            return;
        };
        for id in ids {
            let mask = self.mask_of(id);
            let r = match mm.blocks().get(&id).map(|b| b.plugged) {
                None => self.hotplug(|vm| vm.add_block(mm, id)),
                Some(Some(have)) if have != mask => (0..mask.len())
                    .filter(|&i| mask.get(i) && !have.get(i))
                    .try_for_each(|i| mm.plug_sub_blocks(id, i, 1)),
                Some(_) => Ok(()),
            };
            if let Err(e) = r {
                pr_warn!(
                    "virtio_mem {:#x}: memory{id} plugged but not usable: {e}",
                    self.name()
                );
                pass.trouble = true;
            }
        }
    }

    /// Sub-block mode: plugs units until `wanted`, into partly plugged
    /// blocks first (as Linux does), then into new ones, lowest first.
    fn plug_sub<T: Translation>(&mut self, mm: &mut MemorySystem<T>, wanted: u64, pass: &mut Pass) {
        let usable = self.usable_units();
        let per_block = MEMORY_BLOCK_SIZE / self.geo.unit;
        let first_id = self.geo.start / MEMORY_BLOCK_SIZE;
        let ids = first_id..first_id + usable.div_ceil(per_block);
        let Some(partly) = self.plugged_blocks() else {
            pass.trouble = true;
            return;
        };
        let fresh = ids.filter(|id| !partly.contains(id));
        let max_run = (u16::MAX as u64 / self.geo.per_unit).max(1);
        for id in partly.iter().copied().chain(fresh) {
            let (first, end) = self.geo.units_of(id);
            let mut u = first;
            while u < end.min(usable) && self.nr_plugged < wanted && !pass.refused {
                if self.plugged(u) {
                    u += 1;
                    continue;
                }
                let need = (wanted - self.nr_plugged).min(max_run);
                let n = (u..end.min(usable))
                    .take(need as usize)
                    .take_while(|&i| !self.plugged(i))
                    .count() as u64;
                self.plug_run(mm, id, u, n, pass);
                u += n;
            }
        }
    }

    /// Plugs units `[u, u + n)` of block `id` and hands them to the
    /// kernel (adding the block if it is new); gives them back to the
    /// device if the kernel cannot take them.
    fn plug_run<T: Translation>(
        &mut self,
        mm: &mut MemorySystem<T>,
        id: u64,
        u: u64,
        n: u64,
        pass: &mut Pass,
    ) {
        if !self.change(u, n, true, pass) {
            return;
        }
        let sub = self.geo.sub(u);
        let r = self.hotplug(|vm| match mm.blocks().contains_key(&id) {
            true => mm.plug_sub_blocks(id, sub, n),
            false => vm.add_block(mm, id),
        });
        if let Err(e) = r {
            pr_warn!("virtio_mem {:#x}: {e}: giving memory{id} back", self.name());
            pass.trouble = true;
            // If the device keeps it, the next step's sync adds it.
            self.change(u, n, false, pass);
        }
    }

    /// Big-block mode: plugs whole device blocks until `wanted`, lowest
    /// first, each added as its memory blocks (onlined by the policy).
    fn plug_big<T: Translation>(&mut self, mm: &mut MemorySystem<T>, wanted: u64, pass: &mut Pass) {
        for u in 0..self.usable_units() {
            if self.nr_plugged >= wanted || pass.refused {
                break;
            }
            if self.plugged(u) || !self.change(u, 1, true, pass) {
                continue;
            }
            let (first, _) = self.geo.blocks_of(u);
            let base = block_range(first).base;
            let size = self.geo.unit;
            let added = self.hotplug(|vm| vm.add_range(mm, base, size, PlugMask::full()));
            if let Err(e) = added {
                pr_warn!("virtio_mem {:#x}: {e}: giving {base:#x} back", self.name());
                pass.trouble = true;
                self.change(u, 1, false, pass);
            }
        }
    }

    /// Unplugs units until `wanted`, in Linux's order: offline blocks
    /// first (cheap, and removing one frees its struct pages and tables,
    /// which may sit in an online Normal block), then Movable, then
    /// Normal ones; in each, partly plugged blocks before full ones, the
    /// highest first.
    fn unplug<T: Translation>(&mut self, mm: &mut MemorySystem<T>, wanted: u64, pass: &mut Pass) {
        let Some(mut ids) = self.plugged_blocks() else {
            pass.trouble = true;
            return;
        };
        // Unstable: the keys are unique (the id), and it does not allocate.
        ids.sort_unstable_by_key(|&id| {
            let class = match mm.blocks().get(&id).map(|b| b.state) {
                None | Some(BlockState::Offline) => 0,
                Some(BlockState::Online(Zone::Movable)) => 1,
                Some(BlockState::Online(_)) => 2,
            };
            let full = self.plugged_in_block(id) == MEMORY_BLOCK_SIZE;
            (class, full, core::cmp::Reverse(id))
        });
        for id in ids {
            if self.nr_plugged <= wanted || pass.refused {
                break;
            }
            let (first, end) = self.geo.units_of(id);
            // Big-block mode: a unit is handled once, at its first block.
            if self.geo.big() && self.geo.blocks_of(first).0 != id {
                continue;
            }
            let mut units: Vec<u64> = Vec::new();
            if units.try_reserve_exact((end - first) as usize).is_err() {
                pass.trouble = true;
                continue;
            }
            units.extend((first..end).rev().filter(|&u| self.plugged(u)));
            let excess = self.nr_plugged - wanted;
            let (lo, hi) = if self.geo.big() {
                self.geo.blocks_of(first)
            } else {
                (id, id + 1)
            };
            if !(lo..hi).any(|b| mm.blocks().contains_key(&b)) {
                // Plugged but not in the kernel (a failed rollback):
                // only the device has anything to do.
                for u in units.into_iter().take(excess as usize) {
                    if !self.change(u, 1, false, pass) && pass.refused {
                        break;
                    }
                }
                continue;
            }
            if excess >= units.len() as u64 {
                match self.take_down(mm, lo, hi) {
                    TakeDown::Done(taken) => {
                        self.unplug_taken(mm, &units, taken, pass);
                        continue;
                    }
                    TakeDown::Failed => {
                        pass.trouble = true;
                        continue;
                    }
                    TakeDown::Busy => pass.trouble = true,
                }
            }
            if !self.geo.big() {
                self.unplug_units(mm, id, &units, wanted, pass);
            }
        }
    }

    /// Offlines and removes memory blocks `[lo, hi)`, or none of them.
    fn take_down<T: Translation>(
        &mut self,
        mm: &mut MemorySystem<T>,
        lo: u64,
        hi: u64,
    ) -> TakeDown {
        let mut taken: TakenDown = Vec::new();
        if taken.try_reserve_exact((hi - lo) as usize).is_err() {
            pr_warn!(
                "virtio_mem {:#x}: no memory to take blocks down",
                self.name()
            );
            return TakeDown::Failed;
        }
        let mut failed = None;
        for id in lo..hi {
            let Some(state) = mm.blocks().get(&id).map(|b| b.state) else {
                continue;
            };
            if state != BlockState::Offline {
                match self.hotplug(|_| mm.offline_block(id)) {
                    Ok(()) => {}
                    Err(OfflineError::Busy { .. }) => {
                        self.mark_busy(id);
                        failed = Some(TakeDown::Busy);
                        break;
                    }
                    Err(OfflineError::Invalid(e)) => {
                        pr_warn!("virtio_mem {:#x}: {e}", self.name());
                        failed = Some(TakeDown::Failed);
                        break;
                    }
                }
            }
            taken.push((id, state));
        }
        if failed.is_none() {
            for &(id, _) in &taken {
                let base = block_range(id).base;
                if let Err(e) = mm.remove_memory_driver_managed(base, MEMORY_BLOCK_SIZE, RESOURCE) {
                    // Only offline driver blocks are here: not expected.
                    pr_warn!("virtio_mem {:#x}: {e}", self.name());
                    failed = Some(TakeDown::Failed);
                    break;
                }
            }
        }
        let Some(failed) = failed else {
            return TakeDown::Done(taken);
        };
        self.bring_back(mm, taken);
        failed
    }

    /// Unplugs `units` (the plugged units of a block, highest first, or
    /// the one unit of a big block) of blocks `taken` down for them; what
    /// the device refuses comes back into the kernel as it was.
    fn unplug_taken<T: Translation>(
        &mut self,
        mm: &mut MemorySystem<T>,
        units: &[u64],
        taken: TakenDown,
        pass: &mut Pass,
    ) {
        // Runs of consecutive units, highest first: the lowest, holding
        // the block's struct pages, goes last.
        let max_run = (u16::MAX as u64 / self.geo.per_unit).max(1) as usize;
        let mut i = 0;
        while i < units.len() {
            let mut n = 1;
            while i + n < units.len() && units[i + n] + 1 == units[i + n - 1] && n < max_run {
                n += 1;
            }
            if !self.change(units[i + n - 1], n as u64, false, pass) && pass.refused {
                break;
            }
            i += n;
        }
        if units.iter().all(|&u| !self.plugged(u)) {
            return;
        }
        // The device keeps some: so does the kernel.
        pass.trouble = true;
        self.bring_back(mm, taken);
    }

    /// Blocks taken down come back as they were: removed ones re-added
    /// with what is plugged of them, offlined ones re-onlined in their
    /// zone. What cannot be re-added now, the next step's sync adds.
    fn bring_back<T: Translation>(&mut self, mm: &mut MemorySystem<T>, taken: TakenDown) {
        for (id, state) in taken {
            let r = self.hotplug(|vm| {
                if !mm.blocks().contains_key(&id) {
                    let base = block_range(id).base;
                    mm.add_memory_driver_managed_offline(
                        vm.nid(),
                        base,
                        MEMORY_BLOCK_SIZE,
                        RESOURCE,
                        vm.mask_of(id),
                    )?;
                }
                match state {
                    BlockState::Online(zone) => mm.online_block(id, zone),
                    BlockState::Offline => Ok(()),
                }
            });
            if let Err(e) = r {
                pr_warn!(
                    "virtio_mem {:#x}: memory{id} not restored: {e}",
                    self.name()
                );
            }
        }
    }

    /// Sub-block mode: unplugs `units` of block `id` (its plugged units,
    /// highest first) until `wanted`, never the sub-block with the block's
    /// struct pages (it goes with the block). Runs of consecutive units go
    /// in one request, as Linux's `virtio_mem_sbm_unplug_any_sb_raw` does;
    /// a unit with a busy page splits its run and stays plugged.
    fn unplug_units<T: Translation>(
        &mut self,
        mm: &mut MemorySystem<T>,
        id: u64,
        units: &[u64],
        wanted: u64,
        pass: &mut Pass,
    ) {
        let hosts_memmap = mm.blocks().get(&id).is_some_and(|b| b.altmap.is_some());
        // At most every unit is kept: the pushes below never allocate.
        let mut keep: Vec<u64> = Vec::new();
        if keep.try_reserve_exact(units.len()).is_err() {
            pass.trouble = true;
            return;
        }
        if hosts_memmap {
            keep.extend(units.iter().copied().filter(|&u| self.geo.sub(u) == 0));
        }
        let max_run = (u16::MAX as u64 / self.geo.per_unit).max(1);
        let mut i = 0;
        while i < units.len() && self.nr_plugged > wanted && !pass.refused {
            if keep.contains(&units[i]) {
                i += 1;
                continue;
            }
            let cap = (self.nr_plugged - wanted).min(max_run) as usize;
            let mut n = 1;
            while n < cap
                && i + n < units.len()
                && units[i + n] + 1 == units[i + n - 1]
                && !keep.contains(&units[i + n])
            {
                n += 1;
            }
            match self.unplug_run(mm, id, units[i + n - 1], n as u64, pass) {
                // The run again, up to the busy unit.
                Err(Some(busy)) => keep.push(busy),
                Ok(()) | Err(None) => i += n,
            }
        }
    }

    /// Takes units `[u, u + n)` of block `id` from the kernel and asks the
    /// device to unplug them; what the device refuses goes back to the
    /// kernel. Fails with the unit of a busy page, or `None` if the mm
    /// refused (logged).
    fn unplug_run<T: Translation>(
        &mut self,
        mm: &mut MemorySystem<T>,
        id: u64,
        u: u64,
        n: u64,
        pass: &mut Pass,
    ) -> core::result::Result<(), Option<u64>> {
        let sub = self.geo.sub(u);
        match self.hotplug(|_| mm.unplug_sub_blocks(id, sub, n)) {
            Ok(()) => {}
            Err(OfflineError::Busy { pfn, .. }) => {
                self.mark_busy(id);
                pass.trouble = true;
                let busy = pfn.phys().as_u64().saturating_sub(self.geo.start) / self.geo.unit;
                // Only a unit of the run can be busy; anything else ends it.
                return Err((u..u + n).contains(&busy).then_some(busy));
            }
            Err(OfflineError::Invalid(e)) => {
                pr_warn!("virtio_mem {:#x}: {e}", self.name());
                pass.trouble = true;
                return Err(None);
            }
        }
        if !self.change(u, n, false, pass) {
            if let Err(e) = mm.plug_sub_blocks(id, sub, n) {
                pr_warn!(
                    "virtio_mem {:#x}: memory{id} not restored: {e}",
                    self.name()
                );
            }
        }
        Ok(())
    }
}
