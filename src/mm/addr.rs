//! Physical and virtual addresses and page frame numbers as the mm API
//! passes them: three newtypes over `u64` that cannot be mixed up, with the
//! conversions between them (through the kernel layout: the linear map, the
//! vmemmap and the page shift) spelled out. Arithmetic on them is what
//! addresses allow: an address plus or minus a byte (or page) count is an
//! address, the difference of two is a count.

use core::fmt;
use core::ops::{Add, AddAssign, Sub, SubAssign};

use super::layout::{PAGE_END, PAGE_OFFSET, PAGE_SHIFT, STRUCT_PAGE_SHIFT, VMEMMAP_START};

/// The arithmetic, alignment and formatting every address type shares.
macro_rules! address_type {
    ($name:ident, $unit:literal) => {
        impl $name {
            pub const fn new(value: u64) -> Self {
                Self(value)
            }

            pub const fn as_u64(self) -> u64 {
                self.0
            }

            #[doc = concat!("Rounds down to a multiple of `align` ", $unit, " (a power of two).")]
            pub const fn align_down(self, align: u64) -> Self {
                // A wrong mask would silently misplace an address: checked
                // in every build (a popcount).
                assert!(align.is_power_of_two());
                Self(self.0 & !(align - 1))
            }

            #[doc = concat!("Rounds up to a multiple of `align` ", $unit, " (a power of two).")]
            pub const fn align_up(self, align: u64) -> Self {
                assert!(align.is_power_of_two());
                Self((self.0 + align - 1) & !(align - 1))
            }

            #[doc = concat!("Whether a multiple of `align` ", $unit, " (a power of two).")]
            pub const fn is_aligned(self, align: u64) -> bool {
                assert!(align.is_power_of_two());
                self.0 & (align - 1) == 0
            }

            /// `self + n`, `None` on overflow.
            pub const fn checked_add(self, n: u64) -> Option<Self> {
                match self.0.checked_add(n) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl Add<u64> for $name {
            type Output = Self;
            fn add(self, n: u64) -> Self {
                Self(self.0 + n)
            }
        }

        impl AddAssign<u64> for $name {
            fn add_assign(&mut self, n: u64) {
                self.0 += n;
            }
        }

        impl Sub<u64> for $name {
            type Output = Self;
            fn sub(self, n: u64) -> Self {
                Self(self.0 - n)
            }
        }

        impl SubAssign<u64> for $name {
            fn sub_assign(&mut self, n: u64) {
                self.0 -= n;
            }
        }

        /// The distance between two, in the type's unit.
        impl Sub for $name {
            type Output = u64;
            fn sub(self, other: Self) -> u64 {
                self.0 - other.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name))
                    .field(&format_args!("{:#x}", self.0))
                    .finish()
            }
        }

        /// As the number, with the caller's flags (`{:#x}`, `{:016x}`).
        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

/// A physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(u64);

/// A kernel virtual address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(u64);

/// A page frame number: a physical address in pages of the kernel granule.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Pfn(u64);

address_type!(PhysAddr, "bytes");
address_type!(VirtAddr, "bytes");
address_type!(Pfn, "pages");

impl VirtAddr {
    /// The physical address of a linear-map address (Linux's `__pa`);
    /// `None` outside the linear map.
    pub const fn linear_to_phys(self) -> Option<PhysAddr> {
        if self.0 >= PAGE_OFFSET && self.0 < PAGE_END {
            Some(PhysAddr(self.0 - PAGE_OFFSET))
        } else {
            None
        }
    }
}

impl PhysAddr {
    /// Its address in the linear map (Linux's `__va`; `PHYS_OFFSET` is 0).
    pub const fn to_virt(self) -> VirtAddr {
        VirtAddr(PAGE_OFFSET + self.0)
    }
}

impl VirtAddr {
    pub fn from_ptr<T>(ptr: *const T) -> Self {
        Self(ptr as u64)
    }

    pub const fn as_ptr<T>(self) -> *const T {
        self.0 as *const T
    }

    pub const fn as_mut_ptr<T>(self) -> *mut T {
        self.0 as *mut T
    }
}

/// `pa` is not page aligned: no pfn names it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotPageAligned(pub PhysAddr);

impl Pfn {
    /// The frame holding `pa` (Linux's `PFN_DOWN`, `PHYS_PFN`).
    pub const fn down(pa: PhysAddr) -> Self {
        Self(pa.0 >> PAGE_SHIFT)
    }

    /// The first frame at or above `pa` (Linux's `PFN_UP`).
    pub const fn up(pa: PhysAddr) -> Self {
        Self(pa.0.div_ceil(1 << PAGE_SHIFT))
    }

    /// The frame's first byte (Linux's `PFN_PHYS`).
    pub const fn phys(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }

    /// The virtual address of its struct page in the vmemmap (Linux's
    /// `pfn_to_page`).
    pub const fn page_va(self) -> VirtAddr {
        VirtAddr(VMEMMAP_START + (self.0 << STRUCT_PAGE_SHIFT))
    }

    /// The frame whose struct page is at `va` in the vmemmap (Linux's
    /// `page_to_pfn`).
    pub const fn from_page_va(va: VirtAddr) -> Self {
        Self((va.0 - VMEMMAP_START) >> STRUCT_PAGE_SHIFT)
    }

    /// `start..end`, one frame at a time (a `Range<Pfn>` cannot iterate).
    pub fn range(start: Pfn, end: Pfn) -> impl DoubleEndedIterator<Item = Pfn> + Clone {
        (start.0..end.0).map(Pfn)
    }
}

impl From<Pfn> for PhysAddr {
    fn from(pfn: Pfn) -> Self {
        pfn.phys()
    }
}

/// Exact: only a page-aligned address is a frame.
impl TryFrom<PhysAddr> for Pfn {
    type Error = NotPageAligned;

    fn try_from(pa: PhysAddr) -> Result<Self, NotPageAligned> {
        if pa.is_aligned(1 << PAGE_SHIFT) {
            Ok(Pfn::down(pa))
        } else {
            Err(NotPageAligned(pa))
        }
    }
}

/// The vmemmap that describes `[start, end)`: the virtual range of their
/// struct pages, as Linux's `vmemmap_populate` and `vmemmap_free` take it.
pub const fn memmap_range(start: Pfn, end: Pfn) -> (VirtAddr, VirtAddr) {
    (start.page_va(), end.page_va())
}

/// A physical range `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PhysRange {
    pub base: PhysAddr,
    pub size: u64,
}

impl PhysRange {
    pub const fn new(base: PhysAddr, size: u64) -> Self {
        Self { base, size }
    }

    /// `[start, end)`; empty when `end <= start`.
    pub fn from_bounds(start: PhysAddr, end: PhysAddr) -> Self {
        Self {
            base: start,
            size: end.0.saturating_sub(start.0),
        }
    }

    /// One past the last byte.
    pub const fn end(&self) -> PhysAddr {
        PhysAddr(self.base.0 + self.size)
    }

    pub fn contains(&self, pa: PhysAddr) -> bool {
        self.base <= pa && pa < self.end()
    }

    /// Whether all of `other` lies inside.
    pub fn covers(&self, other: &PhysRange) -> bool {
        self.base <= other.base && other.end() <= self.end()
    }

    pub fn overlaps(&self, other: &PhysRange) -> bool {
        self.base < other.end() && other.base < self.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::layout::{PAGES_PER_SECTION, PAGE_SIZE, SECTION_SIZE};

    #[test]
    fn conversions_follow_the_layout() {
        let pa = PhysAddr::new(0x4000_0000 + 3 * PAGE_SIZE + 5);
        assert_eq!(pa.to_virt().as_u64(), PAGE_OFFSET + pa.as_u64());
        let pfn = Pfn::down(pa);
        assert_eq!(pfn.as_u64(), (0x4000_0000 >> PAGE_SHIFT) + 3);
        assert_eq!(Pfn::up(pa), pfn + 1);
        assert_eq!(Pfn::up(pfn.phys()), pfn);
        assert_eq!(PhysAddr::from(pfn), pa.align_down(PAGE_SIZE));
        assert_eq!(Pfn::try_from(pa), Err(NotPageAligned(pa)));
        assert_eq!(Pfn::try_from(pfn.phys()), Ok(pfn));
        assert_eq!(pfn.page_va() - Pfn::new(0).page_va(), pfn.as_u64() * 64);
        assert_eq!(Pfn::from_page_va(pfn.page_va()), pfn);
        let (s, e) = memmap_range(pfn, pfn + PAGES_PER_SECTION);
        assert_eq!(e - s, SECTION_SIZE >> (PAGE_SHIFT - STRUCT_PAGE_SHIFT));
        assert_eq!(Pfn::range(pfn, pfn + 3).last(), Some(pfn + 2));
        assert_eq!(Pfn::range(pfn, pfn).count(), 0);
    }

    #[test]
    fn arithmetic_alignment_and_formatting() {
        let a = VirtAddr::new(0xffff_0000_1234_5678);
        assert_eq!(a.align_down(0x1000), VirtAddr::new(0xffff_0000_1234_5000));
        assert_eq!(a.align_up(0x1000), VirtAddr::new(0xffff_0000_1234_6000));
        assert!(a.align_up(0x1000).is_aligned(0x1000) && !a.is_aligned(0x1000));
        assert_eq!((a + 8) - a, 8);
        assert_eq!(a + 8 - 8, a);
        assert_eq!(VirtAddr::new(u64::MAX).checked_add(1), None);
        let mut p = PhysAddr::new(0x1000);
        p += 0x1000;
        p -= 0x800;
        assert_eq!(p, PhysAddr::new(0x1800));
        assert_eq!(format!("{p:?}"), "PhysAddr(0x1800)");
        assert_eq!(format!("{p:#x} {p:08x}"), "0x1800 00001800");
        assert_eq!(format!("{:?}", Pfn::new(0x40)), "Pfn(0x40)");
        let ptr = a.as_mut_ptr::<u64>();
        assert_eq!(VirtAddr::from_ptr(ptr), a);
    }

    #[test]
    fn ranges() {
        let r = PhysRange::new(PhysAddr::new(0x1000), 0x2000);
        assert_eq!(r.end(), PhysAddr::new(0x3000));
        assert_eq!(PhysRange::from_bounds(r.base, r.end()), r);
        assert_eq!(PhysRange::from_bounds(r.end(), r.base).size, 0);
        assert!(r.contains(PhysAddr::new(0x2fff)) && !r.contains(r.end()));
        let inner = PhysRange::new(PhysAddr::new(0x2000), 0x1000);
        assert!(r.covers(&inner) && !inner.covers(&r));
        assert!(r.overlaps(&inner));
        assert!(!r.overlaps(&PhysRange::new(r.end(), 0x1000)));
    }
}
