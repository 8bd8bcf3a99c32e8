//! Deferred struct pages (`page.rs`): onlining writes only the heads of
//! maximum-order blocks, the first split writes exactly its block, and
//! nothing that reads a struct page can tell a lazy online from an eager
//! one.

use super::*;
use crate::mm::page::{Page, MAX_ORDER_NR_PAGES};

const MAXB: u64 = MAX_ORDER_NR_PAGES;

/// A struct page as every public accessor shows it.
type View = (PageFlags, Option<Zone>, u32, u32, u64);

fn view(p: &Page) -> View {
    (p.flags(), p.zone(), p.order(), p.refcount(), p.private())
}

fn poisoned(fx: &Fx, pfn: Pfn) -> bool {
    // SAFETY: present memory has its vmemmap; nothing else holds it.
    unsafe { fx.mm.memmap.is_poisoned(pfn) }
}

/// Adds block `id` (the test system's add leaves garbage in every struct
/// page it does not write), onlines it Movable; returns the first pfn
/// onlining writes.
fn add_poisoned_online(fx: &mut Fx, id: u64, memmap_on_memory: bool) -> Pfn {
    fx.mm.memmap_on_memory = memmap_on_memory;
    fx.mm.add_memory(start_of(id), BLOCK).unwrap();
    let (spfn, epfn) = block_pfns(id);
    let first = fx.mm.blocks[&id]
        .altmap
        .as_ref()
        .map_or(spfn, |a| a.next_pfn());
    assert!(Pfn::range(first, epfn).all(|pfn| poisoned(fx, pfn)));
    fx.mm.online_block(id, Zone::Movable).unwrap();
    first
}

#[test]
fn online_writes_only_max_order_heads() {
    for memmap_on_memory in [false, true] {
        let mut fx = boot();
        let id = HOT_FIRST;
        let (spfn, epfn) = block_pfns(id);
        let first = add_poisoned_online(&mut fx, id, memmap_on_memory);
        // What is written: the part of the first max-order block after the
        // block's own struct pages (with memmap_on_memory), then one head
        // per max-order block.
        let partial = first.align_up(MAXB);
        let written: Vec<Pfn> = Pfn::range(first, epfn)
            .filter(|&p| !poisoned(&fx, p))
            .collect();
        let heads = Pfn::range(partial, epfn).step_by(MAXB as usize);
        let want: Vec<Pfn> = Pfn::range(first, partial).chain(heads).collect();
        assert_eq!(written, want, "memmap_on_memory={memmap_on_memory}");
        assert_eq!(
            written.len() as u64,
            (partial - first) + (epfn - partial) / MAXB
        );
        // Yet every page reads as onlined, and the allocator has it all.
        for pfn in Pfn::range(first, epfn) {
            let p = fx.mm.page(pfn).unwrap();
            assert_eq!(p.zone(), Some(Zone::Movable), "{pfn:#x}");
            assert!(p.is_online() && p.refcount() == 0, "{pfn:#x}");
            assert!(fx.mm.buddy.lock().is_free(pfn), "{pfn:#x}");
        }
        assert_eq!(fx.mm.buddy.lock().nr_free(Zone::Movable), epfn - first);
        let _ = spfn;
    }
}

#[test]
fn the_first_split_writes_exactly_its_block() {
    let mut fx = boot();
    let id = HOT_FIRST;
    let (spfn, epfn) = block_pfns(id);
    add_poisoned_online(&mut fx, id, false);
    let tails_poisoned =
        |fx: &Fx, head: Pfn| Pfn::range(head + 1, head + MAXB).all(|p| poisoned(fx, p));
    let tails_written =
        |fx: &Fx, head: Pfn| Pfn::range(head + 1, head + MAXB).all(|p| !poisoned(fx, p));
    // A whole max-order block is handed out without writing its tails.
    let whole = fx.mm.alloc(MAX_ORDER, Zone::Movable).unwrap();
    assert!(tails_poisoned(&fx, whole));
    assert_eq!(fx.mm.page(whole + 1).unwrap().refcount(), 0);
    // The first order-0 allocation splits one block: exactly its tails are
    // written, every other block keeps its garbage.
    let pfn = fx.mm.alloc(0, Zone::Movable).unwrap();
    let split = pfn.align_down(MAXB);
    assert_ne!(split, whole);
    for head in Pfn::range(spfn, epfn).step_by(MAXB as usize) {
        if head == split {
            assert!(tails_written(&fx, head), "{head:#x}");
        } else {
            assert!(tails_poisoned(&fx, head), "{head:#x}");
        }
    }
    // A second one comes from the same block: nothing more is written.
    let pfn2 = fx.mm.alloc(0, Zone::Movable).unwrap();
    assert_eq!(pfn2.align_down(MAXB), split);
    let still: u64 = Pfn::range(spfn, epfn).filter(|&p| poisoned(&fx, p)).count() as u64;
    assert_eq!(still, (epfn - spfn) / MAXB * (MAXB - 1) - (MAXB - 1));
    assert!(fx.mm.free(pfn, 0) && fx.mm.free(pfn2, 0) && fx.mm.free(whole, MAX_ORDER));
    fx.mm.offline_block(id).unwrap();
    fx.mm.remove_memory(start_of(id), BLOCK).unwrap();
}

/// Offlining takes back whole max-order blocks by writing their heads
/// alone: the tails of blocks the allocator split while online (and wrote)
/// are left as they are and read as offline pages; a block with the
/// block's own struct pages in it is written page by page. Online again,
/// the allocator has every page and splits the blocks afresh.
#[test]
fn offline_writes_only_max_order_heads() {
    for memmap_on_memory in [false, true] {
        let mut fx = boot();
        let id = HOT_FIRST;
        let (spfn, epfn) = block_pfns(id);
        let first = add_poisoned_online(&mut fx, id, memmap_on_memory);
        // Split every max-order block (their tails written), then give
        // every page back and plant garbage in the whole-block tails again.
        let held: Vec<Pfn> = (0..(epfn - first))
            .map(|_| fx.mm.alloc(0, Zone::Movable).unwrap())
            .collect();
        assert!(fx.mm.alloc(0, Zone::Movable).is_none());
        for &pfn in &held {
            assert!(fx.mm.free(pfn, 0));
        }
        let whole = first.align_up(MAXB);
        // SAFETY: the block's vmemmap is populated; nothing else holds it.
        unsafe {
            for head in Pfn::range(whole, epfn).step_by(MAXB as usize) {
                fx.mm.memmap.poison_range(head + 1, head + MAXB);
            }
        }
        let before = fx.mm.meminfo();
        fx.mm.offline_block(id).unwrap();
        for head in Pfn::range(whole, epfn).step_by(MAXB as usize) {
            assert!(
                Pfn::range(head + 1, head + MAXB).all(|p| poisoned(&fx, p)),
                "{head:#x}: offline wrote tails (memmap_on_memory={memmap_on_memory})"
            );
        }
        for pfn in Pfn::range(spfn, epfn) {
            let p = fx.mm.page(pfn).unwrap();
            assert!(p.is_reserved() && !p.is_online(), "{pfn:#x}");
            assert!(!fx.mm.buddy.lock().is_free(pfn), "{pfn:#x}");
            if pfn >= whole {
                // Fresh offline pages, as an eager offline of a whole free
                // block writes them (`lazy_is_indistinguishable_from_eager`).
                assert_eq!(p.zone(), Some(Zone::Movable), "{pfn:#x}");
                assert_eq!((p.order(), p.refcount()), (0, 0), "{pfn:#x}");
            }
        }
        assert_eq!(
            fx.mm.meminfo().total,
            before.total - (epfn - first) * PAGE_SIZE
        );
        fx.mm.online_block(id, Zone::Normal).unwrap();
        assert_eq!(fx.mm.meminfo(), before);
        let again: Vec<Pfn> = (0..(epfn - first))
            .map(|_| fx.mm.alloc(0, Zone::Normal).unwrap())
            .collect();
        for &pfn in &again {
            let p = fx.mm.page(pfn).unwrap();
            assert_eq!(
                (p.zone(), p.refcount()),
                (Some(Zone::Normal), 1),
                "{pfn:#x}"
            );
            assert!(p.is_online() && !p.is_reserved(), "{pfn:#x}");
        }
        for &pfn in &again {
            assert!(fx.mm.free(pfn, 0));
        }
        fx.mm.offline_block(id).unwrap();
        fx.mm.remove_memory(start_of(id), BLOCK).unwrap();
    }
}

/// The same operations on a lazy and an eager system: every public reader
/// sees the same thing at every step.
struct Twins {
    lazy: Fx,
    eager: Fx,
}

impl Twins {
    fn new() -> Self {
        let lazy = boot();
        let mut eager = boot();
        eager.mm.set_deferred_memmap_init(false);
        assert!(lazy.mm.deferred_memmap_init());
        Twins { lazy, eager }
    }

    fn both<R: PartialEq + core::fmt::Debug>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Fx) -> R,
    ) -> R {
        let (a, b) = (f(&mut self.lazy), f(&mut self.eager));
        assert_eq!(a, b, "{what}: lazy and eager differ");
        a
    }

    /// Every reader, over every pfn of `ids`.
    #[track_caller]
    fn same_everywhere(&self, what: &str, ids: &[u64]) {
        assert_same(what, &snap(&self.lazy.mm), &snap(&self.eager.mm));
        for &id in ids {
            let (spfn, epfn) = block_pfns(id);
            for pfn in Pfn::range(spfn, epfn) {
                let read = |fx: &Fx| {
                    let b = fx.mm.buddy.lock();
                    (
                        fx.mm.page(pfn).map(|p| view(&p)),
                        b.free_block_of(pfn),
                        b.check_free(pfn, 0),
                        b.check_free(pfn, MAX_ORDER),
                        crate::mm::frame::FrameAllocator::is_reserved(&*b, pfn.phys()),
                    )
                };
                assert_eq!(read(&self.lazy), read(&self.eager), "{what}: pfn {pfn:#x}");
            }
        }
    }
}

#[test]
fn lazy_is_indistinguishable_from_eager() {
    let mut t = Twins::new();
    let ids = [HOT_FIRST, HOT_FIRST + 1, HOT_FIRST + 2];
    t.same_everywhere("booted", &[BOOT]);
    // Three blocks: struct pages in RAM, on the block, and a driver's block
    // plugged in part (sub-blocks of 2 MiB: half a max-order block).
    t.both("add", |fx| {
        fx.mm.memmap_on_memory = false;
        fx.mm.add_memory(start_of(ids[0]), BLOCK).is_ok()
    });
    t.both("add memmap_on_memory", |fx| {
        fx.mm.memmap_on_memory = true;
        fx.mm.add_memory(start_of(ids[1]), BLOCK).is_ok()
    });
    t.both("add driver block", |fx| {
        let mut mask = crate::mm::system::PlugMask::new(2 << 20).unwrap();
        for i in [0, 1, 2, 5, 8, 9] {
            mask.set(i, true);
        }
        fx.mm
            .add_memory_driver_managed(None, start_of(ids[2]), BLOCK, "System RAM (test)", mask)
            .is_ok()
    });
    for (i, &id) in ids.iter().enumerate() {
        let zone = if i == 1 { Zone::Normal } else { Zone::Movable };
        t.both("online", |fx| fx.mm.online_block(id, zone).is_ok());
    }
    t.same_everywhere("onlined", &ids);
    // Allocations of every size split some blocks (the half-plugged
    // ones first, then deferred ones) and take others whole.
    let mut held = Vec::new();
    let orders = [0, 3, MAX_ORDER, 0, 1, MAX_ORDER - 1, 0, MAX_ORDER - 1];
    for order in orders.into_iter().cycle().take(3 * orders.len()) {
        let pfn = t.both("alloc", |fx| fx.mm.alloc_movable_first(order));
        held.push((pfn.unwrap(), order));
        let n = t.both("alloc normal", |fx| fx.mm.alloc(order, Zone::Normal));
        held.push((n.unwrap(), order));
    }
    t.same_everywhere("allocated", &ids);
    // Offline scans: busy at the same pfn, changing nothing.
    for &id in &ids {
        t.both("offline busy", |fx| {
            format!("{:?}", fx.mm.offline_block(id))
        });
    }
    t.same_everywhere("offline refused", &ids);
    // A driver takes back sub-blocks: inside a max-order block (split off
    // part of it) and a whole one.
    t.both("unplug", |fx| {
        format!("{:?}", fx.mm.unplug_sub_blocks(ids[2], 9, 1))
    });
    t.both("unplug", |fx| {
        format!("{:?}", fx.mm.unplug_sub_blocks(ids[2], 0, 2))
    });
    t.same_everywhere("unplugged", &ids);
    // Page isolation while pages are out, then everything back.
    t.both("offline begin", |fx| fx.mm.offline_begin(ids[0]).is_ok());
    t.both("not yet", |fx| fx.mm.offline_try_finish(ids[0]));
    for &(pfn, order) in held.iter().rev() {
        t.both("free", |fx| fx.mm.free(pfn, order));
    }
    t.same_everywhere("freed", &ids);
    t.both("finish", |fx| fx.mm.offline_try_finish(ids[0]));
    for &id in &ids[1..] {
        t.both("offline", |fx| format!("{:?}", fx.mm.offline_block(id)));
    }
    t.same_everywhere("offline", &ids);
    t.both("online again", |fx| {
        fx.mm.online_block(ids[0], Zone::Normal).is_ok()
    });
    t.same_everywhere("online again", &ids);
}

/// A block onlined, offlined (its tails left deferred as offline pages on
/// the lazy system, written on the eager one) and removed, then added
/// again with its struct pages on itself, reads the same on both systems:
/// the re-added block's offline tails are garbage on both, as fresh
/// vmemmap backing is (the host memmap is poisoned at add to say so).
/// Found by the random twins (`model.rs`) once offlining stopped writing
/// tails: the host memmap kept the eager system's offline pages.
/// Onlining reads no struct page of a block not onlined since it was
/// added (garbage, heads included: `online_added_pages`), and checks the
/// heads of one onlined before, which offline wrote: a head that says the
/// allocator has it (garbage says `BUDDY`) is refused with `EBUSY`,
/// counted, the block left offline and nothing of it handed over.
#[test]
fn only_a_block_onlined_before_has_its_heads_checked() {
    let mut fx = boot();
    let id = HOT_FIRST;
    let (spfn, _) = block_pfns(id);
    fx.mm.memmap_on_memory = false;
    fx.mm.add_memory(start_of(id), BLOCK).unwrap();
    let head = spfn + MAXB;
    assert!(poisoned(&fx, head));
    let bad = fx.mm.buddy.lock().stats().bad_frees;
    let free = fx.mm.meminfo().free;
    fx.mm.online_block(id, Zone::Movable).unwrap();
    assert_eq!(fx.mm.buddy.lock().stats().bad_frees, bad);
    assert_eq!(fx.mm.meminfo().free, free + BLOCK);
    fx.mm.offline_block(id).unwrap();
    // SAFETY: the block's vmemmap is populated; nothing else holds it.
    unsafe { fx.mm.memmap.poison_range(head, head + 1) };
    let before = fx.mm.meminfo();
    let e = fx.mm.online_block(id, Zone::Movable).unwrap_err();
    assert_eq!(e.errno, Errno::EBUSY, "{e}");
    assert_eq!(fx.mm.buddy.lock().stats().bad_frees, bad + 1);
    assert_eq!(fx.mm.blocks[&id].state, BlockState::Offline);
    assert_eq!(fx.mm.meminfo(), before);
    // Its head an offline page again (as offline leaves it), it onlines.
    // SAFETY: as above.
    unsafe {
        let offline = Page::new(Zone::Movable, PageFlags::RESERVED);
        fx.mm.memmap.init_deferred(head, offline);
    }
    fx.mm.online_block(id, Zone::Movable).unwrap();
    assert_eq!(fx.mm.meminfo().free, free + BLOCK);
}

/// A driver block whose second plugged run the allocator already has is
/// refused before its first run is handed over: all runs are checked in
/// one hold of the zone lock, then onlined.
#[test]
fn a_driver_block_refused_in_its_last_run_hands_nothing_over() {
    let mut fx = boot();
    let id = HOT_FIRST;
    let (spfn, _) = block_pfns(id);
    let mut mask = crate::mm::system::PlugMask::new(BLOCK / 4).unwrap();
    for i in [0, 2, 3] {
        mask.set(i, true);
    }
    fx.mm.memmap_on_memory = false;
    fx.mm
        .add_memory_driver_managed_offline(None, start_of(id), BLOCK, "System RAM (test)", mask)
        .unwrap();
    fx.mm.online_block(id, Zone::Movable).unwrap();
    fx.mm.offline_block(id).unwrap();
    let last_run = spfn + 2 * (BLOCK / 4 / PAGE_SIZE);
    // SAFETY: the block's vmemmap is populated; nothing else holds it.
    unsafe { fx.mm.memmap.poison_range(last_run, last_run + 1) };
    let (before, bad) = (fx.mm.meminfo(), fx.mm.buddy.lock().stats().bad_frees);
    let e = fx.mm.online_block(id, Zone::Movable).unwrap_err();
    assert_eq!(e.errno, Errno::EBUSY, "{e}");
    assert_eq!(fx.mm.buddy.lock().stats().bad_frees, bad + 1);
    assert_eq!(fx.mm.blocks[&id].state, BlockState::Offline);
    assert_eq!(fx.mm.meminfo(), before);
}

#[test]
fn a_re_added_block_reads_alike() {
    let mut t = Twins::new();
    let ids = [HOT_FIRST, HOT_FIRST + 1];
    t.both("add", |fx| {
        fx.mm.memmap_on_memory = false;
        fx.mm.add_memory(start_of(ids[0]), 2 * BLOCK).is_ok()
    });
    t.same_everywhere("added", &ids);
    t.both("online", |fx| {
        fx.mm.online_block(ids[1], Zone::Normal).is_ok()
    });
    t.both("offline", |fx| format!("{:?}", fx.mm.offline_block(ids[1])));
    t.same_everywhere("offline", &ids);
    t.both("remove", |fx| {
        fx.mm.remove_memory(start_of(ids[0]), 2 * BLOCK).is_ok()
    });
    t.both("add memmap_on_memory", |fx| {
        fx.mm.memmap_on_memory = true;
        fx.mm.add_memory(start_of(ids[1]), BLOCK).is_ok()
    });
    t.same_everywhere("added again", &ids[1..]);
}

/// A driver's block whose device plugs sub-blocks smaller than a
/// max-order block (virtio-mem's 2 MiB): onlining defers the struct pages
/// of every max-order block that is plugged whole, however many sub-blocks
/// it spans, and writes the others (part plugged, part not) in full.
#[test]
fn a_driver_block_defers_max_order_blocks_plugged_whole() {
    let mut fx = boot();
    let id = HOT_FIRST;
    let (spfn, epfn) = block_pfns(id);
    let sub = 2 << 20;
    let per_max = (MAXB << PAGE_SHIFT) / sub;
    assert!(
        per_max >= 2,
        "sub-blocks must be smaller than a max-order block"
    );
    let mut mask = crate::mm::system::PlugMask::new(sub).unwrap();
    let unplugged = |i: u64| i == 5 || (9..12).contains(&i);
    for i in 0..mask.len() {
        mask.set(i, !unplugged(i));
    }
    fx.mm
        .add_memory_driver_managed_offline(None, start_of(id), BLOCK, "System RAM (test)", mask)
        .unwrap();
    // Garbage everywhere (the test system's add plants it).
    assert!(Pfn::range(spfn, epfn).all(|pfn| poisoned(&fx, pfn)));
    fx.mm.online_block(id, Zone::Movable).unwrap();
    for head in Pfn::range(spfn, epfn).step_by(MAXB as usize) {
        let b = (head - spfn) / MAXB;
        let whole = (b * per_max..(b + 1) * per_max).all(|i| !unplugged(i));
        for pfn in Pfn::range(head, head + MAXB) {
            let written = !poisoned(&fx, pfn);
            assert_eq!(written, pfn == head || !whole, "{pfn:#x}");
            let p = fx.mm.page(pfn).unwrap();
            let i = ((pfn - spfn) << PAGE_SHIFT) / sub;
            assert_eq!(p.zone(), Some(Zone::Movable), "{pfn:#x}");
            assert_eq!(
                p.has(PageFlags::LOGICALLY_OFFLINE),
                unplugged(i),
                "{pfn:#x}"
            );
            assert_eq!(fx.mm.buddy.lock().is_free(pfn), !unplugged(i), "{pfn:#x}");
        }
    }
    let plugged_pages = mask.count() * (sub >> PAGE_SHIFT);
    assert_eq!(fx.mm.buddy.lock().nr_free(Zone::Movable), plugged_pages);
}

/// A driver's block onlines its unplugged sub-blocks before it frees the
/// plugged ones: freeing a plugged half of a max-order block reads the
/// other, unplugged half's head as its buddy, and a struct page not
/// written since hot-add holds whatever was there, here a plausible free
/// buddy of the same order and zone. Written first, it is logically
/// offline and nothing merges with it.
#[test]
fn a_driver_block_writes_unplugged_sub_blocks_before_freeing() {
    let mut fx = boot();
    let id = HOT_FIRST;
    let (spfn, epfn) = block_pfns(id);
    let sub = 2 << 20;
    let sub_pages = sub >> PAGE_SHIFT;
    assert_eq!(sub_pages * 2, MAXB, "a sub-block is half a max-order block");
    let mut mask = crate::mm::system::PlugMask::new(sub).unwrap();
    // Sub-block 5 unplugged: the upper half of the max-order block whose
    // lower half (4) ends a plugged run.
    for i in 0..mask.len() {
        mask.set(i, i != 5);
    }
    fx.mm
        .add_memory_driver_managed_offline(None, start_of(id), BLOCK, "System RAM (test)", mask)
        .unwrap();
    let stale = spfn + 5 * sub_pages;
    let mut fake = Page::new(Zone::Movable, PageFlags::BUDDY | PageFlags::ONLINE);
    fake.order = (MAX_ORDER - 1) as u8;
    // SAFETY: the block's vmemmap is populated; nothing else holds it.
    unsafe { *fx.mm.memmap.get(stale) = fake };
    fx.mm.online_block(id, Zone::Movable).unwrap();
    for pfn in Pfn::range(stale, stale + sub_pages) {
        let p = fx.mm.page(pfn).unwrap();
        assert!(p.has(PageFlags::LOGICALLY_OFFLINE), "{pfn:#x}");
        assert!(!fx.mm.buddy.lock().is_free(pfn), "{pfn:#x}");
    }
    let plugged = (mask.len() - 1) * sub_pages;
    assert_eq!(fx.mm.buddy.lock().nr_free(Zone::Movable), plugged);
    // Every plugged page can be had, and no other.
    let got: Vec<Pfn> = core::iter::from_fn(|| fx.mm.alloc(0, Zone::Movable)).collect();
    assert_eq!(got.len() as u64, plugged);
    assert!(got
        .iter()
        .all(|&p| p >= spfn && p < epfn && !(stale..stale + sub_pages).contains(&p)));
    assert_eq!(fx.mm.buddy.lock().stats().bad_frees, 0);
}
