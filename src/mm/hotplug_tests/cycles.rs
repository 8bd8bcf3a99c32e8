//! Whole cycles return to the start: probe, online, offline and remove of
//! one block or several, struct pages in system RAM or on the block itself.

use super::*;
use crate::mm::buddy::BadFree;
use crate::mm::hotplug::vmemmap_pages_per_block;
use crate::mm::vmemmap::vmemmap_backing;

/// probe, online, offline, remove of one block, struct pages in system RAM
/// or on the block itself, in either GiB (the second needs a table).
fn cycle_one_block(id: u64, memmap_on_memory: bool, zone: Zone) {
    let mut fx = boot();
    let base = snap(&fx.mm);
    let events = fx.mm.events;
    let (spfn, epfn) = block_pfns(id);
    let start = start_of(id);
    let new_tables = u64::from(start >= GIB2);

    fx.mm.memmap_on_memory = memmap_on_memory;
    fx.mm.add_memory(start, BLOCK).expect("probe");
    let probed = snap(&fx.mm);
    let mi = probed.meminfo;
    assert_eq!(block_state(&fx.mm, id), Some(BlockState::Offline));
    assert_eq!(probed.tables, base.tables + new_tables);
    assert_eq!(
        mi.page_tables,
        base.meminfo.page_tables + new_tables * PAGE_SIZE
    );
    assert_eq!(
        mi.total, base.meminfo.total,
        "an offline block adds no MemTotal"
    );
    assert_eq!(mi.device_mem, 0);
    if memmap_on_memory {
        // No system RAM for struct pages: only the table pages.
        assert_eq!(mi.vmemmap, base.meminfo.vmemmap);
        assert_eq!(
            mi.vmemmap_altmap,
            base.meminfo.vmemmap_altmap + MEMMAP_PER_BLOCK
        );
        assert_eq!(mi.free, base.meminfo.free - new_tables * PAGE_SIZE);
        assert!(new_tables <= 1);
        let a = fx.mm.blocks[&id].altmap.as_ref().expect("altmap");
        assert_eq!((a.base_pfn, a.end_pfn, a.reserve), (spfn, epfn, 0));
        assert_eq!(a.alloc, vmemmap_pages_per_block());
        assert_eq!(a.next_pfn(), spfn + vmemmap_pages_per_block());
        // The block's struct pages are its own first 2 MiB.
        assert_eq!(vmemmap_backing(&fx.mm.pt, spfn), Some((start, 2 * MIB)));
        assert_eq!(fx.mm.altmap_owner(start), Some("memmap_on_memory"));
        // Only those are initialised before online (the rest once onlined,
        // checked below).
        for pfn in Pfn::range(spfn, a.next_pfn()) {
            let hosted = fx.mm.page(pfn).unwrap();
            let flags = PageFlags::VMEMMAP_SELF_HOSTED | PageFlags::ALTMAP_BACKED;
            assert!(hosted.has(flags), "pfn {pfn:#x}");
        }
    } else {
        assert_eq!(mi.vmemmap, base.meminfo.vmemmap + MEMMAP_PER_BLOCK);
        assert_eq!(mi.vmemmap_altmap, 0);
        assert_eq!(
            mi.free,
            base.meminfo.free - MEMMAP_PER_BLOCK - new_tables * PAGE_SIZE
        );
        assert!(fx.mm.blocks[&id].altmap.is_none());
        let (pa, size) = vmemmap_backing(&fx.mm.pt, spfn).expect("vmemmap mapped");
        assert_eq!(size, 2 * MIB);
        assert_eq!(block_of(Pfn::down(pa)), BOOT, "struct pages from boot RAM");
    }
    assert_eq!(
        fx.mm.pt.translate((start + 0x1234).to_virt()).map(|t| t.0),
        Some(start + 0x1234)
    );
    assert_eq!(
        fx.mm
            .pt
            .translate((start + BLOCK - 8).to_virt())
            .map(|t| t.0),
        Some(start + BLOCK - 8)
    );

    fx.mm.online_block(id, zone).expect("online");
    let hosted = if memmap_on_memory {
        vmemmap_pages_per_block()
    } else {
        0
    };
    let mi = fx.mm.meminfo();
    assert_eq!(block_state(&fx.mm, id), Some(BlockState::Online(zone)));
    assert_eq!(mi.total, base.meminfo.total + BLOCK - hosted * PAGE_SIZE);
    assert_eq!(mi.free, probed.meminfo.free + BLOCK - hosted * PAGE_SIZE);
    let z = zone.buddy_index().unwrap();
    assert_eq!(
        fx.mm.buddy.lock().managed(zone),
        base.managed[z] + BLOCK_PAGES - hosted
    );
    for pfn in Pfn::range(spfn, epfn) {
        let p = fx.mm.page(pfn).unwrap();
        let flags = PageFlags::VMEMMAP_SELF_HOSTED | PageFlags::ALTMAP_BACKED;
        assert_eq!(p.has(flags), pfn < spfn + hosted, "pfn {pfn:#x}");
    }
    // The self-hosted struct pages never enter the buddy allocator.
    for pfn in Pfn::range(spfn, spfn + hosted) {
        assert!(
            !fx.mm.buddy.lock().is_free(pfn),
            "self-hosted pfn {pfn:#x} is free"
        );
    }
    if hosted != 0 {
        assert!(matches!(
            fx.mm.buddy.lock().check_free(spfn, 0),
            Err(BadFree::NeverBuddy(_))
        ));
        assert!(fx.mm.buddy.lock().is_free(spfn + hosted));
    }

    fx.mm.offline_block(id).expect("offline");
    assert_same("after offline", &snap(&fx.mm), &probed);
    // What `page PFN` and every scan see: reserved, no longer online.
    for pfn in [spfn + hosted, spfn + BLOCK_PAGES / 2 + 1, epfn - 1] {
        // SAFETY: the block is present, its vmemmap populated.
        let flags = unsafe { fx.mm.memmap.read(pfn) }.flags();
        assert!(
            flags.contains(PageFlags::RESERVED) && !flags.contains(PageFlags::ONLINE),
            "{pfn:#x} after offline: {flags:?}"
        );
    }

    fx.mm.remove_memory(start, BLOCK).expect("remove");
    // Every altmap page came back, so nothing to warn about.
    assert!(!logged(&format!(
        "memory{id}: 0 altmap pages not given back"
    )));
    assert_same("after remove", &snap(&fx.mm), &base);
    assert_eq!(fx.mm.pt.translate(start.to_virt()), None);
    assert_eq!(fx.mm.pt.translate(spfn.page_va()), None);
    assert_eq!(fx.mm.pt.translate((epfn - 1).page_va()), None);
    let ev = fx.mm.events;
    assert_eq!(
        (ev.hotplug_add, ev.hotplug_remove, ev.online, ev.offline),
        (
            events.hotplug_add + 1,
            events.hotplug_remove + 1,
            events.online + 1,
            events.offline + 1
        )
    );
}

#[test]
fn cycle_one_block_returns_to_the_start() {
    for id in [HOT_FIRST, 16, HOT_END - 1] {
        for mom in [false, true] {
            for zone in Zone::BUDDY_ZONES {
                cycle_one_block(id, mom, zone);
            }
        }
    }
}

/// Several blocks at once across the GiB line, mixed `memmap_on_memory`,
/// removed in another order than added: still exactly the start.
#[test]
fn cycle_many_blocks_returns_to_the_start() {
    let mut fx = boot();
    let base = snap(&fx.mm);
    fx.mm.memmap_on_memory = true;
    fx.mm.add_memory(start_of(14), 2 * BLOCK).unwrap();
    fx.mm.memmap_on_memory = false;
    fx.mm.add_memory(start_of(16), 3 * BLOCK).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + 1);
    let mi = fx.mm.meminfo();
    assert_eq!(mi.vmemmap, base.meminfo.vmemmap + 3 * MEMMAP_PER_BLOCK);
    assert_eq!(mi.vmemmap_altmap, 2 * MEMMAP_PER_BLOCK);
    for (id, zone) in [
        (14, Zone::Movable),
        (15, Zone::Normal),
        (16, Zone::Normal),
        (18, Zone::Movable),
    ] {
        fx.mm.online_block(id, zone).unwrap();
    }
    // Some churn through the new memory.
    let got: Vec<Pfn> = (0..64)
        .map(|i| {
            let zone = if i % 2 == 0 {
                Zone::Movable
            } else {
                Zone::Normal
            };
            fx.mm.buddy.lock().alloc(i % 3, zone).unwrap()
        })
        .collect();
    for (i, pfn) in got.into_iter().enumerate().rev() {
        assert!(fx.mm.buddy.lock().free(pfn, i as u32 % 3));
    }
    for id in [18, 14, 16, 15] {
        fx.mm.offline_block(id).unwrap();
    }
    // The last block of the second GiB keeps its table until it goes.
    fx.mm.remove_memory(start_of(16), BLOCK).unwrap();
    fx.mm.remove_memory(start_of(18), BLOCK).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + 1);
    fx.mm.remove_memory(start_of(17), BLOCK).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES);
    fx.mm.remove_memory(start_of(14), 2 * BLOCK).unwrap();
    assert_same("after removing everything", &snap(&fx.mm), &base);
}

/// A multi-block hot-add maps its linear map in one walk with contiguous
/// groups of 2 MiB blocks (4K: 16 x 2 MiB, within one memory block), and
/// removing one block leaves its neighbours' groups whole. An add counts
/// its blocks and logs one line for the range.
#[test]
fn hot_added_linear_map_is_contiguous_within_each_block() {
    let mut fx = boot();
    let added = fx.mm.events.hotplug_add;
    let (s, e) = (start_of(19), start_of(20) - 1);
    fx.mm.add_memory(start_of(19), BLOCK).expect("probe");
    assert!(logged(&format!("memory19: added {s:#x}-{e:#x}")));
    let (first, n) = (15, 3);
    fx.mm.add_memory(start_of(first), n * BLOCK).expect("probe");
    let (s, e) = (start_of(first), start_of(first + n) - 1);
    assert!(logged(&format!("memory15-17: added {s:#x}-{e:#x}")));
    assert_eq!(fx.mm.events.hotplug_add, added + 1 + n);
    let leaves = |mm: &MemorySystem<ArenaTranslation>, id: u64| {
        let r = block_range(id);
        let mut v = Vec::new();
        let range = VaRange::new(r.base.to_virt(), r.end().to_virt());
        mm.pt
            .for_each_leaf(range, |va, size, _, d| v.push((va, size, d.0)));
        v
    };
    let before: Vec<_> = (first..first + n).map(|id| leaves(&fx.mm, id)).collect();
    for (i, l) in before.iter().enumerate() {
        assert_eq!(
            l.len() as u64,
            BLOCK / (2 << 20),
            "memory{}",
            first + i as u64
        );
        for &(va, size, d) in l {
            let d = crate::mm::pgtable::Descriptor(d);
            assert!(size == 2 << 20 && d.is_contiguous(), "{va:#x}: {d:?}");
        }
    }
    fx.mm
        .remove_memory(start_of(first + 1), BLOCK)
        .expect("remove the middle block");
    assert!(leaves(&fx.mm, first + 1).is_empty());
    assert_eq!(leaves(&fx.mm, first), before[0]);
    assert_eq!(leaves(&fx.mm, first + 2), before[2]);
}

/// Removing a block invalidates the TLB once, for its linear map and its
/// struct pages together, before the vmemmap backing is freed (the host
/// trace panics on a free that no invalidation covered); a table the
/// removal empties adds one more, for the walk through it.
#[test]
fn a_block_remove_invalidates_once() {
    use crate::arch::trace::{invalidations, unflushed};
    for memmap_on_memory in [false, true] {
        let mut fx = boot();
        fx.mm.memmap_on_memory = memmap_on_memory;
        fx.mm.add_memory(start_of(16), 2 * BLOCK).unwrap();
        let (calls, tables) = (invalidations(), fx.mm.pt.stats.tables);
        fx.mm.remove_memory(start_of(16), BLOCK).unwrap();
        assert_eq!(
            fx.mm.pt.stats.tables, tables,
            "memmap_on_memory={memmap_on_memory}"
        );
        assert_eq!(
            invalidations() - calls,
            1,
            "memmap_on_memory={memmap_on_memory}"
        );
        assert_eq!(unflushed(), 0, "memmap_on_memory={memmap_on_memory}");
        let calls = invalidations();
        fx.mm.remove_memory(start_of(17), BLOCK).unwrap();
        let freed = tables - fx.mm.pt.stats.tables;
        assert!(freed > 0, "memmap_on_memory={memmap_on_memory}");
        assert!(
            invalidations() - calls <= 1 + freed,
            "memmap_on_memory={memmap_on_memory}"
        );
        assert_eq!(unflushed(), 0, "memmap_on_memory={memmap_on_memory}");
    }
}

/// A removal of several blocks in one call takes one invalidation for all
/// of them (the linear map of the range, then the struct pages of the run
/// in one walk), where one call per block takes one each; blocks with
/// their struct pages on themselves (an altmap each) take one per block.
#[test]
fn a_range_remove_invalidates_once_per_altmap() {
    use crate::arch::trace::{invalidations, unflushed};
    for memmap_on_memory in [false, true] {
        let mut fx = boot();
        fx.mm.memmap_on_memory = memmap_on_memory;
        // A neighbour stays, so that the tables stay too.
        fx.mm.add_memory(start_of(14), 4 * BLOCK).unwrap();
        let (calls, tables) = (invalidations(), fx.mm.pt.stats.tables);
        let before = fx.mm.meminfo();
        fx.mm.remove_memory(start_of(14), 3 * BLOCK).unwrap();
        assert_eq!(
            fx.mm.pt.stats.tables, tables,
            "memmap_on_memory={memmap_on_memory}"
        );
        let want = if memmap_on_memory { 3 } else { 1 };
        assert_eq!(
            invalidations() - calls,
            want,
            "memmap_on_memory={memmap_on_memory}"
        );
        assert_eq!(unflushed(), 0);
        assert!((14..17).all(|id| !fx.mm.blocks.contains_key(&id)));
        assert!(fx.mm.blocks.contains_key(&17));
        assert_eq!(fx.mm.warnings, UnmapWarnings::default());
        // Added again: the memory back as it was.
        fx.mm.add_memory(start_of(14), 3 * BLOCK).unwrap();
        assert_eq!(fx.mm.meminfo(), before);
        fx.mm.remove_memory(start_of(14), 4 * BLOCK).unwrap();
        assert_eq!(unflushed(), 0);
    }
}
