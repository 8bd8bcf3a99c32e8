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
use crate::drivers::virtio_mem::{self, MemDevice, VirtioMem};
use crate::mm::addr::{PhysAddr, PhysRange, VirtAddr};
use crate::mm::global::with_mm;
use crate::platform::pci::PciHost;
use crate::{pr_info, pr_warn};
use virtio_drivers::transport::pci::bus::{Cam, MmioCam, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceType, Transport};

type VirtioMemPci = VirtioMem<VirtioMemDevice<PciTransport>>;

/// A virtio-mem device and when its driver wants to run again.
struct VirtioMemSlot {
    vm: VirtioMemPci,
    /// Generic-timer count at which to retry; `None`: only on its
    /// config-change interrupt.
    retry_at: Option<u64>,
}

impl VirtioMemSlot {
    /// Runs the driver's step and schedules its retry.
    fn step(&mut self) {
        let retry = with_mm(|mm| self.vm.step(mm)).unwrap_or_else(|e| {
            pr_warn!("{e}");
            Some(virtio_mem::RETRY_MAX_MS)
        });
        self.retry_at = retry.map(|ms| cpu::counter() + ms * cpu::counter_freq() / 1000);
    }
}

/// The drivers that have work to do after boot.
#[derive(Default)]
pub struct Devices {
    virtio_mem: Vec<VirtioMemSlot>,
}

impl Devices {
    /// Lets each driver follow its device (its config change, or its retry
    /// time); whether any did work. Their log lines interrupt the console.
    pub fn poll<I: Io>(&mut self, console: &mut Console<I>) -> bool {
        let fired = cpu::timer_fired();
        let now = cpu::counter();
        let mut worked = false;
        for slot in &mut self.virtio_mem {
            let due = slot.retry_at.is_some_and(|t| now >= t);
            // Read (and acknowledged) every time: lines may be shared.
            if !slot.vm.device().interrupt() && !due {
                continue;
            }
            worked = true;
            console.interrupted(|| slot.step());
        }
        if worked || fired {
            self.arm_retry_timer();
        }
        worked
    }

    /// One timer for every device: armed for the earliest retry.
    fn arm_retry_timer(&self) {
        let now = cpu::counter();
        if let Some(t) = self.virtio_mem.iter().filter_map(|s| s.retry_at).min() {
            let ms = (t.saturating_sub(now) * 1000).div_ceil(cpu::counter_freq());
            cpu::arm_timer(ms.max(1));
        }
    }
}

/// A device window, or `None` (logged) when the ioremap window or memory
/// is short: sizes come from the DT and the devices.
fn ioremap(pa: PhysAddr, size: u64) -> Option<VirtAddr> {
    match with_mm(|mm| mm.ioremap(pa, size)).and_then(|r| r) {
        Ok(va) => Some(va),
        Err(e) => {
            pr_warn!("ioremap {pa:#x}+{size:#x}: {e}");
            None
        }
    }
}

/// Enumerates PCI, registers ivshmem BARs as device memory and starts the
/// virtio-mem driver.
pub fn probe_devices(host: &PciHost, image: &KernelImage) -> Devices {
    crate::drivers::virtio_hal::set_image(image.text, image.pa);
    let Some(ecam) = ioremap(host.ecam.base, host.ecam.size) else {
        return Devices::default();
    };
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
                let mut mapped = true;
                for bar in dev.bars.iter().flatten() {
                    let pa = PhysAddr::new(bar.cpu);
                    match ioremap(pa, bar.size) {
                        Some(va) => register_mmio(pa, bar.size, va),
                        None => mapped = false,
                    }
                }
                if !mapped {
                    pr_warn!("pci {}: a BAR could not be mapped; no driver", dev.df);
                    continue;
                }
                let Ok(transport) = PciTransport::new::<KernelHal, _>(&mut root, dev.df) else {
                    pr_warn!("pci {}: not a virtio device after all", dev.df);
                    continue;
                };
                if transport.device_type() != DeviceType::Memory {
                    pr_info!(
                        "pci {}: virtio {:?}: no driver",
                        dev.df,
                        transport.device_type()
                    );
                    continue;
                }
                // Each device has its own region, state and interrupt.
                match VirtioMemDevice::new(transport).and_then(VirtioMem::new) {
                    Ok(vm) => {
                        if let (Some(gic), Some(intid)) = (gic::get(), dev.intx) {
                            gic.enable_spi(intid);
                            gic.enable_private(0, cpu::TIMER_INTID);
                            pr_info!(
                                "virtio_mem {}: config changes interrupt on INTx {intid}",
                                dev.df
                            );
                        }
                        let slot = VirtioMemSlot { vm, retry_at: None };
                        if devices.virtio_mem.try_reserve(1).is_ok() {
                            devices.virtio_mem.push(slot);
                        } else {
                            pr_warn!("pci {}: no memory for another virtio-mem device", dev.df);
                            let mut slot = slot;
                            slot.vm.device().fail();
                        }
                    }
                    Err(e) => pr_warn!("{e}"),
                }
            }
            _ => {}
        }
    }
    for slot in devices.virtio_mem.iter_mut().filter(|s| s.vm.unsatisfied()) {
        slot.step();
    }
    devices.arm_retry_timer();
    devices
}
