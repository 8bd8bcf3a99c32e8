//! PSCI through the conduit the device tree names (`/psci` `method`).

use core::sync::atomic::{AtomicU8, Ordering};

pub use crate::platform::Conduit;

static CONDUIT: AtomicU8 = AtomicU8::new(0);

pub fn init(conduit: Conduit) {
    CONDUIT.store(conduit as u8, Ordering::Relaxed);
}

pub fn conduit() -> Option<Conduit> {
    match CONDUIT.load(Ordering::Relaxed) {
        1 => Some(Conduit::Hvc),
        2 => Some(Conduit::Smc),
        _ => None,
    }
}

/// PSCI CPU_ON: starts the CPU with MPIDR `mpidr` at physical `entry`,
/// with `context` in its x0.
pub fn cpu_on(mpidr: u64, entry: u64, context: u64) -> Result<(), smccc::psci::Error> {
    #[cfg(target_os = "none")]
    match conduit() {
        Some(Conduit::Hvc) => smccc::psci::cpu_on::<smccc::Hvc>(mpidr, entry, context),
        Some(Conduit::Smc) => smccc::psci::cpu_on::<smccc::Smc>(mpidr, entry, context),
        None => Err(smccc::psci::Error::NotSupported),
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (mpidr, entry, context);
        Err(smccc::psci::Error::NotSupported)
    }
}

/// PSCI SYSTEM_RESET; halts if there is no PSCI or it returns.
pub fn system_reset() -> ! {
    #[cfg(target_os = "none")]
    {
        let _ = match conduit() {
            Some(Conduit::Hvc) => smccc::psci::system_reset::<smccc::Hvc>(),
            Some(Conduit::Smc) => smccc::psci::system_reset::<smccc::Smc>(),
            None => Ok(()),
        };
        crate::arch::aarch64::halt()
    }
    #[cfg(not(target_os = "none"))]
    panic!("system_reset off target")
}

/// PSCI SYSTEM_OFF; halts if there is no PSCI or it returns.
pub fn system_off() -> ! {
    #[cfg(target_os = "none")]
    {
        let _ = match conduit() {
            Some(Conduit::Hvc) => smccc::psci::system_off::<smccc::Hvc>(),
            Some(Conduit::Smc) => smccc::psci::system_off::<smccc::Smc>(),
            None => Ok(()),
        };
        crate::arch::aarch64::halt()
    }
    #[cfg(not(target_os = "none"))]
    panic!("system_off off target")
}
