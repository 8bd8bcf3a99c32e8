//! Anonymous memory with an owner: the one kind of page offlining can
//! move (`migrate.rs`), and what `memhog` maps.
//!
//! # The address space
//!
//! Linux gives each process an `mm_struct` with its own table root in
//! TTBR0, switched (with an ASID) on every context switch. This kernel has
//! no processes: a CPU never switches address spaces, and a `memhog` area
//! must be reachable from every CPU at once (the stress workers touch
//! theirs while CPU 0 migrates them). So [`AnonMm`] is a range of the
//! kernel's own half, `ANON_START..ANON_END`, one slot of
//! `ANON_SLOT_SIZE` per area, mapped page by page (never blocks, so that
//! each page can move alone) in the kernel's tables: no TTBR0, no ASID, no
//! switch, and the same translation on every CPU. Its table pages come from
//! the Normal zone (they are kernel allocations: unmovable, as in Linux);
//! its pages from Movable first.
//!
//! # The reverse map
//!
//! Each mapped page's struct page says where it is mapped (Linux's
//! `page->mapping` and `page->index` of an anon page): `PageFlags::ANON`,
//! the area and the page index, from which its one virtual address follows.
//! Migration needs nothing else to find the entry to change.
//!
//! # The pattern
//!
//! Each 8-byte word of a page holds [`pattern`] of its virtual address and
//! the area's generation: a page that moved to the wrong place, was torn by
//! a copy, or stale, shows it.

use core::sync::atomic::{AtomicU64, Ordering};

use super::addr::{Pfn, PhysAddr, VirtAddr};
use super::layout::*;
use super::pgtable::{Attributes, Translation, VaRange};
use super::system::{fail_nth_hit, MemorySystem};
use crate::error::Result;
use crate::{bail, err};

/// Pages mapped per table walk when an area is made.
const MAP_BATCH: usize = 256;

/// One area (a `memhog`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnonArea {
    pub pages: u64,
    /// The generation its pattern was written with.
    pub gen: u64,
}

/// The anonymous address space (see the module comment) and Linux's
/// migration counters.
#[derive(Debug)]
pub struct AnonMm {
    areas: [Option<AnonArea>; ANON_MAX_AREAS as usize],
    nr_pages: u64,
    pub pgmigrate_success: u64,
    pub pgmigrate_fail: u64,
}

impl Default for AnonMm {
    fn default() -> Self {
        Self {
            areas: [None; ANON_MAX_AREAS as usize],
            nr_pages: 0,
            pgmigrate_success: 0,
            pgmigrate_fail: 0,
        }
    }
}

impl AnonMm {
    /// Pages mapped in all areas (`AnonPages:`).
    pub fn nr_pages(&self) -> u64 {
        self.nr_pages
    }

    pub fn area(&self, id: usize) -> Option<AnonArea> {
        self.areas.get(id).copied().flatten()
    }

    /// `(id, area)` of every area.
    pub fn areas(&self) -> impl Iterator<Item = (usize, AnonArea)> + '_ {
        self.areas
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.map(|a| (i, a)))
    }
}

/// The first virtual address of area `id`.
pub fn area_base(id: usize) -> VirtAddr {
    VirtAddr::new(ANON_START + id as u64 * ANON_SLOT_SIZE)
}

/// Where page `index` of area `id` is mapped.
pub fn page_va(id: usize, index: u64) -> VirtAddr {
    area_base(id) + index * PAGE_SIZE
}

/// The word at `va` of a page written with generation `gen`.
pub fn pattern(va: u64, gen: u64) -> u64 {
    va ^ gen.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a_0000_a5a5_0000
}

/// Writes the pattern of the page mapped at `va` through `page`.
///
/// # Safety
/// `page` points at a whole writable page.
pub unsafe fn fill_page(page: *mut u64, va: VirtAddr, gen: u64) {
    for i in 0..(PAGE_SIZE / 8) as usize {
        // SAFETY: the caller's promise; `i` is within the page.
        unsafe {
            page.add(i)
                .write_volatile(pattern(va.as_u64() + 8 * i as u64, gen))
        };
    }
}

/// Whether the page mapped at `va` holds its pattern, read through `page`:
/// the offset of the first word that does not.
///
/// # Safety
/// `page` points at a whole readable page.
pub unsafe fn check_page(
    page: *const u64,
    va: VirtAddr,
    gen: u64,
) -> core::result::Result<(), u64> {
    for i in 0..(PAGE_SIZE / 8) as usize {
        // SAFETY: the caller's promise.
        let w = unsafe { page.add(i).read_volatile() };
        if w != pattern(va.as_u64() + 8 * i as u64, gen) {
            return Err(8 * i as u64);
        }
    }
    Ok(())
}

/// The root of the table hierarchy that maps the areas, for the fault
/// handler's lock-free walk (`0`: no area was ever made).
static ANON_ROOT: AtomicU64 = AtomicU64::new(0);

/// Faults that found a migration entry and waited for it.
pub static MIGRATION_WAITS: AtomicU64 = AtomicU64::new(0);

/// Linux's `migration_entry_wait`, for the data-abort handler: whether a
/// fault at `far` is on an anonymous page being migrated. If so, it waits
/// until migration makes the entry again and returns `true`: the faulting
/// access is to be retried (and then sees the page at its new place). A
/// fault on an entry already made again (the migration finished between
/// the fault and this walk) is retried too. Anything else is the caller's.
#[cfg(target_os = "none")]
pub fn migration_entry_wait(far: u64) -> bool {
    use super::granule::KernelGranule;
    use super::translation::KernelTranslation;
    if !(ANON_START..ANON_END).contains(&far) {
        return false;
    }
    let root = ANON_ROOT.load(Ordering::Acquire);
    if root == 0 {
        return false;
    }
    let va = VirtAddr::new(far);
    let mut waited = false;
    loop {
        // SAFETY: table pages are reached through the linear map, which
        // maps all RAM; a table freed under us is still mapped memory
        // (the area's owner is the one faulting, so its tables stay).
        let d = unsafe {
            super::pgtable::read_pte::<_, KernelGranule>(
                &KernelTranslation::LINEAR,
                PhysAddr::new(root),
                va,
            )
        };
        match d {
            Some(d) if d.is_migration() => {
                if !waited {
                    MIGRATION_WAITS.fetch_add(1, Ordering::Relaxed);
                    waited = true;
                }
                core::hint::spin_loop();
            }
            Some(d) => return d.is_valid(),
            None => return false,
        }
    }
}

impl<T: Translation> MemorySystem<T> {
    /// The address space's counters and areas.
    pub fn anon(&self) -> &AnonMm {
        &self.anon
    }

    /// Where the memory of `pa` can be read and written from here (the
    /// linear map in the kernel, the arena in host tests).
    pub(in crate::mm) fn page_ptr(&self, pa: PhysAddr) -> *mut u64 {
        self.pt.translation().table_va(pa) as *mut u64
    }

    /// One page for anonymous memory: Movable first (fault injection
    /// applies).
    pub(in crate::mm) fn alloc_anon_page(&mut self) -> Option<Pfn> {
        if fail_nth_hit(&mut self.fail_nth_alloc) {
            return None;
        }
        self.alloc_movable_first(0)
    }

    /// Maps `pages` fresh pages as a new area, each filled with its
    /// pattern (generation 0): the area's id. All or nothing: `ENOMEM`
    /// (pages or tables), `ENOSPC` (no free slot), nothing changed.
    pub fn anon_map(&mut self, pages: u64) -> Result<usize> {
        if pages == 0 || pages > ANON_SLOT_SIZE / PAGE_SIZE {
            bail!(
                EINVAL,
                "an area holds 1 to {} pages",
                ANON_SLOT_SIZE / PAGE_SIZE
            );
        }
        let Some(id) = self.anon.areas.iter().position(Option::is_none) else {
            bail!(ENOSPC, "{ANON_MAX_AREAS} areas exist already");
        };
        ANON_ROOT.store(self.pt.root_pa().as_u64(), Ordering::Release);
        let mut done = 0;
        while done < pages {
            let n = (pages - done).min(MAP_BATCH as u64);
            if let Err(e) = self.anon_map_batch(id, done, n) {
                self.anon_unmap(id, done);
                return Err(e);
            }
            done += n;
        }
        self.anon.areas[id] = Some(AnonArea { pages, gen: 0 });
        self.anon.nr_pages += pages;
        Ok(id)
    }

    /// Maps pages `first..first + n` of area `id`; on failure nothing of
    /// them is left.
    fn anon_map_batch(&mut self, id: usize, first: u64, n: u64) -> Result<()> {
        let mut pfns = [Pfn::new(0); MAP_BATCH];
        for i in 0..n as usize {
            match self.alloc_anon_page() {
                Some(p) => pfns[i] = p,
                None => {
                    for &p in &pfns[..i] {
                        self.free(p, 0);
                    }
                    bail!(ENOMEM, "out of memory for anonymous pages");
                }
            }
        }
        let start = page_va(id, first);
        let range = VaRange::new(start, start + n * PAGE_SIZE);
        let mut p = self.parts();
        let mut next = pfns[..n as usize].iter();
        let r =
            p.pt.map_pages_with(range, Attributes::KERNEL_RW, &mut p.frames, &mut |_, _| {
                next.next().map(|p| (p.phys(), 1))
            });
        if let Err(e) = r {
            // Tables are reserved before any entry is written: none was.
            for &p in &pfns[..n as usize] {
                self.free(p, 0);
            }
            return Err(e.into());
        }
        for (i, &pfn) in pfns[..n as usize].iter().enumerate() {
            let index = first + i as u64;
            // SAFETY: the page was just allocated (its block materialised
            // by the split), no reference to its struct page is live.
            unsafe { self.memmap.get(pfn) }.set_anon_rmap(id as u64, index);
            // SAFETY: a whole page of ours.
            unsafe { fill_page(self.page_ptr(pfn.phys()), page_va(id, index), 0) };
        }
        Ok(())
    }

    /// Unmaps the first `pages` pages of area `id`, frees them and the
    /// tables left empty.
    fn anon_unmap(&mut self, id: usize, pages: u64) {
        if pages == 0 {
            return;
        }
        let range = VaRange::new(area_base(id), page_va(id, pages));
        let memmap = self.memmap;
        self.pt.for_each_leaf(range, |_, _, _, d| {
            // SAFETY: a mapped anon page: allocated, populated, unshared.
            unsafe { memmap.get(Pfn::down(d.output_address())) }.clear_anon_rmap();
        });
        let p = self.parts();
        let mut frames = p.frames;
        let (floor, ceiling) = (VirtAddr::new(ANON_START), VirtAddr::new(ANON_END));
        p.pt.unmap_hotplug_range_free_tables(
            range.start,
            range.end,
            true,
            None,
            floor,
            ceiling,
            &mut frames,
            p.warnings,
        );
    }

    /// Frees area `id` (`memhog free`).
    pub fn anon_free(&mut self, id: usize) -> Result<()> {
        let area = self
            .anon
            .area(id)
            .ok_or_else(|| err!(ENOENT, "no anonymous area {id}"))?;
        self.anon_unmap(id, area.pages);
        self.anon.areas[id] = None;
        self.anon.nr_pages -= area.pages;
        Ok(())
    }

    /// Records that the owner of area `id` rewrote it with generation `gen`.
    pub fn anon_set_gen(&mut self, id: usize, gen: u64) {
        if let Some(Some(a)) = self.anon.areas.get_mut(id) {
            a.gen = gen;
        }
    }

    /// Checks area `id` through its mapping, walked in software: every
    /// page mapped, at a page that maps back to it (the reverse map), with
    /// its pattern. The first bad address, if any.
    pub fn anon_check(&self, id: usize) -> Result<()> {
        let area = self
            .anon
            .area(id)
            .ok_or_else(|| err!(ENOENT, "no anonymous area {id}"))?;
        for index in 0..area.pages {
            let va = page_va(id, index);
            let Some((pa, _, 3)) = self.pt.translate(va) else {
                bail!(EFAULT, "{va:#x} is not mapped by a page");
            };
            // SAFETY: mapped pages have populated struct pages.
            let page = unsafe { self.memmap.read(Pfn::down(pa)) };
            if page.anon_rmap() != Some((id as u64, index)) {
                bail!(EFAULT, "{va:#x}: the page at {pa:#x} maps back elsewhere");
            }
            // SAFETY: a whole mapped page.
            if let Err(off) = unsafe { check_page(self.page_ptr(pa), va, area.gen) } {
                bail!(EIO, "{:#x}: pattern mismatch", va + off);
            }
        }
        Ok(())
    }

    /// [`anon_check`](Self::anon_check), then every page again through
    /// its own virtual address as the CPU translates it.
    #[cfg(target_os = "none")]
    pub fn anon_check_via_mmu(&self, id: usize) -> Result<()> {
        self.anon_check(id)?;
        let area = self.anon.area(id).expect("checked");
        for index in 0..area.pages {
            let va = page_va(id, index);
            // SAFETY: the area's pages are mapped read-write at `va` (just
            // checked), and stay so while the memory lock is held.
            if let Err(off) = unsafe { check_page(va.as_u64() as *const u64, va, area.gen) } {
                bail!(EIO, "{:#x}: pattern mismatch", va + off);
            }
        }
        Ok(())
    }

    /// The physical page mapped at page `index` of area `id`.
    pub fn anon_page_pfn(&self, id: usize, index: u64) -> Option<Pfn> {
        match self.pt.translate(page_va(id, index)) {
            Some((pa, d, 3)) if d.is_valid() => Some(Pfn::down(pa)),
            _ => None,
        }
    }

    /// Whether the page entry of `va` is a migration entry.
    pub fn anon_is_migrating(&self, va: VirtAddr) -> bool {
        self.pt.pte(va).is_some_and(|d| d.is_migration())
    }
}
