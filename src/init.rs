//! Boot, from the first Rust instruction to the console: read the DT, build
//! the kernel's page tables, hand memory to the buddy allocator.

use core::fmt::Write;

use crate::arch::aarch64 as cpu;
use crate::arch::aarch64::smp::{self, SecondaryBoot};
use crate::console::kernel::{KernelMm, KernelSystem, Uart};
use crate::console::Console;
use crate::drivers::gic::Gic;
use crate::drivers::virtio_mem::VirtioMem;
use crate::drivers::{pl011, psci};
use crate::mm::buddy::BuddyAllocator;
use crate::mm::frame::FrameAllocator;
use crate::mm::layout::*;
use crate::mm::memblock::{Memblock, Regions};
use crate::mm::page::{Memmap, PageFlags, Zone};
use crate::mm::pgtable::{Attributes, MapHints, PageTable, VaRange};
use crate::mm::system::{BlockState, MemoryBlock, MemorySystem};
use crate::mm::translation::KernelTranslation;
use crate::mm::vmemmap::vmemmap_populate;
use crate::platform::cmdline::BootParams;
use crate::platform::{is_fdt, GicVersion, PhysRange, Platform};
use crate::{heap::Heap, pr_info, pr_warn};
use virtio_drivers::transport::pci::PciTransport;

unsafe extern "C" {
    static _text: u8;
    static _etext: u8;
    static _erodata: u8;
    static _data: u8;
    static __stack_guard: u8;
    static __boot_stack: u8;
    static _end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// The start of every section that boot RAM touches, once each, in order
/// (memblock keeps its regions sorted and merged).
fn boot_sections(ram: &Regions) -> impl Iterator<Item = u64> + '_ {
    let mut last = None;
    ram.as_slice()
        .iter()
        .flat_map(|r| {
            (align_down(r.base, SECTION_SIZE)..align_up(r.end(), SECTION_SIZE))
                .step_by(SECTION_SIZE as usize)
        })
        .filter(move |&s| {
            let new = last.is_none_or(|l| s > l);
            last = Some(s);
            new
        })
}

/// Bytes of kernel heap, taken from the buddy allocator once it is up.
const HEAP_ORDER: u32 = MAX_ORDER;

/// The DT: where x0 says, else at the start of the GiB the image is in
/// (QEMU's place for it when booting an ELF).
fn find_dtb(x0: u64, kernel_pa: u64) -> Option<u64> {
    [x0, kernel_pa & !((1 << 30) - 1)]
        .into_iter()
        .find(|&pa| unsafe { is_fdt(pa) })
}

pub fn start(x0: u64, kernel_pa: u64, heap: &'static Heap) -> ! {
    let t0 = cpu::counter();
    let Some(dtb) = find_dtb(x0, kernel_pa) else {
        cpu::halt()
    };
    let Ok(platform) = (unsafe { Platform::from_fdt(dtb as *const u8) }) else {
        cpu::halt()
    };
    if let Some(uart) = platform.uart {
        pl011::init(uart.base as usize);
    }
    crate::log::set_sink(pl011::write_bytes_str);
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

    let image_size = sym(unsafe { &_end }) - sym(unsafe { &_text });
    let mut memblock = Memblock::new();
    let mut ram_limit = u64::MAX;
    let mut budget = params.mem.unwrap_or(u64::MAX);
    for r in platform.memory() {
        let size = r.size.min(budget);
        budget -= size;
        if size < r.size {
            ram_limit = ram_limit.min(r.base + size);
        }
        memblock.add_memory(r.base, size);
    }
    memblock.reserve(kernel_pa, image_size);
    let dtb_first = align_down(platform.dtb.base, PAGE_SIZE);
    memblock.reserve(
        dtb_first,
        align_up(platform.dtb.end(), PAGE_SIZE) - dtb_first,
    );

    let mut pt = PageTable::new(KernelTranslation::IDENTITY, &mut memblock)
        .expect("no memory for the root table");
    map_kernel(&mut pt, kernel_pa, &mut memblock);
    for r in memblock.memory_regions().as_slice() {
        let range = VaRange::new(phys_to_virt(r.base), phys_to_virt(r.end()));
        pt.map_range(
            range,
            r.base,
            Attributes::KERNEL_RW,
            MapHints::blocks(1 << 30).with_contiguous(),
            &mut memblock,
        )
        .expect("linear map");
    }
    let uart_va = platform
        .uart
        .map(|u| crate::mm::ioremap::ioremap(&mut pt, u.base, u.size, &mut memblock));
    let gic_va = platform.gic.map(|g| {
        // One redistributor (RD and SGI frames) per CPU is used.
        let cpu_size = if g.version == GicVersion::V3 {
            g.cpu_or_redist.size.min(0x20000 * platform.nr_cpus as u64)
        } else {
            g.cpu_or_redist.size
        };
        let dist = crate::mm::ioremap::ioremap(&mut pt, g.dist.base, g.dist.size, &mut memblock);
        let cpu =
            crate::mm::ioremap::ioremap(&mut pt, g.cpu_or_redist.base, cpu_size, &mut memblock);
        (g.version, dist as usize, cpu as usize)
    });
    for section in boot_sections(&memblock.memory_regions()) {
        let pfn = phys_to_pfn(section);
        vmemmap_populate(&mut pt, pfn, pfn + PAGES_PER_SECTION, None, &mut memblock)
            .expect("vmemmap");
    }

    cpu::switch_kernel_table(pt.root_pa());
    pt.set_translation(KernelTranslation::LINEAR);
    if let Some(va) = uart_va {
        pl011::relocate(va as usize);
    }
    cpu::disable_user_table();
    // Without an interrupt to wake it, the idle loop must not sleep.
    let can_sleep = match (gic_va, platform.uart_intid) {
        (Some((version, dist, cpu_if)), Some(intid)) => {
            let gic = Gic::init(version, dist, cpu_if);
            gic.enable_spi(intid);
            smp::set_gic(gic);
            pl011::enable_rx_interrupt();
            pr_info!(
                "GIC {:?}: UART interrupt {} wakes the idle CPU",
                version,
                intid
            );
            true
        }
        _ => false,
    };
    pr_info!(
        "Page tables: {} pages; boot identity map removed",
        pt.stats.tables
    );

    // Struct pages of present sections, all reserved; then what memblock
    // left free goes to the buddy allocator.
    let memmap = unsafe { Memmap::kernel() };
    for section in boot_sections(&memblock.memory_regions()) {
        let pfn = phys_to_pfn(section);
        let flags = PageFlags::RESERVED | PageFlags::ONLINE;
        unsafe { memmap.init_range(pfn, pfn + PAGES_PER_SECTION, Zone::Normal, flags) };
    }
    let mut buddy = unsafe { BuddyAllocator::new(memmap) };
    memblock.for_each_free(|start, end| {
        let (s, e) = (
            phys_to_pfn(align_up(start, PAGE_SIZE)),
            phys_to_pfn(align_down(end, PAGE_SIZE)),
        );
        buddy.online_pages(s, e, Zone::Normal);
    });
    let heap_pa = buddy
        .alloc_pages(HEAP_ORDER)
        .expect("no memory for the heap");
    unsafe {
        heap.init(
            phys_to_virt(heap_pa) as *mut u8,
            (PAGE_SIZE << HEAP_ORDER) as usize,
        )
    };

    let mut mm = MemorySystem::new(pt, buddy, memmap);
    mm.memmap_on_memory = params.memmap_on_memory;
    for section in boot_sections(&memblock.memory_regions()) {
        let block = MemoryBlock {
            state: BlockState::Online(Zone::Normal),
            boot: true,
            altmap: None,
            owner: None,
        };
        mm.blocks.insert(section / MEMORY_BLOCK_SIZE, block);
    }
    for r in memblock.memory() {
        mm.iomem.insert(r.base, r.end(), "System RAM");
    }
    let text = sym(unsafe { &_text });
    mm.iomem.insert_child(
        kernel_pa,
        kernel_pa + (sym(unsafe { &_etext }) - text),
        "Kernel code",
    );
    mm.iomem.insert_child(
        kernel_pa + (sym(unsafe { &_data }) - text),
        kernel_pa + image_size,
        "Kernel data",
    );
    // RAM above mem= is what `probe` may add, less device memory.
    for r in platform.memory() {
        let base = r.base.max(ram_limit);
        if base < r.end() {
            mm.hotpluggable.push(PhysRange {
                base,
                size: r.end() - base,
            });
        }
    }
    for p in params.pmem() {
        mm.add_devmem(p.addr, p.size, "pmem", "Persistent Memory (legacy)");
        pr_info!(
            "memmap: device memory {:#x}-{:#x}",
            p.addr,
            p.addr + p.size - 1
        );
    }

    let info = mm.meminfo();
    pr_info!(
        "Memory: {}K/{}K available, {}K page tables, {}K vmemmap",
        info.free >> 10,
        platform.memory().iter().map(|r| r.size).sum::<u64>() >> 10,
        info.page_tables >> 10,
        info.vmemmap >> 10
    );
    print_layout();
    *MM.lock() = Some(mm);
    start_secondaries(&platform, kernel_pa);
    crate::drivers::virtio_hal::set_image(sym(unsafe { &_text }), kernel_pa);
    let mut virtio_mem = platform.pci.and_then(|host| probe_pci(&host));
    let elapsed_us = (cpu::counter() - t0) * 1_000_000 / cpu::counter_freq();
    pr_info!("Boot took {} us", elapsed_us);

    let mut sys = KernelSystem { mm: &MM };
    let mut console = Console::new(Uart);
    loop {
        if console.poll(&mut sys) > 0 {
            continue;
        }
        if let Some(vm) = virtio_mem.as_mut() {
            // A config change (INTx) or the retry timer: follow the request.
            let (changed, tick) = (vm.interrupt(), cpu::timer_fired());
            if changed || tick {
                let done = console.interrupted(|| vm.step().inspect_err(|e| pr_warn!("{e}")));
                if done == Ok(false) {
                    cpu::arm_timer(VIRTIO_MEM_RETRY_MS);
                }
                continue;
            }
        }
        if can_sleep {
            cpu::wait_for_interrupt();
        } else {
            core::hint::spin_loop();
        }
    }
}

/// How soon the virtio-mem driver retries blocks it could not unplug.
const VIRTIO_MEM_RETRY_MS: u64 = 1000;

/// Enumerates PCI, registers ivshmem BARs as device memory and starts the
/// virtio-mem driver (the one device here that needs one).
fn probe_pci(host: &crate::platform::pci::PciHost) -> Option<VirtioMem<PciTransport>> {
    use crate::drivers::virtio_hal::{register_mmio, KernelHal};
    use virtio_drivers::transport::pci::bus::{Cam, MmioCam, PciRoot};
    use virtio_drivers::transport::{DeviceType, Transport};

    let ioremap = |pa: u64, size: u64| {
        with_mm(|mm| {
            let mut p = mm.parts();
            crate::mm::ioremap::ioremap(p.pt, pa, size, &mut p.frames)
        })
    };
    let ecam = ioremap(host.ecam.base, host.ecam.size);
    // SAFETY: the whole ECAM window is mapped as device memory, for good.
    let mut root = PciRoot::new(unsafe { MmioCam::new(ecam as *mut u8, Cam::Ecam) });
    let mut virtio_mem = None;
    for dev in crate::drivers::pci::enumerate(&mut root, host) {
        match (dev.vendor, dev.device) {
            (0x1af4, 0x1110) => {
                // ivshmem-plain: BAR 2 is the shared memory.
                if let Some(bar) = dev.bars[2] {
                    let id = with_mm(|mm| mm.add_devmem(bar.cpu, bar.size, "ivshmem", "ivshmem"));
                    pr_info!(
                        "ivshmem: device memory {id} at {:#x}-{:#x}",
                        bar.cpu,
                        bar.cpu + bar.size - 1
                    );
                }
            }
            (0x1af4, 0x1040..=0x107f) => {
                for bar in dev.bars.iter().flatten() {
                    register_mmio(bar.cpu, bar.size, ioremap(bar.cpu, bar.size));
                }
                let Ok(transport) = PciTransport::new::<KernelHal, _>(&mut root, dev.df) else {
                    pr_warn!("pci {}: not a virtio device after all", dev.df);
                    continue;
                };
                if transport.device_type() != DeviceType::Memory || virtio_mem.is_some() {
                    pr_info!(
                        "pci {}: virtio {:?}: no driver",
                        dev.df,
                        transport.device_type()
                    );
                    continue;
                }
                match VirtioMem::new(transport) {
                    Ok(vm) => {
                        if let (Some(gic), Some(intid)) = (smp::gic(), dev.intx) {
                            gic.enable_spi(intid);
                            gic.enable_private(0, cpu::TIMER_INTID);
                            pr_info!("virtio_mem: config changes interrupt on INTx {intid}");
                        }
                        virtio_mem = Some(vm);
                    }
                    Err(e) => pr_warn!("{e}"),
                }
            }
            _ => {}
        }
    }
    if let Some(vm) = virtio_mem.as_mut() {
        if vm.unsatisfied() {
            if let Err(e) = vm.step() {
                pr_warn!("{e}");
            }
        }
    }
    virtio_mem
}

static MM: spin::Mutex<Option<KernelMm>> = spin::Mutex::new(None);

/// Runs `f` on the machine's memory, under its lock. Drivers use this; it
/// must not be called with the lock held.
pub fn with_mm<R>(f: impl FnOnce(&mut KernelMm) -> R) -> R {
    f(MM.lock().as_mut().expect("memory is initialised"))
}

unsafe extern "C" {
    fn secondary_entry();
}

/// Kernel and exception stacks of a secondary CPU.
const SECONDARY_STACK: u64 = 64 << 10;
const SECONDARY_EXCEPTION_STACK: u64 = 16 << 10;

/// Maps `size` bytes of fresh pages at `va` as a stack; its top.
fn map_stack(mm: &mut KernelMm, va: u64, size: u64) -> Option<u64> {
    let size = align_up(size, PAGE_SIZE);
    let order = crate::mm::frame::get_order(size, PAGE_SHIFT);
    let mut p = mm.parts();
    let pa = p.frames.alloc_pages(order)?;
    let range = VaRange::new(va, va + size);
    if p.pt
        .map_range(
            range,
            pa,
            Attributes::KERNEL_RW,
            MapHints::pages(),
            &mut p.frames,
        )
        .is_err()
    {
        p.frames.free_pages(pa, order);
        return None;
    }
    Some(va + size)
}

/// Starts every other CPU the DT lists and waits (bounded) for each. Each
/// gets its stacks in the kernel stacks region, an unmapped guard page
/// below each, so that an overflow faults and is reported.
fn start_secondaries(platform: &Platform, kernel_pa: u64) {
    let text = sym(unsafe { &_text });
    let image_pa = |va: u64| kernel_pa + (va - text);
    let entry_pa = image_pa(secondary_entry as *const () as u64);
    let (stack, exception) = (
        align_up(SECONDARY_STACK, PAGE_SIZE),
        align_up(SECONDARY_EXCEPTION_STACK, PAGE_SIZE),
    );
    let slot = PAGE_SIZE + stack + PAGE_SIZE + exception;
    for (cpu, &mpidr) in platform
        .cpu_mpidr
        .iter()
        .enumerate()
        .take(platform.nr_cpus)
        .skip(1)
    {
        let base = KSTACKS_START + cpu as u64 * slot;
        let mapped = with_mm(|mm| {
            let top = map_stack(mm, base + PAGE_SIZE, stack)?;
            let exception_top = map_stack(mm, top + PAGE_SIZE, exception)?;
            Some((top, exception_top, mm.pt.root_pa()))
        });
        let Some((top, exception_top, ttbr1)) = mapped else {
            pr_warn!("CPU{cpu}: no memory for its stacks");
            break;
        };
        // SAFETY: CPU 0 alone, once per CPU, before that CPU runs.
        let boot = unsafe { smp::boot_slot(cpu) };
        boot.ttbr1 = ttbr1;
        boot.stack_top = top;
        boot.exception_stack_top = exception_top;
        let boot_pa = image_pa(boot as *const SecondaryBoot as u64);
        if smp::start_cpu(cpu, mpidr, entry_pa, boot, boot_pa) {
            pr_info!("CPU{cpu}: booted secondary processor {mpidr:#x}");
        } else {
            pr_warn!("CPU{cpu}: failed to come online");
        }
    }
}

fn print_layout() {
    pr_info!("Virtual kernel memory layout:");
    for m in MARKERS.chunks(2) {
        pr_info!(
            "    {:<16} 0x{:016x} - 0x{:016x}   ({:>8} GB)",
            m[0].name.trim_end_matches(" start"),
            m[0].addr,
            m[1].addr,
            (m[1].addr - m[0].addr) >> 30
        );
    }
}

/// The kernel image at its linked address, W^X: text RX, rodata R, data RW.
fn map_kernel(
    pt: &mut PageTable<KernelTranslation, crate::mm::granule::KernelGranule>,
    kernel_pa: u64,
    frames: &mut Memblock,
) {
    let text = sym(unsafe { &_text });
    let sections = [
        (text, sym(unsafe { &_etext }), Attributes::KERNEL_ROX),
        (
            sym(unsafe { &_etext }),
            sym(unsafe { &_erodata }),
            Attributes::KERNEL_RO,
        ),
        // The page(s) below the kernel stack stay unmapped as its guard.
        (
            sym(unsafe { &_data }),
            sym(unsafe { &__stack_guard }),
            Attributes::KERNEL_RW,
        ),
        (
            sym(unsafe { &__boot_stack }),
            sym(unsafe { &_end }),
            Attributes::KERNEL_RW,
        ),
    ];
    for (start, end, attrs) in sections {
        let pa = kernel_pa + (start - text);
        pt.map_range(
            VaRange::new(start, end),
            pa,
            attrs,
            MapHints::pages().with_contiguous(),
            frames,
        )
        .expect("kernel image map");
    }
}

pub fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(pl011::RawWriter, "\nKernel panic - not syncing: {info}");
    psci::system_off()
}
