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
        debug_assert!(index < G::ENTRIES);
        // SAFETY: `table` is a table page of this hierarchy and the
        // translation makes all of it accessible.
        unsafe { self.trans.table_va(table).add(index).read_volatile() }
    }

    pub(super) fn write(&mut self, table: PhysAddr, index: usize, d: Descriptor) {
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
        self.write(table, index, Descriptor::EMPTY);
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

    fn zero_table(&mut self, table: PhysAddr) {
        for i in 0..G::ENTRIES {
            self.write(table, i, Descriptor::EMPTY);
        }
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
        let needed = self.count_missing(Some(self.root), G::START_LEVEL, range, pa, hints)?;
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
        debug_assert_eq!(pool.len, 0);
        arch::barrier::tables_written();
        Ok(())
    }

    /// Table pages a mapping of `range` would add; fails on any overlap with
    /// an existing leaf.
    fn count_missing(
        &self,
        table: Option<PhysAddr>,
        level: usize,
        range: VaRange,
        pa: PhysAddr,
        hints: MapHints,
    ) -> Result<usize, MapError> {
        let mut missing = 0;
        for (addr, next) in chunks(range.start, range.end, G::level_size(level)) {
            let phys = pa + (addr - range.start);
            let index = G::index(addr.as_u64(), level);
            let d = table.map_or(Descriptor::EMPTY, |t| self.read(t, index));
            let sub = VaRange::new(addr, next);
            if d.is_leaf(level) {
                return Err(MapError::AlreadyMapped(addr));
            } else if d.is_table(level) {
                missing +=
                    self.count_missing(Some(d.output_address()), level + 1, sub, phys, hints)?;
            } else if !Self::leaf_fits(level, addr, next, phys, hints) {
                missing += 1 + self.count_missing(None, level + 1, sub, phys, hints)?;
            }
        }
        Ok(missing)
    }

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
            self.write(
                pa,
                0,
                Descriptor(pool.head.map_or(u64::MAX, PhysAddr::as_u64)),
            );
            pool.head = Some(pa);
            pool.len += 1;
        }
        Ok(pool)
    }

    fn release_tables(&mut self, mut pool: TablePool, frames: &mut (impl FrameAllocator + ?Sized)) {
        while let Some(pa) = pool.head {
            let next = self.read(pa, 0).0;
            pool.head = (next != u64::MAX).then_some(PhysAddr::new(next));
            frames.free_pages(pa, 0);
        }
    }

    fn take_table(&mut self, pool: &mut TablePool) -> PhysAddr {
        let pa = pool.head.expect("table pool sized by count_missing");
        let next = self.read(pa, 0).0;
        pool.head = (next != u64::MAX).then_some(PhysAddr::new(next));
        pool.len -= 1;
        self.zero_table(pa);
        // The zeroes (over the pool link and whatever the frame held) must
        // reach the table walker before the parent entry publishes the page
        // (Linux's dsb(ishst) in pgd_pgtable_alloc).
        arch::barrier::tables_written();
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

    /// Invalidates the TLB for kernel addresses `[start, end)` and counts it.
    pub(super) fn flush_range(&mut self, start: VirtAddr, end: VirtAddr) {
        self.stats.tlbi_ops +=
            arch::tlb::flush_kernel_range(start.as_u64(), end.as_u64(), G::PAGE_SHIFT);
    }

    /// Invalidates cached walks through a table about to be freed.
    pub(super) fn flush_table(&mut self, addr: VirtAddr) {
        self.stats.tlbi_ops += arch::tlb::flush_kernel_pgtable(addr.as_u64(), G::PAGE_SHIFT);
    }
}
