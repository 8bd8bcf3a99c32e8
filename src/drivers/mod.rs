//! Device drivers. Only the register access is target-specific; the rest
//! builds on the host.

pub mod gic;
pub mod pl011;
pub mod psci;
