//! The memory-management core: portable Rust that reaches the CPU only
//! through [`crate::arch`], and so runs unchanged in host tests.

pub mod addr;
pub mod altmap;
pub mod anon;
pub mod buddy;
pub mod frame;
pub mod global;
pub mod granule;
pub mod heap;
pub mod hotplug;
#[cfg(test)]
mod hotplug_tests;
pub mod iomem;
pub mod ioremap;
pub mod kmem;
pub mod layout;
pub mod memblock;
pub mod migrate;
pub mod node;
#[cfg(test)]
pub(crate) mod node_tests;
pub mod online;
pub mod page;
pub mod pcp;
pub mod pgtable;
pub mod system;
#[cfg(test)]
pub mod test_system;
#[cfg(test)]
pub mod testing;
pub mod translation;
pub mod vmemmap;
pub mod vmstat;
