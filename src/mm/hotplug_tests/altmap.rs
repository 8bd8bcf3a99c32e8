//! Altmaps: one used without `free_mapped`, one that runs out midway, one
//! with a reserve and padding; each goes back exactly.

use super::*;
use crate::mm::vmemmap::vmemmap_backing;

/// `unmap_hotplug_range` with an altmap but without `free_mapped` is a
/// caller bug: counted, not ignored, and the altmap untouched.
#[test]
fn altmap_without_free_mapped_is_counted() {
    let mut fx = boot();
    fx.mm.memremap_pages(fx.dev, DevMapKind::Dev).unwrap();
    let before = snap(&fx.mm);
    let mut altmap = VmemAltmap::new(Pfn::down(NOT_RAM), Pfn::down(NOT_RAM + BLOCK), 0, 512);
    let fresh = altmap.clone();
    let (va, end) = (NOT_RAM.to_virt(), (NOT_RAM + BLOCK).to_virt());
    let p = fx.mm.parts();
    let mut frames = p.frames;
    p.pt.unmap_hotplug_range(va, end, false, Some(&mut altmap), &mut frames, p.warnings);
    assert_eq!(fx.mm.warnings.altmap_without_free_mapped, 1);
    assert_eq!(altmap, fresh);
    let mut after = snap(&fx.mm);
    after.warnings = before.warnings;
    assert_same("altmap without free_mapped", &after, &before);
}

#[test]
fn altmap_exhausted_midway_rolls_back() {
    for (start, new_tables) in [(start_of(12), 0), (start_of(17), 1)] {
        let mut fx = boot();
        let base = snap(&fx.mm);
        let (spfn, epfn) = (Pfn::down(start), Pfn::down(start + BLOCK));
        // 100 pages where the block's struct pages need 512: no 2 MiB
        // block, and base pages run out after 100.
        let mut altmap = VmemAltmap::new(spfn, epfn, 0, 100);
        let fresh = altmap.clone();
        let e = fx.mm.arch_add_memory(start, BLOCK, Some(&mut altmap));
        assert_eq!(errno(e), Errno::ENOMEM);
        assert_eq!(altmap, fresh);
        assert_eq!((altmap.alloc, altmap.align, altmap.misuse), (0, 0, 0));
        assert_eq!(altmap.next_pfn(), spfn);
        assert_same("altmap exhausted", &snap(&fx.mm), &base);
        // With room for exactly 512 it works, and goes back exactly.
        let mut altmap = VmemAltmap::new(spfn, epfn, 0, 512);
        fx.mm
            .arch_add_memory(start, BLOCK, Some(&mut altmap))
            .unwrap();
        assert_eq!(altmap.alloc, 512);
        assert_eq!(fx.mm.pt.stats.tables, BOOT_TABLES + new_tables);
        assert_eq!(vmemmap_backing(&fx.mm.pt, spfn), Some((start, 2 * MIB)));
        // No system RAM but the tables. (The altmap is not the system's, so
        // meminfo cannot tell its pages from RAM: count free pages instead.)
        assert_eq!(
            fx.mm.buddy.lock().nr_free_total(),
            base.nr_free[0] + base.nr_free[1] - new_tables
        );
        fx.mm.arch_remove_memory(start, BLOCK, Some(&mut altmap));
        assert_eq!(altmap, VmemAltmap::new(spfn, epfn, 0, 512));
        assert_same("altmap cycle", &snap(&fx.mm), &base);
    }
}

/// A reserve at the start of the device shifts the struct pages up, and
/// misalignment is padding that goes back too.
#[test]
fn altmap_with_reserve_goes_back_exactly() {
    let mut fx = boot();
    let base = snap(&fx.mm);
    let start = start_of(12);
    let (spfn, epfn) = (Pfn::down(start), Pfn::down(start + BLOCK));
    let mut altmap = VmemAltmap::new(spfn, epfn, 3, 1024);
    let fresh = altmap.clone();
    fx.mm
        .arch_add_memory(start, BLOCK, Some(&mut altmap))
        .unwrap();
    assert_eq!(altmap.alloc, 512);
    let (pa, size) = vmemmap_backing(&fx.mm.pt, spfn).unwrap();
    assert_eq!(size, 2 * MIB);
    assert_eq!(pa, start + 2 * MIB, "naturally aligned past the reserve");
    assert_eq!(altmap.align, 512 - 3);
    fx.mm.arch_remove_memory(start, BLOCK, Some(&mut altmap));
    assert_eq!(altmap, fresh);
    assert_same("altmap with reserve", &snap(&fx.mm), &base);
}
