//! PCIe enumeration on the generic ECAM host bridge. No firmware has run,
//! so every memory BAR is sized and placed here, from the bridge's windows
//! (64-bit BARs in the 64-bit window when there is one), and decoding is
//! switched on. Config space access and BAR sizing are `virtio-drivers`'.

use alloc::vec::Vec;

use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, MemoryBarType, PciRoot,
};

use crate::platform::pci::{PciHost, PciWindow};

/// A memory BAR as placed: CPU physical address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub cpu: u64,
    pub size: u64,
    pub prefetchable: bool,
}

#[derive(Clone, Debug)]
pub struct PciDevice {
    pub df: DeviceFunction,
    pub vendor: u16,
    pub device: u16,
    pub bars: [Option<Bar>; 6],
    /// The INTID its INTA# raises, from the bridge's `interrupt-map`.
    pub intx: Option<u32>,
}

/// Hands out naturally aligned addresses from one window.
struct WindowAllocator {
    window: PciWindow,
    next: u64,
}

impl WindowAllocator {
    fn new(window: PciWindow) -> Self {
        Self {
            window,
            next: window.pci,
        }
    }

    /// A PCI address for `size` bytes, and the CPU address it appears at.
    fn alloc(&mut self, size: u64) -> Option<(u64, u64)> {
        let at = self.next.next_multiple_of(size);
        (at + size <= self.window.pci + self.window.size).then(|| {
            self.next = at + size;
            (at, at - self.window.pci + self.window.cpu)
        })
    }
}

/// Enumerates the host's buses, places every memory BAR and enables
/// memory decoding and bus mastering. Devices whose BARs do not fit are
/// left disabled and reported.
pub fn enumerate<C: ConfigurationAccess>(root: &mut PciRoot<C>, host: &PciHost) -> Vec<PciDevice> {
    let mut low = WindowAllocator::new(host.mmio32);
    let mut high = host.mmio64.map(WindowAllocator::new);
    let mut found = Vec::new();
    for bus in host.bus_start..=host.bus_end {
        let functions: Vec<_> = root.enumerate_bus(bus).collect();
        for (df, info) in functions {
            let mut dev = PciDevice {
                df,
                vendor: info.vendor_id,
                device: info.device_id,
                bars: [None; 6],
                intx: host.intx(df.device, 1),
            };
            let mut ok = true;
            let mut index = 0;
            while index < 6 {
                let Ok(Some(bar)) = root.bar_info(df, index) else {
                    index += 1;
                    continue;
                };
                let two = bar.takes_two_entries();
                if let BarInfo::Memory {
                    address_type,
                    prefetchable,
                    size,
                    ..
                } = bar
                {
                    let wide = address_type == MemoryBarType::Width64;
                    let placed = match (&mut high, wide) {
                        (Some(h), true) => h.alloc(size),
                        _ => low.alloc(size),
                    };
                    match placed {
                        Some((pci, cpu)) if size > 0 => {
                            if wide {
                                root.set_bar_64(df, index, pci);
                            } else {
                                root.set_bar_32(df, index, pci as u32);
                            }
                            dev.bars[index as usize] = Some(Bar {
                                cpu,
                                size,
                                prefetchable,
                            });
                        }
                        _ => ok = false,
                    }
                }
                index += if two { 2 } else { 1 };
            }
            if ok {
                root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
            } else {
                crate::pr_warn!("pci {df}: BARs do not fit the bridge's windows; left disabled");
            }
            crate::pr_info!(
                "pci {df}: [{:04x}:{:04x}] {}",
                dev.vendor,
                dev.device,
                dev.bars
                    .iter()
                    .enumerate()
                    .filter_map(|(i, b)| b.map(|b| alloc::format!(
                        "BAR{i} {:#x}+{:#x}",
                        b.cpu,
                        b.size
                    )))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            found.push(dev);
        }
    }
    found
}
