//! PCI enumeration and the drivers of what it finds: ivshmem BARs become
//! device memory, a virtio-mem device gets its driver. Then the drivers'
//! share of the idle loop.

use alloc::vec::Vec;

use super::setup::KernelImage;
use crate::arch::aarch64 as cpu;
use crate::console::{Console, Io};
use crate::drivers::gic;
use crate::drivers::virtio_hal::{register_mmio, KernelHal};
use crate::drivers::virtio_mem::pci::VirtioMemDevice;
use crate::drivers::virtio_mem::VirtioMem;
use crate::mm::addr::{PhysAddr, PhysRange, VirtAddr};
use crate::mm::global::with_mm;
use crate::platform::pci::PciHost;
use crate::{pr_info, pr_warn};
use virtio_drivers::transport::pci::bus::{Cam, MmioCam, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceType, Transport};

/// How soon the virtio-mem driver retries blocks it could not unplug.
const VIRTIO_MEM_RETRY_MS: u64 = 1000;

type VirtioMemPci = VirtioMem<VirtioMemDevice<PciTransport>>;

/// The drivers that have work to do after boot.
#[derive(Default)]
pub struct Devices {
    virtio_mem: Vec<VirtioMemPci>,
}

impl Devices {
    /// Lets each driver follow its device (a config change, or the retry
    /// timer); whether any did work. Their log lines interrupt the console.
    pub fn poll<I: Io>(&mut self, console: &mut Console<I>) -> bool {
        let tick = cpu::timer_fired();
        let mut worked = false;
        for vm in &mut self.virtio_mem {
            if !vm.device().interrupt() && !tick {
                continue;
            }
            worked = true;
            let done = console.interrupted(|| {
                with_mm(|mm| vm.step(mm))
                    .and_then(|r| r)
                    .inspect_err(|e| pr_warn!("{e}"))
            });
            if done == Ok(false) {
                cpu::arm_timer(VIRTIO_MEM_RETRY_MS);
            }
        }
        worked
    }
}

fn ioremap(pa: PhysAddr, size: u64) -> VirtAddr {
    with_mm(|mm| mm.ioremap(pa, size)).expect("memory is installed before devices")
}

/// Enumerates PCI, registers ivshmem BARs as device memory and starts the
/// virtio-mem driver.
pub fn probe_devices(host: &PciHost, image: &KernelImage) -> Devices {
    crate::drivers::virtio_hal::set_image(image.text, image.pa);
    let ecam = ioremap(host.ecam.base, host.ecam.size);
    // SAFETY: the whole ECAM window is mapped as device memory, for good.
    let mut root = PciRoot::new(unsafe { MmioCam::new(ecam.as_mut_ptr(), Cam::Ecam) });
    let mut devices = Devices::default();
    for dev in crate::drivers::pci::enumerate(&mut root, host) {
        match (dev.vendor, dev.device) {
            (0x1af4, 0x1110) => {
                // ivshmem-plain: BAR 2 is the shared memory.
                if let Some(bar) = dev.bars[2] {
                    let range = PhysRange::new(PhysAddr::new(bar.cpu), bar.size);
                    if let Ok(id) =
                        with_mm(|mm| mm.register_device_memory(range, "ivshmem", "ivshmem"))
                    {
                        pr_info!(
                            "ivshmem: device memory {id} at {:#x}-{:#x}",
                            bar.cpu,
                            bar.cpu + bar.size - 1
                        );
                    }
                }
            }
            (0x1af4, 0x1040..=0x107f) => {
                for bar in dev.bars.iter().flatten() {
                    let pa = PhysAddr::new(bar.cpu);
                    register_mmio(pa, bar.size, ioremap(pa, bar.size));
                }
                let Ok(transport) = PciTransport::new::<KernelHal, _>(&mut root, dev.df) else {
                    pr_warn!("pci {}: not a virtio device after all", dev.df);
                    continue;
                };
                if transport.device_type() != DeviceType::Memory || !devices.virtio_mem.is_empty() {
                    pr_info!(
                        "pci {}: virtio {:?}: no driver",
                        dev.df,
                        transport.device_type()
                    );
                    continue;
                }
                match VirtioMemDevice::new(transport).and_then(VirtioMem::new) {
                    Ok(vm) => {
                        if let (Some(gic), Some(intid)) = (gic::get(), dev.intx) {
                            gic.enable_spi(intid);
                            gic.enable_private(0, cpu::TIMER_INTID);
                            pr_info!("virtio_mem: config changes interrupt on INTx {intid}");
                        }
                        devices.virtio_mem.push(vm);
                    }
                    Err(e) => pr_warn!("{e}"),
                }
            }
            _ => {}
        }
    }
    for vm in &mut devices.virtio_mem {
        if vm.unsatisfied() {
            if let Err(e) = with_mm(|mm| vm.step(mm)).and_then(|r| r) {
                pr_warn!("{e}");
            }
        }
    }
    devices
}
