//! Property tests against a model: random maps and unmaps (with injected
//! allocation failures) checked leaf by leaf and address by address.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;

/// What is mapped: extents `start -> (end, pa, attrs)`, disjoint.
#[derive(Clone, Debug, Default)]
struct Model {
    ext: BTreeMap<VirtAddr, (VirtAddr, PhysAddr, Attributes)>,
}

impl Model {
    /// The lowest mapped address in `[s, e)`.
    fn first_overlap(&self, s: VirtAddr, e: VirtAddr) -> Option<VirtAddr> {
        if let Some((_, &(end, _, _))) = self.ext.range(..=s).next_back() {
            if end > s {
                return Some(s);
            }
        }
        self.ext.range(s..e).next().map(|(&st, _)| st)
    }

    fn lookup(&self, va: VirtAddr) -> Option<(VirtAddr, VirtAddr, PhysAddr, Attributes)> {
        let (&st, &(end, pa, attrs)) = self.ext.range(..=va).next_back()?;
        (va < end).then_some((st, end, pa + (va - st), attrs))
    }

    fn insert(&mut self, s: VirtAddr, e: VirtAddr, pa: PhysAddr, attrs: Attributes) {
        assert!(self.first_overlap(s, e).is_none());
        self.ext.insert(s, (e, pa, attrs));
    }

    fn remove(&mut self, s: VirtAddr, e: VirtAddr) {
        let hit: Vec<_> = self
            .ext
            .iter()
            .filter(|(&st, &(end, _, _))| st < e && end > s)
            .map(|(&st, &v)| (st, v))
            .collect();
        for (st, (end, pa, attrs)) in hit {
            self.ext.remove(&st);
            if st < s {
                self.ext.insert(st, (s, pa, attrs));
            }
            if end > e {
                self.ext.insert(e, (end, pa + (e - st), attrs));
            }
        }
    }

    fn total(&self) -> u64 {
        self.ext.iter().map(|(&s, &(e, _, _))| e - s).sum()
    }
}

#[derive(Clone, Copy, Debug)]
enum Hint {
    Pages,
    PagesCont,
    Blocks,
    BlocksCont,
}

impl Hint {
    fn hints<G: Granule>(self) -> MapHints {
        match self {
            Hint::Pages => MapHints::pages(),
            Hint::PagesCont => MapHints::pages().with_contiguous(),
            Hint::Blocks => MapHints::blocks(block::<G>()),
            Hint::BlocksCont => MapHints::blocks(block::<G>()).with_contiguous(),
        }
    }
}

const ATTRS: [Attributes; 3] = [
    Attributes::KERNEL_RW,
    Attributes::KERNEL_RO,
    Attributes::DEVICE,
];

#[derive(Clone, Debug)]
enum Op {
    /// Map `len` units from unit `start` of the window; `pa_shift` units of
    /// output offset break congruence; `fail` injects an allocation failure.
    /// `snap` widens the range to whole unmap units (blocks), so that
    /// block leaves are common.
    Map {
        start: u64,
        len: u64,
        hint: Hint,
        attrs: usize,
        pa_shift: u64,
        fail: Option<usize>,
        snap: bool,
    },
    /// `combined`: `remove_pgd_mapping` (one walk, whole tables detached)
    /// rather than `unmap_hotplug_range` then `free_empty_tables`.
    Unmap {
        start: u64,
        len: u64,
        combined: bool,
    },
}

/// The window a property runs in and the units its operations use.
struct Shape {
    window: (VirtAddr, VirtAddr),
    /// Map ranges are multiples of this, at multiples of it.
    map_unit: u64,
    /// Unmap ranges likewise: a leaf is never split.
    unmap_unit: u64,
}

fn ops(units: u64, unmap_units: u64, max_len: u64) -> impl Strategy<Value = Vec<Op>> {
    let hint = prop_oneof![
        Just(Hint::Pages),
        Just(Hint::PagesCont),
        Just(Hint::Blocks),
        Just(Hint::BlocksCont)
    ];
    let map = (
        0..units,
        1..=max_len,
        hint,
        0..ATTRS.len(),
        prop_oneof![3 => Just(0u64), 1 => 0..4u64],
        proptest::option::weighted(0.2, 0..6usize),
        any::<bool>(),
    )
        .prop_map(|(start, len, hint, attrs, pa_shift, fail, snap)| Op::Map {
            start,
            len,
            hint,
            attrs,
            pa_shift,
            fail,
            snap,
        });
    let unmap =
        (0..unmap_units, 1..=unmap_units, any::<bool>()).prop_map(|(start, len, combined)| {
            Op::Unmap {
                start,
                len,
                combined,
            }
        });
    proptest::collection::vec(prop_oneof![3 => map, 2 => unmap], 1..24)
}

fn check_model<G: Granule>(
    env: &Env<G>,
    model: &Model,
    shape: &Shape,
    samples: &[u64],
) -> Result<(), TestCaseError> {
    let (ws, we) = shape.window;
    let p = page::<G>();
    let mut total = 0;
    for (va, size, _, d) in env.leaves(ws, we) {
        total += size;
        let (_, end, pa, attrs) = model
            .lookup(va)
            .ok_or_else(|| TestCaseError::fail(std::format!("leaf {va:#x} not in model")))?;
        prop_assert!(
            va + size <= end,
            "leaf {:#x}+{:#x} past its extent",
            va,
            size
        );
        prop_assert_eq!(
            d.output_address().as_u64() & (size - 1),
            0,
            "leaf {:#x}: output not aligned to its size",
            va
        );
        prop_assert_eq!(d.output_address(), pa, "output of leaf {:#x}", va);
        prop_assert_eq!(d.attrs().leaf_attrs(), attrs.leaf_attrs());
    }
    prop_assert_eq!(total, model.total(), "bytes mapped");
    let probe = |va: VirtAddr| -> Result<(), TestCaseError> {
        let got = env.pt.translate(va).map(|(pa, _, _)| pa);
        prop_assert_eq!(got, model.lookup(va).map(|m| m.2), "translate {:#x}", va);
        Ok(())
    };
    for (&s, &(e, _, _)) in &model.ext {
        probe(s)?;
        probe(e - p)?;
        probe(s - p)?;
        probe(e)?;
    }
    for &off in samples {
        probe(ws + (off % ((we - ws) / p)) * p)?;
    }
    env.check_tables(true);
    env.check_contiguous(ws, we);
    Ok(())
}

fn run_ops<G: Granule>(shape: &Shape, ops: &[Op], samples: &[u64]) -> Result<(), TestCaseError> {
    let mut env = Env::<G>::new();
    let mut model = Model::default();
    let (ws, we) = shape.window;
    let p = page::<G>();
    for op in ops {
        match *op {
            Op::Map {
                start,
                len,
                hint,
                attrs,
                pa_shift,
                fail,
                snap,
            } => {
                let mut s = ws + start * shape.map_unit;
                let mut e = (s + len * shape.map_unit).min(we);
                if snap {
                    let u = shape.unmap_unit;
                    s = ws + (s - ws) / u * u;
                    e = (ws + (e - ws).div_ceil(u) * u).min(we);
                }
                // Congruent with the window start (so with every block and
                // group) unless shifted.
                let pa = PA0 + (s - ws) + pa_shift * p;
                let attrs = ATTRS[attrs];
                let before = env.snapshot();
                env.frames.fail_after = fail;
                let r = env.map(s, e, pa, attrs, hint.hints::<G>());
                env.frames.fail_after = None;
                match model.first_overlap(s, e) {
                    Some(first) => {
                        prop_assert_eq!(r, Err(MapError::AlreadyMapped(first)));
                        prop_assert!(env.snapshot() == before, "failed map changed the tables");
                    }
                    None => {
                        let tables = env.pt.stats.tables;
                        match r {
                            Ok(()) => {
                                if let Some(k) = fail {
                                    prop_assert!(tables - before.stats.tables <= k as u64);
                                }
                            }
                            Err(MapError::NoMemory) => {
                                let k = fail.expect("NoMemory without fault injection");
                                prop_assert!(
                                    env.snapshot() == before,
                                    "NoMemory changed the tables"
                                );
                                env.map(s, e, pa, attrs, hint.hints::<G>()).unwrap();
                                prop_assert!(env.pt.stats.tables - tables > k as u64);
                            }
                            Err(e) => return Err(TestCaseError::fail(std::format!("{e:?}"))),
                        }
                        model.insert(s, e, pa, attrs);
                    }
                }
            }
            Op::Unmap {
                start,
                len,
                combined,
            } => {
                let s = ws + start * shape.unmap_unit;
                let e = (s + len * shape.unmap_unit).min(we);
                if combined {
                    let (floor, ceiling) = (VirtAddr::new(PAGE_OFFSET), VirtAddr::new(0));
                    env.pt
                        .remove_pgd_mapping(s, e, floor, ceiling, &mut env.frames, &mut env.w);
                    // It freed every table free_empty_tables would.
                    let tables = env.pt.stats.tables;
                    env.free_tables(s, e);
                    prop_assert_eq!(env.pt.stats.tables, tables, "tables left to free");
                } else {
                    env.unmap(s, e, false, None);
                    env.free_tables(s, e);
                }
                model.remove(s, e);
                prop_assert!(env.leaves(s, e).is_empty());
            }
        }
        check_model(&env, &model, shape, samples)?;
    }
    // Everything away: back to the root alone.
    env.unmap(ws, we, false, None);
    env.free_tables(ws, we);
    prop_assert_eq!(env.pt.stats.tables, 1);
    prop_assert_eq!(env.count_tables(), 1);
    prop_assert_eq!(env.frames.in_use(), 1);
    prop_assert_eq!(env.w, UnmapWarnings::default());
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Page-granular maps and unmaps (contiguous hints included) in a window
/// of 128 pages straddling the first level's boundary, so that every level
/// gets two tables.
pub(super) fn property_pages<G: Granule>() {
    let p = page::<G>();
    let x = top_boundary::<G>();
    let n3 = G::contiguous_entries(3) as u64;
    // Wide enough to hold whole contiguous groups on both sides.
    let half = 2 * n3 * p;
    let shape = Shape {
        window: (x - half, x + half),
        map_unit: p,
        unmap_unit: p,
    };
    let units = 2 * half / p;
    let strategy = (
        ops(units, units, units / 2),
        proptest::collection::vec(any::<u64>(), 16),
    );
    runner(48)
        .run(&strategy, |(ops, samples)| {
            // Blocks cannot appear: the window holds no aligned block... but
            // the hints still go through the block paths of the walker.
            run_ops::<G>(&shape, &ops, &samples)
        })
        .unwrap();
}

/// Block-aligned unmaps over maps of any alignment and hints, in a window
/// of eight blocks straddling the first level's boundary.
pub(super) fn property_blocks<G: Granule>() {
    let b = block::<G>();
    let x = top_boundary::<G>();
    let n3 = G::contiguous_entries(3) as u64 * page::<G>();
    let shape = Shape {
        window: (x - 4 * b, x + 4 * b),
        map_unit: n3,
        unmap_unit: b,
    };
    let units = 8 * b / n3;
    let strategy = (
        ops(units, 8, 3 * b / n3),
        proptest::collection::vec(any::<u64>(), 16),
    );
    runner(32)
        .run(&strategy, |(ops, samples)| {
            run_ops::<G>(&shape, &ops, &samples)
        })
        .unwrap();
}
