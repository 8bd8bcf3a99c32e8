//! `paging_init`: the kernel's own page tables (image W^X, linear map,
//! device windows, the vmemmap of boot RAM), then the switch to them; and
//! the interrupt controller, which needs its registers mapped.

use super::setup::{Boot, KernelImage};
use crate::arch::aarch64::{self as cpu, smp};
use crate::drivers::gic::{self, Gic, GicMmio};
use crate::drivers::pl011;
use crate::mm::addr::{memmap_range, Pfn, PhysAddr, VirtAddr};
use crate::mm::granule::KernelGranule;
use crate::mm::layout::*;
use crate::mm::memblock::{Memblock, Regions};
use crate::mm::pgtable::{Attributes, MapHints, PageTable, VaRange};
use crate::mm::translation::KernelTranslation;
use crate::mm::vmemmap::vmemmap_populate;
use crate::platform::GicVersion;
use crate::{pr_info, pr_warn};

pub type KernelPageTable = PageTable<KernelTranslation, KernelGranule>;

/// The kernel's tables, live, and where the boot devices were mapped.
pub struct Paging {
    pub pt: KernelPageTable,
    /// Where the GIC's registers were mapped.
    gic: Option<GicMmio>,
}

/// The start of every section that boot RAM touches, once each, in order
/// (memblock keeps its regions sorted and merged).
pub fn boot_sections(ram: &Regions) -> impl Iterator<Item = PhysAddr> + '_ {
    let mut last = None;
    ram.as_slice()
        .iter()
        .flat_map(|r| {
            let first = r.base.align_down(SECTION_SIZE).as_u64();
            let end = r.end().align_up(SECTION_SIZE).as_u64();
            (first..end)
                .step_by(SECTION_SIZE as usize)
                .map(PhysAddr::new)
        })
        .filter(move |&s| {
            let new = last.is_none_or(|l| s > l);
            last = Some(s);
            new
        })
}

pub fn paging_init(boot: &mut Boot) -> Paging {
    let memblock = &mut boot.memblock;
    let platform = &boot.platform;
    let mut pt = PageTable::new(KernelTranslation::IDENTITY, memblock)
        .expect("no memory for the root table");
    map_kernel(&mut pt, &boot.image, memblock);
    for r in memblock.memory_regions().as_slice() {
        let range = VaRange::new(r.base.to_virt(), r.end().to_virt());
        pt.map_range(
            range,
            r.base,
            Attributes::KERNEL_RW,
            MapHints::blocks(1 << 30).with_contiguous(),
            memblock,
        )
        .expect("linear map");
    }
    // Device windows from the DT: one that cannot be mapped (the window
    // or memory is short) leaves the kernel without that device.
    let uart_va = platform
        .uart
        .and_then(|u| crate::mm::ioremap::ioremap(&mut pt, u.base, u.size, memblock).ok());
    let gic = platform.gic.and_then(|g| {
        // What the driver may touch, within what the DT gives: the
        // redistributors of every CPU at GICv4's stride (the driver checks
        // the real one, GICR_TYPER.VLPIS, against this); never more, so that
        // an oversized `reg` cannot exhaust the ioremap window.
        let cpu_window = match g.version {
            GicVersion::V2 => gic::CPU_IF_WINDOW,
            GicVersion::V3 => gic::REDIST_WINDOW_PER_CPU * platform.nr_cpus.max(1) as u64,
        };
        let dist_size = g.dist.size.min(gic::DIST_WINDOW);
        let cpu_size = g.cpu_or_redist.size.min(cpu_window);
        let ioremap = |pt: &mut KernelPageTable, pa, size, memblock: &mut Memblock| {
            crate::mm::ioremap::ioremap(pt, pa, size, memblock)
                .ok()
                .map(|va| va.as_u64() as usize)
        };
        Some(GicMmio {
            version: g.version,
            dist: ioremap(&mut pt, g.dist.base, dist_size, memblock)?,
            dist_size: dist_size as usize,
            cpu: ioremap(&mut pt, g.cpu_or_redist.base, cpu_size, memblock)?,
            cpu_size: cpu_size as usize,
        })
    });
    let ram = memblock.memory_regions();
    for section in boot_sections(&ram) {
        let pfn = Pfn::down(section);
        let (start, end) = memmap_range(pfn, pfn + PAGES_PER_SECTION);
        vmemmap_populate(&mut pt, start, end, None, memblock).expect("vmemmap");
    }

    let image = &boot.image;
    // SAFETY: `pt` maps the image and its stacks at their linked addresses
    // (map_kernel), TTBR0 still holds the boot identity map (dropped just
    // below), and `pa_of` is the image's own translation.
    unsafe {
        cpu::cpu_replace_ttbr1(pt.root_pa().as_u64(), |va| {
            image.pa_of(VirtAddr::new(va)).as_u64()
        })
    };
    pt.set_translation(KernelTranslation::LINEAR);
    if let Some(va) = uart_va {
        pl011::relocate(va.as_u64() as usize);
    }
    cpu::disable_user_table();
    pr_info!(
        "Page tables: {} pages; boot identity map removed",
        pt.stats.tables
    );
    Paging { pt, gic }
}

/// Starts the GIC and lets the UART's interrupt wake the idle CPU; whether
/// the idle loop may sleep (not without an interrupt to wake it). A GIC the
/// driver refuses is logged, and the kernel runs without interrupts.
pub fn irq_init(boot: &Boot, paging: &Paging) -> bool {
    let (Some(mmio), Some(intid)) = (paging.gic, boot.platform.uart_intid) else {
        return false;
    };
    let cpus = &boot.platform.cpu_mpidr[..boot.platform.nr_cpus];
    // SAFETY: paging_init mapped these windows as device memory for good,
    // from the DT's GIC node, and nothing but the driver uses them.
    let gic = match unsafe { Gic::init(mmio, cpus) } {
        Ok(gic) => gic::install(gic),
        Err(e) => {
            pr_warn!("GIC: {e}; running without interrupts");
            return false;
        }
    };
    gic.enable_spi(intid);
    smp::set_wakeup(gic);
    pl011::enable_rx_interrupt();
    pr_info!(
        "GICv{}: UART interrupt {} wakes the idle CPU",
        gic.revision(),
        intid
    );
    true
}

/// The kernel image at its linked address, W^X: text RX, rodata R, data RW.
fn map_kernel(pt: &mut KernelPageTable, image: &KernelImage, frames: &mut Memblock) {
    let sections = [
        (image.text, image.etext, Attributes::KERNEL_ROX),
        (image.etext, image.erodata, Attributes::KERNEL_RO),
        // The page(s) below the kernel stack stay unmapped as its guard.
        (image.data, image.stack_guard, Attributes::KERNEL_RW),
        (image.boot_stack, image.end, Attributes::KERNEL_RW),
    ];
    for (start, end, attrs) in sections {
        pt.map_range(
            VaRange::new(start, end),
            image.pa_of(start),
            attrs,
            MapHints::pages().with_contiguous(),
            frames,
        )
        .expect("kernel image map");
    }
}
