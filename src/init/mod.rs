//! Boot, from the first Rust instruction to the console, in Linux's order:
//! [`setup_arch`](setup::setup_arch) (device tree, command line, memblock),
//! [`paging_init`](paging::paging_init) (the kernel's page tables),
//! [`mem_init`](mem::mem_init) (struct pages, buddy allocator, heap, the
//! memory system), [`probe_devices`](devices::probe_devices) (PCI and
//! drivers), [`smp_init`](smp::smp_init) (secondary CPUs), then the idle
//! loop. This is the one module that wires every other together.

pub mod early_map;

#[cfg(target_os = "none")]
mod devices;
#[cfg(target_os = "none")]
mod mem;
#[cfg(target_os = "none")]
mod paging;
#[cfg(target_os = "none")]
mod setup;
#[cfg(target_os = "none")]
mod smp;

#[cfg(target_os = "none")]
pub use boot::{panic, start};

#[cfg(target_os = "none")]
mod boot {
    use core::fmt::Write;

    use super::devices::Devices;
    use crate::arch::aarch64 as cpu;
    use crate::commands::{Machine, Shell};
    use crate::console::{Console, Io};
    use crate::drivers::{pl011, psci};
    use crate::mm::heap::Heap;
    use crate::pr_info;

    /// The serial console's byte stream.
    struct Uart;

    impl Io for Uart {
        fn read_byte(&mut self) -> Option<u8> {
            pl011::read_byte()
        }

        fn write_bytes(&mut self, bytes: &[u8]) {
            pl011::write_bytes(bytes)
        }
    }

    pub fn start(x0: u64, kernel_pa: u64, heap: &'static Heap) -> ! {
        let t0 = cpu::counter();
        let mut boot = super::setup::setup_arch(x0, kernel_pa);
        super::smp::oops_init();
        let paging = super::paging::paging_init(&mut boot);
        let can_sleep = super::paging::irq_init(&boot, &paging);
        super::mem::mem_init(&mut boot, paging, heap);
        super::smp::smp_init(&boot);
        let devices = boot
            .platform
            .pci
            .map(|host| super::devices::probe_devices(&host, &boot.image))
            .unwrap_or_default();
        let elapsed_us = (cpu::counter() - t0) * 1_000_000 / cpu::counter_freq();
        pr_info!("Boot took {} us", elapsed_us);
        idle_loop(devices, can_sleep)
    }

    /// The console and the drivers' work, sleeping in between when an
    /// interrupt can wake the CPU.
    fn idle_loop(mut devices: Devices, can_sleep: bool) -> ! {
        let mut shell = Shell::new(Machine::default());
        let mut console = Console::new(Uart);
        loop {
            if console.poll(&mut shell) > 0 {
                continue;
            }
            if devices.poll(&mut console) {
                continue;
            }
            if can_sleep {
                cpu::wait_for_interrupt();
            } else {
                core::hint::spin_loop();
            }
        }
    }

    pub fn panic(info: &core::panic::PanicInfo) -> ! {
        let _ = writeln!(pl011::RawWriter, "\nKernel panic - not syncing: {info}");
        psci::system_off()
    }
}
