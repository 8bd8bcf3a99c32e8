//! `/sys/kernel/debug`: the page-table dump, the vmemmap's backing, and
//! allocation fault injection.

use core::fmt::Write;

use super::Files;
use crate::err;
use crate::error::Result;
use crate::mm::addr::Pfn;
use crate::mm::layout::MARKERS;
use crate::mm::pgtable::Translation;
use crate::platform::cmdline::parse_u64;

pub fn kernel_page_tables<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    Ok(f.mm.page_table().dump(MARKERS, out)?)
}

pub fn vmemmap<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    f.mm.for_each_vmemmap_leaf(|va, size, pa, owner| {
        let (prefix, backing): (&str, &dyn core::fmt::Display) = match &owner {
            Some(o) => ("altmap:", o),
            None => ("", &"system"),
        };
        let _ = writeln!(
            out,
            "0x{va:016x}-0x{:016x} {:>6}K pfn {:#x} {prefix}{backing}",
            va + size,
            size >> 10,
            Pfn::down(pa)
        );
    });
    Ok(())
}

/// Like Linux's `fail-nth`: reads the pending countdown, 0 for none.
pub fn show_fail_nth_alloc<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    Ok(writeln!(
        out,
        "{}",
        f.mm.fail_nth_alloc().map_or(0, |n| n + 1)
    )?)
}

pub fn store_fail_nth_alloc<T: Translation>(f: &mut Files<T>, data: &str) -> Result<()> {
    let n = parse_u64(data).ok_or_else(|| err!(EINVAL, "not a number: {data:?}"))?;
    f.mm.set_fail_nth_alloc(n.checked_sub(1));
    Ok(())
}
