//! The translation granule under test (`HPK_GRANULE`), the sizes that follow
//! from it, and the kernel built for it: tests compute expected sizes and
//! addresses from here rather than hard-coding the 4K values.

use std::path::PathBuf;

/// The translation granule the console tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granule {
    K4,
    K16,
    K64,
}

impl Granule {
    /// `4k`, `16k` or `64k`, as in `target/granule-*` and `HPK_GRANULE`.
    pub fn name(self) -> &'static str {
        match self {
            Granule::K4 => "4k",
            Granule::K16 => "16k",
            Granule::K64 => "64k",
        }
    }

    /// `4K`, `16K` or `64K`, as in the boot banner.
    pub fn label(self) -> &'static str {
        match self {
            Granule::K4 => "4K",
            Granule::K16 => "16K",
            Granule::K64 => "64K",
        }
    }

    pub fn page_shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    pub fn page_size(self) -> u64 {
        1 << self.page_shift()
    }

    /// The memory block (and section) size: 128 MiB, 512 MiB with 64K.
    pub fn block_size(self) -> u64 {
        match self {
            Granule::K4 | Granule::K16 => 128 << 20,
            Granule::K64 => 512 << 20,
        }
    }

    /// Translation levels of the 48-bit VA: 4, or 3 with 64K.
    pub fn levels(self) -> u32 {
        match self {
            Granule::K4 | Granule::K16 => 4,
            Granule::K64 => 3,
        }
    }

    /// The size a PMD (level 2) block maps: 2 MiB, 32 MiB, 512 MiB.
    pub fn pmd_block_size(self) -> u64 {
        1 << (2 * self.page_shift() - 3)
    }

    /// Start of the vmemmap: Linux's `VMEMMAP_START` for 48-bit VA and
    /// 64-byte struct pages, `-(1 << (48 - (PAGE_SHIFT - 6)))`.
    pub fn vmemmap_start(self) -> u64 {
        0u64.wrapping_sub(1 << (48 - (self.page_shift() - 6)))
    }
}

/// The granule selected by `HPK_GRANULE`: unset, empty or `4k` is 4K (the
/// kernel of [`kernel_elf`], CPUs as each test asks); `16k` and `64k` boot
/// [`granule_kernel`] with `-cpu max` whatever the test asked for.
pub fn granule() -> Granule {
    match std::env::var("HPK_GRANULE").as_deref() {
        Err(_) | Ok("") | Ok("4k") => Granule::K4,
        Ok("16k") => Granule::K16,
        Ok("64k") => Granule::K64,
        Ok(other) => panic!("HPK_GRANULE={other:?}: want 4k, 16k or 64k"),
    }
}

/// The selected granule's page size in bytes.
pub fn page_size() -> u64 {
    granule().page_size()
}

/// The selected granule's memory block size in bytes
/// (`block_size_bytes`).
pub fn block_size() -> u64 {
    granule().block_size()
}

/// One memory block, in kB.
pub fn block_kb() -> u64 {
    block_size() >> 10
}

/// The struct pages (64 bytes a page) of `bytes` of memory, in kB.
pub fn struct_pages_kb(bytes: u64) -> u64 {
    bytes / page_size() * 64 / 1024
}

/// The struct pages of one memory block, in kB: 2048 (4K), 512 (16K),
/// 512 (64K: 8192 pages in 512 MiB).
pub fn struct_pages_per_block_kb() -> u64 {
    struct_pages_kb(block_size())
}

/// The memory block holding physical address `addr`.
pub fn block_id(addr: u64) -> u64 {
    addr / block_size()
}

/// Where QEMU virt's RAM starts.
pub const RAM_BASE: u64 = 0x4000_0000;

/// The memory blocks of boot RAM `[RAM_BASE, RAM_BASE + bytes)`: 8..16 for
/// 1 GiB with 128 MiB blocks, 2..4 with 512 MiB blocks.
pub fn boot_blocks(bytes: u64) -> std::ops::Range<u64> {
    block_id(RAM_BASE)..block_id(RAM_BASE + bytes)
}

/// The virtual address of the struct page of `pfn`.
pub fn vmemmap_va(pfn: u64) -> u64 {
    granule().vmemmap_start() + pfn * 64
}

/// The kernel ELF: `$KERNEL_ELF`, else the release build in this tree.
pub fn kernel_elf() -> PathBuf {
    let path = match std::env::var_os("KERNEL_ELF") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/aarch64-unknown-none-softfloat/release/kernel"),
    };
    assert!(
        path.is_file(),
        "kernel ELF {} not found: build it with `cargo build --release` or set KERNEL_ELF",
        path.display()
    );
    path
}

/// The kernel built for `granule` (`4k`, `16k`, `64k`) by `scripts/test`;
/// 4K is the default build.
pub fn granule_kernel(granule: &str) -> PathBuf {
    if granule == "4k" {
        return kernel_elf();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "target/granule-{granule}/aarch64-unknown-none-softfloat/release/kernel"
    ))
}
