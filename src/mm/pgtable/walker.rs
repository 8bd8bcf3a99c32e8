//! The walker proper: mapping with validation before mutation, translation
//! and walks over leaves and tables. Teardown (Linux's hotplug unmap) is in
//! `unmap.rs`, dumps in `dump.rs`.

use core::marker::PhantomData;

use super::descriptor::{Attributes, Descriptor, OUTPUT_ADDRESS_MASK};
use crate::arch;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::frame::FrameAllocator;
use crate::mm::granule::Granule;

/// How the walker reaches a table page given its physical address. In the
/// kernel this is the linear map (or the identity map during early boot); in
/// host tests it is an offset into a simulated arena.
pub trait Translation {
    fn table_va(&self, pa: PhysAddr) -> *mut Descriptor;
}

/// A half-open virtual range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaRange {
    pub start: VirtAddr,
    pub end: VirtAddr,
}

impl VaRange {
    pub const fn new(start: VirtAddr, end: VirtAddr) -> Self {
        Self { start, end }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// What leaves a mapping may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapHints {
    /// The largest leaf allowed (a page, a 2 MiB block, ...); blocks are
    /// used only where address and size alignment allow.
    pub largest_leaf: u64,
    /// Set the contiguous bit on whole, aligned groups of leaves.
    pub contiguous: bool,
}

impl MapHints {
    pub const fn pages() -> Self {
        Self {
            largest_leaf: 0,
            contiguous: false,
        }
    }

    pub const fn blocks(largest_leaf: u64) -> Self {
        Self {
            largest_leaf,
            contiguous: false,
        }
    }

    pub const fn with_contiguous(self) -> Self {
        Self {
            contiguous: true,
            ..self
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Address or size not page aligned, an empty range, or an output
    /// range beyond the 48-bit physical address space.
    Misaligned,
    /// Part of the range is mapped already (first such address).
    AlreadyMapped(VirtAddr),
    /// The frame allocator could not supply the table pages.
    NoMemory,
}

impl From<MapError> for crate::error::Error {
    fn from(e: MapError) -> Self {
        match e {
            MapError::NoMemory => {
                crate::err!(ENOMEM, "out of memory for page tables or struct pages")
            }
            MapError::AlreadyMapped(va) => crate::err!(EEXIST, "{va:#x} is mapped already"),
            MapError::Misaligned => crate::err!(EINVAL, "range not page aligned"),
        }
    }
}

/// Counters every test and `/proc/vmstat` lean on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Table pages in use, the root included (`PageTables` in meminfo).
    pub tables: u64,
    pub tables_allocated: u64,
    pub tables_freed: u64,
    /// TLB invalidation instructions issued on behalf of this table.
    pub tlbi_ops: u64,
}

/// A translation table hierarchy rooted at one table page.
pub struct PageTable<T: Translation, G: Granule> {
    root: PhysAddr,
    trans: T,
    pub stats: TableStats,
    /// Leaves cleared whose invalidation was left for the next one
    /// ([`remove_pgd_mapping_unflushed`](Self::remove_pgd_mapping_unflushed)).
    unflushed: Option<(VirtAddr, VirtAddr)>,
    _granule: PhantomData<G>,
}

/// Table pages reserved up front so that a mapping, once validated, cannot
/// fail halfway. Chained through their first descriptor.
pub(super) struct TablePool {
    head: Option<PhysAddr>,
    len: usize,
}

/// Yields `(addr, next)` for each level-`size` chunk of `[start, end)`:
/// the loop of Linux's walkers, `next` being their `p?d_addr_end(addr, end)`.
pub(super) fn chunks(
    start: VirtAddr,
    end: VirtAddr,
    size: u64,
) -> impl Iterator<Item = (VirtAddr, VirtAddr)> {
    let (mut addr, end) = (start.as_u64(), end.as_u64());
    core::iter::from_fn(move || {
        if addr >= end {
            return None;
        }
        let boundary = (addr | (size - 1)).wrapping_add(1);
        let next = if boundary == 0 || boundary > end {
            end
        } else {
            boundary
        };
        let chunk = (VirtAddr::new(addr), VirtAddr::new(next));
        addr = next;
        Some(chunk)
    })
}

impl<T: Translation, G: Granule> PageTable<T, G> {
    /// A new, empty hierarchy whose root comes from `frames`.
    pub fn new(trans: T, frames: &mut (impl FrameAllocator + ?Sized)) -> Option<Self> {
        let root = frames.alloc_pages(0)?;
        let mut pt = Self::from_root(trans, root);
        pt.zero_table(root);
        pt.stats.tables = 1;
        pt.stats.tables_allocated = 1;
        Some(pt)
    }

    /// Adopt an existing hierarchy (one table page counted: the root).
    pub fn from_root(trans: T, root: PhysAddr) -> Self {
        Self {
            root,
            trans,
            stats: TableStats {
                tables: 1,
                ..Default::default()
            },
            unflushed: None,
            _granule: PhantomData,
        }
    }

    pub fn root_pa(&self) -> PhysAddr {
        self.root
    }

    pub fn translation(&self) -> &T {
        &self.trans
    }

    /// Switch how table pages are reached (identity map to linear map).
    pub fn set_translation(&mut self, trans: T) {
        self.trans = trans;
    }

    pub(super) fn read(&self, table: PhysAddr, index: usize) -> Descriptor {
        // Cannot fire: every index in `pgtable` is `G::index` (masked to the
        // level's entries) or an entry of a range within one table.
        debug_assert!(index < G::ENTRIES);
        // SAFETY: `table` is a table page of this hierarchy and the
        // translation makes all of it accessible.
        unsafe { self.trans.table_va(table).add(index).read_volatile() }
    }

    pub(super) fn write(&mut self, table: PhysAddr, index: usize, d: Descriptor) {
        // Cannot fire: as in `read`.
        debug_assert!(index < G::ENTRIES);
        // SAFETY: as in `read`; single-copy atomic 64-bit store.
        unsafe { self.trans.table_va(table).add(index).write_volatile(d) }
    }

    /// Clears entry `index` of `table` (at `level`, covering `addr`), which
    /// the caller read as `old`, and reports what it pointed at, so that a
    /// free before the invalidation is caught (`arch::trace`).
    pub(super) fn clear(
        &mut self,
        table: PhysAddr,
        index: usize,
        level: usize,
        addr: VirtAddr,
        old: Descriptor,
    ) {
        self.clear_to(table, index, level, addr, old, Descriptor::EMPTY);
    }

    /// [`clear`](Self::clear), writing the invalid descriptor `new`.
    pub(super) fn clear_to(
        &mut self,
        table: PhysAddr,
        index: usize,
        level: usize,
        addr: VirtAddr,
        old: Descriptor,
        new: Descriptor,
    ) {
        // A valid `new` would skip break-before-make: refuse in release too.
        assert!(!new.is_valid(), "clear_to with a valid descriptor");
        self.write(table, index, new);
        if old.is_valid() {
            let span = G::level_size(level);
            let (kind, out_len) = if old.is_table(level) {
                (arch::trace::Cleared::Table, G::PAGE_SIZE)
            } else {
                (arch::trace::Cleared::Leaf, span)
            };
            let out = old.output_address().as_u64();
            arch::trace::cleared(addr.align_down(span).as_u64(), span, out, out_len, kind);
        }
    }

    /// Zeroes a table page no walker can reach yet (plain stores: the
    /// barrier that publishes it orders them).
    fn zero_table(&mut self, table: PhysAddr) {
        // SAFETY: a table page of this hierarchy (or about to become one),
        // all of it accessible through the translation; not yet linked, so
        // no other reference to it exists.
        unsafe { core::ptr::write_bytes(self.trans.table_va(table), 0, G::ENTRIES) }
    }

    pub(super) fn table_is_empty(&self, table: PhysAddr) -> bool {
        (0..G::ENTRIES).all(|i| !self.read(table, i).is_valid())
    }

    /// The descriptor that maps `va` and its level, if any leaf does.
    pub fn translate(&self, va: VirtAddr) -> Option<(PhysAddr, Descriptor, usize)> {
        let mut table = self.root;
        for level in G::START_LEVEL..4 {
            let d = self.read(table, G::index(va.as_u64(), level));
            if !d.is_valid() {
                return None;
            }
            if d.is_leaf(level) {
                let offset = va - va.align_down(G::level_size(level));
                return Some((d.output_address() + offset, d, level));
            }
            table = d.output_address();
        }
        None
    }

    /// Calls `f(va, size, level, descriptor)` for every valid leaf that
    /// overlaps `range`, in address order.
    pub fn for_each_leaf(
        &self,
        range: VaRange,
        mut f: impl FnMut(VirtAddr, u64, usize, Descriptor),
    ) {
        self.leaves_in(self.root, G::START_LEVEL, range.start, range.end, &mut f);
    }

    fn leaves_in(
        &self,
        table: PhysAddr,
        level: usize,
        start: VirtAddr,
        end: VirtAddr,
        f: &mut impl FnMut(VirtAddr, u64, usize, Descriptor),
    ) {
        let size = G::level_size(level);
        for (addr, next) in chunks(start, end, size) {
            let d = self.read(table, G::index(addr.as_u64(), level));
            if d.is_table(level) {
                self.leaves_in(d.output_address(), level + 1, addr, next, f);
            } else if d.is_valid() {
                f(addr.align_down(size), size, level, d);
            }
        }
    }

    /// Calls `f(level, table_pa)` for every table page, root first.
    pub fn for_each_table(&self, mut f: impl FnMut(usize, PhysAddr)) {
        self.tables_in(self.root, G::START_LEVEL, &mut f);
    }

    fn tables_in(&self, table: PhysAddr, level: usize, f: &mut impl FnMut(usize, PhysAddr)) {
        f(level, table);
        if level == 3 {
            return;
        }
        for i in 0..G::entries_at(level) {
            let d = self.read(table, i);
            if d.is_table(level) {
                self.tables_in(d.output_address(), level + 1, f);
            }
        }
    }

    fn leaf_fits(
        level: usize,
        addr: VirtAddr,
        next: VirtAddr,
        pa: PhysAddr,
        hints: MapHints,
    ) -> bool {
        if level == 3 {
            return true;
        }
        let size = G::level_size(level);
        G::block_allowed(level)
            && size <= hints.largest_leaf
            && next - addr == size
            && pa.is_aligned(size)
    }

    /// Maps `range` to physical memory from `pa` with `attrs`. Validates the
    /// whole range and reserves every table page it needs before writing
    /// anything: on error nothing has changed.
    pub fn map_range(
        &mut self,
        range: VaRange,
        pa: PhysAddr,
        attrs: Attributes,
        hints: MapHints,
        frames: &mut (impl FrameAllocator + ?Sized),
    ) -> Result<(), MapError> {
        let page = G::PAGE_SIZE;
        // A stale entry for the range could outlive its new mapping.
        self.flush_pending();
        if range.is_empty()
            || !range.start.is_aligned(page)
            || !range.end.is_aligned(page)
            || !pa.is_aligned(page)
        {
            return Err(MapError::Misaligned);
        }
        // A descriptor holds output bits 47..12 only: anything above would be
        // silently dropped and map the wrong physical memory.
        if pa
            .checked_add(range.len())
            .is_none_or(|end| end.as_u64() > (OUTPUT_ADDRESS_MASK | (page - 1)) + 1)
        {
            return Err(MapError::Misaligned);
        }
        let needed = self.count_missing(self.root, G::START_LEVEL, range, pa, hints)?;
        let mut pool = self.reserve_tables(needed, frames)?;
        let leaf = attrs.leaf_attrs();
        self.map_level(
            self.root,
            G::START_LEVEL,
            range,
            pa,
            leaf,
            hints,
            range,
            &mut pool,
        );
        // Cannot fire: `count_missing` counts a table exactly where
        // `map_level` takes one (the same walk, the same `leaf_fits`); a
        // surplus would leak zeroed pages, not corrupt memory.
        debug_assert_eq!(pool.len, 0);
        arch::barrier::tables_written();
        Ok(())
    }

    /// Maps each page of `range` to a page `backing` allocates (Linux's
    /// `vmemmap_populate_basepages`): validated and its tables reserved once
    /// (`AlreadyMapped`, `NoMemory` change nothing), then one descent per
    /// last-level table writes its entries in a row, and one barrier ends
    /// it. `backing(frames, max)` hands out a physically contiguous run of
    /// `1..=max` pages as `(first, count)` (`max` being what is left of the
    /// current last-level table), so that the pages are taken a run at a
    /// time. When `backing` runs out, `NoMemory` leaves the pages mapped so
    /// far (and the new tables) for the caller to unmap.
    pub fn map_pages_with<F: FrameAllocator + ?Sized>(
        &mut self,
        range: VaRange,
        attrs: Attributes,
        frames: &mut F,
        backing: &mut impl FnMut(&mut F, u64) -> Option<(PhysAddr, u64)>,
    ) -> Result<(), MapError> {
        let page = G::PAGE_SIZE;
        // A stale entry for the range could outlive its new mapping.
        self.flush_pending();
        if range.is_empty() || !range.start.is_aligned(page) || !range.end.is_aligned(page) {
            return Err(MapError::Misaligned);
        }
        let hints = MapHints::pages();
        let pa = PhysAddr::new(0);
        let needed = self.count_missing(self.root, G::START_LEVEL, range, pa, hints)?;
        let mut pool = self.reserve_tables(needed, frames)?;
        let leaf = attrs.leaf_attrs();
        let r = self.populate_level(
            self.root,
            G::START_LEVEL,
            range,
            leaf,
            &mut pool,
            frames,
            backing,
        );
        // Tables reserved for pages never reached.
        self.release_tables(pool, frames);
        arch::barrier::tables_written();
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn populate_level<F: FrameAllocator + ?Sized>(
        &mut self,
        table: PhysAddr,
        level: usize,
        range: VaRange,
        attrs: Attributes,
        pool: &mut TablePool,
        frames: &mut F,
        backing: &mut impl FnMut(&mut F, u64) -> Option<(PhysAddr, u64)>,
    ) -> Result<(), MapError> {
        if level == 3 {
            // count_missing saw every entry of the range empty.
            let page = G::PAGE_SIZE;
            let mut index = G::index(range.start.as_u64(), level);
            let end = index + (range.len() / page) as usize;
            while index < end {
                let max = (end - index) as u64;
                let (pa, n) = backing(frames, max).ok_or(MapError::NoMemory)?;
                // More than asked for would leave pages nobody maps or frees.
                assert!((1..=max).contains(&n), "backing run of {n} for {max}");
                let mut leaf = Descriptor::leaf(pa, attrs, 3);
                for i in index..index + n as usize {
                    self.write(table, i, leaf);
                    leaf.0 += page;
                }
                index += n as usize;
            }
            return Ok(());
        }
        for (addr, next) in chunks(range.start, range.end, G::level_size(level)) {
            let index = G::index(addr.as_u64(), level);
            let d = self.read(table, index);
            let child = if d.is_table(level) {
                d.output_address()
            } else {
                let child = self.take_table(pool);
                self.write(table, index, Descriptor::table(child));
                child
            };
            let sub = VaRange::new(addr, next);
            self.populate_level(child, level + 1, sub, attrs, pool, frames, backing)?;
        }
        Ok(())
    }

    /// Table pages a mapping of `range` would add; fails on any overlap with
    /// an existing leaf. Below an entry with no table yet nothing is read:
    /// see [`count_absent`](Self::count_absent).
    fn count_missing(
        &self,
        table: PhysAddr,
        level: usize,
        range: VaRange,
        pa: PhysAddr,
        hints: MapHints,
    ) -> Result<usize, MapError> {
        if level == 3 {
            // Only pages here: any valid entry is in the way.
            let first = G::index(range.start.as_u64(), level);
            let n = (range.len() / G::PAGE_SIZE) as usize;
            return match (first..first + n).find(|&i| self.read(table, i).is_valid()) {
                Some(i) => Err(MapError::AlreadyMapped(
                    range.start + (i - first) as u64 * G::PAGE_SIZE,
                )),
                None => Ok(0),
            };
        }
        let mut missing = 0;
        for (addr, next) in chunks(range.start, range.end, G::level_size(level)) {
            let phys = pa + (addr - range.start);
            let d = self.read(table, G::index(addr.as_u64(), level));
            let sub = VaRange::new(addr, next);
            if d.is_leaf(level) {
                return Err(MapError::AlreadyMapped(addr));
            } else if d.is_table(level) {
                missing += self.count_missing(d.output_address(), level + 1, sub, phys, hints)?;
            } else {
                missing += Self::count_new(level, sub, phys, hints);
            }
        }
        Ok(missing)
    }

    /// Tables a mapping of `range` (one entry's worth or less at `level`)
    /// adds under an empty entry: none for a leaf, else the table and what
    /// it needs in turn.
    fn count_new(level: usize, range: VaRange, pa: PhysAddr, hints: MapHints) -> usize {
        if Self::leaf_fits(level, range.start, range.end, pa, hints) {
            0
        } else {
            1 + Self::count_absent(level + 1, range, pa, hints)
        }
    }

    /// Tables a mapping of `range` adds below a new, empty table at `level`.
    /// Whole entries of it all cost the same (their output is equally
    /// aligned), so each run of them is counted once and multiplied: the
    /// work is per level, not per entry or page.
    fn count_absent(level: usize, range: VaRange, pa: PhysAddr, hints: MapHints) -> usize {
        if level == 3 {
            return 0;
        }
        let size = G::level_size(level);
        let (mut addr, end) = (range.start, range.end);
        let mut missing = 0;
        while addr < end {
            let phys = pa + (addr - range.start);
            let whole_end = end.align_down(size);
            if addr.is_aligned(size) && whole_end > addr {
                let one = Self::count_new(level, VaRange::new(addr, addr + size), phys, hints);
                missing += one * ((whole_end - addr) / size) as usize;
                addr = whole_end;
            } else {
                let next = VirtAddr::new((addr.as_u64() | (size - 1)) + 1).min(end);
                missing += Self::count_new(level, VaRange::new(addr, next), phys, hints);
                addr = next;
            }
        }
        missing
    }

    /// Allocates `n` zeroed table pages, chained through their first entry
    /// (the next page's address: an invalid descriptor, as the zero that
    /// replaces it is). One barrier makes all the zeroes visible to the
    /// table walker before any of the pages is published (where Linux issues
    /// a `dsb(ishst)` per table page in `pgd_pgtable_alloc`).
    pub(super) fn reserve_tables(
        &mut self,
        n: usize,
        frames: &mut (impl FrameAllocator + ?Sized),
    ) -> Result<TablePool, MapError> {
        let mut pool = TablePool { head: None, len: 0 };
        for _ in 0..n {
            let Some(pa) = frames.alloc_pages(0) else {
                self.release_tables(pool, frames);
                return Err(MapError::NoMemory);
            };
            self.zero_table(pa);
            if let Some(next) = pool.head {
                self.write(pa, 0, Descriptor(next.as_u64()));
            }
            pool.head = Some(pa);
            pool.len += 1;
        }
        if n > 0 {
            arch::barrier::tables_zeroed();
        }
        Ok(pool)
    }

    /// The next page of `pool` (its link read before `pool.len` drops).
    fn pool_pop(&self, pool: &mut TablePool) -> Option<PhysAddr> {
        let pa = pool.head?;
        pool.len -= 1;
        pool.head = (pool.len > 0).then(|| PhysAddr::new(self.read(pa, 0).0));
        Some(pa)
    }

    fn release_tables(&mut self, mut pool: TablePool, frames: &mut (impl FrameAllocator + ?Sized)) {
        while let Some(pa) = self.pool_pop(&mut pool) {
            frames.free_pages(pa, 0);
        }
    }

    fn take_table(&mut self, pool: &mut TablePool) -> PhysAddr {
        let pa = self
            .pool_pop(pool)
            .expect("table pool sized by count_missing");
        // The link was an invalid descriptor already: whichever of it and
        // the zero a walker sees, it sees no mapping.
        self.write(pa, 0, Descriptor::EMPTY);
        self.stats.tables += 1;
        self.stats.tables_allocated += 1;
        pa
    }

    #[allow(clippy::too_many_arguments)]
    fn map_level(
        &mut self,
        table: PhysAddr,
        level: usize,
        range: VaRange,
        pa: PhysAddr,
        attrs: Attributes,
        hints: MapHints,
        whole: VaRange,
        pool: &mut TablePool,
    ) {
        let size = G::level_size(level);
        if level == 3 && !hints.contiguous {
            // Pages in a row (count_missing saw every entry empty): the
            // output address field counts up by a page per entry.
            let first = G::index(range.start.as_u64(), level);
            let mut leaf = Descriptor::leaf(pa, attrs, level);
            for index in first..first + (range.len() / size) as usize {
                self.write(table, index, leaf);
                leaf.0 += size;
            }
            return;
        }
        let mut contiguous_end = VirtAddr::new(0);
        for (addr, next) in chunks(range.start, range.end, size) {
            let phys = pa + (addr - range.start);
            let index = G::index(addr.as_u64(), level);
            let d = self.read(table, index);
            let sub = VaRange::new(addr, next);
            if d.is_table(level) {
                self.map_level(
                    d.output_address(),
                    level + 1,
                    sub,
                    phys,
                    attrs,
                    hints,
                    whole,
                    pool,
                );
            } else if Self::leaf_fits(level, addr, next, phys, hints) {
                if hints.contiguous
                    && addr >= contiguous_end
                    && self.contiguous_group(table, level, addr, phys, whole)
                {
                    contiguous_end = addr + size * G::contiguous_entries(level) as u64;
                }
                let mut leaf = Descriptor::leaf(phys, attrs, level);
                if addr < contiguous_end {
                    leaf.0 |= Attributes::CONTIGUOUS.bits();
                }
                self.write(table, index, leaf);
            } else {
                let child = self.take_table(pool);
                self.write(table, index, Descriptor::table(child));
                self.map_level(child, level + 1, sub, phys, attrs, hints, whole, pool);
            }
        }
    }

    /// Whether `addr` starts a contiguous group wholly inside `whole`, with
    /// a congruent output address and every entry of the group still empty.
    fn contiguous_group(
        &self,
        table: PhysAddr,
        level: usize,
        addr: VirtAddr,
        pa: PhysAddr,
        whole: VaRange,
    ) -> bool {
        let n = G::contiguous_entries(level);
        let span = G::level_size(level) * n as u64;
        let first = G::index(addr.as_u64(), level);
        addr.is_aligned(span)
            && pa.is_aligned(span)
            && addr >= whole.start
            && addr.checked_add(span).is_some_and(|e| e <= whole.end)
            && (first..first + n).all(|i| !self.read(table, i).is_valid())
    }

    /// Invalidates the TLB for kernel addresses `[start, end)` and counts it,
    /// with any range left unflushed: one instruction where both are
    /// large.
    pub(super) fn flush_range(&mut self, start: VirtAddr, end: VirtAddr) {
        let (start, end) = match self.unflushed.take() {
            Some((s, e)) => (start.min(s), end.max(e)),
            None => (start, end),
        };
        self.stats.tlbi_ops +=
            arch::tlb::flush_kernel_range(start.as_u64(), end.as_u64(), G::PAGE_SHIFT);
    }

    /// Invalidates cached walks through a table about to be freed.
    pub(super) fn flush_table(&mut self, addr: VirtAddr) {
        if self.unflushed.is_some() {
            return self.flush_all();
        }
        self.stats.tlbi_ops += arch::tlb::flush_kernel_pgtable(addr.as_u64(), G::PAGE_SHIFT);
    }

    /// Invalidates every TLB entry, walk caches included.
    pub(super) fn flush_all(&mut self) {
        self.unflushed = None;
        self.stats.tlbi_ops += arch::tlb::flush_kernel_all();
    }

    /// Leaves the invalidation of `[start, end)`, whose leaves were just
    /// cleared and whose output is not freed, to the next one.
    pub(super) fn defer_flush(&mut self, start: VirtAddr, end: VirtAddr) {
        self.unflushed = Some(match self.unflushed {
            Some((s, e)) => (start.min(s), end.max(e)),
            None => (start, end),
        });
    }

    /// Issues the invalidation left pending, if any.
    pub fn flush_pending(&mut self) {
        if let Some((start, end)) = self.unflushed.take() {
            self.flush_range(start, end);
        }
    }
}
