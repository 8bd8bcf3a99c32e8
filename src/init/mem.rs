//! `mem_init`: struct pages for boot RAM, the buddy allocator with what
//! memblock left free, the kernel heap, and the memory system, which is
//! then installed as the machine's one memory handle.

use super::paging::{boot_sections, Paging};
use super::setup::Boot;
use crate::mm::addr::{Pfn, PhysRange};
use crate::mm::buddy::BuddyAllocator;
use crate::mm::frame::FrameAllocator;
use crate::mm::heap::{self, Heap};
use crate::mm::layout::*;
use crate::mm::page::{Memmap, PageFlags, Zone};
use crate::mm::system::MemorySystem;
use crate::pr_info;

pub fn mem_init(boot: &mut Boot, paging: Paging, heap: &'static Heap) {
    let memblock = &boot.memblock;
    // Struct pages of present sections, all reserved; then what memblock
    // left free goes to the buddy allocator.
    // SAFETY: the vmemmap of every boot section was populated by
    // paging_init, and nothing else has a view of the struct pages yet.
    let memmap = unsafe { Memmap::kernel() };
    for section in boot_sections(&memblock.memory_regions()) {
        let pfn = Pfn::down(section);
        let flags = PageFlags::RESERVED | PageFlags::ONLINE;
        // SAFETY: a boot section: its struct pages are mapped (above).
        unsafe { memmap.init_range(pfn, pfn + PAGES_PER_SECTION, Zone::Normal, flags) };
    }
    // SAFETY: every struct page the allocator will touch (boot sections)
    // was just initialised, and the memmap lives as long as the kernel.
    let mut buddy = unsafe { BuddyAllocator::new(memmap) };
    let topo = boot.platform.numa(boot.params.numa_off);
    buddy.set_topology(topo);
    memblock.for_each_free(|start, end| {
        topo.for_each_node_run(start, end, |start, end, nid| {
            let (s, e) = (Pfn::up(start), Pfn::down(end));
            if s < e {
                buddy.online_pages(s, e - s, Zone::Normal, nid);
            }
        })
    });
    // The heap starts with one block and a spare; it grows from the page
    // allocator as the kernel needs (mm::heap).
    let first = buddy
        .alloc_pages(heap::BLOCK_ORDER)
        .expect("no memory for the heap");
    let spare = buddy.alloc_pages(heap::BLOCK_ORDER);
    // SAFETY: both blocks were just taken from the page allocator for good.
    unsafe { heap.init(first.to_virt(), spare.map(|pa| pa.to_virt())) };
    heap::register(heap);

    let mut mm = MemorySystem::new(paging.pt, buddy, memmap);
    mm.set_topology(topo);
    pr_info!("NUMA: nodes possible {}", topo.possible());
    mm.set_memmap_on_memory(boot.params.memmap_on_memory);
    mm.set_online_config(boot.params.online);
    for r in memblock.memory() {
        mm.register_boot_memory(*r);
    }
    let image = &boot.image;
    let code = PhysRange::new(image.pa, image.etext - image.text);
    let data_pa = image.pa_of(image.data);
    let data = PhysRange::new(data_pa, image.pa + image.size() - data_pa);
    mm.register_boot_resource(code, "Kernel code");
    mm.register_boot_resource(data, "Kernel data");
    for r in boot.platform.reserved() {
        mm.register_reserved(r.range, boot.platform.memory(), memblock.memory());
    }
    for r in boot.held_back() {
        mm.add_hotpluggable_range(r);
    }
    for range in boot.pmem.iter().flatten().copied() {
        mm.register_device_memory(range, "pmem", "Persistent Memory (legacy)");
        pr_info!(
            "memmap: device memory {:#x}-{:#x}",
            range.base,
            range.end() - 1
        );
    }

    let info = mm.meminfo();
    pr_info!(
        "Memory: {}K/{}K available, {}K page tables, {}K vmemmap",
        info.free >> 10,
        boot.platform.memory().iter().map(|r| r.size).sum::<u64>() >> 10,
        info.page_tables >> 10,
        info.vmemmap >> 10
    );
    print_layout();
    crate::mm::global::install(mm);
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
