//! Host benchmark of the page-table walker against Google's `aarch64-paging`
//! (`scripts/bench walker`): map, translate, and unmap with table freeing of
//! 1 GiB at a 2 MiB-aligned (not 1 GiB-aligned) address, in 4K pages and in
//! 2 MiB blocks. Both walkers take their table pages from the same frame
//! allocator over one host buffer and reach them through a plain offset, with
//! no test-only checks; neither page table is live, so neither issues TLB
//! maintenance (ours runs its decisions, the instructions are no-ops off
//! target). Prints the median of `RUNS` runs and `theirs / ours` (>= 1.0:
//! this walker is at least as fast).

// Every dependency is this example's too (unused_crate_dependencies).
#[path = "../src/extern_deps.rs"]
mod extern_deps;
use proptest as _;
use serde_json as _;

use std::cell::RefCell;
use std::hint::black_box;
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::{Duration, Instant};

use aarch64_paging::descriptor::{El1Attributes, PhysicalAddress};
use aarch64_paging::paging::{
    Constraints, El1And0, MemoryRegion, PageTable as ApTable, Translation as ApTranslation,
    VaRange as ApVaRange,
};
use aarch64_paging::Mapping;
use hpk::mm::addr::{PhysAddr, VirtAddr};
use hpk::mm::frame::FrameAllocator;
use hpk::mm::granule::Granule4K;
use hpk::mm::layout::{PAGE_END, PAGE_OFFSET};
use hpk::mm::pgtable::unmap::UnmapWarnings;
use hpk::mm::pgtable::{Attributes, Descriptor, MapHints, PageTable, Translation, VaRange};

const PAGE: u64 = 4096;
const BLOCK: u64 = 2 << 20;
const SIZE: u64 = 1 << 30;
/// 2 MiB aligned, not 1 GiB aligned: the range straddles two level-1 entries.
const VA: u64 = PAGE_OFFSET + (1 << 30) + BLOCK;
const PA: u64 = 0x4020_0000;
/// Where the table pages live (the leaves' output is never touched).
const FRAMES_PA: u64 = 0x1_0000_0000;
const FRAMES: usize = 2048;
const RUNS: usize = 5;

/// A page-frame stack over a host buffer: what both walkers allocate from.
struct Frames {
    host: *mut u8,
    free: Vec<u64>,
}

impl Frames {
    fn new(host: *mut u8) -> Self {
        let free = (0..FRAMES as u64)
            .rev()
            .map(|i| FRAMES_PA + i * PAGE)
            .collect();
        Self { host, free }
    }

    fn ptr(&self, pa: u64) -> *mut u8 {
        // SAFETY: every table address comes from this allocator, so lies in
        // the buffer of FRAMES pages.
        unsafe { self.host.add((pa - FRAMES_PA) as usize) }
    }
}

impl FrameAllocator for Frames {
    fn alloc_pages(&mut self, order: u32) -> Option<PhysAddr> {
        (order == 0)
            .then(|| self.free.pop())
            .flatten()
            .map(PhysAddr::new)
    }

    fn free_pages(&mut self, pa: PhysAddr, _order: u32) {
        self.free.push(pa.as_u64());
    }
}

/// This walker's view of the buffer: an offset, no checks.
struct Ours {
    host: *mut u8,
}

impl Translation for Ours {
    fn table_va(&self, pa: PhysAddr) -> *mut Descriptor {
        // SAFETY: table addresses come from `Frames`, inside the buffer.
        unsafe { self.host.add((pa.as_u64() - FRAMES_PA) as usize) as *mut Descriptor }
    }
}

/// `aarch64-paging`'s view: the same offset, tables from the same frames.
struct Theirs {
    frames: Rc<RefCell<Frames>>,
}

impl ApTranslation<El1Attributes> for Theirs {
    fn allocate_table(&mut self) -> (NonNull<ApTable<El1Attributes>>, PhysicalAddress) {
        let mut f = self.frames.borrow_mut();
        let pa = f.alloc_pages(0).expect("bench frames").as_u64();
        let p = f.ptr(pa);
        // SAFETY: a whole free page of the buffer; the crate wants it zeroed
        // (ours zeroes its tables too).
        unsafe { p.write_bytes(0, PAGE as usize) };
        (
            NonNull::new(p.cast()).expect("non-null"),
            PhysicalAddress(pa as usize),
        )
    }

    unsafe fn deallocate_table(&mut self, table: NonNull<ApTable<El1Attributes>>) {
        let mut f = self.frames.borrow_mut();
        let pa = table.as_ptr() as u64 - f.host as u64 + FRAMES_PA;
        f.free_pages(PhysAddr::new(pa), 0);
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<ApTable<El1Attributes>> {
        NonNull::new(self.frames.borrow().ptr(pa.0 as u64).cast()).expect("non-null")
    }
}

/// Each operation's time, one entry per cycle.
#[derive(Default)]
struct Times {
    map: Vec<Duration>,
    translate: Vec<Duration>,
    unmap: Vec<Duration>,
}

/// Records the time `f` takes.
fn time<R>(v: &mut Vec<Duration>, f: impl FnOnce() -> R) -> R {
    let t = Instant::now();
    let r = f();
    v.push(t.elapsed());
    r
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// One cycle of map, translate (when `translate`) and unmap with table
/// freeing, by this walker.
fn ours(frames: &Rc<RefCell<Frames>>, blocks: bool, translate: bool, t: &mut Times) {
    let host = frames.borrow().host;
    let mut f = frames.borrow_mut();
    let in_use = FRAMES - f.free.len();
    let mut pt = PageTable::<_, Granule4K>::new(Ours { host }, &mut *f).expect("root");
    let hints = if blocks {
        MapHints::blocks(BLOCK)
    } else {
        MapHints::pages()
    };
    let range = VaRange::new(VirtAddr::new(VA), VirtAddr::new(VA + SIZE));
    time(&mut t.map, || {
        pt.map_range(
            range,
            PhysAddr::new(PA),
            Attributes::KERNEL_RW,
            hints,
            &mut *f,
        )
        .expect("map")
    });
    if translate {
        let sum = time(&mut t.translate, || {
            let mut sum = 0u64;
            for off in (0..SIZE).step_by(PAGE as usize) {
                sum ^= pt
                    .translate(VirtAddr::new(VA + off))
                    .expect("mapped")
                    .0
                    .as_u64();
            }
            sum
        });
        black_box(sum);
    }
    let mut w = UnmapWarnings::default();
    time(&mut t.unmap, || {
        pt.remove_pgd_mapping(
            range.start,
            range.end,
            VirtAddr::new(PAGE_OFFSET),
            VirtAddr::new(PAGE_END),
            &mut *f,
            &mut w,
        )
    });
    assert_eq!(pt.stats.tables, 1, "our tables freed");
    f.free_pages(pt.root_pa(), 0);
    assert_eq!(FRAMES - f.free.len(), in_use, "our frames back");
}

/// The same cycle by `aarch64-paging`.
fn theirs(frames: &Rc<RefCell<Frames>>, blocks: bool, translate: bool, t: &mut Times) {
    let in_use = FRAMES - frames.borrow().free.len();
    let trans = Theirs {
        frames: frames.clone(),
    };
    let mut map = Mapping::with_asid_and_va_range(trans, 0, 0, El1And0, ApVaRange::Upper);
    let range = MemoryRegion::new(VA as usize, (VA + SIZE) as usize);
    let flags = El1Attributes::VALID
        | El1Attributes::ATTRIBUTE_INDEX_1
        | El1Attributes::INNER_SHAREABLE
        | El1Attributes::ACCESSED
        | El1Attributes::UXN;
    let constraints = if blocks {
        Constraints::NO_CONTIGUOUS_HINT
    } else {
        Constraints::NO_BLOCK_MAPPINGS | Constraints::NO_CONTIGUOUS_HINT
    };
    time(&mut t.map, || {
        map.map_range(&range, PhysicalAddress(PA as usize), flags, constraints)
            .expect("map")
    });
    if translate {
        let sum = time(&mut t.translate, || {
            let mut sum = 0u64;
            for off in (0..SIZE).step_by(PAGE as usize) {
                let va = (VA + off) as usize;
                let mut out = None;
                map.walk_range(&MemoryRegion::new(va, va + 1), &mut |_, d, level| {
                    let mask = (1usize << (12 + 9 * (3 - level))) - 1;
                    out = d
                        .is_valid()
                        .then(|| (d.output_address().0 + (va & mask)) as u64);
                    Ok(())
                })
                .expect("walk");
                sum ^= out.expect("mapped");
            }
            sum
        });
        black_box(sum);
    }
    time(&mut t.unmap, || {
        map.map_range(
            &range,
            PhysicalAddress(0),
            El1Attributes::empty(),
            Constraints::empty(),
        )
        .expect("unmap");
        map.compact_subtables();
    });
    assert_eq!(
        FRAMES - frames.borrow().free.len(),
        in_use + 1,
        "their tables freed"
    );
    drop(map);
    assert_eq!(
        FRAMES - frames.borrow().free.len(),
        in_use,
        "their frames back"
    );
}

fn main() {
    let layout =
        std::alloc::Layout::from_size_align(FRAMES * PAGE as usize, PAGE as usize).expect("layout");
    // SAFETY: a non-zero size; freed at the end.
    let host = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!host.is_null());
    let frames = Rc::new(RefCell::new(Frames::new(host)));
    println!(
        "walker: 1 GiB at {VA:#x} (2 MiB aligned); median per operation over {RUNS} samples; ratio = aarch64-paging / ours"
    );
    println!(
        "{:<22} {:>12} {:>14} {:>7}",
        "", "ours", "aarch64-paging", "ratio"
    );
    // Each operation is timed per cycle and the median of all cycles is
    // printed: a cycle the scheduler interrupts (the host may be loaded)
    // is an outlier, not part of a sum. A sample is `cycles` cycles each,
    // translation timed in the first three of them.
    for (blocks, name, cycles) in [(false, "4K pages", 3), (true, "2M blocks", 200)] {
        let (mut a, mut b) = (Times::default(), Times::default());
        // A warm-up cycle each (first touch of the frames), then cycles
        // interleaved, so that both walkers see the same machine load.
        ours(&frames, blocks, false, &mut Times::default());
        theirs(&frames, blocks, false, &mut Times::default());
        for _ in 0..RUNS {
            for i in 0..cycles {
                ours(&frames, blocks, i < 3, &mut a);
                theirs(&frames, blocks, i < 3, &mut b);
            }
        }
        for (op, x, y) in [
            ("map", &a.map, &b.map),
            ("translate", &a.translate, &b.translate),
            ("unmap+free", &a.unmap, &b.unmap),
        ] {
            let (x, y) = (median(x), median(y));
            println!(
                "{:<22} {:>9.1} us {:>11.1} us {:>6.2}x",
                format!("{name} {op}"),
                x.as_secs_f64() * 1e6,
                y.as_secs_f64() * 1e6,
                y.as_secs_f64() / x.as_secs_f64()
            );
        }
    }
    // SAFETY: allocated above with this layout; nothing uses it any more.
    unsafe { std::alloc::dealloc(host, layout) };
}
