//! Bad input: the right errno, and nothing changes.

use super::*;

#[test]
fn bad_input_gets_the_right_errno_and_changes_nothing() {
    let mut fx = boot();
    // memory9 offline, memory10 offline with its memmap on itself, memory11
    // online Movable with a page in use, memory13 online Normal.
    fx.mm.add_memory(start_of(9), BLOCK).unwrap();
    fx.mm.memmap_on_memory = true;
    fx.mm.add_memory(start_of(10), BLOCK).unwrap();
    fx.mm.memmap_on_memory = false;
    fx.mm.add_memory(start_of(11), BLOCK).unwrap();
    fx.mm.online_block(11, Zone::Movable).unwrap();
    fx.mm.add_memory(start_of(13), BLOCK).unwrap();
    fx.mm.online_block(13, Zone::Normal).unwrap();
    let user = fx
        .mm
        .buddy
        .lock()
        .alloc(0, Zone::Movable)
        .expect("a user page");
    assert_eq!(block_of(user), 11);

    type Op = fn(&mut MemorySystem<ArenaTranslation>) -> Result<()>;
    let cases: &[(&str, Errno, Op)] = &[
        ("probe misaligned", Errno::EINVAL, |m| {
            m.add_memory(start_of(12) + PAGE_SIZE, BLOCK)
        }),
        ("probe half a block", Errno::EINVAL, |m| {
            m.add_memory(start_of(12), BLOCK / 2)
        }),
        ("probe a block and a page", Errno::EINVAL, |m| {
            m.add_memory(start_of(12), BLOCK + PAGE_SIZE)
        }),
        ("probe nothing", Errno::EINVAL, |m| {
            m.add_memory(start_of(12), 0)
        }),
        ("probe RAM not held back", Errno::EINVAL, |m| {
            m.add_memory(NOT_RAM, BLOCK)
        }),
        ("probe boot RAM", Errno::EEXIST, |m| {
            m.add_memory(ARENA_BASE, BLOCK)
        }),
        (
            "probe from boot RAM into held-back RAM",
            Errno::EEXIST,
            |m| m.add_memory(start_of(HOT_FIRST - 1), 2 * BLOCK),
        ),
        ("probe device memory", Errno::EBUSY, |m| {
            m.add_memory(DEV_BASE, BLOCK)
        }),
        ("probe into device memory", Errno::EBUSY, |m| {
            m.add_memory(start_of(HOT_END - 1), 2 * BLOCK)
        }),
        ("probe beyond PHYS_LIMIT", Errno::ERANGE, |m| {
            m.add_memory(PhysAddr::new(PHYS_LIMIT), BLOCK)
        }),
        ("probe across PHYS_LIMIT", Errno::ERANGE, |m| {
            m.add_memory(PhysAddr::new(PHYS_LIMIT - BLOCK), 2 * BLOCK)
        }),
        ("probe wrapping", Errno::ERANGE, |m| {
            m.add_memory(PhysAddr::new(align_down(u64::MAX, BLOCK)), BLOCK)
        }),
        ("probe present", Errno::EEXIST, |m| {
            m.add_memory(start_of(9), BLOCK)
        }),
        ("probe online", Errno::EEXIST, |m| {
            m.add_memory(start_of(11), BLOCK)
        }),
        ("probe absent then present", Errno::EEXIST, |m| {
            m.add_memory(start_of(12), 2 * BLOCK)
        }),
        ("online online", Errno::EINVAL, |m| {
            m.online_block(11, Zone::Normal)
        }),
        ("online boot", Errno::EINVAL, |m| {
            m.online_block(BOOT, Zone::Normal)
        }),
        ("online absent", Errno::ENOENT, |m| {
            m.online_block(12, Zone::Normal)
        }),
        (
            "offline offline",
            Errno::EINVAL,
            |m| Ok(m.offline_block(9)?),
        ),
        (
            "offline absent",
            Errno::ENOENT,
            |m| Ok(m.offline_block(12)?),
        ),
        ("offline with a page in use", Errno::EBUSY, |m| {
            Ok(m.offline_block(11)?)
        }),
        ("offline boot", Errno::EBUSY, |m| Ok(m.offline_block(BOOT)?)),
        ("begin offlining offline", Errno::EINVAL, |m| {
            m.offline_begin(9)
        }),
        ("begin offlining absent", Errno::ENOENT, |m| {
            m.offline_begin(12)
        }),
        ("begin offlining boot", Errno::EBUSY, |m| {
            m.offline_begin(BOOT)
        }),
        ("remove online", Errno::EBUSY, |m| {
            m.remove_memory(start_of(11), BLOCK)
        }),
        ("remove boot", Errno::EPERM, |m| {
            m.remove_memory(ARENA_BASE, BLOCK)
        }),
        ("remove absent", Errno::EINVAL, |m| {
            m.remove_memory(start_of(12), BLOCK)
        }),
        ("remove offline, offline, online", Errno::EBUSY, |m| {
            m.remove_memory(start_of(9), 3 * BLOCK)
        }),
        ("remove boot then offline", Errno::EPERM, |m| {
            m.remove_memory(ARENA_BASE, 2 * BLOCK)
        }),
        ("remove misaligned", Errno::EINVAL, |m| {
            m.remove_memory(start_of(9) + PAGE_SIZE, BLOCK)
        }),
        ("remove beyond PHYS_LIMIT", Errno::ERANGE, |m| {
            m.remove_memory(PhysAddr::new(PHYS_LIMIT), BLOCK)
        }),
        ("remove device memory", Errno::EINVAL, |m| {
            m.remove_memory(DEV_BASE, BLOCK)
        }),
        ("unmap unmapped devmem", Errno::EINVAL, |m| {
            m.memunmap_pages(0)
        }),
        ("map a devmem that is not", Errno::ENODEV, |m| {
            m.memremap_pages(7, DevMapKind::Dev)
        }),
    ];
    for &(what, want, op) in cases {
        let before = snap(&fx.mm);
        let events = fx.mm.events;
        let got = errno(op(&mut fx.mm));
        assert_eq!(got, want, "{what}");
        assert_same(what, &snap(&fx.mm), &before);
        assert_eq!(fx.mm.events, events, "{what}: events");
    }

    // Once the user lets go, the same offline works.
    assert!(fx.mm.buddy.lock().free(user, 0));
    fx.mm.offline_block(11).unwrap();
}

/// A device region not made of whole sections cannot be mapped.
#[test]
fn misaligned_device_memory_is_refused() {
    let mut fx = boot();
    let bar = PhysRange {
        base: NOT_RAM + 2 * MIB,
        size: BLOCK,
    };
    let id = fx
        .mm
        .register_device_memory(bar, "ivshmem", "ivshmem BAR 2");
    let before = snap(&fx.mm);
    assert_eq!(
        errno(fx.mm.memremap_pages(id, DevMapKind::Dev)),
        Errno::EINVAL
    );
    assert_eq!(
        errno(fx.mm.memremap_pages(id, DevMapKind::Mem)),
        Errno::EINVAL
    );
    assert_same("misaligned devmem", &snap(&fx.mm), &before);
}

/// arm64 Linux refuses to offline boot memory, busy or not, and so does
/// this kernel; nothing changes.
#[test]
fn boot_memory_is_never_offlined() {
    let mut fx = boot();
    let before = snap(&fx.mm);
    let e: crate::error::Error = fx.mm.offline_block(BOOT).unwrap_err().into();
    assert_eq!(e.errno, Errno::EBUSY);
    assert!(e.msg.contains("boot memory"), "{e}");
    let e = fx.mm.offline_begin(BOOT).unwrap_err();
    assert_eq!(e.errno, Errno::EBUSY);
    assert!(e.msg.contains("boot memory"), "{e}");
    assert_same("boot offline", &snap(&fx.mm), &before);
}
