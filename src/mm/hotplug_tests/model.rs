//! Random sequences against a model (a property test), returning to the
//! start.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;
use crate::mm::hotplug::vmemmap_pages_per_block;

/// Blocks the property test plays with: both sides of the GiB line.
const P_FIRST: u64 = 14;
const P_LAST: u64 = HOT_END - 1;

#[derive(Clone, Debug)]
enum Op {
    Probe {
        first: u64,
        n: u64,
        memmap_on_memory: bool,
    },
    Online {
        id: Target,
        movable: bool,
    },
    Offline {
        id: Target,
    },
    Remove {
        first: Target,
        n: u64,
    },
    DevMap {
        mem: bool,
    },
    DevUnmap,
    Alloc {
        movable: bool,
    },
    Free {
        which: usize,
    },
    /// Free a page that must never be a buddy page (device, self-hosted
    /// struct pages, boot reserved).
    BadFree {
        which: usize,
    },
}

/// The block an operation is aimed at.
#[derive(Clone, Copy, Debug)]
enum Target {
    Id(u64),
    /// One of the blocks present when the operation runs (boot memory when
    /// none is), so that sequences do not spend themselves on absent ones.
    Present(usize),
}

impl Target {
    fn resolve(self, model: &Model) -> u64 {
        match self {
            Target::Id(id) => id,
            Target::Present(i) => model
                .blocks
                .keys()
                .copied()
                .nth(i % model.blocks.len().max(1))
                .unwrap_or(BOOT),
        }
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    // Block ids: the boot block, the playground, device memory; or one of
    // those present.
    let id = prop_oneof![
        1 => Just(Target::Id(BOOT)),
        6 => (P_FIRST..=P_LAST + 1).prop_map(Target::Id),
        9 => any::<usize>().prop_map(Target::Present),
    ];
    prop_oneof![
        3 => (P_FIRST..=P_LAST, 1u64..=2, any::<bool>()).prop_map(|(first, n, memmap_on_memory)| {
            Op::Probe { first, n, memmap_on_memory }
        }),
        4 => (id.clone(), any::<bool>()).prop_map(|(id, movable)| Op::Online { id, movable }),
        4 => id.clone().prop_map(|id| Op::Offline { id }),
        4 => (id, 1u64..=2).prop_map(|(first, n)| Op::Remove { first, n }),
        1 => any::<bool>().prop_map(|mem| Op::DevMap { mem }),
        1 => Just(Op::DevUnmap),
        2 => any::<bool>().prop_map(|movable| Op::Alloc { movable }),
        2 => any::<usize>().prop_map(|which| Op::Free { which }),
        1 => any::<usize>().prop_map(|which| Op::BadFree { which }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelBlock {
    state: BlockState,
    memmap_on_memory: bool,
}

#[derive(Debug)]
struct Model {
    blocks: BTreeMap<u64, ModelBlock>,
    dev: Option<DevMapKind>,
    /// User pages: pfn -> zone.
    user: BTreeMap<Pfn, Zone>,
    bad_frees: u64,
}

impl Model {
    fn hosted(&self, id: u64) -> u64 {
        if self.blocks[&id].memmap_on_memory {
            vmemmap_pages_per_block()
        } else {
            0
        }
    }

    /// Pages the buddy allocator manages in `zone`.
    fn managed(&self, zone: Zone) -> u64 {
        let boot = if zone == Zone::Normal {
            BLOCK_PAGES - BOOT_RESERVED
        } else {
            0
        };
        boot + self
            .blocks
            .iter()
            .filter(|(_, b)| b.state == BlockState::Online(zone))
            .map(|(&id, _)| BLOCK_PAGES - self.hosted(id))
            .sum::<u64>()
    }

    fn user_in(&self, zone: Zone) -> u64 {
        self.user.values().filter(|&&z| z == zone).count() as u64
    }

    /// The zone a pfn's block is online in, if it is.
    fn online_zone(&self, pfn: Pfn) -> Option<Zone> {
        match block_of(pfn) {
            BOOT => Some(Zone::Normal),
            id => match self.blocks.get(&id)?.state {
                BlockState::Online(z) => Some(z),
                BlockState::Offline => None,
            },
        }
    }
}

/// Pfns the kernel holds from the buddy allocator, read off the page table:
/// table pages and struct pages in system RAM.
fn kernel_pfns(mm: &MemorySystem<ArenaTranslation>) -> BTreeSet<Pfn> {
    let mut pfns = BTreeSet::new();
    mm.pt.for_each_table(|_, pa| {
        pfns.insert(Pfn::down(pa));
    });
    mm.for_each_vmemmap_leaf(|_, size, pa, owner| {
        if owner.is_none() {
            pfns.extend(Pfn::range(Pfn::down(pa), Pfn::down(pa + size)));
        }
    });
    pfns
}

fn expect(
    got: Result<()>,
    want: core::result::Result<(), Errno>,
    op: &Op,
) -> core::result::Result<(), TestCaseError> {
    let got = got.map_err(|e| e.errno);
    prop_assert_eq!(got, want, "{:?}", op);
    Ok(())
}

fn apply(fx: &mut Fx, model: &mut Model, op: &Op) -> core::result::Result<(), TestCaseError> {
    let mm = &mut fx.mm;
    match *op {
        Op::Probe {
            first,
            n,
            memmap_on_memory,
        } => {
            let (start, end) = (start_of(first), start_of(first + n));
            let want = if start < DEV_BASE + DEV_SIZE && DEV_BASE < end {
                Err(Errno::EBUSY)
            } else if (first..first + n).any(|id| model.blocks.contains_key(&id)) {
                Err(Errno::EEXIST)
            } else {
                Ok(())
            };
            mm.memmap_on_memory = memmap_on_memory;
            expect(mm.add_memory(start, end - start), want, op)?;
            if want.is_ok() {
                for id in first..first + n {
                    model.blocks.insert(
                        id,
                        ModelBlock {
                            state: BlockState::Offline,
                            memmap_on_memory,
                        },
                    );
                }
            }
        }
        Op::Online { id, movable } => {
            let id = id.resolve(model);
            let zone = if movable { Zone::Movable } else { Zone::Normal };
            let want = match (id, model.blocks.get(&id)) {
                (BOOT, _) => Err(Errno::EINVAL),
                (_, None) => Err(Errno::ENOENT),
                (_, Some(b)) if b.state != BlockState::Offline => Err(Errno::EINVAL),
                _ => Ok(()),
            };
            expect(mm.online_block(id, zone), want, op)?;
            if want.is_ok() {
                model.blocks.get_mut(&id).unwrap().state = BlockState::Online(zone);
            }
        }
        Op::Offline { id } => {
            let id = id.resolve(model);
            let (s, e) = block_pfns(id);
            let busy = |mm: &MemorySystem<ArenaTranslation>| {
                model.user.range(s..e).next().is_some()
                    || kernel_pfns(mm).range(s..e).next().is_some()
            };
            let want = match (id, model.blocks.get(&id)) {
                (BOOT, _) => Err(Errno::EBUSY),
                (_, None) => Err(Errno::ENOENT),
                (_, Some(b)) if b.state == BlockState::Offline => Err(Errno::EINVAL),
                _ if busy(mm) => Err(Errno::EBUSY),
                _ => Ok(()),
            };
            expect(mm.offline_block(id).map_err(Into::into), want, op)?;
            if want.is_ok() {
                model.blocks.get_mut(&id).unwrap().state = BlockState::Offline;
            }
        }
        Op::Remove { first, n } => {
            let first = first.resolve(model);
            let mut want = Ok(());
            for id in first..first + n {
                let e = match (id, model.blocks.get(&id)) {
                    (BOOT, _) => Some(Errno::EPERM),
                    (_, None) => Some(Errno::EINVAL),
                    (_, Some(b)) if b.state != BlockState::Offline => Some(Errno::EBUSY),
                    _ => None,
                };
                if let Some(e) = e {
                    want = Err(e);
                    break;
                }
            }
            expect(mm.remove_memory(start_of(first), n * BLOCK), want, op)?;
            if want.is_ok() {
                for id in first..first + n {
                    model.blocks.remove(&id);
                }
            }
        }
        Op::DevMap { mem } => {
            let kind = if mem {
                DevMapKind::Mem
            } else {
                DevMapKind::Dev
            };
            let want = if model.dev.is_some() {
                Err(Errno::EBUSY)
            } else {
                Ok(())
            };
            expect(mm.memremap_pages(fx.dev, kind), want, op)?;
            if want.is_ok() {
                model.dev = Some(kind);
            }
        }
        Op::DevUnmap => {
            let want = if model.dev.is_some() {
                Ok(())
            } else {
                Err(Errno::EINVAL)
            };
            expect(mm.memunmap_pages(fx.dev), want, op)?;
            model.dev = None;
        }
        Op::Alloc { movable } => {
            let zone = if movable { Zone::Movable } else { Zone::Normal };
            let kernel = if zone == Zone::Normal {
                kernel_pfns(mm).len() as u64
            } else {
                0
            };
            let free = model.managed(zone) - model.user_in(zone) - kernel;
            let got = mm.buddy.lock().alloc(0, zone);
            prop_assert_eq!(
                got.is_some(),
                free > 0,
                "{:?}: {} pages should be free",
                op,
                free
            );
            if let Some(pfn) = got {
                prop_assert_eq!(
                    model.online_zone(pfn),
                    Some(zone),
                    "{:?} got {:#x}",
                    op,
                    pfn
                );
                prop_assert!(!model.user.contains_key(&pfn));
                prop_assert!(!kernel_pfns(mm).contains(&pfn));
                model.user.insert(pfn, zone);
            }
        }
        Op::Free { which } => {
            if !model.user.is_empty() {
                let pfn = *model.user.keys().nth(which % model.user.len()).unwrap();
                prop_assert!(mm.buddy.lock().free(pfn, 0), "free of user page {:#x}", pfn);
                model.user.remove(&pfn);
            }
        }
        Op::BadFree { which } => {
            let (bs, _) = block_pfns(BOOT);
            let mut never = vec![bs, bs + BOOT_RESERVED - 1];
            if model.dev.is_some() {
                let (ds, de) = dev_pfns();
                never.extend([ds, ds + 1500, de - 1]);
            }
            for (&id, b) in &model.blocks {
                if b.memmap_on_memory {
                    let (s, _) = block_pfns(id);
                    never.extend([s, s + vmemmap_pages_per_block() - 1]);
                }
            }
            let pfn = never[which % never.len()];
            let before = snap(mm);
            prop_assert!(!mm.buddy.lock().free(pfn, 0), "free of {:#x} accepted", pfn);
            model.bad_frees += 1;
            let mut after = snap(mm);
            prop_assert_eq!(after.bad_frees, before.bad_frees + 1);
            after.bad_frees = before.bad_frees;
            prop_assert!(after == before, "a refused free changed something");
        }
    }
    Ok(())
}

fn check_invariants(fx: &Fx, model: &Model) -> core::result::Result<(), TestCaseError> {
    let mm = &fx.mm;
    // Blocks: exactly the model's.
    let got: Vec<_> = mm
        .blocks
        .iter()
        .filter(|(&id, _)| id != BOOT)
        .map(|(&id, b)| (id, b.state, b.boot, b.altmap.is_some()))
        .collect();
    let want: Vec<_> = model
        .blocks
        .iter()
        .map(|(&id, b)| (id, b.state, false, b.memmap_on_memory))
        .collect();
    prop_assert_eq!(got, want);
    prop_assert_eq!(
        block_state(mm, BOOT),
        Some(BlockState::Online(Zone::Normal))
    );
    // Altmaps hold exactly the struct pages of their range.
    for (&id, b) in &mm.blocks {
        if let Some(a) = &b.altmap {
            prop_assert_eq!(
                (a.base_pfn, a.alloc),
                (block_pfns(id).0, vmemmap_pages_per_block())
            );
        }
    }
    let dev = &mm.devmem[fx.dev].mapping;
    prop_assert_eq!(dev.as_ref().map(|m| m.0), model.dev);
    if let Some((kind, altmap)) = dev {
        prop_assert_eq!(altmap.is_some(), *kind == DevMapKind::Dev);
        if let Some(a) = altmap {
            prop_assert_eq!(a.alloc, DEV_SIZE / PAGE_SIZE * 64 / PAGE_SIZE);
        }
    }

    // meminfo, field by field.
    let mi = mm.meminfo();
    let (hosted, in_ram) = model.blocks.values().fold((0, 1), |(h, r), b| {
        if b.memmap_on_memory {
            (h + 1, r)
        } else {
            (h, r + 1)
        }
    });
    let dev_memmap = DEV_SIZE / 64;
    let want = MemInfo {
        total: (model.managed(Zone::Normal) + model.managed(Zone::Movable)) * PAGE_SIZE,
        free: mm.buddy.lock().nr_free_total() * PAGE_SIZE,
        anon: 0,
        page_tables: mm.pt.stats.tables * PAGE_SIZE,
        vmemmap: in_ram * MEMMAP_PER_BLOCK
            + if model.dev == Some(DevMapKind::Mem) {
                dev_memmap
            } else {
                0
            },
        vmemmap_altmap: hosted * MEMMAP_PER_BLOCK
            + if model.dev == Some(DevMapKind::Dev) {
                dev_memmap
            } else {
                0
            },
        device_mem: if model.dev.is_some() { DEV_SIZE } else { 0 },
        slab: 0,
    };
    prop_assert_eq!(mi, want);

    // Free pages: what is managed less what users and the kernel hold.
    let kernel = kernel_pfns(mm);
    prop_assert_eq!(
        kernel.len() as u64,
        mm.pt.stats.tables + mi.vmemmap / PAGE_SIZE
    );
    for zone in Zone::BUDDY_ZONES {
        prop_assert_eq!(mm.buddy.lock().managed(zone), model.managed(zone));
        let held = if zone == Zone::Normal {
            kernel.len() as u64
        } else {
            0
        };
        prop_assert_eq!(
            mm.buddy.lock().nr_free(zone),
            model.managed(zone) - model.user_in(zone) - held,
            "free pages in {:?}",
            zone
        );
        // Every free page lies in a block online in its zone, and is
        // neither the kernel's nor a user's.
        let mut bad = None;
        mm.buddy.lock().for_each_free_block(zone, |pfn, order| {
            let end = pfn + (1 << order);
            let ok = block_of(pfn) == block_of(end - 1)
                && model.online_zone(pfn) == Some(zone)
                && kernel.range(pfn..end).next().is_none()
                && model.user.range(pfn..end).next().is_none();
            if !ok && bad.is_none() {
                bad = Some((pfn, order));
            }
        });
        prop_assert_eq!(bad, None, "a misplaced free block in {:?}", zone);
    }
    for &pfn in model.user.keys() {
        // SAFETY: user pages lie in online blocks.
        prop_assert_eq!(unsafe { mm.memmap.get(pfn) }.refcount(), 1);
    }

    // Tables: the second GiB's PMD table exists exactly while something
    // there is mapped; the counters agree with the tree.
    let gib2_used = model.dev.is_some() || model.blocks.keys().any(|&id| start_of(id) >= GIB2);
    prop_assert_eq!(mm.pt.stats.tables, BOOT_TABLES + u64::from(gib2_used));
    prop_assert_eq!(
        mm.pt.stats.tables,
        mm.pt.stats.tables_allocated - mm.pt.stats.tables_freed
    );
    let mut counted = 0;
    mm.pt.for_each_table(|_, _| counted += 1);
    prop_assert_eq!(counted, mm.pt.stats.tables);

    // Present memory translates, absent memory does not.
    for id in P_FIRST..=P_LAST + 2 {
        let present = if start_of(id) >= DEV_BASE {
            model.dev.is_some()
        } else {
            model.blocks.contains_key(&id)
        };
        let (s, e) = block_pfns(id);
        let pa = start_of(id) + 0x1238;
        prop_assert_eq!(
            mm.pt.translate(pa.to_virt()).map(|t| t.0),
            present.then_some(pa),
            "linear map of memory{}",
            id
        );
        prop_assert_eq!(mm.pt.translate(s.page_va()).is_some(), present);
        prop_assert_eq!(mm.pt.translate((e - 1).page_va()).is_some(), present);
        if start_of(id) < DEV_BASE {
            let name = mm.iomem.find(block_range(id)).map(|r| r.name);
            prop_assert_eq!(name, present.then_some("System RAM"));
        }
    }
    prop_assert_eq!(mm.warnings, UnmapWarnings::default());
    prop_assert_eq!(mm.buddy.lock().stats().bad_frees, model.bad_frees);
    Ok(())
}

/// Back to the start: users let go, device memory unmapped, every added
/// block offlined and removed. A block holding the kernel's pages (a table,
/// another block's struct pages) goes once their owner has gone.
fn tear_down(fx: &mut Fx, model: &mut Model) -> core::result::Result<(), TestCaseError> {
    for (pfn, _) in std::mem::take(&mut model.user) {
        prop_assert!(fx.mm.buddy.lock().free(pfn, 0));
    }
    if model.dev.take().is_some() {
        fx.mm.memunmap_pages(fx.dev).unwrap();
    }
    while !model.blocks.is_empty() {
        let mut progress = false;
        for id in model.blocks.keys().copied().collect::<Vec<_>>() {
            if model.blocks[&id].state != BlockState::Offline {
                let busy = kernel_pfns(&fx.mm)
                    .range(block_pfns(id).0..block_pfns(id).1)
                    .next()
                    .is_some();
                let r = fx.mm.offline_block(id);
                prop_assert_eq!(r.is_err(), busy, "offline memory{}", id);
                if busy {
                    continue;
                }
            }
            fx.mm.remove_memory(start_of(id), BLOCK).unwrap();
            model.blocks.remove(&id);
            progress = true;
        }
        prop_assert!(
            progress,
            "blocks left that cannot be removed: {:?}",
            model.blocks
        );
    }
    Ok(())
}

#[test]
fn random_sequences_match_the_model_and_return_to_the_start() {
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(op_strategy(), 1..64);
    runner
        .run(&strategy, |ops| {
            let mut fx = boot();
            let base = snap(&fx.mm);
            let mut model = Model {
                blocks: BTreeMap::new(),
                dev: None,
                user: BTreeMap::new(),
                bad_frees: 0,
            };
            for op in &ops {
                apply(&mut fx, &mut model, op)?;
                check_invariants(&fx, &model)?;
            }
            tear_down(&mut fx, &mut model)?;
            check_invariants(&fx, &model)?;
            let mut end = snap(&fx.mm);
            prop_assert_eq!(end.bad_frees, base.bad_frees + model.bad_frees);
            end.bad_frees = base.bad_frees;
            // The free lists as sets, meminfo, tables and ptdump: exactly
            // as booted.
            prop_assert!(
                end == base,
                "not back at the start:\n{:?}\n{:?}",
                end.meminfo,
                base.meminfo
            );
            Ok(())
        })
        .unwrap();
}

/// The same random sequences on a system that defers struct pages (the
/// default) and one that writes them all at online: equal through every
/// reader at every step (`page.rs`, deferred struct pages).
#[test]
fn deferred_struct_pages_are_invisible_to_random_sequences() {
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        max_shrink_iters: 100,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(op_strategy(), 1..48);
    runner
        .run(&strategy, |ops| {
            let mut lazy = boot();
            let mut eager = boot();
            eager.mm.set_deferred_memmap_init(false);
            let new_model = || Model {
                blocks: BTreeMap::new(),
                dev: None,
                user: BTreeMap::new(),
                bad_frees: 0,
            };
            let (mut ml, mut me) = (new_model(), new_model());
            for op in &ops {
                apply(&mut lazy, &mut ml, op)?;
                apply(&mut eager, &mut me, op)?;
                assert_same(&format!("{op:?}"), &snap(&lazy.mm), &snap(&eager.mm));
                for &id in ml.blocks.keys() {
                    let (s, e) = block_pfns(id);
                    for pfn in Pfn::range(s, e) {
                        let view = |fx: &Fx| {
                            let b = fx.mm.buddy.lock();
                            let p = fx
                                .mm
                                .page(pfn)
                                .map(|p| (p.flags(), p.zone(), p.refcount(), p.private()));
                            (p, b.free_block_of(pfn), b.check_free(pfn, 0))
                        };
                        prop_assert_eq!(view(&lazy), view(&eager), "pfn {:#x}", pfn);
                    }
                }
            }
            tear_down(&mut lazy, &mut ml)?;
            tear_down(&mut eager, &mut me)?;
            assert_same("torn down", &snap(&lazy.mm), &snap(&eager.mm));
            Ok(())
        })
        .unwrap();
}
