//! Stage 1 descriptors (Arm ARM D8.3) as types.

use bitflags::bitflags;

use crate::mm::addr::PhysAddr;

bitflags! {
    /// Descriptor bits other than the output address.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Attributes: u64 {
        const VALID = 1 << 0;
        /// Table at levels 0-2, page at level 3; clear means block.
        const TABLE_OR_PAGE = 1 << 1;
        const ATTR_INDEX_MASK = 7 << 2;
        const USER = 1 << 6;
        const READ_ONLY = 1 << 7;
        const INNER_SHAREABLE = 3 << 8;
        const ACCESSED = 1 << 10;
        const NON_GLOBAL = 1 << 11;
        const CONTIGUOUS = 1 << 52;
        const PXN = 1 << 53;
        const UXN = 1 << 54;
    }
}

/// MAIR_EL1 attribute indices (`init::early_map::MAIR` is built from them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    DeviceNgnre = 0,
    Normal = 1,
    NormalNc = 2,
}

impl Attributes {
    pub const fn mem_type(t: MemType) -> Self {
        Self::from_bits_retain((t as u64) << 2)
    }

    /// Normal memory, read-write, never executable (Linux's PAGE_KERNEL).
    pub const KERNEL_RW: Self = Self::from_bits_retain(
        Self::mem_type(MemType::Normal).bits()
            | Self::INNER_SHAREABLE.bits()
            | Self::ACCESSED.bits()
            | Self::PXN.bits()
            | Self::UXN.bits(),
    );
    pub const KERNEL_RO: Self =
        Self::from_bits_retain(Self::KERNEL_RW.bits() | Self::READ_ONLY.bits());
    /// Kernel text: read-only, executable at EL1 only.
    pub const KERNEL_ROX: Self = Self::from_bits_retain(
        Self::mem_type(MemType::Normal).bits()
            | Self::INNER_SHAREABLE.bits()
            | Self::ACCESSED.bits()
            | Self::READ_ONLY.bits()
            | Self::UXN.bits(),
    );
    pub const DEVICE: Self = Self::from_bits_retain(
        Self::mem_type(MemType::DeviceNgnre).bits()
            | Self::ACCESSED.bits()
            | Self::PXN.bits()
            | Self::UXN.bits(),
    );

    /// The bits a leaf keeps, whatever the level (no valid/type/contiguous).
    pub fn leaf_attrs(self) -> Self {
        self - Self::VALID - Self::TABLE_OR_PAGE - Self::CONTIGUOUS
    }

    pub fn attr_index(self) -> u64 {
        (self & Self::ATTR_INDEX_MASK).bits() >> 2
    }
}

/// Bits 47..12 hold the output address; smaller granules' low bits are zero.
pub const OUTPUT_ADDRESS_MASK: u64 = 0x0000_ffff_ffff_f000;

/// Software bit 58 (ignored by the MMU): see [`Descriptor::free_pending`].
const FREE_PENDING: u64 = 1 << 58;

/// One 64-bit translation table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Descriptor(pub u64);

impl Descriptor {
    pub const EMPTY: Self = Self(0);

    pub fn table(pa: PhysAddr) -> Self {
        Self(
            (pa.as_u64() & OUTPUT_ADDRESS_MASK)
                | (Attributes::VALID | Attributes::TABLE_OR_PAGE).bits(),
        )
    }

    /// A block (levels 0-2) or page (level 3) descriptor.
    pub fn leaf(pa: PhysAddr, attrs: Attributes, level: usize) -> Self {
        let mut bits = (pa.as_u64() & OUTPUT_ADDRESS_MASK) | (attrs | Attributes::VALID).bits();
        if level == 3 {
            bits |= Attributes::TABLE_OR_PAGE.bits();
        } else {
            bits &= !Attributes::TABLE_OR_PAGE.bits();
        }
        Self(bits)
    }

    pub fn attrs(self) -> Attributes {
        Attributes::from_bits_retain(self.0 & !OUTPUT_ADDRESS_MASK)
    }

    pub fn output_address(self) -> PhysAddr {
        PhysAddr::new(self.0 & OUTPUT_ADDRESS_MASK)
    }

    pub fn is_valid(self) -> bool {
        self.0 & Attributes::VALID.bits() != 0
    }

    /// A pointer to the next level (only meaningful above level 3).
    pub fn is_table(self, level: usize) -> bool {
        level < 3 && self.is_valid() && self.0 & Attributes::TABLE_OR_PAGE.bits() != 0
    }

    pub fn is_leaf(self, level: usize) -> bool {
        self.is_valid() && !self.is_table(level)
    }

    /// A leaf the teardown has cleared and whose backing it frees once the
    /// TLB invalidation covering it is done: invalid (so ignored by the MMU,
    /// which reads no other bit of an invalid descriptor, and by every walk
    /// here), the output kept, software bit 58 set. Never outlives one
    /// teardown call.
    pub(super) fn free_pending(self) -> Self {
        Self((self.0 & !Attributes::VALID.bits()) | FREE_PENDING)
    }

    pub(super) fn is_free_pending(self) -> bool {
        !self.is_valid() && self.0 & FREE_PENDING != 0
    }

    pub fn is_contiguous(self) -> bool {
        self.0 & Attributes::CONTIGUOUS.bits() != 0
    }
}
