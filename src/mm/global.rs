//! The machine's one memory system, behind the one memory lock. Init
//! installs it; everything else reaches it through [`with_mm`] and passes
//! it on as a parameter, so that the code below runs on the host over any
//! [`MemorySystem`].

use super::system::MemorySystem;
use super::translation::KernelTranslation;
use crate::error::Result;

pub type KernelMm = MemorySystem<KernelTranslation>;

// A ticket lock (fair by construction) was tried: under TCG, with more
// vCPUs than host cores, the CPU holding the next ticket is often not
// running and `stress` slowed past its bound. Fairness is left for a lock
// that tolerates preempted waiters.
static MM: spin::Mutex<Option<KernelMm>> = spin::Mutex::new(None);

/// Hands the booted memory system over; from now on it lives behind the lock.
pub fn install(mm: KernelMm) {
    *MM.lock() = Some(mm);
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
