//! The page allocator's entry points given bad arguments on a booted
//! system (issue 10): each call is refused, counted in `buddy_bad_free`
//! and changes nothing else, `/proc/meminfo` included.

use super::*;

#[test]
fn allocator_misuse_is_refused_counted_and_changes_nothing() {
    let mut fx = boot();
    // memory(HOT_FIRST) online Movable with a page in use, the next one
    // offline (its struct pages garbage), the one after
    // online with its memmap on itself.
    let (a, b, c) = (HOT_FIRST, HOT_FIRST + 1, HOT_FIRST + 2);
    fx.mm.add_memory(start_of(a), 2 * BLOCK).unwrap();
    fx.mm.online_block(a, Zone::Movable).unwrap();
    fx.mm.memmap_on_memory = true;
    fx.mm.add_memory(start_of(c), BLOCK).unwrap();
    fx.mm.online_block(c, Zone::Movable).unwrap();
    let user = fx
        .mm
        .buddy
        .lock()
        .alloc(0, Zone::Movable)
        .expect("a user page");

    type Op = fn(&mut MemorySystem<ArenaTranslation>, Pfn);
    let cases: &[(&str, Op)] = &[
        ("online an online block again", |m, _| {
            let (s, e) = block_pfns(HOT_FIRST);
            m.buddy.lock().online_pages(s, e - s, Zone::Movable, 0);
        }),
        ("online boot memory again", |m, _| {
            let (s, e) = block_pfns(BOOT);
            m.buddy
                .lock()
                .online_pages(s + BOOT_RESERVED, e - s - BOOT_RESERVED, Zone::Normal, 0);
        }),
        ("online from inside an online block", |m, _| {
            let (s, _) = block_pfns(HOT_FIRST);
            m.buddy.lock().online_pages(s + 3, 5, Zone::Movable, 0);
        }),
        ("online across the end of an online block", |m, _| {
            let (_, e) = block_pfns(HOT_FIRST + 2);
            m.buddy.lock().online_pages(e - 7, 14, Zone::Normal, 0);
        }),
        ("online past the end of memory", |m, _| {
            m.buddy
                .lock()
                .online_pages(Pfn::new(u64::MAX - 3), 8, Zone::Movable, 0);
        }),
        ("split a free page", |m, user| {
            m.buddy.lock().split_page(user + 1, 0)
        }),
        ("split with the wrong order", |m, user| {
            m.buddy.lock().split_page(user, 1)
        }),
        ("free outside the memmap", |m, _| {
            m.buddy.lock().free(Pfn::new(u64::MAX - 1), 1);
        }),
        ("end an isolation never begun", |m, _| {
            m.offline_abort(HOT_FIRST);
        }),
        ("end an isolation of an offline block", |m, _| {
            m.offline_abort(HOT_FIRST + 1);
        }),
    ];
    for (what, op) in cases {
        let before = snap(&fx.mm);
        op(&mut fx.mm, user);
        let mut after = snap(&fx.mm);
        assert_eq!(after.bad_frees, before.bad_frees + 1, "{what}");
        after.bad_frees = before.bad_frees;
        assert_same(what, &after, &before);
    }
    // Everything still works: the offline block onlines, all goes back.
    assert!(fx.mm.free(user, 0));
    fx.mm.online_block(b, Zone::Movable).unwrap();
    for id in [a, b, c] {
        fx.mm.offline_block(id).unwrap();
    }
    fx.mm.remove_memory(start_of(a), 3 * BLOCK).unwrap();
    assert_eq!(fx.mm.buddy.lock().stats().bad_frees, cases.len() as u64);
}
