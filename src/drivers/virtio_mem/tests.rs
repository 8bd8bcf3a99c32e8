//! The driver over a fake device and a host memory system: what it plugs,
//! unplugs, onlines and removes for each request, what users may do to its
//! blocks meanwhile, and what it does when the device refuses or memory is
//! busy. After every step the checks of [`check`] hold: the kernel matches
//! the device.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::error::{Errno, Error};
use crate::mm::addr::{Pfn, PhysAddr};
use crate::mm::layout::PAGE_SIZE;
use crate::mm::online::{OnlineConfig, OnlineType};
use crate::mm::page::{PageFlags, Zone};
use crate::mm::system::{block_id, MemInfo};
use crate::mm::test_system::{TestSystem, MEMMAP_PER_BLOCK, MIB, NOT_RAM};
use crate::mm::testing::ArenaTranslation;

const MB: u64 = MEMORY_BLOCK_SIZE;
/// The fake device's region: blocks 22 and 23 of the test system.
const REGION: u64 = 2 * MB;

/// `mib` MiB of a 128 MiB memory block, scaled to the granule's block (so
/// that a size is the same part of a block with 64K's 512 MiB).
const fn sz(mib: u64) -> u64 {
    mib * MIB * (MB / (128 * MIB))
}

mod model;

type Mm = MemorySystem<ArenaTranslation>;

/// Which requests an injected answer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plug,
    Unplug,
    UnplugAll,
}

/// A virtio-mem device per the spec and QEMU: a plugged bit per device
/// block, `ERROR` for a request that does not match the state or leaves
/// the usable region, `NACK` for a plug beyond the requested size; with
/// injectable answers.
struct FakeDevice {
    config: Config,
    plugged: Vec<bool>,
    /// Answers given instead of acting, each to the next request of its
    /// kind.
    inject: VecDeque<(Kind, Response)>,
    /// Answers given after acting (a device whose answer got lost): the
    /// driver's view and the device's part until an ERROR and a STATE
    /// request bring them together.
    lie: VecDeque<(Kind, Response)>,
    requests: Vec<Request>,
    failed: bool,
}

impl FakeDevice {
    fn new(block_size: u64, addr: PhysAddr, size: u64) -> Self {
        FakeDevice {
            config: Config {
                block_size,
                node_id: 0,
                addr: addr.as_u64(),
                region_size: size,
                usable_region_size: size,
                plugged_size: 0,
                requested_size: 0,
            },
            plugged: vec![false; (size / block_size) as usize],
            inject: VecDeque::new(),
            lie: VecDeque::new(),
            requests: Vec::new(),
            failed: false,
        }
    }

    fn bs(&self) -> u64 {
        self.config.block_size
    }

    /// Device blocks `[first, first + n)` if the range is valid.
    fn range(&self, addr: u64, nb_blocks: u16) -> Option<(usize, usize)> {
        let c = &self.config;
        let n = nb_blocks as u64;
        let ok = n > 0
            && addr >= c.addr
            && addr.is_multiple_of(c.block_size)
            && addr + n * c.block_size <= c.addr + c.usable_region_size;
        let first = ((addr - c.addr.min(addr)) / c.block_size) as usize;
        ok.then_some((first, first + n as usize))
    }

    fn set(&mut self, addr: u64, nb_blocks: u16, to: bool) -> Response {
        let Some((s, e)) = self.range(addr, nb_blocks) else {
            return Response::Error;
        };
        if to && self.plugged_bytes() + (e - s) as u64 * self.bs() > self.config.requested_size {
            return Response::Nack;
        }
        if self.plugged[s..e].contains(&to) {
            return Response::Error;
        }
        self.plugged[s..e].fill(to);
        Response::Ack
    }

    fn plugged_bytes(&self) -> u64 {
        self.plugged.iter().filter(|&&b| b).count() as u64 * self.bs()
    }

    fn is_plugged(&self, pa: u64) -> bool {
        let c = &self.config;
        pa >= c.addr && self.plugged[((pa - c.addr) / c.block_size) as usize]
    }

    fn answer(&mut self, kind: Kind, r: Response) {
        self.inject.push_back((kind, r));
    }
}

impl MemDevice for FakeDevice {
    fn config(&mut self) -> Result<Config> {
        self.config.plugged_size = self.plugged_bytes();
        Ok(self.config)
    }

    fn request(&mut self, req: Request) -> Result<Response> {
        self.requests.push(req);
        let kind = match req {
            Request::Plug { .. } => Some(Kind::Plug),
            Request::Unplug { .. } => Some(Kind::Unplug),
            Request::UnplugAll => Some(Kind::UnplugAll),
            Request::State { .. } => None,
        };
        if let Some(i) = self.inject.iter().position(|&(k, _)| Some(k) == kind) {
            return Ok(self.inject.remove(i).expect("found").1);
        }
        let lie = self.lie.iter().position(|&(k, _)| Some(k) == kind);
        let lie = lie.and_then(|i| self.lie.remove(i)).map(|(_, r)| r);
        let answer = match req {
            Request::Plug { addr, nb_blocks } => self.set(addr, nb_blocks, true),
            Request::Unplug { addr, nb_blocks } => self.set(addr, nb_blocks, false),
            Request::UnplugAll => {
                self.plugged.fill(false);
                Response::Ack
            }
            Request::State { addr, nb_blocks } => match self.range(addr, nb_blocks) {
                None => Response::Error,
                Some((s, e)) if self.plugged[s..e].iter().all(|&b| b) => {
                    Response::State(PlugState::Plugged)
                }
                Some((s, e)) if self.plugged[s..e].iter().all(|&b| !b) => {
                    Response::State(PlugState::Unplugged)
                }
                Some(_) => Response::State(PlugState::Mixed),
            },
        };
        Ok(lie.unwrap_or(answer))
    }

    fn fail(&mut self) {
        self.failed = true;
    }
}

/// A system that onlines hot-added memory movable, as the driver's tests
/// assume (Linux's distributions set `memhp_default_state=online_movable`).
fn boot() -> TestSystem {
    let mut sys = TestSystem::boot();
    sys.mm.set_online_config(OnlineConfig {
        default_type: OnlineType::OnlineMovable,
        ..OnlineConfig::default()
    });
    sys
}

fn driver_at(block_size: u64, addr: PhysAddr, size: u64) -> VirtioMem<FakeDevice> {
    VirtioMem::new(FakeDevice::new(block_size, addr, size)).expect("probe")
}

fn driver(block_size: u64) -> VirtioMem<FakeDevice> {
    driver_at(block_size, NOT_RAM, REGION)
}

/// Asks for `size`, runs one step and checks; when to retry.
fn request(vm: &mut VirtioMem<FakeDevice>, mm: &mut Mm, base: &MemInfo, size: u64) -> Option<u64> {
    vm.device().config.requested_size = size;
    let r = vm.step(mm);
    check_step(vm, mm, base, r);
    r
}

/// Steps until the driver is done (at most `n` steps).
fn settle(vm: &mut VirtioMem<FakeDevice>, mm: &mut Mm, base: &MemInfo, n: usize) -> bool {
    for _ in 0..n {
        let r = vm.step(mm);
        check_step(vm, mm, base, r);
        if r.is_none() {
            return true;
        }
    }
    false
}

fn first_block() -> u64 {
    block_id(NOT_RAM)
}

/// The driver-owned blocks of the kernel.
fn driver_blocks(mm: &Mm) -> impl Iterator<Item = (u64, &crate::mm::system::MemoryBlock)> {
    mm.blocks()
        .iter()
        .filter(|(_, b)| b.owner == Some(RESOURCE))
        .map(|(&id, b)| (id, b))
}

/// Struct-page frames on block `id` (its altmap), `[start, end)`.
fn memmap_on(mm: &Mm, id: u64) -> Option<(Pfn, Pfn)> {
    mm.blocks()[&id]
        .altmap
        .as_ref()
        .map(|a| (a.base_pfn, a.next_pfn()))
}

/// The kernel matches the device, whatever happened:
/// - the driver believes plugged what the device has plugged (QMP's
///   `size`);
/// - MemTotal is boot memory plus the online plugged memory (less struct
///   pages kept on it);
/// - every driver block's plugged parts are the device's, and struct pages
///   lie only in plugged memory;
/// - no page the buddy allocator can hand out lies in unplugged memory or
///   holds struct pages; unplugged parts of online blocks are logically
///   offline.
#[track_caller]
fn check(vm: &mut VirtioMem<FakeDevice>, mm: &Mm, base: &MemInfo) {
    check_pending(vm, mm, base);
}

/// [`check`]; whether plugged memory is missing from the kernel (allowed
/// only while the driver has asked to be called again).
#[track_caller]
fn check_pending(vm: &mut VirtioMem<FakeDevice>, mm: &Mm, base: &MemInfo) -> bool {
    let dev_plugged = vm.device().plugged_bytes();
    assert_eq!(
        vm.plugged_bytes(),
        dev_plugged,
        "driver and device disagree"
    );
    let dev = &vm.dev;
    let bs = dev.bs();
    let mut online_plugged = 0;
    let mut present_plugged = 0;
    for (id, b) in driver_blocks(mm) {
        let r = block_range(id);
        let plugged_here = (0..MB / bs.min(MB))
            .filter(|i| dev.is_plugged(r.base.as_u64() + i * bs.min(MB)))
            .count() as u64
            * bs.min(MB);
        present_plugged += plugged_here;
        assert!(plugged_here > 0, "memory{id} present with nothing plugged");
        let mask = b.plugged.expect("driver blocks have a plug mask");
        for i in 0..mask.len() {
            let pa = r.base.as_u64() + i * mask.sub_size();
            assert_eq!(mask.get(i), dev.is_plugged(pa), "memory{id} sub-block {i}");
        }
        let memmap = memmap_on(mm, id);
        if let Some((s, e)) = memmap {
            for pfn in [s, e - 1] {
                assert!(
                    dev.is_plugged(pfn.phys().as_u64()),
                    "struct pages of memory{id} unplugged"
                );
            }
        }
        if let BlockState::Online(_) = b.state {
            // Every struct page of the block reads back through the
            // vmemmap, from system RAM or plugged memory.
            let (spfn, epfn) = (Pfn::down(r.base), Pfn::down(r.end()));
            let mut va = spfn.page_va();
            while va < epfn.page_va() {
                let pa = mm.page_table().translate(va).map(|(pa, _, _)| pa);
                let pa = pa.unwrap_or_else(|| panic!("memory{id}: struct page {va:#x} unmapped"));
                let region = dev.config.addr..dev.config.addr + dev.config.region_size;
                assert!(
                    !region.contains(&pa.as_u64()) || dev.is_plugged(pa.as_u64()),
                    "memory{id}: struct page {va:#x} in unplugged {pa:#x}"
                );
                va += PAGE_SIZE;
            }
            let own = memmap.map_or(0, |(s, e)| (e - s) * PAGE_SIZE);
            online_plugged += plugged_here - own;
            for i in 0..MB / PAGE_SIZE {
                let pa = r.base + i * PAGE_SIZE;
                if !dev.is_plugged(pa.as_u64()) {
                    let p = mm.page(Pfn::down(pa)).expect("present");
                    assert!(
                        p.has(PageFlags::LOGICALLY_OFFLINE),
                        "{pa:#x} unplugged, not offline"
                    );
                }
            }
        }
    }
    // Plugged memory the kernel lacks only while a rollback is pending.
    assert!(present_plugged <= dev_plugged);
    let pending = present_plugged < dev_plugged;
    assert_eq!(
        mm.meminfo().total - base.total,
        online_plugged,
        "MemTotal is not boot memory plus online plugged memory"
    );
    let region = dev.config.addr..dev.config.addr + dev.config.region_size;
    for zone in Zone::BUDDY_ZONES {
        mm.buddy().for_each_free_block(zone, |pfn, order| {
            let (s, e) = (pfn.phys().as_u64(), (pfn + (1 << order)).phys().as_u64());
            let mut pa = s;
            while pa < e {
                if region.contains(&pa) {
                    assert!(dev.is_plugged(pa), "free page {pa:#x} is not plugged");
                    let id = block_id(PhysAddr::new(pa));
                    if let Some((ms, me)) = memmap_on(mm, id) {
                        let p = Pfn::down(PhysAddr::new(pa));
                        assert!(
                            !(ms..me).contains(&p),
                            "free page {pa:#x} holds struct pages"
                        );
                    }
                }
                pa += PAGE_SIZE;
            }
        });
    }
    pending
}

/// Checks after a step that returned `r`: done means nothing pending.
#[track_caller]
fn check_step(vm: &mut VirtioMem<FakeDevice>, mm: &Mm, base: &MemInfo, r: Option<u64>) {
    let pending = check_pending(vm, mm, base);
    assert!(
        r.is_some() || !pending,
        "done with plugged memory not in the kernel"
    );
}

/// Takes every movable page there is; returns them.
fn take_all(mm: &mut Mm) -> Vec<Pfn> {
    let mut got = Vec::new();
    while let Some(pfn) = mm.alloc(0, Zone::Movable) {
        got.push(pfn);
    }
    got
}

fn give_back(mm: &mut Mm, pages: Vec<Pfn>) {
    for p in pages {
        assert!(mm.free(p, 0));
    }
}

/// Holds the one movable page at `pa`, giving back all others.
fn hold(mm: &mut Mm, pa: PhysAddr) -> Pfn {
    let want = Pfn::down(pa);
    let all = take_all(mm);
    assert!(all.contains(&want), "{pa:#x} is not allocatable");
    give_back(mm, all.into_iter().filter(|&p| p != want).collect());
    want
}

#[test]
fn follows_requests_up_and_down_exactly() {
    for bs in [MIB, 2 * MIB, MB, 2 * MB] {
        for memmap_on_memory in [false, true] {
            let mut sys = boot();
            sys.mm.set_memmap_on_memory(memmap_on_memory);
            let base = sys.mm.meminfo();
            let mut vm = driver(bs);
            for size in [64 * MIB, 200 * MIB, 130 * MIB, 2 * MIB, REGION, 3 * MIB, 0] {
                let size = size / bs * bs;
                assert_eq!(
                    request(&mut vm, &mut sys.mm, &base, size),
                    None,
                    "{size:#x}"
                );
                assert_eq!(vm.device().plugged_bytes(), size, "bs {bs:#x}");
                let blocks = match bs >= MB {
                    true => size.div_ceil(bs) * (bs / MB),
                    false => size.div_ceil(MB),
                };
                assert_eq!(driver_blocks(&sys.mm).count() as u64, blocks, "{size:#x}");
                for (_, b) in driver_blocks(&sys.mm) {
                    assert_eq!(b.state, BlockState::Online(Zone::Movable));
                }
            }
            assert_eq!(sys.mm.meminfo(), base, "bs {bs:#x}");
        }
    }
}

#[test]
fn unplugged_device_blocks_never_reach_the_allocator() {
    let mut sys = boot();
    let base = sys.mm.meminfo();
    let mut vm = driver(2 * MIB);
    assert_eq!(request(&mut vm, &mut sys.mm, &base, 6 * MIB), None);
    let start = Pfn::down(NOT_RAM);
    let plugged_end = Pfn::down(NOT_RAM + 6 * MIB);
    let got = take_all(&mut sys.mm);
    assert_eq!(got.len() as u64, plugged_end - start);
    assert!(got.iter().all(|&p| (start..plugged_end).contains(&p)));
    give_back(&mut sys.mm, got);
}

/// Issue 9's first case: plug 64 MiB, offline, online_movable: +64 MiB,
/// not the whole block; every user action on a partly plugged block.
#[test]
fn user_offline_and_online_give_only_plugged_memory() {
    for online in [Zone::Movable, Zone::Normal] {
        let mut sys = boot();
        let base = sys.mm.meminfo();
        let mut vm = driver(2 * MIB);
        let id = first_block();
        assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(64)), None);
        // echo offline > memory22/state
        sys.mm.offline_block(id).unwrap();
        check(&mut vm, &sys.mm, &base);
        assert_eq!(sys.mm.meminfo().total, base.total);
        // echo online_movable (or online) > memory22/state
        sys.mm.online_block(id, online).unwrap();
        check(&mut vm, &sys.mm, &base);
        assert_eq!(sys.mm.meminfo().total - base.total, sz(64));
        // The driver goes on: grows and shrinks the block the user onlined.
        assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(100)), None);
        assert_eq!(sys.mm.meminfo().total - base.total, sz(100));
        assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(30)), None);
        assert_eq!(sys.mm.blocks()[&id].state, BlockState::Online(online));
        // Offline again: the driver plugs into and unplugs from the offline
        // block without onlining it; nothing reaches the allocator.
        sys.mm.offline_block(id).unwrap();
        assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(90)), None);
        assert_eq!(sys.mm.meminfo().total, base.total);
        assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(20)), None);
        assert_eq!(sys.mm.blocks()[&id].state, BlockState::Offline);
        assert_eq!(vm.device().plugged_bytes(), sz(20));
        // A second block is added online; the user's stays offline.
        assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(200)), None);
        assert_eq!(sys.mm.meminfo().total - base.total, sz(72));
        sys.mm.online_block(id, online).unwrap();
        check(&mut vm, &sys.mm, &base);
        assert_eq!(sys.mm.meminfo().total - base.total, sz(200));
        // The console may not remove a driver block.
        for b in [id, id + 1] {
            sys.mm.offline_block(b).unwrap();
            let e = sys.mm.remove_memory(block_range(b).base, MB).unwrap_err();
            assert_eq!(e.errno, Errno::EBUSY);
        }
        check(&mut vm, &sys.mm, &base);
        // Offline blocks all the way down to nothing.
        assert_eq!(request(&mut vm, &mut sys.mm, &base, 0), None);
        assert_eq!(vm.device().plugged_bytes(), 0);
        assert_eq!(sys.mm.meminfo(), base);
    }
}

#[test]
fn busy_memory_stays_plugged_and_is_retried_with_a_backoff() {
    let mut sys = boot();
    let base = sys.mm.meminfo();
    let mut vm = driver(2 * MIB);
    assert_eq!(request(&mut vm, &mut sys.mm, &base, MB + 4 * MIB), None);
    // A page of the first block's fourth device block is in use.
    let busy = hold(&mut sys.mm, NOT_RAM + 7 * MIB);
    let mut delays = Vec::new();
    for _ in 0..6 {
        delays.push(request(&mut vm, &mut sys.mm, &base, 0));
    }
    let ms = |v: u64| Some(v);
    assert_eq!(
        delays,
        [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
    );
    // Only the busy device block stays: the other block went, and so did
    // the rest of this one (one failing block never stops the others).
    assert_eq!(vm.device().plugged_bytes(), 2 * MIB);
    assert!(vm.device().is_plugged(NOT_RAM.as_u64() + 6 * MIB));
    assert_eq!(driver_blocks(&sys.mm).count(), 1);
    assert!(sys.mm.free(busy, 0));
    assert_eq!(vm.step(&mut sys.mm), None);
    check(&mut vm, &sys.mm, &base);
    assert_eq!(vm.device().plugged_bytes(), 0);
    assert_eq!(sys.mm.meminfo(), base);
    // The backoff starts over after a step that got there.
    vm.device().answer(Kind::Plug, Response::Busy);
    assert_eq!(request(&mut vm, &mut sys.mm, &base, 2 * MIB), Some(100));
}

/// A partial unplug asks the device once per run of consecutive plugged
/// units, as Linux's sub-block mode does, from an online or an offline
/// block; a busy page splits its run, and only its unit stays plugged.
#[test]
fn a_partial_unplug_sends_one_request_per_run() {
    let unplugs = |vm: &mut VirtioMem<FakeDevice>| {
        let reqs = core::mem::take(&mut vm.dev.requests);
        reqs.iter()
            .filter(|r| matches!(r, Request::Unplug { .. }))
            .count()
    };
    for offline in [false, true] {
        let mut sys = boot();
        let base = sys.mm.meminfo();
        let mut vm = driver(2 * MIB);
        assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(100)), None);
        if offline {
            sys.mm.offline_block(first_block()).unwrap();
        }
        unplugs(&mut vm);
        assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(20)), None);
        assert_eq!(unplugs(&mut vm), 1, "offline {offline}");
        assert_eq!(vm.device().plugged_bytes(), sz(20));
        assert_eq!(request(&mut vm, &mut sys.mm, &base, 0), None);
        assert_eq!(sys.mm.meminfo(), base);
    }
    let mut sys = boot();
    let base = sys.mm.meminfo();
    let mut vm = driver(2 * MIB);
    assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(100)), None);
    let busy = hold(&mut sys.mm, NOT_RAM + sz(50));
    unplugs(&mut vm);
    request(&mut vm, &mut sys.mm, &base, sz(20));
    // Above the busy unit, then below it down to the request.
    assert_eq!(unplugs(&mut vm), 2);
    assert_eq!(vm.device().plugged_bytes(), sz(20));
    assert!(vm.device().is_plugged((NOT_RAM + sz(50)).as_u64()));
    assert!(sys.mm.free(busy, 0));
    assert_eq!(request(&mut vm, &mut sys.mm, &base, 0), None);
    assert_eq!(sys.mm.meminfo(), base);
}

/// Every answer to every request: a refusal leaves the kernel as the
/// device is, and the next step finishes the job.
#[test]
fn refusals_roll_back_and_are_retried() {
    let answers = [Response::Nack, Response::Busy, Response::Error];
    for bs in [MIB, 2 * MIB, MB, 2 * MB] {
        for memmap_on_memory in [false, true] {
            for kind in [Kind::Plug, Kind::Unplug] {
                for answer in answers {
                    let what = alloc::format!("{bs:#x} {memmap_on_memory} {kind:?} {answer:?}");
                    let mut sys = boot();
                    sys.mm.set_memmap_on_memory(memmap_on_memory);
                    let base = sys.mm.meminfo();
                    let mut vm = driver(bs);
                    let size = REGION / bs.max(MB) * bs.max(MB) / 2;
                    let (from, to) = match kind {
                        Kind::Plug => (0, size),
                        _ => (size, 0),
                    };
                    let from = (from / bs * bs).max(if from > 0 { bs } else { 0 });
                    let to = (to / bs * bs).max(if to > 0 { bs } else { 0 });
                    assert_eq!(request(&mut vm, &mut sys.mm, &base, from), None, "{what}");
                    let before = sys.mm.meminfo();
                    vm.device().answer(kind, answer);
                    // ERROR on a request the device would have taken: the
                    // STATE request shows it did not.
                    assert!(request(&mut vm, &mut sys.mm, &base, to).is_some(), "{what}");
                    if answer != Response::Error {
                        assert_eq!(sys.mm.meminfo(), before, "{what}: not rolled back");
                        assert_eq!(vm.device().plugged_bytes(), from, "{what}");
                    }
                    assert!(settle(&mut vm, &mut sys.mm, &base, 3), "{what}");
                    assert_eq!(vm.device().plugged_bytes(), to, "{what}");
                    assert_eq!(request(&mut vm, &mut sys.mm, &base, 0), None, "{what}");
                    assert_eq!(sys.mm.meminfo(), base, "{what}");
                }
            }
        }
    }
}

/// Issue 9's third case: unplug answered BUSY after the block was offlined
/// and removed: the block comes back as it was (online, or offline if the
/// user had offlined it), no phantom; then every other block goes on.
#[test]
fn an_unplug_refused_after_remove_brings_the_block_back() {
    for user_offline in [false, true] {
        let mut sys = boot();
        let base = sys.mm.meminfo();
        let mut vm = driver(2 * MIB);
        let id = first_block();
        assert_eq!(request(&mut vm, &mut sys.mm, &base, MB + 64 * MIB), None);
        if user_offline {
            sys.mm.offline_block(id + 1).unwrap();
        }
        let before = sys.mm.meminfo();
        let states: Vec<_> = driver_blocks(&sys.mm).map(|(i, b)| (i, b.state)).collect();
        vm.device().answer(Kind::Unplug, Response::Busy);
        assert!(request(&mut vm, &mut sys.mm, &base, 0).is_some());
        assert_eq!(sys.mm.meminfo(), before);
        let now: Vec<_> = driver_blocks(&sys.mm).map(|(i, b)| (i, b.state)).collect();
        assert_eq!(now, states);
        assert!(settle(&mut vm, &mut sys.mm, &base, 3));
        assert_eq!(sys.mm.meminfo(), base);
        assert_eq!(vm.device().plugged_bytes(), 0);
    }
}

/// Allocation failures while plugging (any one allocation, or memory
/// exhausted): the device gets the memory back; if it refuses, the memory
/// stays plugged and a later step adds it to the kernel after all.
#[test]
fn allocation_failures_give_memory_back_to_the_device() {
    for bs in [2 * MIB, MB] {
        for nth in 0..6 {
            let mut sys = boot();
            let base = sys.mm.meminfo();
            let mut vm = driver(bs);
            sys.mm.set_fail_nth_alloc(Some(nth));
            let r = request(&mut vm, &mut sys.mm, &base, MB);
            sys.mm.set_fail_nth_alloc(None);
            if r.is_some() {
                assert!(settle(&mut vm, &mut sys.mm, &base, 3));
            }
            assert_eq!(vm.device().plugged_bytes(), MB);
            assert_eq!(request(&mut vm, &mut sys.mm, &base, 0), None);
            assert_eq!(sys.mm.meminfo(), base, "nth {nth}");
        }
        for refuse in [false, true] {
            let mut sys = boot();
            let base = sys.mm.meminfo();
            let mut vm = driver(bs);
            let mut held = Vec::new();
            while let Some(p) = sys.mm.alloc(0, Zone::Normal) {
                held.push(p);
            }
            if refuse {
                vm.device().answer(Kind::Unplug, Response::Busy);
            }
            assert!(request(&mut vm, &mut sys.mm, &base, MB).is_some());
            let kept = if refuse { MB } else { 0 };
            assert_eq!(vm.device().plugged_bytes(), kept, "{bs:#x} refuse {refuse}");
            assert_eq!(driver_blocks(&sys.mm).count(), 0);
            give_back(&mut sys.mm, held);
            assert!(settle(&mut vm, &mut sys.mm, &base, 3));
            assert_eq!(vm.device().plugged_bytes(), MB);
            assert_eq!(sys.mm.meminfo().total - base.total, MB);
            assert_eq!(request(&mut vm, &mut sys.mm, &base, 0), None);
            assert_eq!(sys.mm.meminfo(), base);
        }
    }
}

#[test]
fn probe_brings_the_device_to_a_known_state() {
    // Nothing plugged: no request at all.
    let vm = driver(2 * MIB);
    assert!(vm.dev.requests.is_empty());
    // Memory plugged (a reboot): UNPLUG_ALL, retried until acknowledged,
    // nothing plugged meanwhile.
    let mut sys = boot();
    let base = sys.mm.meminfo();
    let mut dev = FakeDevice::new(2 * MIB, NOT_RAM, REGION);
    dev.plugged[3] = true;
    dev.answer(Kind::UnplugAll, Response::Busy);
    let mut vm = VirtioMem::new(dev).expect("probe");
    assert_eq!(vm.dev.requests, vec![Request::UnplugAll]);
    vm.device().config.requested_size = 4 * MIB;
    vm.device().answer(Kind::UnplugAll, Response::Busy);
    assert_eq!(vm.step(&mut sys.mm), Some(100));
    assert_eq!(sys.mm.meminfo(), base);
    assert_eq!(vm.step(&mut sys.mm), None);
    check(&mut vm, &sys.mm, &base);
    assert_eq!(vm.device().plugged_bytes(), 4 * MIB);
    // Geometry the driver cannot use: refused, and the device told.
    for (bs, addr) in [(3 * MIB, NOT_RAM), (0, NOT_RAM), (2 * MIB, NOT_RAM + MIB)] {
        let mut dev = FakeDevice::new(2 * MIB, NOT_RAM, REGION);
        dev.config.block_size = bs;
        dev.config.addr = addr.as_u64();
        let e = VirtioMem::new(dev).err().expect("refused");
        assert_eq!(e.errno, Errno::ENODEV);
    }
    let mut dev = FakeDevice::new(2 * MIB, NOT_RAM + MIB, REGION);
    dev.config.addr = NOT_RAM.as_u64() + MIB;
    let mut failed = false;
    struct Probe<'a>(FakeDevice, &'a mut bool);
    impl MemDevice for Probe<'_> {
        fn config(&mut self) -> Result<Config> {
            self.0.config()
        }
        fn request(&mut self, req: Request) -> Result<Response> {
            self.0.request(req)
        }
        fn fail(&mut self) {
            *self.1 = true;
        }
    }
    assert!(VirtioMem::new(Probe(dev, &mut failed)).is_err());
    assert!(failed, "the device is not told FAILED");
}

/// Region geometry: the first memory block rounded up, the last down; a
/// region without a whole block asks for no retries (it says so once, at
/// probe).
#[test]
fn regions_not_aligned_to_memory_blocks() {
    // 0xb400_0000 + 192 MiB (4K): only memory23 is whole.
    let mut sys = boot();
    let base = sys.mm.meminfo();
    let mut vm = driver_at(2 * MIB, NOT_RAM + sz(64), sz(192));
    assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(32)), None);
    assert_eq!(vm.device().plugged_bytes(), sz(32));
    assert!(vm.device().is_plugged((NOT_RAM + MB).as_u64()));
    assert_eq!(
        driver_blocks(&sys.mm).map(|(id, _)| id).collect::<Vec<_>>(),
        [first_block() + 1]
    );
    // More than the whole blocks hold: all of them, no retry.
    assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(192)), None);
    assert_eq!(vm.device().plugged_bytes(), MB);
    assert_eq!(request(&mut vm, &mut sys.mm, &base, 0), None);
    assert_eq!(sys.mm.meminfo(), base);
    // A usable region that is not a multiple of the memory block.
    let mut vm = driver(2 * MIB);
    vm.device().config.usable_region_size = MB + sz(64);
    assert_eq!(request(&mut vm, &mut sys.mm, &base, REGION), None);
    assert_eq!(vm.device().plugged_bytes(), MB);
    assert_eq!(request(&mut vm, &mut sys.mm, &base, 0), None);
    // Half a block: no whole block at all.
    let mut vm = driver_at(2 * MIB, NOT_RAM, sz(64));
    for _ in 0..3 {
        assert_eq!(request(&mut vm, &mut sys.mm, &base, sz(64)), None);
    }
    assert!(vm.dev.requests.is_empty());
    assert_eq!(sys.mm.meminfo(), base);
}

/// Big-block mode: a 256 MiB device block is two memory blocks, added,
/// onlined, offlined and removed together; a busy one keeps both, as they
/// were (online or offlined by the user).
#[test]
fn device_blocks_larger_than_memory_blocks() {
    for user_offline in [false, true] {
        let mut sys = boot();
        let base = sys.mm.meminfo();
        let mut vm = driver(REGION);
        assert_eq!(request(&mut vm, &mut sys.mm, &base, REGION), None);
        assert_eq!(driver_blocks(&sys.mm).count(), 2);
        if user_offline {
            sys.mm.offline_block(first_block()).unwrap();
        }
        let busy = hold(&mut sys.mm, NOT_RAM + MB + 8 * MIB);
        let before = sys.mm.meminfo();
        let states: Vec<_> = driver_blocks(&sys.mm).map(|(i, b)| (i, b.state)).collect();
        assert!(request(&mut vm, &mut sys.mm, &base, 0).is_some());
        assert_eq!(sys.mm.meminfo(), before);
        let now: Vec<_> = driver_blocks(&sys.mm).map(|(i, b)| (i, b.state)).collect();
        assert_eq!(now, states);
        assert!(sys.mm.free(busy, 0));
        assert_eq!(vm.step(&mut sys.mm), None);
        check(&mut vm, &sys.mm, &base);
        assert_eq!(sys.mm.meminfo(), base);
    }
}

/// memmap_on_memory: struct pages only in plugged memory that stays
/// plugged while the block is there; where the first plugged unit cannot
/// hold them all (1 MiB device blocks with 4K: 2 MiB of struct pages) they
/// go to system RAM.
#[test]
fn struct_pages_stay_in_plugged_memory() {
    for bs in [MIB, 2 * MIB] {
        let mut sys = boot();
        sys.mm.set_memmap_on_memory(true);
        let base = sys.mm.meminfo();
        let mut vm = driver(bs);
        for size in [MIB, 3 * MIB, MIB, 20 * MIB, 2 * MIB, 0, 6 * MIB, 0] {
            let size = size / bs * bs;
            assert_eq!(
                request(&mut vm, &mut sys.mm, &base, size),
                None,
                "{bs:#x} {size:#x}"
            );
            assert_eq!(vm.device().plugged_bytes(), size);
            for (id, _) in driver_blocks(&sys.mm) {
                let unit = bs.max(MB / PlugMask::MAX_SUB_BLOCKS);
                assert_eq!(memmap_on(&sys.mm, id).is_some(), unit >= MEMMAP_PER_BLOCK);
            }
        }
        assert_eq!(sys.mm.meminfo(), base);
    }
}

/// The device acted but its answer said otherwise: the driver's next
/// request for that range gets ERROR, and a STATE request settles it.
#[test]
fn an_error_answer_is_settled_with_a_state_request() {
    for kind in [Kind::Plug, Kind::Unplug] {
        let mut sys = boot();
        let base = sys.mm.meminfo();
        let mut vm = driver(2 * MIB);
        let (from, to) = match kind {
            Kind::Plug => (0, 64 * MIB),
            _ => (64 * MIB, 0),
        };
        assert_eq!(request(&mut vm, &mut sys.mm, &base, from), None);
        vm.device().lie.push_back((kind, Response::Busy));
        vm.device().config.requested_size = to;
        assert!(vm.step(&mut sys.mm).is_some());
        for _ in 0..3 {
            if vm.step(&mut sys.mm).is_none() {
                break;
            }
        }
        check(&mut vm, &sys.mm, &base);
        assert!(vm
            .dev
            .requests
            .iter()
            .any(|r| matches!(r, Request::State { .. })));
        assert_eq!(vm.device().plugged_bytes(), to, "{kind:?}");
        assert_eq!(request(&mut vm, &mut sys.mm, &base, 0), None);
        assert_eq!(sys.mm.meminfo(), base);
    }
}

/// A shrink while memhog holds memory on the device succeeds when there is
/// room elsewhere, as in Linux: its pages migrate off the units unplugged
/// (sub-blocks of an online block, then whole blocks), contents intact.
#[test]
fn shrink_migrates_memhog_pages_off_the_device() {
    let mut sys = boot();
    let base = sys.mm.meminfo();
    let mut vm = driver(2 * MIB);
    let size = MB + 4 * MIB;
    assert_eq!(request(&mut vm, &mut sys.mm, &base, size), None);
    // Movable first: the device's memory is the only Movable there is.
    let pages = size / PAGE_SIZE * 3 / 4;
    let area = sys.mm.anon_map(pages).unwrap();
    let on_device = |mm: &Mm| {
        (0..pages)
            .filter(|&i| mm.anon_page_pfn(area, i).unwrap().phys() >= NOT_RAM)
            .count() as u64
    };
    assert_eq!(on_device(&sys.mm), pages);
    // Down by part of a block (sub-blocks), then to nothing.
    for want in [MB / 2, 0] {
        assert_eq!(request(&mut vm, &mut sys.mm, &base, want), None);
        assert_eq!(vm.device().plugged_bytes(), want);
        sys.mm.anon_check(area).unwrap();
    }
    assert_eq!(on_device(&sys.mm), 0);
    assert!(sys.mm.anon().pgmigrate_success >= pages);
    assert_eq!(sys.mm.anon().pgmigrate_fail, 0);
    sys.mm.anon_free(area).unwrap();
    assert_eq!(sys.mm.meminfo(), base);
}
