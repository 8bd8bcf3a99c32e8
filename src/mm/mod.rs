//! The memory-management core: portable Rust that reaches the CPU only
//! through [`crate::arch`], and so runs unchanged in host tests.

pub mod altmap;
pub mod frame;
pub mod granule;
pub mod layout;
pub mod pgtable;
