//! The kernel's virtual memory layout, after Linux's arm64 one
//! (Documentation/arch/arm64/memory.rst), derived from the granule and a
//! 48-bit VA. Every fixed address of the kernel lives here.

use super::granule::{Granule, KernelGranule};

pub const VA_BITS: u32 = 48;
pub const PAGE_SHIFT: u32 = KernelGranule::PAGE_SHIFT;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
pub const SECTION_SHIFT: u32 = KernelGranule::SECTION_SHIFT;
pub const SECTION_SIZE: u64 = 1 << SECTION_SHIFT;
pub const PAGES_PER_SECTION: u64 = SECTION_SIZE / PAGE_SIZE;
/// A memory block (the unit of `/sys/devices/system/memory`) is one section.
pub const MEMORY_BLOCK_SIZE: u64 = SECTION_SIZE;

/// Start of the linear map: `__va(pa) == PAGE_OFFSET + pa` (PHYS_OFFSET is 0
/// so that the mapping needs no run-time base).
pub const PAGE_OFFSET: u64 = !0u64 << VA_BITS;
/// The linear map covers the lower half of the kernel VA space.
pub const PAGE_END: u64 = !0u64 << (VA_BITS - 1);
/// Highest physical address the linear map (and vmemmap) can describe.
pub const PHYS_LIMIT: u64 = PAGE_END - PAGE_OFFSET;

/// Kernel image, at the base of the vmalloc area like Linux's KIMAGE_VADDR.
pub const KIMAGE_VADDR: u64 = PAGE_END + 0x8000_0000;
/// Secondary CPUs' stacks, each with an unmapped guard page below it.
pub const KSTACKS_START: u64 = KIMAGE_VADDR + (1 << 30);
pub const KSTACKS_END: u64 = IOREMAP_START;
/// Device mappings (ioremap) are handed out upwards from here.
pub const IOREMAP_START: u64 = PAGE_END + (1 << 32);
pub const IOREMAP_END: u64 = IOREMAP_START + (1 << 40);

/// Anonymous memory (`mm::anon`, the `memhog` areas): a kernel range of its
/// own, one slot of `ANON_SLOT_SIZE` per area.
pub const ANON_START: u64 = PAGE_END + (1 << 44);
pub const ANON_SLOT_SIZE: u64 = 1 << 36;
pub const ANON_MAX_AREAS: u64 = 64;
pub const ANON_END: u64 = ANON_START + ANON_SLOT_SIZE * ANON_MAX_AREAS;

/// `struct Page` is 64 bytes.
pub const STRUCT_PAGE_SHIFT: u32 = 6;
/// The vmemmap describes every pfn below PHYS_LIMIT.
pub const VMEMMAP_SIZE: u64 = PHYS_LIMIT >> (PAGE_SHIFT - STRUCT_PAGE_SHIFT);
/// Followed by a guard region of the same size, as in Linux's layout.
pub const VMEMMAP_START: u64 = 0u64.wrapping_sub(2 * VMEMMAP_SIZE);
pub const VMEMMAP_END: u64 = VMEMMAP_START + VMEMMAP_SIZE;

/// Buddy orders go up to 4 MiB blocks whatever the granule.
pub const MAX_ORDER: u32 = 22 - PAGE_SHIFT;

pub const fn align_down(x: u64, a: u64) -> u64 {
    x & !(a - 1)
}

pub const fn align_up(x: u64, a: u64) -> u64 {
    (x + a - 1) & !(a - 1)
}

/// A named address where a region starts or ends (ptdump's `---[ name ]---`).
pub struct Marker {
    pub addr: u64,
    pub name: &'static str,
}

/// The regions, in address order, as printed at boot and marked in ptdump
/// (start and end markers, as Linux's arm64 ptdump names them).
pub const MARKERS: &[Marker] = &[
    Marker {
        addr: PAGE_OFFSET,
        name: "Linear Mapping start",
    },
    Marker {
        addr: PAGE_END,
        name: "Linear Mapping end",
    },
    Marker {
        addr: KIMAGE_VADDR,
        name: "Kernel Image start",
    },
    Marker {
        addr: KSTACKS_START,
        name: "Kernel Image end",
    },
    Marker {
        addr: KSTACKS_START,
        name: "Kernel stacks start",
    },
    Marker {
        addr: KSTACKS_END,
        name: "Kernel stacks end",
    },
    Marker {
        addr: IOREMAP_START,
        name: "ioremap start",
    },
    Marker {
        addr: IOREMAP_END,
        name: "ioremap end",
    },
    Marker {
        addr: VMEMMAP_START,
        name: "vmemmap start",
    },
    Marker {
        addr: VMEMMAP_END,
        name: "vmemmap end",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_linux_for_the_granule() {
        assert_eq!(PAGE_OFFSET, 0xffff_0000_0000_0000);
        assert_eq!(PAGE_END, 0xffff_8000_0000_0000);
        if PAGE_SHIFT == 12 {
            assert_eq!(VMEMMAP_START, 0xffff_fc00_0000_0000);
            assert_eq!(VMEMMAP_END, 0xffff_fe00_0000_0000);
            assert_eq!(MAX_ORDER, 10);
        }
        // Regions are ordered and disjoint.
        for w in MARKERS.windows(2) {
            assert!(w[0].addr <= w[1].addr);
        }
    }
}
