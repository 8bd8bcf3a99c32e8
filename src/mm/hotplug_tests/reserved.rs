//! Memory the firmware reserves (the DT's `/memreserve/` and
//! `/reserved-memory`): `/proc/iomem` shows it as Linux does, and no
//! hot-add may take it.

use super::*;
use crate::mm::memblock::Memblock;

/// Linux's layout: `reserved` inside System RAM where boot RAM holds it,
/// at the top level where it is not boot RAM (`no-map`, held back).
#[test]
fn reservations_show_in_iomem_and_refuse_hot_add() {
    let mut fx = boot();
    let ram = [PhysRange::new(ARENA_BASE, ARENA_SIZE)];
    let boot_ram = [PhysRange::new(ARENA_BASE, BLOCK)];
    // In boot RAM; in held-back RAM (memory10); across the end of boot RAM;
    // outside any RAM (not shown).
    let inside = PhysRange::new(ARENA_BASE + 0x10_0000, 0x1000);
    let held = PhysRange::new(start_of(10) + 0x20_0000, 0x2000);
    let across = PhysRange::new(ARENA_BASE + BLOCK - 0x1000, 0x2000);
    let outside = PhysRange::new(PhysAddr::new(0x1000), 0x1000);
    for r in [inside, held, across, outside] {
        fx.mm.register_reserved(r, &ram, &boot_ram);
    }
    let want = "\
40000000-47ffffff : System RAM
  40100000-40100fff : reserved
  47fff000-47ffffff : reserved
48000000-48000fff : reserved
";
    assert!(iomem(&fx.mm).starts_with(want), "{}", iomem(&fx.mm));
    assert!(iomem(&fx.mm).contains("50200000-50201fff : reserved\n"));
    assert!(!iomem(&fx.mm).contains("00001000-"));
    let base = snap(&fx.mm);
    for (start, size) in [(start_of(10), BLOCK), (start_of(9), 3 * BLOCK)] {
        let e = fx.mm.add_memory(start, size).unwrap_err();
        assert_eq!(e.errno, Errno::EBUSY, "{e:?}");
        assert!(e.to_string().contains("reserved"), "{e}");
        let mask = super::super::system::PlugMask::full();
        let e = fx
            .mm
            .add_memory_driver_managed(None, start, size, "System RAM (virtio_mem)", mask)
            .unwrap_err();
        assert_eq!(e.errno, Errno::EBUSY);
        assert_same("refused hot-add", &snap(&fx.mm), &base);
    }
    // The blocks around it are still free to add.
    fx.mm.add_memory(start_of(11), BLOCK).unwrap();
}

/// The boot path as `init::setup` runs it: reservations reserved in
/// memblock never reach the page allocator (what `mem_init` gives it is
/// `for_each_free`), and `no-map` ones removed from memory are not even in
/// the linear map's list.
#[test]
fn reserved_and_no_map_memory_never_reach_the_allocator() {
    let mut m = Memblock::new();
    m.add_memory(ARENA_BASE, ARENA_SIZE).unwrap();
    let reserved = PhysRange::new(ARENA_BASE + 0x30_0000, 0x5000);
    let no_map = PhysRange::new(ARENA_BASE + 0x80_0000, 0x20_0000);
    m.reserve(reserved.base, reserved.size);
    m.remove(no_map.base, no_map.size).unwrap();
    let mut given = Vec::new();
    m.for_each_free(|s, e| given.push(PhysRange::from_bounds(s, e)));
    for g in &given {
        assert!(!g.overlaps(&reserved) && !g.overlaps(&no_map), "{g:?}");
    }
    assert!(m.memory().iter().all(|r| !r.overlaps(&no_map)));
    while let Some(pa) = m.alloc(PAGE_SIZE, PAGE_SIZE) {
        let page = PhysRange::new(pa, PAGE_SIZE);
        assert!(!page.overlaps(&reserved) && !page.overlaps(&no_map));
    }
}
