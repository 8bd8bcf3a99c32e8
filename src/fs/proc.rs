//! `/proc`: meminfo, iomem, buddyinfo, vmstat.

use alloc::format;
use core::fmt::Write;

use super::Files;
use crate::error::Result;
use crate::mm::layout::MAX_ORDER;
use crate::mm::page::Zone;
use crate::mm::pgtable::Translation;
use crate::mm::system::MemInfo;

pub fn write_meminfo(info: &MemInfo, out: &mut dyn Write) -> Result<()> {
    for (name, bytes) in MemInfo::FIELDS.iter().zip(info.values()) {
        writeln!(out, "{:<16}{:>8} kB", format!("{name}:"), bytes >> 10)?;
    }
    Ok(())
}

pub fn meminfo<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    write_meminfo(&f.mm.meminfo(), out)
}

pub fn iomem<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    Ok(f.mm.iomem().show(out)?)
}

/// Linux's format: free blocks per order, for each populated zone.
pub fn buddyinfo<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    let buddy = f.mm.buddy();
    for zone in Zone::BUDDY_ZONES
        .into_iter()
        .filter(|&z| buddy.managed(z) > 0)
    {
        write!(out, "Node 0, zone {:>8} ", zone.name())?;
        for order in 0..=MAX_ORDER {
            write!(out, "{:>6} ", buddy.nr_free_blocks(zone, order))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

pub fn vmstat<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    let mm = &*f.mm;
    let (e, s, w, b) = (
        mm.events(),
        mm.page_table().stats,
        mm.warnings(),
        mm.buddy().stats(),
    );
    let rows: [(&str, u64); 16] = [
        ("nr_free_pages", mm.buddy().nr_free_total()),
        ("nr_page_table_pages", s.tables),
        ("memory_hotplug_add", e.hotplug_add),
        ("memory_hotplug_remove", e.hotplug_remove),
        ("memory_online", e.online),
        ("memory_offline", e.offline),
        ("devmem_map", e.devmem_map),
        ("devmem_unmap", e.devmem_unmap),
        ("pgtable_alloc", s.tables_allocated),
        ("pgtable_free", s.tables_freed),
        ("tlb_kernel_invalidations", s.tlbi_ops),
        ("altmap_without_free_mapped", w.altmap_without_free_mapped),
        ("hotplug_reserved_page_free", w.reserved_page_freed),
        ("altmap_bad_free", w.altmap_bad_free),
        ("hotplug_partial_leaf_unmap", w.partial_leaf),
        ("buddy_bad_free", b.bad_frees),
    ];
    for (name, v) in rows {
        writeln!(out, "{name} {v}")?;
    }
    Ok(())
}
