//! How the kernel reaches its own table pages: through the boot identity
//! map until the linear map is live, through the linear map after.

use super::addr::PhysAddr;
use super::layout::PAGE_OFFSET;
use super::pgtable::{Descriptor, Translation};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelTranslation {
    offset: u64,
}

impl KernelTranslation {
    pub const IDENTITY: Self = Self { offset: 0 };
    pub const LINEAR: Self = Self {
        offset: PAGE_OFFSET,
    };
}

impl Translation for KernelTranslation {
    fn table_va(&self, pa: PhysAddr) -> *mut Descriptor {
        (pa.as_u64() + self.offset) as *mut Descriptor
    }
}
