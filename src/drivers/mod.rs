//! Device drivers. Only the register access is target-specific; the rest
//! builds on the host.

#[cfg(target_os = "none")]
pub mod gic;
pub mod pci;
pub mod pl011;
pub mod psci;
#[cfg(target_os = "none")]
pub mod virtio_hal;
pub mod virtio_mem;
