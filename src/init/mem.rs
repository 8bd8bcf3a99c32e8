//! `mem_init`: struct pages for boot RAM, the buddy allocator with what
//! memblock left free, the kernel heap, and the memory system, which is
//! then installed as the machine's one memory handle.

use super::paging::{boot_sections, Paging};
use super::setup::Boot;
use crate::mm::addr::{Pfn, PhysRange};
use crate::mm::buddy::BuddyAllocator;
use crate::mm::frame::FrameAllocator;
use crate::mm::heap::Heap;
use crate::mm::layout::*;
use crate::mm::page::{Memmap, PageFlags, Zone};
use crate::mm::system::MemorySystem;
use crate::pr_info;

/// Pages of kernel heap (as an order), taken from the buddy allocator once
/// it is up: `PAGE_SIZE << HEAP_ORDER` bytes.
const HEAP_ORDER: u32 = MAX_ORDER;

pub fn mem_init(boot: &mut Boot, paging: Paging, heap: &'static Heap) {
    let memblock = &boot.memblock;
    // Struct pages of present sections, all reserved; then what memblock
    // left free goes to the buddy allocator.
    let memmap = unsafe { Memmap::kernel() };
    for section in boot_sections(&memblock.memory_regions()) {
        let pfn = Pfn::down(section);
        let flags = PageFlags::RESERVED | PageFlags::ONLINE;
        unsafe { memmap.init_range(pfn, pfn + PAGES_PER_SECTION, Zone::Normal, flags) };
    }
    let mut buddy = unsafe { BuddyAllocator::new(memmap) };
    memblock.for_each_free(|start, end| {
        let (s, e) = (Pfn::up(start), Pfn::down(end));
        if s < e {
            buddy.online_pages(s, e - s, Zone::Normal);
        }
    });
    let heap_pa = buddy
        .alloc_pages(HEAP_ORDER)
        .expect("no memory for the heap");
    unsafe {
        heap.init(
            heap_pa.to_virt().as_mut_ptr(),
            (PAGE_SIZE << HEAP_ORDER) as usize,
        )
    };

    let mut mm = MemorySystem::new(paging.pt, buddy, memmap);
    mm.set_memmap_on_memory(boot.params.memmap_on_memory);
    for r in memblock.memory() {
        mm.register_boot_memory(*r);
    }
    let image = &boot.image;
    let code = PhysRange::new(image.pa, image.etext - image.text);
    let data_pa = image.pa_of(image.data);
    let data = PhysRange::new(data_pa, image.pa + image.size() - data_pa);
    mm.register_boot_resource(code, "Kernel code");
    mm.register_boot_resource(data, "Kernel data");
    for r in boot.held_back() {
        mm.add_hotpluggable_range(r);
    }
    for &range in boot.params.pmem() {
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
