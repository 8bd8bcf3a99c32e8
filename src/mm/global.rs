//! The machine's one memory system, behind the one memory lock. Init
//! installs it; everything else reaches it through [`with_mm`] and passes
//! it on as a parameter, so that the code below runs on the host over any
//! [`MemorySystem`].

use super::addr::Pfn;
use super::page::{Memmap, Zone};
use super::pcp::Pcp;
use super::system::MemorySystem;
use super::translation::KernelTranslation;
use crate::arch::lock::FairLock;
use crate::error::Result;

pub type KernelMm = MemorySystem<KernelTranslation>;

// Fair (a waiter out of patience gets a ticket and no one overtakes it),
// as are the heap's and the per-CPU lists' locks: `arch::lock`, whose
// comment says why it is not a ticket lock from the first wait; figures
// in BENCHMARKS.md ("The memory lock: fair or not").
static MM: FairLock<Option<KernelMm>> = FairLock::new(None);

/// What the per-CPU fast paths reach without the memory lock.
struct Local {
    pcp: &'static Pcp,
    memmap: Memmap,
}

static LOCAL: spin::Once<Local> = spin::Once::new();

/// Hands the booted memory system over; from now on it lives behind the lock.
pub fn install(mm: KernelMm) {
    LOCAL.call_once(|| Local {
        pcp: mm.pcp(),
        memmap: *mm.buddy().memmap(),
    });
    *MM.lock() = Some(mm);
}

/// `2^order` pages from the first of `zones` that has them, through this
/// CPU's page lists: the memory lock only to refill a list (Linux's
/// `rmqueue_pcplist`). `None` when no zone has them, lists drained.
pub fn alloc(order: u32, zones: &[Zone]) -> Option<Pfn> {
    let cpu = crate::arch::cpu_id();
    let local = LOCAL.get()?;
    local
        .pcp
        .alloc_fast(&local.memmap, cpu, order, zones)
        .or_else(|| with_mm(|m| m.pcp_alloc(cpu, order, zones)).ok().flatten())
}

/// Gives back what [`alloc`] handed out, onto this CPU's lists when it
/// can (Linux's `free_unref_page`); `false` for a free the page allocator
/// refused (logged and counted there).
pub fn free(pfn: Pfn, order: u32) -> bool {
    let cpu = crate::arch::cpu_id();
    let Some(local) = LOCAL.get() else {
        return false;
    };
    local.pcp.free_fast(&local.memmap, cpu, pfn, order)
        || with_mm(|m| m.pcp_free(cpu, pfn, order)).unwrap_or(false)
}

/// Runs `f` on the machine's memory under the lock; `EAGAIN` before boot
/// installed it. Never call it with the lock held (it is not re-entrant).
pub fn with_mm<R>(f: impl FnOnce(&mut KernelMm) -> R) -> Result<R> {
    let mut guard = MM.lock();
    let mm = guard
        .as_mut()
        .ok_or_else(|| crate::err!(EAGAIN, "memory is not initialised yet"))?;
    // Before: what was freed since (outside the lock) is given back, so
    // `f` sees it; after: what `f` used is replaced.
    top_up_heap(mm);
    let r = f(mm);
    top_up_heap(mm);
    mm.pcp().update_hints(mm.buddy());
    Ok(r)
}

/// The heap's spare block replaced, its empty blocks given back: done here,
/// with the lock held, because the heap itself cannot take it.
fn top_up_heap(mm: &mut KernelMm) {
    let Some(heap) = super::heap::kernel() else {
        return;
    };
    let mm = core::cell::RefCell::new(mm);
    heap.top_up(
        || {
            let pa = mm.borrow_mut().alloc_pages(super::heap::BLOCK_ORDER)?;
            Some(pa.to_virt())
        },
        |va| {
            if let Some(pa) = va.linear_to_phys() {
                mm.borrow_mut().free_pages(pa, super::heap::BLOCK_ORDER);
            }
        },
    );
}
