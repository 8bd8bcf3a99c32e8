//! `paging_init`: the kernel's own page tables (image W^X, linear map,
//! device windows, the vmemmap of boot RAM), then the switch to them; and
//! the interrupt controller, which needs its registers mapped.

use super::setup::{Boot, KernelImage};
use crate::arch::aarch64::{self as cpu, smp};
use crate::drivers::gic::{self, Gic};
use crate::drivers::pl011;
use crate::mm::addr::{memmap_range, Pfn, PhysAddr};
use crate::mm::granule::KernelGranule;
use crate::mm::layout::*;
use crate::mm::memblock::{Memblock, Regions};
use crate::mm::pgtable::{Attributes, MapHints, PageTable, VaRange};
use crate::mm::translation::KernelTranslation;
use crate::mm::vmemmap::vmemmap_populate;
use crate::platform::GicVersion;
use crate::pr_info;

pub type KernelPageTable = PageTable<KernelTranslation, KernelGranule>;

/// The kernel's tables, live, and where the boot devices were mapped.
pub struct Paging {
    pub pt: KernelPageTable,
    /// GIC version, distributor and CPU interface / redistributor VAs.
    gic: Option<(GicVersion, usize, usize)>,
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
    let uart_va = platform
        .uart
        .map(|u| crate::mm::ioremap::ioremap(&mut pt, u.base, u.size, memblock));
    let gic = platform.gic.map(|g| {
        // One redistributor (RD and SGI frames) per CPU is used.
        let cpu_size = if g.version == GicVersion::V3 {
            g.cpu_or_redist.size.min(0x20000 * platform.nr_cpus as u64)
        } else {
            g.cpu_or_redist.size
        };
        let dist = crate::mm::ioremap::ioremap(&mut pt, g.dist.base, g.dist.size, memblock);
        let cpu = crate::mm::ioremap::ioremap(&mut pt, g.cpu_or_redist.base, cpu_size, memblock);
        (g.version, dist.as_u64() as usize, cpu.as_u64() as usize)
    });
    let ram = memblock.memory_regions();
    for section in boot_sections(&ram) {
        let pfn = Pfn::down(section);
        let (start, end) = memmap_range(pfn, pfn + PAGES_PER_SECTION);
        vmemmap_populate(&mut pt, start, end, None, memblock).expect("vmemmap");
    }

    cpu::switch_kernel_table(pt.root_pa().as_u64());
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
/// the idle loop may sleep (not without an interrupt to wake it).
pub fn irq_init(boot: &Boot, paging: &Paging) -> bool {
    let (Some((version, dist, cpu_if)), Some(intid)) = (paging.gic, boot.platform.uart_intid)
    else {
        return false;
    };
    let gic = gic::install(Gic::init(version, dist, cpu_if));
    gic.enable_spi(intid);
    smp::set_wakeup(gic);
    pl011::enable_rx_interrupt();
    pr_info!(
        "GIC {:?}: UART interrupt {} wakes the idle CPU",
        version,
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
