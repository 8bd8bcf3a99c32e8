//! Online and offline by parts: blocks only partly online (virtio-mem's
//! sub-blocks) grow, shrink and return to the start.

use super::*;

#[test]
fn partly_online_blocks_grow_shrink_and_return_to_the_start() {
    const SUB: u64 = (2 << 20) / PAGE_SIZE;
    for memmap_on_memory in [false, true] {
        let mut fx = boot();
        let base = snap(&fx.mm);
        let id = HOT_FIRST;
        let (spfn, epfn) = block_pfns(id);
        fx.mm.memmap_on_memory = memmap_on_memory;
        fx.mm.add_memory(start_of(id), BLOCK).expect("probe");
        let own = if memmap_on_memory {
            MEMMAP_PER_BLOCK / PAGE_SIZE
        } else {
            0
        };
        // Three sub-blocks online, the rest logically offline.
        fx.mm
            .online_block_partial(id, Zone::Movable, spfn + 3 * SUB)
            .unwrap();
        assert_eq!(fx.mm.buddy.managed(Zone::Movable), 3 * SUB - own);
        // Grow by two sub-blocks, shrink by one.
        fx.mm
            .online_block_pages(id, spfn + 3 * SUB, spfn + 5 * SUB)
            .unwrap();
        assert_eq!(fx.mm.buddy.managed(Zone::Movable), 5 * SUB - own);
        // Online pages cannot be onlined again, nor anything outside.
        let before = snap(&fx.mm);
        assert_eq!(
            errno(fx.mm.online_block_pages(id, spfn + 4 * SUB, spfn + 6 * SUB)),
            Errno::EINVAL
        );
        assert_eq!(
            errno(fx.mm.online_block_pages(id, epfn, epfn + SUB)),
            Errno::EINVAL
        );
        assert_same("refused online_block_pages", &snap(&fx.mm), &before);
        // A page in use keeps its sub-block: EBUSY, nothing changed.
        let used = fx.mm.buddy.alloc(0, Zone::Movable).unwrap();
        let sub = (used - spfn) / SUB;
        let before = snap(&fx.mm);
        assert_eq!(
            errno(
                fx.mm
                    .offline_block_pages(id, spfn + sub * SUB, spfn + (sub + 1) * SUB)
            ),
            Errno::EBUSY
        );
        assert_same("busy offline_block_pages", &snap(&fx.mm), &before);
        assert!(fx.mm.buddy.free(used, 0));
        fx.mm
            .offline_block_pages(id, spfn + 4 * SUB, spfn + 5 * SUB)
            .unwrap();
        assert_eq!(fx.mm.buddy.managed(Zone::Movable), 4 * SUB - own);
        // Offlining the block skips what is logically offline.
        fx.mm.offline_block(id).unwrap();
        fx.mm.remove_memory(start_of(id), BLOCK).unwrap();
        assert_same(
            "partly online block, back to the start",
            &snap(&fx.mm),
            &base,
        );
    }
}
