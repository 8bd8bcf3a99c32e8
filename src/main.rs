//! The kernel binary: the assembly entry and the few items only a final
//! executable may define. Everything else is in the `hpk` library.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod kernel {
    use hpk::init::early_map as b;
    core::arch::global_asm!(
        include_str!("../boot/entry.S"),
        PAGE_SIZE = const b::PAGE_SIZE,
        TCR = const b::TCR,
        BLOCK_SHIFT = const b::BLOCK_SHIFT,
        BLOCK_ENTRIES = const b::BLOCK_ENTRIES,
        MID_LEVEL = const b::MID_LEVEL,
        K_ROOT_INDEX = const b::K_ROOT_INDEX,
        K_MID_INDEX = const b::K_MID_INDEX,
        K_BLOCK_INDEX = const b::K_BLOCK_INDEX,
        IMAGE_FLAGS = const b::IMAGE_FLAGS,
    );
    core::arch::global_asm!(include_str!("../boot/vectors.S"));

    #[global_allocator]
    static HEAP: hpk::mm::heap::Heap = hpk::mm::heap::Heap::empty();

    /// Called by boot/entry.S with the MMU on, at the linked address.
    #[unsafe(no_mangle)]
    extern "C" fn kmain(x0: u64, kernel_pa: u64) -> ! {
        hpk::init::start(x0, kernel_pa, &HEAP)
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        hpk::init::panic(info)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the kernel runs under qemu-system-aarch64: use `cargo run`");
}
