//! `struct Page`: the 64-byte descriptor of one page frame, and [`Memmap`],
//! the array of them (the vmemmap) indexed by pfn.
//!
//! Every field is a plain integer, so any bit pattern is a valid `Page`: code
//! that reads a struct page it did not initialise sees garbage, never
//! undefined behaviour. The zone is therefore kept as a raw `u8`.
//!
//! # Deferred struct pages (the one rule)
//!
//! Onlining hands the buddy allocator whole maximum-order blocks
//! (`2^MAX_ORDER` pages, naturally aligned) and writes only their heads
//! (Linux defers struct-page init only at boot; here every online does).
//! Such a head carries a mark ([`Page::is_deferred_head`]) meaning: the
//! other `2^MAX_ORDER - 1` struct pages of the block are not written, and
//! each *is*, by definition, what an eager online or offline would have
//! written there: `Page::new(head's zone and node, ONLINE)` under an
//! online head, `RESERVED` under an offline one. The memory itself holds
//! stale bytes (vmemmap backing is never zeroed) that nothing may read as
//! a page.
//!
//! Every reader and writer of a struct page obeys this one rule, through
//! this module only:
//! - reads go through [`Memmap::read`] (or [`Page::resolve`] for a reader
//!   with its own access to memory, like the `page PFN` command's
//!   fault-tolerant probe), which apply the definition above;
//! - a write to a tail first materialises its block: [`Memmap::ensure_init`]
//!   writes the tails as defined and clears the mark (the allocator does so
//!   when it first splits the block); [`Memmap::init_range`] does it itself
//!   for blocks it only partly covers, and clears the mark of blocks it
//!   covers whole by overwriting the head.
//!
//! Only [`Memmap::init_deferred`] sets the mark: on a block the caller hands
//! to the allocator whole, and on a block offlining takes back whole from
//! it, whose tails then need no write however they were used while online
//! (they read as offline pages).
//!
//! Every struct page of a memory block not onlined since it was added is
//! garbage, heads included, until it is onlined (as in Linux, which poisons
//! the struct pages of offline memory and has readers check
//! `pfn_to_online_page`): nothing reads them; only the pages that hold a
//! block's own struct pages (`memmap_on_memory`) are written at add. Once
//! onlined, the head of each max-order block stays a written struct page,
//! offline included (boot memory's from the start), so onlining it again
//! can check the heads of its range (`buddy.rs`).

use bitflags::bitflags;

use super::addr::{Pfn, PhysAddr};
use super::layout::{self, MAX_ORDER};

/// Pages of a maximum-order block: the unit of deferred initialisation.
pub const MAX_ORDER_NR_PAGES: u64 = 1 << MAX_ORDER;

/// The head mark of a block whose tails are deferred (see the module
/// comment); any other value means initialised tails.
const DEFERRED_TAILS: u16 = 0xdefe;

bitflags! {
    /// Page state bits (Linux's `page->flags` page types and bits).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct PageFlags: u32 {
        /// Never to be freed to the buddy allocator: boot allocations, the
        /// kernel image, holes (Linux's `PG_reserved`).
        const RESERVED = 1 << 0;
        /// Head of a free block in the buddy allocator; `order` is valid
        /// (Linux's `PageBuddy`). Tail pages of a free block do not have it.
        const BUDDY = 1 << 1;
        /// The page belongs to an online memory block.
        const ONLINE = 1 << 2;
        /// A `ZONE_DEVICE` page: owned by its driver, never by the buddy.
        const DEVICE = 1 << 3;
        /// The page holds struct pages of its own memory block
        /// (`memmap_on_memory`): it stays in use while the block is present.
        const VMEMMAP_SELF_HOSTED = 1 << 4;
        /// The frame was handed out by a `vmem_altmap`: it goes back to the
        /// altmap, never to the buddy allocator.
        const ALTMAP_BACKED = 1 << 5;
        /// In an online block but not the allocator's: memory a driver
        /// has not plugged (Linux's `PageOffline`, virtio-mem's sub-blocks).
        const LOGICALLY_OFFLINE = 1 << 7;
        /// Head of a free block held aside in a range being isolated for
        /// offlining (Linux's MIGRATE_ISOLATE free lists); `order` valid.
        const ISOLATED = 1 << 6;
        /// Anonymous memory mapped by an address space (`mm::anon`):
        /// `mapping` and `index` say where (Linux's `PageAnon`). The one
        /// kind of page offlining can migrate.
        const ANON = 1 << 8;

        /// A page with any of these can never be a buddy page.
        const NEVER_BUDDY = Self::RESERVED.bits()
            | Self::DEVICE.bits()
            | Self::VMEMMAP_SELF_HOSTED.bits()
            | Self::LOGICALLY_OFFLINE.bits()
            | Self::ALTMAP_BACKED.bits();

        /// Pages of an online block that the allocator never holds: its
        /// own memmap, and memory not plugged. Offlining skips them.
        const UNMANAGED = Self::VMEMMAP_SELF_HOSTED.bits() | Self::LOGICALLY_OFFLINE.bits();
    }
}

/// Memory zones. Only the first [`NR_BUDDY_ZONES`] are managed by the buddy
/// allocator; `Device` pages belong to their driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Zone {
    Normal = 0,
    Movable = 1,
    Device = 2,
}

/// Zones with buddy free lists: `Normal` and `Movable`.
pub const NR_BUDDY_ZONES: usize = 2;

impl Zone {
    pub const ALL: [Zone; 3] = [Zone::Normal, Zone::Movable, Zone::Device];
    pub const BUDDY_ZONES: [Zone; NR_BUDDY_ZONES] = [Zone::Normal, Zone::Movable];

    /// The name Linux prints (`/proc/zoneinfo`, `valid_zones`).
    pub const fn name(self) -> &'static str {
        match self {
            Zone::Normal => "Normal",
            Zone::Movable => "Movable",
            Zone::Device => "Device",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Zone> {
        match v {
            0 => Some(Zone::Normal),
            1 => Some(Zone::Movable),
            2 => Some(Zone::Device),
            _ => None,
        }
    }

    /// Index of the zone's free lists, `None` for zones the buddy does not
    /// manage.
    pub const fn buddy_index(self) -> Option<usize> {
        match self {
            Zone::Normal => Some(0),
            Zone::Movable => Some(1),
            Zone::Device => None,
        }
    }
}

/// Garbage as tests plant it in struct pages: every flag (`BUDDY`
/// included), no valid zone, order 255, a huge refcount, wild links; not
/// the deferred mark.
#[cfg(test)]
pub const POISON: [u64; 8] = [
    0x5a5a_ffff_ffff_ffff,
    0xa5a5_a5a5_a5a5_a5a5,
    0xa5a5_a5a5_a5a5_a5a5,
    0xa5a5_a5a5_a5a5_a5a5,
    0xa5a5_a5a5_a5a5_a5a5,
    0xa5a5_a5a5_a5a5_a5a5,
    0xa5a5_a5a5_a5a5_a5a5,
    0xa5a5_a5a5_a5a5_a5a5,
];

/// Where the node starts in a struct page's zone byte.
pub const NODE_SHIFT: u32 = 2;
const ZONE_MASK: u8 = (1 << NODE_SHIFT) - 1;
const _: () = assert!(super::node::MAX_NUMNODES << NODE_SHIFT <= 256);

/// A struct page's zone byte: `(zone, node)`, `None` if it holds no valid
/// zone or node (garbage).
pub fn decode_zone_byte(b: u8) -> Option<(Zone, usize)> {
    let nid = (b >> NODE_SHIFT) as usize;
    let zone = Zone::from_u8(b & ZONE_MASK)?;
    (nid < super::node::MAX_NUMNODES).then_some((zone, nid))
}

/// "No pfn" in the free-list links.
pub const PFN_NONE: u64 = u64::MAX;

/// One page frame's descriptor; exactly 64 bytes so that the vmemmap is a
/// plain array and `pfn_to_page` is one add (see `layout::STRUCT_PAGE_SHIFT`).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub(crate) flags: PageFlags,
    /// A [`Zone`] in the low [`NODE_SHIFT`] bits and the page's NUMA node
    /// above them (Linux keeps both in `page->flags`), as `u8`, so that a
    /// garbage struct page is still a `Page`.
    pub(crate) zone: u8,
    /// Block order: of the free block on a `BUDDY` head, of the allocation on
    /// an allocated head (checked when it is freed).
    pub(crate) order: u8,
    /// [`DEFERRED_TAILS`] on the head of a block whose tails are deferred.
    deferred: u16,
    pub(crate) refcount: u32,
    _pad1: u32,
    /// Free-list links as pfns, [`PFN_NONE`] for none.
    pub(crate) next: u64,
    pub(crate) prev: u64,
    /// Owner's word (e.g. the owner id of a device page).
    pub(crate) private: u64,
    /// The reverse map of an `ANON` page (Linux's `page->mapping` of an
    /// anon page): which anonymous area maps it (`mm::anon`).
    pub(crate) mapping: u64,
    /// Its page index within that area (Linux's `page->index`).
    pub(crate) index: u64,
    _pad2: u64,
}

const _: () = assert!(core::mem::size_of::<Page>() == 64);
const _: () = assert!(core::mem::size_of::<Page>() == 1 << layout::STRUCT_PAGE_SHIFT);

impl Page {
    /// A fresh struct page: no links, no references, order 0, node 0.
    pub const fn new(zone: Zone, flags: PageFlags) -> Page {
        Page::new_on(zone, 0, flags)
    }

    /// A fresh struct page of node `nid` (below `MAX_NUMNODES`).
    pub const fn new_on(zone: Zone, nid: usize, flags: PageFlags) -> Page {
        Page {
            flags,
            zone: zone as u8 | ((nid as u8) << NODE_SHIFT),
            order: 0,
            deferred: 0,
            refcount: 0,
            _pad1: 0,
            next: PFN_NONE,
            prev: PFN_NONE,
            private: 0,
            mapping: 0,
            index: 0,
            _pad2: 0,
        }
    }

    /// The page as the eight words it is stored as.
    pub fn to_words(&self) -> [u64; 8] {
        // SAFETY: `Page` is 64 bytes of plain integers, aligned to 64.
        unsafe { core::mem::transmute_copy(self) }
    }

    /// Overwrite this struct page with a fresh one (Linux's
    /// `__init_single_page`).
    pub fn init(&mut self, zone: Zone, flags: PageFlags) {
        *self = Page::new(zone, flags);
    }

    pub fn flags(&self) -> PageFlags {
        self.flags
    }

    pub fn set_flags(&mut self, flags: PageFlags) {
        self.flags.insert(flags);
    }

    pub fn clear_flags(&mut self, flags: PageFlags) {
        self.flags.remove(flags);
    }

    pub fn has(&self, flags: PageFlags) -> bool {
        self.flags.contains(flags)
    }

    /// The zone, `None` if the byte holds no valid zone (garbage page).
    pub fn zone(&self) -> Option<Zone> {
        decode_zone_byte(self.zone).map(|(z, _)| z)
    }

    /// The node (Linux's `page_to_nid`); 0 for a garbage byte.
    pub fn nid(&self) -> usize {
        decode_zone_byte(self.zone).map_or(0, |(_, n)| n)
    }

    /// Sets the zone, keeping the node.
    pub fn set_zone(&mut self, zone: Zone) {
        self.zone = (self.zone & !ZONE_MASK) | zone as u8;
    }

    pub fn order(&self) -> u32 {
        self.order as u32
    }

    pub fn refcount(&self) -> u32 {
        self.refcount
    }

    pub fn private(&self) -> u64 {
        self.private
    }

    pub fn set_private(&mut self, private: u64) {
        self.private = private;
    }

    /// The reverse map of an anon page: `(area, page index)`.
    pub fn anon_rmap(&self) -> Option<(u64, u64)> {
        self.has(PageFlags::ANON)
            .then_some((self.mapping, self.index))
    }

    /// Makes the page anon memory of `area` at page `index`.
    pub fn set_anon_rmap(&mut self, area: u64, index: u64) {
        self.flags.insert(PageFlags::ANON);
        self.mapping = area;
        self.index = index;
    }

    /// Drops the reverse map (the page is no longer mapped).
    pub fn clear_anon_rmap(&mut self) {
        self.flags.remove(PageFlags::ANON);
        self.mapping = 0;
        self.index = 0;
    }

    pub fn is_reserved(&self) -> bool {
        self.has(PageFlags::RESERVED)
    }

    pub fn is_buddy(&self) -> bool {
        self.has(PageFlags::BUDDY)
    }

    pub fn is_online(&self) -> bool {
        self.has(PageFlags::ONLINE)
    }

    /// Whether this is the head of a max-order block whose other struct
    /// pages are deferred (module comment).
    pub fn is_deferred_head(&self) -> bool {
        self.deferred == DEFERRED_TAILS
    }

    /// What a deferred tail is: what an eager online, or offline, writes.
    fn deferred_tail(head: &Page) -> Page {
        let state = if head.is_online() {
            PageFlags::ONLINE
        } else {
            PageFlags::RESERVED
        };
        let mut p = Page::new(Zone::Normal, state);
        p.zone = head.zone;
        p
    }

    /// The head of a max-order block taken offline whole: an offline page
    /// of the same zone and node, which [`Memmap::init_deferred`] marks.
    pub fn offline_head(&self) -> Page {
        let mut p = Page::new(Zone::Normal, PageFlags::RESERVED);
        p.zone = self.zone;
        p
    }

    /// The rule on values: the struct page of `pfn`, stored as `raw`, given
    /// the stored head of its max-order block (read only when `pfn` is not
    /// that head).
    pub fn resolve(pfn: Pfn, raw: Page, head: impl FnOnce() -> Page) -> Page {
        if pfn.is_aligned(MAX_ORDER_NR_PAGES) {
            return raw;
        }
        let head = head();
        if head.is_deferred_head() {
            Page::deferred_tail(&head)
        } else {
            raw
        }
    }
}

/// The vmemmap: struct page of pfn `N` at `base + N`.
///
/// It is a raw pointer, not a slice, because the kernel's vmemmap is sparse
/// (populated per section, as memory comes and goes) and its base is a fixed
/// virtual address whose pfn 0 may well be unpopulated. `start_pfn..end_pfn`
/// bounds the pfns it may describe at all, so that wild pfns are refused
/// rather than dereferenced; whether the vmemmap is populated at a pfn inside
/// the bounds is the caller's business.
#[derive(Clone, Copy, Debug)]
pub struct Memmap {
    base: *mut Page,
    start_pfn: Pfn,
    end_pfn: Pfn,
}

// SAFETY: a Memmap is an address, not ownership. Every access through it is
// either `unsafe` (the caller vouches for the page) or made by the buddy
// allocator, which the kernel keeps behind one lock with the rest of mm, so
// sharing the address between CPUs adds no unsynchronised access of its own.
unsafe impl Send for Memmap {}
// SAFETY: as for `Send`.
unsafe impl Sync for Memmap {}

impl Memmap {
    /// A memmap whose struct page of pfn `N` is `base.wrapping_add(N)`,
    /// describing every pfn the linear map can reach.
    ///
    /// # Safety
    /// `base` must be the vmemmap base: for every pfn used through this
    /// memmap, `base + pfn` is a mapped, writable struct page.
    pub unsafe fn new(base: *mut Page) -> Memmap {
        Memmap {
            base,
            start_pfn: Pfn::new(0),
            end_pfn: Pfn::down(PhysAddr::new(layout::PHYS_LIMIT)),
        }
    }

    /// The kernel's vmemmap at `layout::VMEMMAP_START`.
    ///
    /// # Safety
    /// As for [`Memmap::new`].
    pub unsafe fn kernel() -> Memmap {
        // SAFETY: the caller's promise.
        unsafe { Memmap::new(layout::VMEMMAP_START as *mut Page) }
    }

    /// A memmap over `pages`, whose first element describes `first_pfn`
    /// (host tests, or any memmap held in ordinary memory). The base is
    /// computed with wrapping pointer arithmetic and is only ever offset back
    /// into the slice, since the bounds are exactly the slice.
    ///
    /// The memmap does not borrow the slice: the caller keeps it alive, and
    /// unmoved, while the memmap is used, and then accesses it only through
    /// the memmap.
    #[cfg(test)]
    pub fn for_slice(pages: &mut [Page], first_pfn: Pfn) -> Memmap {
        let base = pages.as_mut_ptr().wrapping_sub(first_pfn.as_u64() as usize);
        Memmap {
            base,
            start_pfn: first_pfn,
            end_pfn: first_pfn + pages.len() as u64,
        }
    }

    pub fn start_pfn(&self) -> Pfn {
        self.start_pfn
    }

    pub fn end_pfn(&self) -> Pfn {
        self.end_pfn
    }

    /// Whether `pfn` is within the bounds this memmap describes.
    pub fn contains(&self, pfn: Pfn) -> bool {
        self.start_pfn <= pfn && pfn < self.end_pfn
    }

    /// Whether all of `start..end` is within the bounds (empty ranges are).
    pub fn contains_range(&self, start: Pfn, end: Pfn) -> bool {
        start >= end || (self.start_pfn <= start && end <= self.end_pfn)
    }

    /// Address of the struct page of `pfn` (Linux's `pfn_to_page`).
    pub fn page(&self, pfn: Pfn) -> *mut Page {
        self.base.wrapping_add(pfn.as_u64() as usize)
    }

    /// The pfn a struct page pointer describes (Linux's `page_to_pfn`).
    pub fn pfn_of(&self, page: *const Page) -> Pfn {
        let offset = (page as usize).wrapping_sub(self.base as usize) as u64;
        Pfn::new(offset >> layout::STRUCT_PAGE_SHIFT)
    }

    /// # Safety
    /// The vmemmap must be populated at `pfn`, and no other reference to
    /// that struct page may be live while the result is.
    #[allow(clippy::mut_from_ref)] // a vmemmap is shared memory by design
    pub unsafe fn get(&self, pfn: Pfn) -> &mut Page {
        // SAFETY: the caller's promise.
        unsafe { &mut *self.page(pfn) }
    }

    /// The struct page of `pfn` as the rule defines it (module comment): a
    /// copy, so that a deferred tail needs no write to be read.
    ///
    /// # Safety
    /// The vmemmap must be populated at `pfn` (and so at the head of its
    /// max-order block, in the same section), and no `&mut` to either live.
    pub unsafe fn read(&self, pfn: Pfn) -> Page {
        // SAFETY: the caller's promise; any bytes are a `Page`.
        let raw = unsafe { *self.page(pfn) };
        let head = pfn.align_down(MAX_ORDER_NR_PAGES);
        Page::resolve(pfn, raw, || {
            if self.contains(head) {
                // SAFETY: as above, same section.
                unsafe { *self.page(head) }
            } else {
                Page::new(Zone::Normal, PageFlags::empty())
            }
        })
    }

    /// The head of `pfn`'s max-order block if that block's tails are
    /// deferred.
    ///
    /// # Safety
    /// As for [`read`](Self::read).
    pub unsafe fn deferred_head(&self, pfn: Pfn) -> Option<Pfn> {
        let head = pfn.align_down(MAX_ORDER_NR_PAGES);
        // SAFETY: the caller's promise.
        let marked = self.contains(head) && unsafe { &*self.page(head) }.is_deferred_head();
        marked.then_some(head)
    }

    /// Materialises `pfn`'s max-order block if its tails are deferred: writes
    /// them as the rule defines them and clears the head's mark, so that
    /// they may be written like any struct page. Returns whether it did.
    ///
    /// # Safety
    /// As for [`init_range`](Self::init_range) over the block.
    pub unsafe fn ensure_init(&self, pfn: Pfn) -> bool {
        // SAFETY: the caller's promise.
        let Some(head) = (unsafe { self.deferred_head(pfn) }) else {
            return false;
        };
        // SAFETY: the caller's promise.
        let h = unsafe { self.get(head) };
        h.deferred = 0;
        let tail = Page::deferred_tail(h);
        // SAFETY: the caller's promise.
        unsafe { self.store_range(head + 1, head + MAX_ORDER_NR_PAGES, tail) };
        true
    }

    /// Materialises every deferred max-order block that `start..end` touches.
    ///
    /// # Safety
    /// As for [`init_range`](Self::init_range) over those blocks.
    pub unsafe fn ensure_init_range(&self, start: Pfn, end: Pfn) {
        let mut head = start.align_down(MAX_ORDER_NR_PAGES);
        while head < end {
            // SAFETY: the caller's promise.
            unsafe { self.ensure_init(head) };
            head += MAX_ORDER_NR_PAGES;
        }
    }

    /// Writes the head of the max-order block at `head` as a deferred block
    /// of `zone` (`page`, built by the caller, with the mark added); its
    /// tails are left as they are. The only place the mark is set.
    ///
    /// # Safety
    /// `head` is aligned to [`MAX_ORDER_NR_PAGES`], the vmemmap is populated
    /// over its block, and no reference to those struct pages is live.
    pub unsafe fn init_deferred(&self, head: Pfn, mut page: Page) {
        // A misaligned head would mark the wrong struct pages as deferred.
        assert!(
            head.is_aligned(MAX_ORDER_NR_PAGES),
            "deferred head {head:?} not aligned"
        );
        page.deferred = DEFERRED_TAILS;
        // SAFETY: the caller's promise; nothing of the old page is read.
        unsafe { crate::arch::store_64_bytes(self.page(head) as *mut u64, page.to_words()) };
    }

    /// Write fresh struct pages (see [`Page::new`]) for `start..end`,
    /// without reading the old contents. A deferred block the range covers
    /// only in part is materialised first (module comment); one it covers
    /// whole loses its mark with its head.
    ///
    /// # Safety
    /// The vmemmap must be populated over `start..end`, and no reference to
    /// those struct pages live.
    pub unsafe fn init_range(&self, start: Pfn, end: Pfn, zone: Zone, flags: PageFlags) {
        // SAFETY: the caller's promise.
        unsafe { self.init_range_on(start, end, zone, 0, flags) }
    }

    /// [`init_range`](Self::init_range) for pages of node `nid`.
    ///
    /// # Safety
    /// As for [`init_range`](Self::init_range).
    pub unsafe fn init_range_on(
        &self,
        start: Pfn,
        end: Pfn,
        zone: Zone,
        nid: usize,
        flags: PageFlags,
    ) {
        if start >= end {
            return;
        }
        // SAFETY: the caller's promise covers the blocks of both ends (same
        // sections).
        unsafe {
            if !start.is_aligned(MAX_ORDER_NR_PAGES) {
                self.ensure_init(start);
            }
            if !end.is_aligned(MAX_ORDER_NR_PAGES) {
                self.ensure_init(end - 1);
            }
            self.store_range(start, end, Page::new_on(zone, nid, flags));
        }
    }

    /// Fills the struct pages of `start..end` with [`POISON`]: what a
    /// test leaves where nothing may read a page without the rule.
    ///
    /// # Safety
    /// As for [`init_range`](Self::init_range).
    #[cfg(test)]
    pub unsafe fn poison_range(&self, start: Pfn, end: Pfn) {
        for pfn in Pfn::range(start, end) {
            // SAFETY: the caller's promise.
            unsafe { crate::arch::store_64_bytes(self.page(pfn) as *mut u64, POISON) };
        }
    }

    /// Whether the struct page of `pfn` still holds [`POISON`] (was never
    /// written since [`poison_range`](Self::poison_range)).
    ///
    /// # Safety
    /// As for [`read`](Self::read).
    #[cfg(test)]
    pub unsafe fn is_poisoned(&self, pfn: Pfn) -> bool {
        // SAFETY: the caller's promise.
        unsafe { (*self.page(pfn)).to_words() == POISON }
    }

    /// Stores `page` into every struct page of `start..end`.
    ///
    /// # Safety
    /// As for [`init_range`](Self::init_range).
    unsafe fn store_range(&self, start: Pfn, end: Pfn, page: Page) {
        // Built field by field (or copied from a template) each page costs
        // a call to memset or memcpy, several times the stores themselves:
        // the words are stored directly instead.
        let w = page.to_words();
        for pfn in Pfn::range(start, end) {
            // SAFETY: the caller's promise; nothing of the old page is read.
            unsafe { crate::arch::store_64_bytes(self.page(pfn) as *mut u64, w) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn page_is_64_bytes_and_aligned() {
        assert_eq!(core::mem::size_of::<Page>(), 64);
        assert_eq!(core::mem::align_of::<Page>(), 64);
        let p = Page::new(Zone::Movable, PageFlags::ONLINE);
        assert_eq!(p.zone(), Some(Zone::Movable));
        assert_eq!(
            (p.next, p.prev, p.refcount, p.order()),
            (PFN_NONE, PFN_NONE, 0, 0)
        );
        assert!(p.is_online() && !p.is_buddy() && !p.is_reserved());
    }

    #[test]
    fn zones_have_linux_names() {
        let names: alloc::vec::Vec<_> = Zone::ALL.iter().map(|z| z.name()).collect();
        assert_eq!(names, ["Normal", "Movable", "Device"]);
        for z in Zone::ALL {
            assert_eq!(Zone::from_u8(z as u8), Some(z));
        }
        assert_eq!(Zone::from_u8(3), None);
        assert_eq!(Zone::Device.buddy_index(), None);
        assert_eq!(Zone::BUDDY_ZONES.len(), NR_BUDDY_ZONES);
    }

    #[test]
    fn memmap_for_slice_indexes_by_pfn() {
        let first = Pfn::new(0x40000);
        let mut pages = vec![Page::new(Zone::Normal, PageFlags::empty()); 16];
        let mm = Memmap::for_slice(&mut pages, first);
        assert!(mm.contains(first) && mm.contains(first + 15));
        assert!(!mm.contains(first - 1) && !mm.contains(first + 16));
        assert!(mm.contains_range(first, first + 16) && !mm.contains_range(first, first + 17));
        // SAFETY: `pages` covers the range and nothing else references it.
        unsafe {
            mm.init_range(first + 4, first + 8, Zone::Movable, PageFlags::RESERVED);
            mm.get(first + 3).set_private(7);
            assert_eq!(mm.get(first + 3).private(), 7);
            assert_eq!(mm.get(first + 4).zone(), Some(Zone::Movable));
            assert!(mm.get(first + 7).is_reserved() && !mm.get(first + 8).is_reserved());
        }
        assert_eq!(mm.page(first + 1) as usize - mm.page(first) as usize, 64);
        assert_eq!(mm.pfn_of(mm.page(first + 9)), first + 9);
        drop(pages);
    }
}
