//! Online and offline by parts: driver-owned blocks only partly plugged
//! (virtio-mem's sub-blocks). Every online, the driver's or a user's,
//! hands the buddy allocator only plugged sub-blocks; sub-blocks come and
//! go while the block is online or offline; struct pages never move.

use super::*;
use crate::mm::system::PlugMask;

const SUB: u64 = (2 << 20) / PAGE_SIZE;
const OWNER: &str = "System RAM (test driver)";

/// A driver-managed block at `id` with sub-blocks `plugged` of 2 MiB.
fn add_driver_block(fx: &mut Fx, id: u64, plugged: &[u64]) {
    let mut mask = PlugMask::new(SUB * PAGE_SIZE).unwrap();
    for &i in plugged {
        mask.set(i, true);
    }
    fx.mm
        .add_memory_driver_managed(None, start_of(id), BLOCK, OWNER, mask)
        .expect("add");
}

fn free_pages_in(fx: &Fx, s: Pfn, e: Pfn) -> u64 {
    let mut n = 0;
    for zone in Zone::BUDDY_ZONES {
        fx.mm.buddy.lock().for_each_free_block(zone, |pfn, order| {
            let end = pfn + (1 << order);
            n += end.min(e).as_u64().saturating_sub(pfn.max(s).as_u64());
        });
    }
    n
}

#[test]
fn partly_plugged_blocks_grow_shrink_and_return_to_the_start() {
    for memmap_on_memory in [false, true] {
        let mut fx = boot();
        let base = snap(&fx.mm);
        let id = HOT_FIRST;
        let (spfn, epfn) = block_pfns(id);
        fx.mm.memmap_on_memory = memmap_on_memory;
        add_driver_block(&mut fx, id, &[0, 1, 2]);
        let own = if memmap_on_memory {
            MEMMAP_PER_BLOCK / PAGE_SIZE
        } else {
            0
        };
        assert_eq!(fx.mm.blocks[&id].altmap.is_some(), memmap_on_memory);
        // Three sub-blocks online, the rest logically offline.
        fx.mm.online_block(id, Zone::Movable).unwrap();
        assert_eq!(fx.mm.buddy.lock().managed(Zone::Movable), 3 * SUB - own);
        assert_eq!(free_pages_in(&fx, spfn + 3 * SUB, epfn), 0);
        // Grow by two sub-blocks, shrink by one.
        fx.mm.plug_sub_blocks(id, 3, 2).unwrap();
        assert_eq!(fx.mm.buddy.lock().managed(Zone::Movable), 5 * SUB - own);
        // Plugged sub-blocks cannot be plugged again, nor anything outside.
        let before = snap(&fx.mm);
        assert_eq!(errno(fx.mm.plug_sub_blocks(id, 4, 2)), Errno::EINVAL);
        assert_eq!(errno(fx.mm.plug_sub_blocks(id, 63, 2)), Errno::EINVAL);
        assert_eq!(errno(fx.mm.unplug_sub_blocks(id, 6, 1)), Errno::EINVAL);
        // No sub-blocks at all is no request either.
        assert_eq!(errno(fx.mm.plug_sub_blocks(id, 5, 0)), Errno::EINVAL);
        assert_eq!(errno(fx.mm.unplug_sub_blocks(id, 0, 0)), Errno::EINVAL);
        assert_same("refused plug_sub_blocks", &snap(&fx.mm), &before);
        // A page in use keeps its sub-block: EBUSY, nothing changed.
        let used = fx.mm.buddy.lock().alloc(0, Zone::Movable).unwrap();
        let sub = (used - spfn) / SUB;
        let before = snap(&fx.mm);
        assert_eq!(errno(fx.mm.unplug_sub_blocks(id, sub, 1)), Errno::EBUSY);
        assert_same("busy unplug_sub_blocks", &snap(&fx.mm), &before);
        assert!(fx.mm.buddy.lock().free(used, 0));
        fx.mm.unplug_sub_blocks(id, 4, 1).unwrap();
        assert_eq!(fx.mm.buddy.lock().managed(Zone::Movable), 4 * SUB - own);
        // The sub-block with the struct pages never goes while the block
        // is present.
        if memmap_on_memory {
            assert_eq!(errno(fx.mm.unplug_sub_blocks(id, 0, 1)), Errno::EINVAL);
            // The next one starts where they end: it may go.
            assert_eq!(
                fx.mm.blocks[&id].altmap.as_ref().unwrap().next_pfn(),
                spfn + SUB
            );
            fx.mm.unplug_sub_blocks(id, 1, 1).unwrap();
            fx.mm.plug_sub_blocks(id, 1, 1).unwrap();
        }
        // A user's offline skips what is logically offline; online gives
        // back only the plugged sub-blocks, in whatever zone.
        fx.mm.offline_block(id).unwrap();
        assert_eq!(fx.mm.buddy.lock().managed(Zone::Movable), 0);
        // Plugging into and unplugging from an offline block reach no
        // allocator.
        fx.mm.plug_sub_blocks(id, 10, 1).unwrap();
        fx.mm.unplug_sub_blocks(id, 3, 1).unwrap();
        assert_eq!(fx.mm.meminfo().total, base.meminfo.total);
        fx.mm.online_block(id, Zone::Normal).unwrap();
        let plugged = [0, 1, 2, 10];
        assert_eq!(
            fx.mm.meminfo().total - base.meminfo.total,
            (plugged.len() as u64 * SUB - own) * PAGE_SIZE
        );
        for i in 0..64 {
            let (s, e) = (spfn + i * SUB, spfn + (i + 1) * SUB);
            if !plugged.contains(&i) {
                assert_eq!(free_pages_in(&fx, s, e), 0, "sub-block {i}");
                let p = fx.mm.page(s).unwrap();
                assert!(p.has(PageFlags::LOGICALLY_OFFLINE), "sub-block {i}");
            }
        }
        // The console may not remove it; its driver may, once offline.
        assert_eq!(
            errno(fx.mm.remove_memory(start_of(id), BLOCK)),
            Errno::EBUSY
        );
        fx.mm.offline_block(id).unwrap();
        fx.mm
            .remove_memory_driver_managed(start_of(id), BLOCK, OWNER)
            .unwrap();
        assert_same(
            "partly plugged block, back to the start",
            &snap(&fx.mm),
            &base,
        );
    }
}

/// Struct pages go on the block only when its first sub-block holds them
/// and is plugged: 1 MiB sub-blocks (2 MiB of struct pages) keep them in
/// system RAM, as Linux's sub-block mode always does.
#[test]
fn struct_pages_live_only_in_plugged_sub_blocks() {
    let mut fx = boot();
    fx.mm.memmap_on_memory = true;
    let cases: [(u64, &[u64], bool); 3] = [
        (2 << 20, &[0], true),
        (2 << 20, &[1, 2], false),
        (1 << 20, &[0, 1, 2], false),
    ];
    for (sub, plugged, on_block) in cases {
        let mut mask = PlugMask::new(sub).unwrap();
        for &i in plugged {
            mask.set(i, true);
        }
        let id = HOT_FIRST;
        fx.mm
            .add_memory_driver_managed(None, start_of(id), BLOCK, OWNER, mask)
            .unwrap();
        assert_eq!(
            fx.mm.blocks[&id].altmap.is_some(),
            on_block,
            "{sub:#x} {plugged:?}"
        );
        fx.mm
            .remove_memory_driver_managed(start_of(id), BLOCK, OWNER)
            .unwrap();
    }
}
