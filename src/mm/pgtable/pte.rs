//! Single page entries, for anonymous mappings (`mm::anon`): reading one,
//! breaking it into a migration entry and making it again (migration's
//! break-before-make), and a lock-free read for the fault handler.

use super::descriptor::{Descriptor, OUTPUT_ADDRESS_MASK};
use super::walker::{PageTable, Translation};
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::granule::Granule;

/// Software bit 57 of an invalid descriptor: a migration entry.
const MIGRATION: u64 = 1 << 57;

impl Descriptor {
    /// Linux's migration entry: an invalid descriptor (the MMU reads no
    /// other bit of it) with software bit 57 set, keeping the address of
    /// the page being moved. A CPU that faults on it waits until the entry
    /// is made again.
    pub fn migration(pa: PhysAddr) -> Self {
        Self((pa.as_u64() & OUTPUT_ADDRESS_MASK) | MIGRATION)
    }

    pub fn is_migration(self) -> bool {
        !self.is_valid() && self.0 & MIGRATION != 0
    }
}

/// The page entry of `va` in the hierarchy rooted at `root`, read through
/// `trans` without any lock (the fault handler's walk, Linux's
/// `pte_offset_map` under `migration_entry_wait`): `None` where a table is
/// missing or a block maps it.
///
/// # Safety
/// Every table page reachable from `root` must be readable through
/// `trans`: table pages are only freed after a TLB invalidation that
/// follows the entry's removal, so a concurrent walk reads memory that is
/// still mapped (at worst a stale value, which its caller rereads).
pub unsafe fn read_pte<T: Translation, G: Granule>(
    trans: &T,
    root: PhysAddr,
    va: VirtAddr,
) -> Option<Descriptor> {
    let mut table = root;
    for level in G::START_LEVEL..4 {
        // SAFETY: the caller's promise; an aligned 64-bit load.
        let d = unsafe {
            trans
                .table_va(table)
                .add(G::index(va.as_u64(), level))
                .read_volatile()
        };
        if level == 3 {
            return Some(d);
        }
        if !d.is_table(level) {
            return None;
        }
        table = d.output_address();
    }
    None
}

impl<T: Translation, G: Granule> PageTable<T, G> {
    /// The table and index of `va`'s page entry, if tables reach it.
    fn pte_slot(&self, va: VirtAddr) -> Option<(PhysAddr, usize)> {
        let mut table = self.root_pa();
        for level in G::START_LEVEL..3 {
            let d = self.read(table, G::index(va.as_u64(), level));
            if !d.is_table(level) {
                return None;
            }
            table = d.output_address();
        }
        Some((table, G::index(va.as_u64(), 3)))
    }

    /// The page entry of `va` (valid or not), if tables reach it.
    pub fn pte(&self, va: VirtAddr) -> Option<Descriptor> {
        self.pte_slot(va).map(|(t, i)| self.read(t, i))
    }

    /// Break: replaces `va`'s valid page entry by the invalid `new` (a
    /// migration entry) and invalidates the TLB on every CPU, so that no
    /// CPU reaches the old page through it once this returns. `false`,
    /// nothing changed, where `va` has no valid page entry.
    pub fn break_pte(&mut self, va: VirtAddr, new: Descriptor) -> bool {
        let Some((table, index)) = self.pte_slot(va) else {
            return false;
        };
        let old = self.read(table, index);
        if !old.is_valid() {
            return false;
        }
        self.clear_to(table, index, 3, va, old, new);
        self.flush_range(va, va + G::PAGE_SIZE);
        true
    }

    /// Make: writes `new` (valid) over `va`'s invalid page entry and
    /// publishes it to the table walker. `false`, nothing changed, where
    /// the entry is valid or missing.
    pub fn make_pte(&mut self, va: VirtAddr, new: Descriptor) -> bool {
        let Some((table, index)) = self.pte_slot(va) else {
            return false;
        };
        if self.read(table, index).is_valid() {
            return false;
        }
        self.write(table, index, new);
        crate::arch::barrier::tables_written();
        true
    }
}
