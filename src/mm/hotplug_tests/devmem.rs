//! Device memory (ZONE_DEVICE): `devmem map` with struct pages on the
//! device or in system RAM, device pages kept out of the buddy allocator,
//! and a table shared with hot-added RAM.

use super::*;
use crate::mm::buddy::BadFree;
use crate::mm::vmemmap::vmemmap_backing;

#[test]
fn devmem_map_dev_keeps_struct_pages_on_the_device() {
    let mut fx = boot();
    let base = snap(&fx.mm);
    let events = fx.mm.events;
    let (ds, de) = dev_pfns();
    fx.mm
        .memremap_pages(fx.dev, DevMapKind::Dev)
        .expect("devmem map --map=dev");
    // `devmem_map` in /proc/vmstat.
    assert_eq!(fx.mm.events.devmem_map, events.devmem_map + 1);
    let s = snap(&fx.mm);
    let mi = s.meminfo;
    // Its linear map is the second GiB's first: one PMD table, nothing else.
    assert_eq!(s.tables, base.tables + 1);
    assert_eq!(mi.vmemmap, base.meminfo.vmemmap);
    assert_eq!(mi.vmemmap_altmap, DEV_SIZE / 64);
    assert_eq!(mi.device_mem, DEV_SIZE);
    assert_eq!(mi.total, base.meminfo.total);
    assert_eq!(mi.free, base.meminfo.free - PAGE_SIZE);
    assert_eq!(s.nr_free, [base.nr_free[0] - 1, base.nr_free[1]]);
    let Some((DevMapKind::Dev, Some(a))) = &fx.mm.devmem[fx.dev].mapping else {
        panic!("not mapped on the device")
    };
    assert_eq!(a.alloc, (de - ds) * 64 / PAGE_SIZE);
    assert_eq!(a.next_pfn(), ds + a.alloc);
    assert_eq!(vmemmap_backing(&fx.mm.pt, ds), Some((DEV_BASE, 2 * MIB)));
    assert_eq!(
        vmemmap_backing(&fx.mm.pt, de - 1),
        Some((DEV_BASE + 2 * MIB, 2 * MIB))
    );
    for pfn in [ds, ds + 1, ds + 1023, ds + 1024, de - 1] {
        // SAFETY: mapped device memory.
        let p = unsafe { fx.mm.memmap.get(pfn) };
        assert_eq!(p.zone(), Some(Zone::Device));
        assert!(p.has(PageFlags::DEVICE));
        assert_eq!(p.private(), fx.dev as u64);
        assert_eq!(p.has(PageFlags::ALTMAP_BACKED), pfn < ds + 1024);
    }
    device_pages_never_enter_the_buddy(&mut fx);
    assert_eq!(
        errno(fx.mm.memremap_pages(fx.dev, DevMapKind::Mem)),
        Errno::EBUSY
    );
    assert_eq!(
        errno(fx.mm.memremap_pages(fx.dev + 1, DevMapKind::Dev)),
        Errno::ENODEV
    );
    let mut s2 = snap(&fx.mm);
    s2.bad_frees = s.bad_frees;
    assert_same("refused map", &s2, &s);

    fx.mm.memunmap_pages(fx.dev).expect("unmap");
    assert_eq!(fx.mm.events.devmem_unmap, events.devmem_unmap + 1);
    // Every altmap page came back, so nothing to warn about.
    let dev = fx.dev;
    assert!(!logged(&format!(
        "devmem {dev}: 0 altmap pages not given back"
    )));
    let mut after = snap(&fx.mm);
    assert_eq!(after.bad_frees, base.bad_frees + 2);
    after.bad_frees = base.bad_frees;
    assert_same("after devmem unmap", &after, &base);
    assert_eq!(fx.mm.pt.translate(DEV_BASE.to_virt()), None);
    assert_eq!(fx.mm.pt.translate(ds.page_va()), None);
    assert_eq!(errno(fx.mm.memunmap_pages(fx.dev)), Errno::EINVAL);
}

/// Freeing a device page to the buddy allocator is refused and counted, and
/// changes nothing else; handing the whole region over gives nothing.
fn device_pages_never_enter_the_buddy(fx: &mut Fx) {
    let (ds, de) = dev_pfns();
    let before = snap(&fx.mm);
    assert!(!fx.mm.buddy.lock().free(ds + 2048, 0));
    assert!(
        !fx.mm.buddy.lock().free(ds, 0),
        "an altmap-backed device page"
    );
    assert!(matches!(
        fx.mm.buddy.lock().check_free(de - 1, 0),
        Err(BadFree::NeverBuddy(_))
    ));
    assert_eq!(fx.mm.buddy.lock().free_range(ds, de, Zone::Normal), 0);
    let mut after = snap(&fx.mm);
    assert_eq!(after.bad_frees, before.bad_frees + 2);
    after.bad_frees = before.bad_frees;
    assert_same("refused device frees", &after, &before);
    assert!(Pfn::range(ds, de).all(|pfn| !fx.mm.buddy.lock().is_free(pfn)));
}

#[test]
fn devmem_map_mem_puts_struct_pages_in_system_ram() {
    let mut fx = boot();
    let base = snap(&fx.mm);
    fx.mm
        .memremap_pages(fx.dev, DevMapKind::Mem)
        .expect("devmem map --map=mem");
    let s = snap(&fx.mm);
    assert_eq!(s.tables, base.tables + 1);
    assert_eq!(s.meminfo.vmemmap, base.meminfo.vmemmap + DEV_SIZE / 64);
    assert_eq!(s.meminfo.vmemmap_altmap, 0);
    assert_eq!(s.meminfo.device_mem, DEV_SIZE);
    assert_eq!(s.meminfo.total, base.meminfo.total);
    assert_eq!(
        s.meminfo.free,
        base.meminfo.free - DEV_SIZE / 64 - PAGE_SIZE
    );
    assert!(matches!(
        fx.mm.devmem[fx.dev].mapping,
        Some((DevMapKind::Mem, None))
    ));
    device_pages_never_enter_the_buddy(&mut fx);
    fx.mm.memunmap_pages(fx.dev).expect("unmap");
    let mut after = snap(&fx.mm);
    after.bad_frees = base.bad_frees;
    assert_same("after devmem unmap", &after, &base);
}

/// Device memory and hot-added RAM share the second GiB's PMD table: it
/// goes only when both are gone.
#[test]
fn shared_table_is_freed_only_when_empty() {
    let mut fx = boot();
    let base = snap(&fx.mm);
    fx.mm.add_memory(start_of(17), BLOCK).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + 1);
    fx.mm.memremap_pages(fx.dev, DevMapKind::Dev).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + 1);
    fx.mm.remove_memory(start_of(17), BLOCK).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + 1);
    assert_eq!(
        fx.mm.pt.translate(DEV_BASE.to_virt()).map(|t| t.0),
        Some(DEV_BASE)
    );
    fx.mm.memunmap_pages(fx.dev).unwrap();
    assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES);
    assert_same("after both", &snap(&fx.mm), &base);
}
