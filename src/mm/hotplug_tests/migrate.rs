//! Migration on offline (`migrate.rs`) against a model: random sequences
//! of memhog areas, pins, hot-add, online, offline, remove and fault
//! injection. After every step each area's pages hold their pattern and map
//! back to themselves, none lies outside an online block, the counts add
//! up; a failure that had nothing to move changes nothing; and the end is
//! the start exactly.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;
use crate::mm::anon::{page_va, pattern};

/// The blocks played with (both sides of the GiB line).
const FIRST: u64 = HOT_FIRST + 4;
const LAST: u64 = HOT_FIRST + 7;

#[derive(Clone, Debug)]
enum Op {
    AddOnline { id: u64, movable: bool },
    Online { id: u64, movable: bool },
    Offline { id: u64, fail_nth: Option<u64> },
    Remove { id: u64 },
    Memhog { pages: u64, fail_nth: Option<u64> },
    MemhogFree { which: usize },
    Pin { pages: u64 },
    Unpin,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let id = FIRST..=LAST;
    let fail = prop_oneof![3 => Just(None), 1 => (0u64..40).prop_map(Some)];
    prop_oneof![
        3 => (id.clone(), any::<bool>()).prop_map(|(id, movable)| Op::AddOnline { id, movable }),
        1 => (id.clone(), any::<bool>()).prop_map(|(id, movable)| Op::Online { id, movable }),
        5 => (id.clone(), fail.clone()).prop_map(|(id, fail_nth)| Op::Offline { id, fail_nth }),
        2 => id.prop_map(|id| Op::Remove { id }),
        4 => (prop_oneof![3 => 1u64..700, 1 => 4000u64..BLOCK_PAGES + 2000], fail)
            .prop_map(|(pages, fail_nth)| Op::Memhog { pages, fail_nth }),
        2 => any::<usize>().prop_map(|which| Op::MemhogFree { which }),
        1 => (1u64..64).prop_map(|pages| Op::Pin { pages }),
        1 => Just(Op::Unpin),
    ]
}

#[derive(Default, Debug)]
struct Model {
    /// Area id -> pages.
    areas: BTreeMap<usize, u64>,
    pinned: Vec<Pfn>,
    migrated: u64,
}

/// Pages the kernel holds: table pages and struct pages in RAM.
fn kernel_pages(mm: &MemorySystem<ArenaTranslation>) -> u64 {
    mm.pt.stats.tables + mm.meminfo().vmemmap / PAGE_SIZE
}

/// Whether a kernel page (a table, struct pages in RAM) lies in block `id`.
fn kernel_in(mm: &MemorySystem<ArenaTranslation>, id: u64) -> bool {
    let (s, e) = block_pfns(id);
    let mut found = false;
    mm.pt
        .for_each_table(|_, pa| found |= (s..e).contains(&Pfn::down(pa)));
    mm.for_each_vmemmap_leaf(|_, size, pa, owner| {
        let (a, b) = (Pfn::down(pa), Pfn::down(pa + size));
        found |= owner.is_none() && a < e && s < b;
    });
    found
}

/// Anon pages mapped in block `id`.
fn anon_in(mm: &MemorySystem<ArenaTranslation>, model: &Model, id: u64) -> u64 {
    let (s, e) = block_pfns(id);
    let mut n = 0;
    for (&area, &pages) in &model.areas {
        n += (0..pages)
            .filter(|&i| mm.anon_page_pfn(area, i).is_some_and(|p| s <= p && p < e))
            .count() as u64;
    }
    n
}

fn check(fx: &Fx, model: &Model) -> core::result::Result<(), TestCaseError> {
    let mm = &fx.mm;
    let mut total = 0;
    for (&area, &pages) in &model.areas {
        prop_assert_eq!(mm.anon().area(area).map(|a| a.pages), Some(pages));
        if let Err(e) = mm.anon_check(area) {
            return Err(TestCaseError::fail(format!("area {area}: {e:?}")));
        }
        for i in 0..pages {
            let pfn = mm.anon_page_pfn(area, i).unwrap();
            let online = matches!(block_state(mm, block_of(pfn)), Some(BlockState::Online(_)));
            prop_assert!(
                online,
                "area {} page {} at {:#x} outside online memory",
                area,
                i,
                pfn
            );
        }
        total += pages;
    }
    prop_assert_eq!(mm.anon().areas().count(), model.areas.len());
    prop_assert_eq!(mm.anon().nr_pages(), total);
    let mi = mm.meminfo();
    prop_assert_eq!(mi.anon, total * PAGE_SIZE);
    let managed: u64 = Zone::BUDDY_ZONES
        .iter()
        .map(|&z| mm.buddy.lock().managed(z))
        .sum();
    let free = mm.buddy.lock().nr_free_total();
    prop_assert_eq!(
        free + total + model.pinned.len() as u64 + kernel_pages(mm),
        managed,
        "pages do not add up"
    );
    prop_assert_eq!(mm.anon().pgmigrate_success, model.migrated);
    prop_assert_eq!(mm.warnings, UnmapWarnings::default());
    prop_assert_eq!(mm.buddy.lock().stats().bad_frees, 0);
    Ok(())
}

fn apply(fx: &mut Fx, model: &mut Model, op: &Op) -> core::result::Result<(), TestCaseError> {
    let before = snap(&fx.mm);
    let mm = &mut fx.mm;
    match *op {
        Op::AddOnline { id, movable } => {
            if mm.add_memory(start_of(id), BLOCK).is_ok() {
                let zone = if movable { Zone::Movable } else { Zone::Normal };
                mm.online_block(id, zone).unwrap();
            }
        }
        Op::Online { id, movable } => {
            let zone = if movable { Zone::Movable } else { Zone::Normal };
            let _ = mm.online_block(id, zone);
        }
        Op::Offline { id, fail_nth } => {
            let state = block_state(mm, id);
            let online = matches!(state, Some(BlockState::Online(_)));
            let (s, e) = block_pfns(id);
            let pinned = model.pinned.iter().any(|&p| s <= p && p < e);
            let unmovable = pinned || kernel_in(mm, id);
            let to_move = anon_in(mm, model, id);
            let buddy = mm.buddy.lock();
            let free_outside = buddy.nr_free_total()
                - Pfn::range(s, e).filter(|&p| buddy.is_free(p)).count() as u64;
            drop(buddy);
            let fails_at = fail_nth.filter(|&n| n < to_move);
            let fail_before = mm.anon().pgmigrate_fail;
            mm.set_fail_nth_alloc(fail_nth);
            let r = mm.offline_block(id).map_err(crate::error::Error::from);
            mm.set_fail_nth_alloc(None);
            if !online {
                prop_assert!(r.is_err());
                assert_same("offline of a block not online", &snap(mm), &before);
            } else if unmovable {
                prop_assert_eq!(r.map_err(|e| e.errno), Err(Errno::EBUSY));
                assert_same("offline with unmovable pages", &snap(mm), &before);
            } else if to_move > free_outside || fails_at.is_some() {
                prop_assert_eq!(r.map_err(|e| e.errno), Err(Errno::EBUSY));
                prop_assert_eq!(mm.anon().pgmigrate_fail, fail_before + 1);
                let moved = fails_at.unwrap_or(u64::MAX).min(free_outside).min(to_move);
                model.migrated += moved;
                prop_assert_eq!(block_state(mm, id), state);
                prop_assert_eq!(mm.meminfo(), before.meminfo);
            } else {
                prop_assert!(r.is_ok(), "{:?}: {:?}", op, r);
                model.migrated += to_move;
                prop_assert_eq!(anon_in(mm, model, id), 0);
            }
        }
        Op::Remove { id } => {
            let _ = mm.remove_memory(start_of(id), BLOCK);
        }
        Op::Memhog { pages, fail_nth } => {
            mm.set_fail_nth_alloc(fail_nth);
            let r = mm.anon_map(pages);
            mm.set_fail_nth_alloc(None);
            match r {
                Ok(id) => {
                    prop_assert!(fail_nth.is_none_or(|n| n > pages));
                    prop_assert!(!model.areas.contains_key(&id));
                    model.areas.insert(id, pages);
                }
                Err(e) => {
                    prop_assert_eq!(e.errno, Errno::ENOMEM);
                    assert_same("failed memhog", &snap(mm), &before);
                }
            }
        }
        Op::MemhogFree { which } => {
            if let Some(&id) = model.areas.keys().nth(which % model.areas.len().max(1)) {
                mm.anon_free(id).unwrap();
                model.areas.remove(&id);
            } else {
                prop_assert_eq!(mm.anon_free(0).map_err(|e| e.errno), Err(Errno::ENOENT));
            }
        }
        Op::Pin { pages } => {
            for _ in 0..pages {
                if let Some(p) = mm.alloc_movable_first(0) {
                    model.pinned.push(p);
                }
            }
        }
        Op::Unpin => {
            for p in model.pinned.drain(..) {
                prop_assert!(mm.free(p, 0));
            }
        }
    }
    Ok(())
}

/// Everything let go, every block offlined and removed.
fn tear_down(fx: &mut Fx, model: &mut Model) -> core::result::Result<(), TestCaseError> {
    for (id, _) in std::mem::take(&mut model.areas) {
        fx.mm.anon_free(id).unwrap();
    }
    for p in model.pinned.drain(..) {
        prop_assert!(fx.mm.free(p, 0));
    }
    for _ in 0..4 {
        for id in FIRST..=LAST {
            if matches!(block_state(&fx.mm, id), Some(BlockState::Online(_))) {
                let _ = fx.mm.offline_block(id);
            }
            if block_state(&fx.mm, id) == Some(BlockState::Offline) {
                fx.mm.remove_memory(start_of(id), BLOCK).unwrap();
            }
        }
    }
    let left: Vec<_> = (FIRST..=LAST)
        .filter(|&id| block_state(&fx.mm, id).is_some())
        .collect();
    prop_assert!(left.is_empty(), "blocks left: {:?}", left);
    Ok(())
}

#[test]
fn memhog_survives_random_offlines_and_returns_to_the_start() {
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        max_shrink_iters: 100,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(op_strategy(), 1..40);
    runner
        .run(&strategy, |ops| {
            let mut fx = boot();
            let base = snap(&fx.mm);
            let mut model = Model::default();
            for op in &ops {
                apply(&mut fx, &mut model, op)?;
                check(&fx, &model)?;
            }
            tear_down(&mut fx, &mut model)?;
            check(&fx, &model)?;
            assert_same("torn down", &snap(&fx.mm), &base);
            Ok(())
        })
        .unwrap();
}

/// A block wholly held by one area: offline moves every page out, each
/// entry passing through a migration entry, contents intact.
#[test]
fn offline_migrates_a_full_block() {
    let mut fx = boot();
    let id = HOT_FIRST;
    fx.mm.add_memory(start_of(id), 2 * BLOCK).unwrap();
    fx.mm.online_block(id, Zone::Movable).unwrap();
    let pages = BLOCK_PAGES - 64;
    let area = fx.mm.anon_map(pages).unwrap();
    fx.mm.online_block(id + 1, Zone::Movable).unwrap();
    let (s, e) = block_pfns(id);
    let inside = (0..pages)
        .filter(|&i| {
            fx.mm
                .anon_page_pfn(area, i)
                .is_some_and(|p| s <= p && p < e)
        })
        .count() as u64;
    assert_eq!(inside, pages, "{inside} pages in memory{id}");
    fx.mm.offline_block(id).unwrap();
    assert_eq!(fx.mm.anon().pgmigrate_success, inside);
    fx.mm.anon_check(area).unwrap();
    for i in 0..pages {
        let p = fx.mm.anon_page_pfn(area, i).unwrap();
        assert!(!(s <= p && p < e));
        // The word a CPU would read through the mapping.
        let w = fx.mm.page_ptr(p.phys());
        // SAFETY: a mapped page of the arena.
        assert_eq!(unsafe { w.read() }, pattern(page_va(area, i).as_u64(), 0));
    }
}

/// A pin in the block: `EBUSY` and nothing changed, nothing migrated.
#[test]
fn offline_with_a_pin_changes_nothing() {
    let mut fx = boot();
    let id = HOT_FIRST;
    fx.mm.add_memory(start_of(id), 2 * BLOCK).unwrap();
    fx.mm.online_block(id, Zone::Movable).unwrap();
    let area = fx.mm.anon_map(100).unwrap();
    let pin = fx.mm.alloc_movable_first(0).unwrap();
    assert_eq!(block_of(pin), id);
    let before = snap(&fx.mm);
    assert_eq!(errno(fx.mm.offline_block(id)), Errno::EBUSY);
    assert_same("offline with a pin", &snap(&fx.mm), &before);
    assert_eq!(fx.mm.anon().pgmigrate_success, 0);
    fx.mm.free(pin, 0);
    fx.mm.online_block(id + 1, Zone::Movable).unwrap();
    fx.mm.offline_block(id).unwrap();
    assert_eq!(fx.mm.anon().pgmigrate_success, 100);
    fx.mm.anon_check(area).unwrap();
}
