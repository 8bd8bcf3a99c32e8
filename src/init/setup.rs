//! `setup_arch`: find and read the device tree and the command line, start
//! the UART and the firmware interface, and describe memory in memblock.

use crate::arch::aarch64 as cpu;
use crate::drivers::{pl011, psci};
use crate::mm::addr::{PhysAddr, PhysRange, VirtAddr};
use crate::mm::layout::{PAGE_SIZE, PHYS_LIMIT, VA_BITS};
use crate::mm::memblock::Memblock;
use crate::platform::cmdline::{check_pmem, BootParams, MAX_PMEM};
use crate::platform::{is_fdt, Platform, MAX_CPUS, MAX_MEMORY, MAX_RESERVED};
use crate::{pr_err, pr_info, pr_warn};

unsafe extern "C" {
    static _text: u8;
    static _etext: u8;
    static _erodata: u8;
    static _data: u8;
    static __stack_guard: u8;
    static __boot_stack: u8;
    static _end: u8;
}

/// The kernel image: where it was loaded and its sections' linked
/// addresses (from the linker script).
pub struct KernelImage {
    pub pa: PhysAddr,
    pub text: VirtAddr,
    pub etext: VirtAddr,
    pub erodata: VirtAddr,
    pub data: VirtAddr,
    /// The unmapped page(s) below the boot stack.
    pub stack_guard: VirtAddr,
    pub boot_stack: VirtAddr,
    pub end: VirtAddr,
}

impl KernelImage {
    fn new(pa: PhysAddr) -> Self {
        let sym = |s: &u8| VirtAddr::from_ptr(s);
        // SAFETY: linker symbols; only their addresses are taken.
        unsafe {
            KernelImage {
                pa,
                text: sym(&_text),
                etext: sym(&_etext),
                erodata: sym(&_erodata),
                data: sym(&_data),
                stack_guard: sym(&__stack_guard),
                boot_stack: sym(&__boot_stack),
                end: sym(&_end),
            }
        }
    }

    pub fn size(&self) -> u64 {
        self.end - self.text
    }

    /// The physical address of a linked address in the image.
    pub fn pa_of(&self, va: VirtAddr) -> PhysAddr {
        self.pa + (va - self.text)
    }
}

/// The generic timer counts from reset: close enough to Linux's "since boot".
fn us_since_boot() -> u64 {
    (cpu::counter() as u128 * 1_000_000 / cpu::counter_freq() as u128) as u64
}

/// What the later phases start from.
pub struct Boot {
    pub platform: Platform,
    pub params: BootParams,
    pub image: KernelImage,
    pub memblock: Memblock,
    /// Where `mem=` cut boot RAM off: RAM above it is hot-pluggable later.
    pub ram_limit: PhysAddr,
    /// The `memmap=` regions that passed [`check_pmem`], carved out of RAM.
    pub pmem: [Option<PhysRange>; MAX_PMEM],
}

impl Boot {
    /// RAM the DT describes that boot left out (`mem=`).
    pub fn held_back(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.platform.memory().iter().filter_map(|r| {
            let base = r.base.max(self.ram_limit);
            (base < r.end()).then(|| PhysRange::from_bounds(base, r.end()))
        })
    }
}

/// The DT: where x0 says, else at the start of the GiB the image is in
/// (QEMU's place for it when booting an ELF).
fn find_dtb(x0: u64, kernel_pa: PhysAddr) -> Option<PhysAddr> {
    [PhysAddr::new(x0), kernel_pa.align_down(1 << 30)]
        .into_iter()
        // SAFETY: the boot identity map covers the first GiB of RAM, where
        // both candidates lie when the loader follows the arm64 boot
        // protocol (x0: the DT, in RAM); the read has no side effect.
        .find(|&pa| unsafe { is_fdt(pa) })
}

pub fn setup_arch(x0: u64, kernel_pa: u64) -> Boot {
    let kernel_pa = PhysAddr::new(kernel_pa);
    let Some(dtb) = find_dtb(x0, kernel_pa) else {
        cpu::halt()
    };
    // SAFETY: `find_dtb` found the FDT magic there, in identity-mapped RAM;
    // the parser checks the header's sizes before it reads further.
    let Ok(platform) = (unsafe { Platform::from_fdt(dtb.as_u64() as *mut u8) }) else {
        cpu::halt()
    };
    if let Some(uart) = platform.uart {
        pl011::init(uart.base.as_u64() as usize);
    }
    crate::log::set_sink(pl011::write_bytes_str);
    crate::log::set_clock(us_since_boot);
    crate::log::init();
    if let Some(conduit) = platform.psci {
        psci::init(conduit);
    }
    pr_info!(
        "Booting hotplug-kernel on QEMU virt ({} granule, {}-bit VA)",
        <crate::mm::granule::KernelGranule as crate::mm::granule::Granule>::NAME,
        VA_BITS
    );
    pr_info!(
        "Machine model: {} CPU(s), DTB at {:#x}",
        platform.nr_cpus,
        dtb
    );
    let params = BootParams::parse(platform.bootargs(), |w| {
        pr_warn!("Unknown kernel command line parameter \"{w}\", ignored")
    });
    if let Some(level) = params.loglevel {
        crate::log::set_console_level(level);
    }
    pr_info!("Kernel command line: {}", platform.bootargs());

    let image = KernelImage::new(kernel_pa);
    report_dropped(&platform);
    let (mut memblock, ram_limit) = memblock_init(&platform, &params, &image);
    reserve_dt_regions(&platform, &image, &mut memblock);
    let pmem = carve_out_pmem(&platform, &params, &image, &mut memblock);
    Boot {
        platform,
        params,
        image,
        memblock,
        ram_limit,
        pmem,
    }
}

/// `memmap=` regions: checked against the DT and the CPU (a bad one is
/// logged and ignored, never mapped), then taken out of boot RAM so that
/// the page allocator never has them.
fn carve_out_pmem(
    platform: &Platform,
    params: &BootParams,
    image: &KernelImage,
    memblock: &mut Memblock,
) -> [Option<PhysRange>; MAX_PMEM] {
    let pa_limit = PHYS_LIMIT.min(1 << cpu::pa_bits());
    let busy = [PhysRange::new(image.pa, image.size()), platform.dtb];
    let mut ok = [None; MAX_PMEM];
    let reserved = |r: &PhysRange| platform.reserved().iter().any(|x| x.range.overlaps(r));
    for (slot, &r) in ok.iter_mut().zip(params.pmem()) {
        let checked = check_pmem(r, platform.memory(), pa_limit, &busy)
            .and_then(|()| match reserved(&r) {
                true => Err("overlaps memory the device tree reserves"),
                false => Ok(()),
            })
            .and_then(|()| {
                memblock
                    .remove(r.base, r.size)
                    .map_err(|_| "too many memory ranges to carve it out")
            });
        match checked {
            Ok(()) => *slot = Some(r),
            Err(why) => pr_warn!(
                "memmap={:#x}!{:#x}: {why}; ignored",
                r.size,
                r.base.as_u64()
            ),
        }
    }
    ok
}

/// What the DT said that the kernel could not take as it is.
fn report_dropped(platform: &Platform) {
    let d = platform.dropped;
    if d.memory > 0 {
        pr_err!(
            "OF: {} memory regions beyond the first {MAX_MEMORY} ignored",
            d.memory
        );
    }
    if d.cpus > 0 {
        pr_warn!("OF: {} CPUs beyond the first {MAX_CPUS} ignored", d.cpus);
    }
    if d.reservations_merged > 0 {
        pr_warn!(
            "OF: reserved mem: {} regions beyond the first {MAX_RESERVED} joined to their neighbours",
            d.reservations_merged
        );
    }
    if d.reservations_unreadable > 0 {
        pr_warn!(
            "OF: reserved mem: {} regions without a readable reg (dynamic allocation is not supported); ignored",
            d.reservations_unreadable
        );
    }
}

/// The DT's reservations (Linux's `early_init_fdt_scan_reserved_mem`):
/// kept out of the page allocator; `no-map` ones out of the linear map
/// too, unless that would unmap the kernel or the DT (then only reserved).
fn reserve_dt_regions(platform: &Platform, image: &KernelImage, memblock: &mut Memblock) {
    let busy = [PhysRange::new(image.pa, image.size()), platform.dtb];
    for r in platform.reserved() {
        let (range, end) = (r.range, r.range.end() - 1);
        let mut no_map = r.no_map;
        if no_map && busy.iter().any(|b| b.overlaps(&range)) {
            pr_err!(
                "OF: reserved mem: no-map {:#x}-{end:#x} overlaps the kernel or the DT; mapped, but reserved",
                range.base
            );
            no_map = false;
        }
        // Unmapped by whole pages: the pages it touches.
        let limit = |pa: PhysAddr| PhysAddr::new(pa.as_u64().min(PHYS_LIMIT));
        let (first, last) = (
            limit(range.base).align_down(PAGE_SIZE),
            limit(range.end()).align_up(PAGE_SIZE),
        );
        if no_map && memblock.remove(first, last - first).is_err() {
            pr_err!(
                "OF: reserved mem: no room to unmap {:#x}-{end:#x}; mapped, but reserved",
                range.base
            );
            no_map = false;
        }
        if !no_map && !memblock.reserve(range.base, range.size) {
            pr_warn!(
                "OF: reserved mem: {:#x}-{end:#x} joined to its neighbour (no room)",
                range.base
            );
        }
        pr_info!(
            "OF: reserved mem: {:#x}..{end:#x} ({} KiB) {} ({:?})",
            range.base,
            range.size >> 10,
            if no_map { "nomap" } else { "map" },
            r.kind
        );
    }
}

/// Boot RAM up to `mem=`, less the kernel image and the DT; and where
/// `mem=` cut it off. (No heap yet: nothing here may allocate.)
fn memblock_init(
    platform: &Platform,
    params: &BootParams,
    image: &KernelImage,
) -> (Memblock, PhysAddr) {
    let mut memblock = Memblock::new();
    let mut ram_limit = PhysAddr::new(u64::MAX);
    let mut budget = params.mem.unwrap_or(u64::MAX);
    for r in platform.memory() {
        // Only what the linear map can hold (Linux's memblock_remove of
        // what lies beyond PHYS_MASK).
        let size = r.size.min(PHYS_LIMIT.saturating_sub(r.base.as_u64()));
        let size = size.min(budget);
        budget -= size;
        if size < r.size {
            ram_limit = ram_limit.min(r.base + size);
        }
        // Whole pages only (the DT's numbers are the DT's): the linear map
        // maps pages.
        if size == 0 {
            continue;
        }
        // Below PHYS_LIMIT (page aligned) here: no wrap.
        let (base, end) = (
            r.base.align_up(PAGE_SIZE),
            (r.base + size).align_down(PAGE_SIZE),
        );
        if base >= end {
            continue;
        }
        if memblock.add_memory(base, end - base).is_err() {
            pr_err!(
                "memblock: no room for memory {:#x}-{:#x}; ignored",
                r.base,
                r.end() - 1
            );
        }
    }
    memblock.reserve(image.pa, image.size());
    let dtb_first = platform.dtb.base.align_down(PAGE_SIZE);
    memblock.reserve(
        dtb_first,
        platform.dtb.end().align_up(PAGE_SIZE) - dtb_first,
    );
    (memblock, ram_limit)
}
