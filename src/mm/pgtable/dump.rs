//! `kernel_page_tables` in the format of Linux's arm64 ptdump
//! (arch/arm64/mm/ptdump.c): runs of entries with the same level and
//! attributes, holes included, between region markers.

use core::fmt::{self, Write};

use super::descriptor::{Attributes, Descriptor};
use super::walker::{chunks, PageTable, Translation};
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::granule::Granule;
use crate::mm::layout::Marker;

/// Linux's `pte_bits`: (mask, value, text when set, text when clear).
const BITS: &[(u64, u64, &str, &str)] = &[
    (Attributes::VALID.bits(), Attributes::VALID.bits(), " ", "F"),
    (
        Attributes::USER.bits(),
        Attributes::USER.bits(),
        "USR",
        "   ",
    ),
    (
        Attributes::READ_ONLY.bits(),
        Attributes::READ_ONLY.bits(),
        "ro",
        "RW",
    ),
    (Attributes::PXN.bits(), Attributes::PXN.bits(), "NX", "x "),
    (
        Attributes::INNER_SHAREABLE.bits(),
        Attributes::INNER_SHAREABLE.bits(),
        "SHD",
        "   ",
    ),
    (
        Attributes::ACCESSED.bits(),
        Attributes::ACCESSED.bits(),
        "AF",
        "  ",
    ),
    (
        Attributes::NON_GLOBAL.bits(),
        Attributes::NON_GLOBAL.bits(),
        "NG",
        "  ",
    ),
    (
        Attributes::CONTIGUOUS.bits(),
        Attributes::CONTIGUOUS.bits(),
        "CON",
        "   ",
    ),
    (
        Attributes::TABLE_OR_PAGE.bits(),
        Attributes::TABLE_OR_PAGE.bits(),
        "   ",
        "BLK",
    ),
    (Attributes::UXN.bits(), Attributes::UXN.bits(), "UXN", "   "),
    (1 << 50, 1 << 50, "GP", "  "),
];

const MEM_TYPES: [&str; 3] = ["DEVICE/nGnRE", "MEM/NORMAL", "MEM/NORMAL-NC"];

fn level_name<G: Granule>(level: usize) -> &'static str {
    // Folded levels take no name: the first level is always the PGD.
    if level == G::START_LEVEL {
        "PGD"
    } else {
        ["PGD", "PUD", "PMD", "PTE"][level]
    }
}

struct State<'m, W> {
    out: W,
    markers: &'m [Marker],
    next_marker: usize,
    /// Whether a run has begun (Linux starts with `level == -1`).
    started: bool,
    start: u64,
    level: usize,
    attrs: Option<u64>,
}

impl<W: Write> State<'_, W> {
    fn flush<G: Granule>(&mut self, end: u64) -> fmt::Result {
        write!(self.out, "0x{:016x}-0x{:016x}   ", self.start, end)?;
        let mut delta = end.wrapping_sub(self.start) >> 10;
        let mut unit = 0;
        while delta & 1023 == 0 && unit < 5 && delta != 0 {
            delta >>= 10;
            unit += 1;
        }
        write!(
            self.out,
            "{:>9}{} {}",
            delta,
            ['K', 'M', 'G', 'T', 'P', 'E'][unit],
            level_name::<G>(self.level)
        )?;
        if let Some(bits) = self.attrs {
            for &(mask, val, set, clear) in BITS {
                write!(
                    self.out,
                    " {}",
                    if bits & mask == val { set } else { clear }
                )?;
            }
            let t = ((bits >> 2) & 7) as usize;
            write!(self.out, " {}", MEM_TYPES.get(t).unwrap_or(&"MEM/?"))?;
        }
        writeln!(self.out)
    }

    /// Linux's `note_page`: extend the current run or print it.
    fn note<G: Granule>(&mut self, addr: u64, level: usize, attrs: Option<u64>) -> fmt::Result {
        let crosses = self
            .markers
            .get(self.next_marker)
            .is_some_and(|m| addr >= m.addr);
        if !self.started || attrs != self.attrs || level != self.level || crosses {
            // The first entry only opens a run: there is nothing to print yet.
            if self.started {
                self.flush::<G>(addr)?;
            }
            while self
                .markers
                .get(self.next_marker)
                .is_some_and(|m| addr >= m.addr)
            {
                writeln!(
                    self.out,
                    "---[ {} ]---",
                    self.markers[self.next_marker].name
                )?;
                self.next_marker += 1;
            }
            self.start = addr;
            self.level = level;
            self.attrs = attrs;
            self.started = true;
        }
        Ok(())
    }
}

impl<T: Translation, G: Granule> PageTable<T, G> {
    /// Writes the ptdump of `[markers[0].addr, markers.last().addr)`.
    pub fn dump(&self, markers: &[Marker], out: impl Write) -> fmt::Result {
        let (first, last) = (markers[0].addr, markers[markers.len() - 1].addr);
        let mut st = State {
            out,
            markers,
            next_marker: 1,
            started: false,
            start: first,
            level: G::START_LEVEL,
            attrs: None,
        };
        writeln!(st.out, "---[ {} ]---", markers[0].name)?;
        let (start, end) = (VirtAddr::new(first), VirtAddr::new(last));
        self.dump_level(&mut st, self.root_pa(), G::START_LEVEL, start, end)?;
        st.note::<G>(last, G::START_LEVEL, Some(u64::MAX))?;
        Ok(())
    }

    fn dump_level<W: Write>(
        &self,
        st: &mut State<W>,
        table: PhysAddr,
        level: usize,
        start: VirtAddr,
        end: VirtAddr,
    ) -> fmt::Result {
        for (addr, next) in chunks(start, end, G::level_size(level)) {
            let d: Descriptor = self.read(table, G::index(addr.as_u64(), level));
            if d.is_table(level) {
                self.dump_level(st, d.output_address(), level + 1, addr, next)?;
            } else {
                let attrs = d.is_valid().then(|| d.attrs().bits());
                st.note::<G>(addr.as_u64(), level, attrs)?;
            }
        }
        Ok(())
    }
}
