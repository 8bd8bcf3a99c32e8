//! The machine's one memory system, behind the one memory lock. Init
//! installs it; everything else reaches it through [`with_mm`] and passes
//! it on as a parameter, so that the code below runs on the host over any
//! [`MemorySystem`].

use super::system::MemorySystem;
use super::translation::KernelTranslation;
use crate::error::Result;

pub type KernelMm = MemorySystem<KernelTranslation>;

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
    Ok(f(mm))
}
