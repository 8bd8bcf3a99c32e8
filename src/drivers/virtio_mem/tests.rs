//! The driver over a fake device and a host memory system: what it plugs,
//! unplugs, onlines and removes for each request, and what it does when the
//! device refuses or memory is busy.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::mm::layout::PAGE_SIZE;
use crate::mm::system::{block_id, BlockState};
use crate::mm::test_system::{TestSystem, NOT_RAM};

const MIB: u64 = 1 << 20;
const DEVICE_BLOCK: u64 = 2 * MIB;
const REGION: u64 = 2 * MEMORY_BLOCK_SIZE;

/// A virtio-mem device that keeps a plugged bit per device block and
/// answers as QEMU's does (`ERROR` for a request that does not match the
/// state), with knobs to refuse.
struct FakeDevice {
    config: Config,
    plugged: Vec<bool>,
    /// Answer every request with this instead of acting on it.
    refuse: Option<Response>,
    requests: Vec<Request>,
}

impl FakeDevice {
    fn new() -> Self {
        FakeDevice {
            config: Config {
                block_size: DEVICE_BLOCK,
                addr: NOT_RAM.as_u64(),
                region_size: REGION,
                usable_region_size: REGION,
                plugged_size: 0,
                requested_size: 0,
            },
            plugged: vec![false; (REGION / DEVICE_BLOCK) as usize],
            refuse: None,
            requests: Vec::new(),
        }
    }

    fn set(&mut self, first: usize, n: usize, to: bool) -> Response {
        let Some(blocks) = self.plugged.get_mut(first..first + n) else {
            return Response::Error;
        };
        if blocks.contains(&to) {
            return Response::Error;
        }
        blocks.fill(to);
        Response::Ack
    }

    fn plugged_bytes(&self) -> u64 {
        self.plugged.iter().filter(|&&b| b).count() as u64 * DEVICE_BLOCK
    }
}

impl MemDevice for FakeDevice {
    fn config(&mut self) -> Result<Config> {
        self.config.plugged_size = self.plugged_bytes();
        Ok(self.config)
    }

    fn request(&mut self, req: Request) -> Result<Response> {
        self.requests.push(req);
        if let Some(r) = self.refuse {
            return Ok(r);
        }
        let index = |addr: u64| ((addr - self.config.addr) / DEVICE_BLOCK) as usize;
        Ok(match req {
            Request::Plug { addr, nb_blocks } => self.set(index(addr), nb_blocks.into(), true),
            Request::Unplug { addr, nb_blocks } => self.set(index(addr), nb_blocks.into(), false),
            Request::UnplugAll => {
                self.plugged.fill(false);
                Response::Ack
            }
        })
    }
}

fn driver() -> VirtioMem<FakeDevice> {
    VirtioMem::new(FakeDevice::new()).expect("probe")
}

/// Asks for `size` and lets the driver follow; whether it got there.
fn request<T: Translation>(
    vm: &mut VirtioMem<FakeDevice>,
    mm: &mut MemorySystem<T>,
    size: u64,
) -> Result<bool> {
    vm.device().config.requested_size = size;
    vm.step(mm)
}

fn first_block() -> u64 {
    block_id(NOT_RAM)
}

#[test]
fn follows_requests_up_and_down_exactly() {
    let mut sys = TestSystem::boot();
    let base = sys.mm.meminfo();
    let mut vm = driver();
    for size in [64 * MIB, 200 * MIB, 130 * MIB, 2 * MIB, REGION, 0] {
        assert_eq!(request(&mut vm, &mut sys.mm, size), Ok(true), "{size:#x}");
        assert_eq!(vm.device().plugged_bytes(), size);
        let info = sys.mm.meminfo();
        assert_eq!(info.total - base.total, size, "MemTotal for {size:#x}");
        let delta = |a: u64, b: u64| a as i128 - b as i128;
        let kept = delta(info.vmemmap, base.vmemmap) + delta(info.page_tables, base.page_tables);
        assert_eq!(
            delta(info.free, base.free) + kept,
            size as i128,
            "MemFree for {size:#x}"
        );
        let blocks = size.div_ceil(MEMORY_BLOCK_SIZE);
        for id in first_block()..first_block() + 2 {
            let present = sys.mm.blocks().get(&id);
            assert_eq!(
                present.is_some(),
                id - first_block() < blocks,
                "memory{id} at {size:#x}"
            );
            if let Some(b) = present {
                assert_eq!(b.state, BlockState::Online(Zone::Movable));
                assert_eq!(b.owner, Some(RESOURCE));
            }
        }
    }
    assert_eq!(sys.mm.meminfo(), base);
}

#[test]
fn unplugged_device_blocks_never_reach_the_allocator() {
    let mut sys = TestSystem::boot();
    let mut vm = driver();
    assert_eq!(request(&mut vm, &mut sys.mm, 6 * MIB), Ok(true));
    let start = Pfn::down(NOT_RAM);
    let plugged_end = Pfn::down(NOT_RAM + 6 * MIB);
    let end = Pfn::down(NOT_RAM + MEMORY_BLOCK_SIZE);
    // Everything the allocator hands out from the block is plugged.
    let mut got = Vec::new();
    while let Some(pfn) = sys.mm.alloc(0, Zone::Movable) {
        got.push(pfn);
    }
    assert_eq!(got.len() as u64, plugged_end - start);
    assert!(got.iter().all(|&p| (start..plugged_end).contains(&p)));
    for pfn in [plugged_end, end - 1] {
        let page = sys.mm.page(pfn).expect("present");
        assert!(
            page.has(crate::mm::page::PageFlags::LOGICALLY_OFFLINE),
            "{:#x}",
            pfn.phys()
        );
    }
    for pfn in got {
        assert!(sys.mm.free(pfn, 0));
    }
}

#[test]
fn busy_memory_stays_plugged_and_is_retried() {
    let mut sys = TestSystem::boot();
    let base = sys.mm.meminfo();
    let mut vm = driver();
    assert_eq!(request(&mut vm, &mut sys.mm, 4 * MIB), Ok(true));
    // A page of the last device block is in use.
    let mut held = Vec::new();
    while let Some(pfn) = sys.mm.alloc(0, Zone::Movable) {
        held.push(pfn);
    }
    let busy = Pfn::down(NOT_RAM + 3 * MIB);
    held.retain(|&p| {
        p == busy || {
            sys.mm.free(p, 0);
            false
        }
    });
    assert_eq!(request(&mut vm, &mut sys.mm, 0), Ok(false));
    assert_eq!(
        vm.device().plugged_bytes(),
        4 * MIB,
        "busy memory must stay plugged"
    );
    assert!(vm.unsatisfied());
    assert!(sys.mm.free(busy, 0));
    assert_eq!(vm.step(&mut sys.mm), Ok(true));
    assert_eq!(vm.device().plugged_bytes(), 0);
    assert_eq!(sys.mm.meminfo(), base);
}

#[test]
fn a_refused_plug_changes_nothing() {
    let mut sys = TestSystem::boot();
    let base = sys.mm.meminfo();
    let mut vm = driver();
    vm.device().refuse = Some(Response::Nack);
    let err = request(&mut vm, &mut sys.mm, 64 * MIB).unwrap_err();
    assert_eq!(err.errno, crate::error::Errno::EIO);
    assert_eq!(sys.mm.meminfo(), base);
    assert!(sys.mm.blocks().get(&first_block()).is_none());
    vm.device().refuse = None;
    assert_eq!(vm.step(&mut sys.mm), Ok(true));
    assert_eq!(sys.mm.meminfo().total - base.total, 64 * MIB);
}

#[test]
fn probe_unplugs_everything_and_checks_the_block_size() {
    let mut dev = FakeDevice::new();
    dev.plugged[3] = true;
    let mut vm = VirtioMem::new(dev).expect("probe");
    assert_eq!(vm.device().requests, vec![Request::UnplugAll]);
    assert_eq!(vm.device().plugged_bytes(), 0);
    let mut dev = FakeDevice::new();
    dev.config.block_size = 3 * PAGE_SIZE;
    assert_eq!(
        VirtioMem::new(dev).err().map(|e| e.errno),
        Some(crate::error::Errno::ENODEV)
    );
}
