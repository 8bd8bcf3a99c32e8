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

/// PSCI SYSTEM_OFF (`off`) or SYSTEM_RESET; halts if there is no PSCI or
/// the call returns.
fn end_machine(off: bool) -> ! {
    #[cfg(target_os = "none")]
    {
        let _ = match (conduit(), off) {
            (Some(Conduit::Hvc), true) => smccc::psci::system_off::<smccc::Hvc>(),
            (Some(Conduit::Smc), true) => smccc::psci::system_off::<smccc::Smc>(),
            (Some(Conduit::Hvc), false) => smccc::psci::system_reset::<smccc::Hvc>(),
            (Some(Conduit::Smc), false) => smccc::psci::system_reset::<smccc::Smc>(),
            (None, _) => Ok(()),
        };
        crate::arch::aarch64::halt()
    }
    #[cfg(not(target_os = "none"))]
    panic!(
        "PSCI {} off target",
        if off { "SYSTEM_OFF" } else { "SYSTEM_RESET" }
    )
}

/// PSCI SYSTEM_OFF; halts if there is no PSCI or it returns.
pub fn system_off() -> ! {
    end_machine(true)
}

/// PSCI SYSTEM_RESET; halts if there is no PSCI or it returns.
pub fn system_reset() -> ! {
    end_machine(false)
}
