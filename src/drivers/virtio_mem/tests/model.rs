//! Random sequences of requested sizes, user writes to `state`, pins,
//! allocation failures and device refusals, for device blocks of 1 MiB,
//! 2 MiB, 128 MiB and a memory block with memmap_on_memory on and off, for
//! every granule (`--features granule-16k`, `granule-64k`). After every step the
//! kernel matches the device ([`check`]); with nothing in the way the
//! driver reaches the request exactly; back at 0 with nothing pinned, the
//! system is exactly at its start.

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

use super::*;

#[derive(Clone, Copy, Debug)]
enum User {
    Offline,
    Online,
    OnlineMovable,
}

#[derive(Clone, Debug)]
enum Op {
    /// `requested-size` in eighths of the region.
    Request(u64),
    /// A write to `memoryN/state` of the region's block `block`.
    User {
        block: u64,
        action: User,
    },
    /// Hold `n` times 4 KiB (movable first, as `pin` does): the same bytes
    /// with every granule, so that pins do not exhaust 64K's boot memory
    /// (a step that cannot allocate is not clean).
    Pin(usize),
    Unpin,
    /// The allocation this many from now fails, during the next step.
    FailNth(u64),
    /// The device answers the next request of a kind with this.
    Refuse(Kind, Response),
    /// A retry-timer tick.
    Step,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let answer = prop_oneof![
        Just(Response::Nack),
        Just(Response::Busy),
        Just(Response::Error)
    ];
    let kind = prop_oneof![Just(Kind::Plug), Just(Kind::Unplug)];
    let action = prop_oneof![
        Just(User::Offline),
        Just(User::Online),
        Just(User::OnlineMovable)
    ];
    prop_oneof![
        6 => (0u64..=8).prop_map(Op::Request),
        3 => (0u64..2, action).prop_map(|(block, action)| Op::User { block, action }),
        2 => (1usize..3000).prop_map(Op::Pin),
        1 => Just(Op::Unpin),
        1 => (0u64..8).prop_map(Op::FailNth),
        2 => (kind, answer).prop_map(|(k, a)| Op::Refuse(k, a)),
        2 => Just(Op::Step),
    ]
}

/// `strict`: a step with blocks online in Normal must finish too.
fn run(bs: u64, memmap_on_memory: bool, ops: &[Op], strict: bool) {
    let mut sys = TestSystem::boot();
    sys.mm.set_memmap_on_memory(memmap_on_memory);
    let base = sys.mm.meminfo();
    let bad_frees = sys.mm.buddy().stats().bad_frees;
    let warnings = sys.mm.warnings();
    let mut vm = driver(bs);
    let mut pins: Vec<Pfn> = Vec::new();
    let region = NOT_RAM.as_u64()..NOT_RAM.as_u64() + REGION;
    for op in ops {
        match *op {
            Op::Request(eighths) => {
                let size = REGION / 8 * eighths / bs * bs;
                vm.device().config.requested_size = size;
            }
            Op::User { block, action } => {
                let id = first_block() + block;
                if sys.mm.blocks().contains_key(&id) {
                    // As `echo ... > state` does; refusals (EBUSY, EINVAL)
                    // change nothing.
                    let _ = match action {
                        User::Offline => sys.mm.offline_block(id).map_err(Error::from),
                        User::Online => sys.mm.online_block(id, Zone::Normal),
                        User::OnlineMovable => sys.mm.online_block(id, Zone::Movable),
                    };
                }
                check(&mut vm, &sys.mm, &base);
                continue;
            }
            Op::Pin(n) => {
                for _ in 0..(n as u64 * 4096).div_ceil(PAGE_SIZE) {
                    match sys.mm.alloc_movable_first(0) {
                        Some(p) => pins.push(p),
                        None => break,
                    }
                }
                check(&mut vm, &sys.mm, &base);
                for p in &pins {
                    let pa = p.phys().as_u64();
                    assert!(
                        !region.contains(&pa) || vm.dev.is_plugged(pa),
                        "pinned {pa:#x}"
                    );
                }
                continue;
            }
            Op::Unpin => give_back(&mut sys.mm, core::mem::take(&mut pins)),
            Op::FailNth(n) => sys.mm.set_fail_nth_alloc(Some(n)),
            Op::Refuse(kind, answer) => vm.device().answer(kind, answer),
            Op::Step => {}
        }
        // A block the user onlined to Normal may hold another block's
        // struct pages or tables (kernel memory, as in Linux), which can
        // keep it busy until that block is removed: a retry, not clean.
        let normal = !strict
            && driver_blocks(&sys.mm).any(|(_, b)| b.state == BlockState::Online(Zone::Normal));
        let clean = vm.dev.inject.is_empty()
            && sys.mm.fail_nth_alloc().is_none()
            && !normal
            && !pins.iter().any(|p| region.contains(&p.phys().as_u64()));
        let r = vm.step(&mut sys.mm);
        sys.mm.set_fail_nth_alloc(None);
        check_step(&mut vm, &sys.mm, &base, r);
        if clean {
            // Nothing in the way: exactly the request, at once.
            let want = vm.device().config.requested_size;
            assert_eq!(r, None, "clean step asks for a retry");
            assert_eq!(vm.device().plugged_bytes(), want);
        }
    }
    // Back to 0, nothing pinned, the device cooperating.
    give_back(&mut sys.mm, pins);
    vm.device().inject.clear();
    vm.device().config.requested_size = 0;
    assert!(
        settle(&mut vm, &mut sys.mm, &base, 3),
        "does not settle at 0"
    );
    assert_eq!(vm.device().plugged_bytes(), 0);
    assert_eq!(driver_blocks(&sys.mm).count(), 0);
    assert_eq!(
        sys.mm.meminfo(),
        base,
        "meminfo, table pages, altmap not at baseline"
    );
    assert_eq!(sys.mm.altmaps().count(), 0);
    assert_eq!(sys.mm.buddy().stats().bad_frees, bad_frees);
    assert_eq!(sys.mm.warnings(), warnings);
}

#[test]
fn random_requests_user_actions_pins_and_refusals_match_the_device() {
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 96,
        failure_persistence: None,
        max_shrink_iters: 300,
        ..RunnerConfig::default()
    });
    // 128 MiB is a memory block with 4K and 16K (big-block mode), a
    // quarter of one with 64K, where a whole block is tried too.
    let mut sizes = vec![MIB, 2 * MIB, 128 * MIB, MB];
    sizes.dedup();
    let bs = prop::sample::select(sizes);
    let strategy = (
        bs,
        any::<bool>(),
        prop::collection::vec(op_strategy(), 1..40),
    );
    runner
        .run(&strategy, |(bs, memmap_on_memory, ops)| {
            run(bs, memmap_on_memory, &ops, false);
            Ok(())
        })
        .unwrap();
}

/// Found by the model: a block the user onlined to Normal holds the struct
/// pages of a lower, offline block added after it; unplugging from the
/// highest block first would find it busy and need another step. Offline
/// blocks go first, as in Linux.
#[test]
fn offline_blocks_are_unplugged_before_normal_ones() {
    run(
        MIB,
        false,
        &[
            Op::Refuse(Kind::Plug, Response::Error),
            Op::Request(4),
            // Boot memory in use: the struct pages of memory22, added
            // next, come from the block the user onlines.
            Op::Pin(491),
            Op::User {
                block: 1,
                action: User::Online,
            },
            Op::Request(5),
            Op::Request(0),
        ],
        true,
    );
}
