//! `virtio-drivers`' view of the kernel: DMA memory from the buddy
//! allocator (reached through the linear map), device registers through
//! ioremap, buffers shared by physical address (memory is coherent).

use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::mm::addr::{PhysAddr as Pa, VirtAddr};
use crate::mm::frame::get_order;
use crate::mm::layout::{PAGE_END, PAGE_OFFSET, PAGE_SHIFT};

/// virtio-drivers counts DMA in 4 KiB pages whatever the granule.
const VIRTIO_PAGE: usize = 4096;

static MMIO: spin::Mutex<Vec<(u64, u64, u64)>> = spin::Mutex::new(Vec::new());
static IMAGE: AtomicU64 = AtomicU64::new(0);
static IMAGE_PA: AtomicU64 = AtomicU64::new(0);

/// Records a device mapping `[pa, pa + size)` at `va` for `mmio_phys_to_virt`.
pub fn register_mmio(pa: Pa, size: u64, va: VirtAddr) {
    MMIO.lock().push((pa.as_u64(), size, va.as_u64()));
}

/// Where the kernel image is, to share buffers that live in it (statics,
/// the boot stack).
pub fn set_image(va: VirtAddr, pa: Pa) {
    IMAGE.store(va.as_u64(), Ordering::Relaxed);
    IMAGE_PA.store(pa.as_u64(), Ordering::Relaxed);
}

fn virt_to_phys(va: u64) -> u64 {
    if (PAGE_OFFSET..PAGE_END).contains(&va) {
        va - PAGE_OFFSET
    } else {
        va - IMAGE.load(Ordering::Relaxed) + IMAGE_PA.load(Ordering::Relaxed)
    }
}

pub struct KernelHal;

// SAFETY: DMA buffers are whole buddy blocks, zeroed, kept until
// `dma_dealloc`; MMIO addresses come from mappings made for the device.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let order = get_order((pages * VIRTIO_PAGE) as u64, PAGE_SHIFT);
        // Out of memory: physical address 0, which `virtio-drivers` takes
        // as `DmaError` (its `Dma::new`) before touching the pointer.
        let Some(pa) = crate::mm::global::with_mm(|mm| mm.alloc_pages(order))
            .ok()
            .flatten()
        else {
            return (0, NonNull::dangling());
        };
        let va = pa.to_virt().as_mut_ptr::<u8>();
        // SAFETY: just allocated, mapped by the linear map.
        unsafe { core::ptr::write_bytes(va, 0, (1usize << order) << PAGE_SHIFT) };
        (
            pa.as_u64(),
            NonNull::new(va).expect("linear map is not null"),
        )
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        let order = get_order((pages * VIRTIO_PAGE) as u64, PAGE_SHIFT);
        let _ = crate::mm::global::with_mm(|mm| mm.free_pages(Pa::new(paddr), order));
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let map = MMIO.lock();
        let (pa, _, va) = map
            .iter()
            .find(|(pa, len, _)| *pa <= paddr && paddr + size as u64 <= pa + len)
            .expect("device registers outside every mapped BAR");
        NonNull::new((va + (paddr - pa)) as *mut u8).expect("ioremap is not null")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        virt_to_phys(buffer.as_ptr() as *mut u8 as u64)
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
