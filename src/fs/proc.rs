//! `/proc`: meminfo, iomem, buddyinfo, zoneinfo, vmstat.

use core::fmt::Write;

use super::Files;
use crate::error::Result;
use crate::mm::layout::{MAX_ORDER, PAGE_SIZE};
use crate::mm::page::Zone;
use crate::mm::pgtable::Translation;
use crate::mm::system::MemInfo;
use crate::mm::vmstat::ZoneInfo;

/// Linux's layout: `MemTotal`, `MemFree`, `MemAvailable` (`available`
/// bytes), then the rest of `info`.
pub fn write_meminfo(info: &MemInfo, available: u64, out: &mut dyn Write) -> Result<()> {
    let line = |out: &mut dyn Write, name: &str, bytes: u64| {
        // `Name:` padded to 16 columns, without building the label.
        let pad = 16usize.saturating_sub(name.len() + 1);
        writeln!(out, "{name}:{:pad$}{:>8} kB", "", bytes >> 10)
    };
    for (name, bytes) in MemInfo::FIELDS.iter().zip(info.values()) {
        line(out, name, bytes)?;
        if *name == "MemFree" {
            line(out, "MemAvailable", available)?;
        }
    }
    Ok(())
}

pub fn meminfo<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    write_meminfo(&f.mm.meminfo(), f.mm.mem_available() * PAGE_SIZE, out)
}

pub fn iomem<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    Ok(f.mm.iomem().show(out)?)
}

/// Linux's format: free blocks per order, for each populated zone of
/// each online node.
pub fn buddyinfo<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    let buddy = f.mm.buddy();
    for nid in f.mm.node_online().iter() {
        for zone in Zone::BUDDY_ZONES
            .into_iter()
            .filter(|&z| buddy.managed_node(nid, z) > 0)
        {
            write!(out, "Node {nid}, zone {:>8} ", zone.name())?;
            for order in 0..=MAX_ORDER {
                write!(out, "{:>6} ", buddy.nr_free_blocks_node(nid, zone, order))?;
            }
            writeln!(out)?;
        }
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
    let (memmap_boot, memmap) = mm.memmap_pages();
    let anon = mm.anon();
    let rows: [(&str, u64); 21] = [
        ("nr_free_pages", mm.buddy().nr_free_total()),
        ("nr_page_table_pages", s.tables),
        ("nr_memmap_pages", memmap),
        ("nr_memmap_boot_pages", memmap_boot),
        ("nr_anon_pages", anon.nr_pages()),
        ("pgmigrate_success", anon.pgmigrate_success),
        ("pgmigrate_fail", anon.pgmigrate_fail),
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

/// Linux's node statistics that the kernel has, in Linux's order
/// (`node_stat_name`); the others are left out. The kernel's own pages
/// are not counted by node: all shown as node 0's.
fn node_stats<T: Translation>(f: &Files<T>, nid: usize) -> [(&'static str, u64); 4] {
    let slab = f.mm.meminfo().slab / PAGE_SIZE;
    let tables = f.mm.page_table().stats.tables;
    let own = |v| if nid == 0 { v } else { 0 };
    [
        ("nr_slab_reclaimable", 0),
        ("nr_slab_unreclaimable", own(slab)),
        ("nr_kernel_stack", 0),
        ("nr_page_table_pages", own(tables)),
    ]
}

/// Linux's zone statistics (`zone_stat_name`): only free pages are not 0.
fn zone_stats(z: &ZoneInfo) -> [(&'static str, u64); 11] {
    [
        ("nr_free_pages", z.free),
        ("nr_zone_inactive_anon", 0),
        ("nr_zone_active_anon", 0),
        ("nr_zone_inactive_file", 0),
        ("nr_zone_active_file", 0),
        ("nr_zone_unevictable", 0),
        ("nr_zone_write_pending", 0),
        ("nr_mlock", 0),
        ("nr_bounce", 0),
        ("nr_zspages", 0),
        ("nr_free_cma", 0),
    ]
}

/// Linux's `zoneinfo_show_print` for every zone of each online node: the
/// node's statistics under its first populated zone; watermarks, spans and
/// reserves for all; for populated zones the zone statistics, the per-CPU
/// pagesets (none are kept: count 0) and `start_pfn`.
pub fn zoneinfo<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    for nid in f.mm.node_online().iter() {
        zoneinfo_node(f, nid, out)?;
    }
    Ok(())
}

fn zoneinfo_node<T: Translation>(f: &Files<T>, nid: usize, out: &mut dyn Write) -> Result<()> {
    let mm = &*f.mm;
    let first_populated = mm.populated_zones_node(nid).next();
    for zone in Zone::ALL {
        let z = mm.zone_info_node(nid, zone);
        write!(out, "Node {nid}, zone {:>8}", zone.name())?;
        if first_populated == Some(zone) {
            write!(out, "\n  per-node stats")?;
            for (name, v) in node_stats(f, nid) {
                write!(out, "\n      {name:<12} {v}")?;
            }
        }
        write!(
            out,
            "\n  pages free     {}\n        boost    0\n        min      {}\n        low      {}\n        high     {}\n        promo    {}\n        spanned  {}\n        present  {}\n        managed  {}\n        cma      0",
            z.free, z.wmark.min, z.wmark.low, z.wmark.high, z.wmark.promo, z.spanned, z.present, z.managed
        )?;
        write!(out, "\n        protection: (")?;
        for (i, r) in z.lowmem_reserve.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(out, "{sep}{r}")?;
        }
        write!(out, ")")?;
        if z.present == 0 {
            writeln!(out)?;
            continue;
        }
        for (name, v) in zone_stats(&z) {
            write!(out, "\n      {name:<12} {v}")?;
        }
        write!(out, "\n  pagesets")?;
        for cpu in (0..64).filter(|c| f.cpus_online & (1 << c) != 0) {
            write!(
                out,
                "\n    cpu: {cpu}\n              count: 0\n              high:  0\n              batch: 1\n  vm stats threshold: 0"
            )?;
        }
        writeln!(
            out,
            "\n  node_unreclaimable:  0\n  start_pfn:           {}",
            z.start_pfn
        )?;
    }
    Ok(())
}
