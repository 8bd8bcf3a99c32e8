//! The page-table walker: one generic implementation over the translation
//! granule, reaching table pages through [`Translation`] and frames through
//! [`FrameAllocator`](crate::mm::frame::FrameAllocator), so that it runs the
//! same on the CPU and on a simulated arena in host tests.

pub mod descriptor;
pub mod dump;
mod pte;
#[cfg(test)]
mod tests;
pub mod unmap;
mod walker;

pub use descriptor::{Attributes, Descriptor, MemType};
pub use pte::read_pte;
pub use walker::{MapError, MapHints, PageTable, TableStats, Translation, VaRange};
