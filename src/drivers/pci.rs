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
#[derive(Clone, Copy)]
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
    /// Sizes come from the device: anything that does not fit (or
    /// overflows) is `None`, never a panic.
    fn alloc(&mut self, size: u64) -> Option<(u64, u64)> {
        if size == 0 || !size.is_power_of_two() {
            return None;
        }
        let at = self.next.checked_next_multiple_of(size)?;
        let end = at.checked_add(size)?;
        (end <= self.window.pci.checked_add(self.window.size)?).then(|| {
            self.next = end;
            (at, at - self.window.pci + self.window.cpu)
        })
    }
}

/// Enumerates the host's root bus, places every memory BAR and enables
/// memory decoding and bus mastering. A 64-bit BAR goes to the 64-bit
/// window, or the 32-bit one when that is missing or full. A device is
/// placed whole or not at all: if one BAR does not fit, the windows get back
/// what its others took, it stays disabled, is reported, and no driver sees
/// it. Buses behind bridges are not reachable
/// until someone numbers the bridges, which no one here does: only the
/// root bus (where QEMU puts its devices) is scanned.
pub fn enumerate<C: ConfigurationAccess>(root: &mut PciRoot<C>, host: &PciHost) -> Vec<PciDevice> {
    let mut low = WindowAllocator::new(host.mmio32);
    let mut high = host.mmio64.map(WindowAllocator::new);
    let mut found = Vec::new();
    {
        let functions: Vec<_> = root.enumerate_bus(host.bus_start).collect();
        for (df, info) in functions {
            let mut dev = PciDevice {
                df,
                vendor: info.vendor_id,
                device: info.device_id,
                bars: [None; 6],
                intx: host.intx(df.device, 1),
            };
            let mut ok = true;
            let saved = (low, high);
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
                        (Some(h), true) => h.alloc(size).or_else(|| low.alloc(size)),
                        _ => low.alloc(size),
                    };
                    match placed {
                        Some((pci, cpu)) if ok => {
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
            if !ok {
                (low, high) = saved;
                crate::pr_warn!("pci {df}: BARs do not fit the bridge's windows; left disabled");
                continue;
            }
            root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type Registers = HashMap<(u8, u8), [u32; 64]>;

    /// Config space of a few functions, with BAR sizing as hardware does it.
    #[derive(Default)]
    struct FakeCam {
        regs: std::rc::Rc<std::cell::RefCell<Registers>>,
        sizes: std::rc::Rc<HashMap<(u8, u8), [u64; 6]>>,
    }

    impl ConfigurationAccess for FakeCam {
        fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
            let regs = self.regs.borrow();
            regs.get(&(df.device, df.function))
                .map_or(u32::MAX, |r| r[offset as usize / 4])
        }

        fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
            let key = (df.device, df.function);
            let sizes = self.sizes[&key];
            let mut regs = self.regs.borrow_mut();
            let r = regs.get_mut(&key).unwrap();
            let i = offset as usize / 4;
            r[i] = match i {
                4..=9 => {
                    let bar = i - 4;
                    // The upper half of a 64-bit BAR sizes with the lower one.
                    let (size, high) = if sizes[bar] == 0 && bar > 0 && r[i - 1] & 4 != 0 {
                        (sizes[bar - 1], true)
                    } else {
                        (sizes[bar], false)
                    };
                    if size == 0 {
                        0
                    } else if high {
                        data & (!(size - 1) >> 32) as u32
                    } else {
                        (data & !(size as u32 - 1) & !0xf) | (r[i] & 0xf)
                    }
                }
                _ => data,
            };
        }

        unsafe fn unsafe_clone(&self) -> Self {
            FakeCam {
                regs: self.regs.clone(),
                sizes: self.sizes.clone(),
            }
        }
    }

    #[test]
    fn bars_are_placed_in_the_windows_and_decoding_enabled() {
        let mut regs = HashMap::new();
        let mut sizes = HashMap::new();
        // 00:01.0: a 4 KiB 32-bit BAR 0. 00:03.0: 256 B BAR 0, 256 MiB
        // 64-bit prefetchable BAR 2 (ivshmem's shape).
        let mut a = [0u32; 64];
        a[0] = 0x1000_1af4;
        regs.insert((1, 0), a);
        sizes.insert((1, 0), [0x1000, 0, 0, 0, 0, 0]);
        let mut b = [0u32; 64];
        b[0] = 0x1110_1af4;
        b[6] = 0xc; // 64-bit, prefetchable
        regs.insert((3, 0), b);
        sizes.insert((3, 0), [0x100, 0, 0x1000_0000, 0, 0, 0]);
        let cam = FakeCam {
            regs: std::rc::Rc::new(std::cell::RefCell::new(regs)),
            sizes: std::rc::Rc::new(sizes),
        };
        let mut root = PciRoot::new(cam);
        let host = PciHost {
            mmio32: PciWindow {
                pci: 0x1000_0000,
                cpu: 0x1000_0000,
                size: 0x2eff_0000,
            },
            mmio64: Some(PciWindow {
                pci: 0x80_0000_0000,
                cpu: 0x80_0000_0000,
                size: 0x80_0000_0000,
            }),
            ..Default::default()
        };
        let devs = enumerate(&mut root, &host);
        assert_eq!(devs.len(), 2);
        assert_eq!(
            devs[0].bars[0],
            Some(Bar {
                cpu: 0x1000_0000,
                size: 0x1000,
                prefetchable: false
            })
        );
        assert_eq!(
            devs[1].bars[0],
            Some(Bar {
                cpu: 0x1000_1000,
                size: 0x100,
                prefetchable: false
            })
        );
        assert_eq!(
            devs[1].bars[2],
            Some(Bar {
                cpu: 0x80_0000_0000,
                size: 0x1000_0000,
                prefetchable: true
            })
        );
        for dev in &devs {
            let (_, command) = root.get_status_command(dev.df);
            assert!(command.contains(Command::MEMORY_SPACE | Command::BUS_MASTER));
        }
    }

    /// A function: (device, function), vendor/device id, BAR sizes, BAR
    /// flag bits.
    type FakeFunction = ((u8, u8), u32, [u64; 6], [u32; 6]);

    fn cam(devices: &[FakeFunction]) -> FakeCam {
        let mut regs = HashMap::new();
        let mut sizes = HashMap::new();
        for &(df, id, bar_sizes, bar_flags) in devices {
            let mut r = [0u32; 64];
            r[0] = id;
            r[4..10].copy_from_slice(&bar_flags);
            regs.insert(df, r);
            sizes.insert(df, bar_sizes);
        }
        FakeCam {
            regs: std::rc::Rc::new(std::cell::RefCell::new(regs)),
            sizes: std::rc::Rc::new(sizes),
        }
    }

    fn host(low_size: u64, high: Option<u64>) -> PciHost {
        PciHost {
            mmio32: PciWindow {
                pci: 0x1000_0000,
                cpu: 0x1000_0000,
                size: low_size,
            },
            mmio64: high.map(|size| PciWindow {
                pci: 0x80_0000_0000,
                cpu: 0x80_0000_0000,
                size,
            }),
            ..Default::default()
        }
    }

    /// A device with a BAR that does not fit is not handed out, its other
    /// BARs' space goes back to the window, and decoding stays off.
    #[test]
    fn a_device_is_placed_whole_or_not_at_all() {
        let cam = cam(&[
            // 00:01.0: a 64 KiB BAR 0 that fits, a 1 GiB BAR 1 that does not.
            (
                (1, 0),
                0x1000_1af4,
                [0x1_0000, 0x4000_0000, 0, 0, 0, 0],
                [0; 6],
            ),
            // 00:02.0: a 64 KiB BAR 0.
            ((2, 0), 0x1001_1af4, [0x1_0000, 0, 0, 0, 0, 0], [0; 6]),
        ]);
        let mut root = PciRoot::new(cam);
        let devs = enumerate(&mut root, &host(0x100_0000, None));
        assert_eq!(devs.len(), 1, "{devs:?}");
        assert_eq!(devs[0].device, 0x1001);
        // It got the space the refused device's BAR 0 had taken.
        assert_eq!(devs[0].bars[0].map(|b| b.cpu), Some(0x1000_0000));
        let refused = DeviceFunction {
            bus: 0,
            device: 1,
            function: 0,
        };
        let (_, command) = root.get_status_command(refused);
        assert!(!command.contains(Command::MEMORY_SPACE));
    }

    /// Without a 64-bit window (or with a full one) a 64-bit BAR goes
    /// below 4 GiB.
    #[test]
    fn a_64_bit_bar_falls_back_to_the_32_bit_window() {
        for high in [None, Some(0x1000)] {
            let cam = cam(&[(
                (3, 0),
                0x1110_1af4,
                [0, 0, 0x100_0000, 0, 0, 0],
                [0, 0, 0xc, 0, 0, 0],
            )]);
            let mut root = PciRoot::new(cam);
            let devs = enumerate(&mut root, &host(0x2000_0000, high));
            assert_eq!(devs.len(), 1);
            assert_eq!(
                devs[0].bars[2],
                Some(Bar {
                    cpu: 0x1000_0000,
                    size: 0x100_0000,
                    prefetchable: true
                }),
                "64-bit window {high:?}"
            );
        }
    }
}
