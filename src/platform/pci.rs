//! The PCIe host bridge as the device tree describes it
//! (`pci-host-ecam-generic`): config space, address windows, INTx routing.

use super::{PhysAddr, PhysRange};

/// A window of PCI memory space and where the CPU sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PciWindow {
    pub pci: u64,
    pub cpu: u64,
    pub size: u64,
}

pub const MAX_INTX: usize = 32;

/// One `interrupt-map` row: device (bits 15:11 of phys.hi, masked) and pin
/// to a GIC INTID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IntxRoute {
    pub devfn_bits: u32,
    pub pin: u32,
    pub intid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PciHost {
    pub ecam: PhysRange,
    pub bus_start: u8,
    pub bus_end: u8,
    pub mmio32: PciWindow,
    /// The 64-bit (prefetchable) window, if any.
    pub mmio64: Option<PciWindow>,
    pub map_mask: u32,
    pub pin_mask: u32,
    pub routes: [IntxRoute; MAX_INTX],
    pub nr_routes: usize,
}

/// Cell `i` of a property (big-endian u32s). Parsing runs before the heap
/// exists, so nothing here collects.
fn cell(bytes: &[u8], i: usize) -> Option<u32> {
    bytes
        .get(i * 4..i * 4 + 4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

fn join(hi: u32, lo: u32) -> u64 {
    ((hi as u64) << 32) | lo as u64
}

impl PciHost {
    pub fn from_node(fdt: &fdt::Fdt, node: fdt::node::FdtNode) -> Option<Self> {
        let reg = node.reg()?.next()?;
        let mut host = PciHost {
            ecam: PhysRange::new(PhysAddr::new(reg.starting_address as u64), reg.size? as u64),
            bus_start: 0,
            bus_end: 0xff,
            ..Default::default()
        };
        if let Some(range) = node.property("bus-range") {
            if let (Some(start), Some(end)) = (cell(range.value, 0), cell(range.value, 1)) {
                (host.bus_start, host.bus_end) = (start as u8, end as u8);
            }
        }
        // ranges: <phys.hi phys.mid phys.lo  cpu.hi cpu.lo  size.hi size.lo>
        let ranges = node.property("ranges")?.value;
        for row in 0..ranges.len() / 28 {
            let r = |i: usize| cell(ranges, row * 7 + i).unwrap_or(0);
            let w = PciWindow {
                pci: join(r(1), r(2)),
                cpu: join(r(3), r(4)),
                size: join(r(5), r(6)),
            };
            match (r(0) >> 24) & 3 {
                2 => host.mmio32 = w,
                3 => host.mmio64 = Some(w),
                _ => {}
            }
        }
        if let Some(mask) = node.property("interrupt-map-mask") {
            (host.map_mask, host.pin_mask) = (cell(mask.value, 0)?, cell(mask.value, 3)?);
        }
        // interrupt-map rows: child unit address (3), child pin (1), parent
        // phandle, parent unit address and interrupt specifier (the
        // parent's #address-cells and #interrupt-cells).
        if let Some(map) = node.property("interrupt-map") {
            let c = |i: usize| cell(map.value, i);
            let mut i = 0;
            while i + 5 <= map.value.len() / 4 && host.nr_routes < MAX_INTX {
                let parent = fdt.find_phandle(c(i + 4)?)?;
                let addr_cells = parent
                    .property("#address-cells")
                    .and_then(|p| p.as_usize())
                    .unwrap_or(0);
                let int_cells = parent.interrupt_cells()?;
                let spec = i + 5 + addr_cells;
                // GIC specifier: <type number flags>, type 0 = SPI.
                let intid = match (c(spec)?, c(spec + 1)?) {
                    (0, n) => 32 + n,
                    (1, n) => 16 + n,
                    _ => return None,
                };
                host.routes[host.nr_routes] = IntxRoute {
                    devfn_bits: c(i)?,
                    pin: c(i + 3)?,
                    intid,
                };
                host.nr_routes += 1;
                i += 5 + addr_cells + int_cells;
            }
        }
        Some(host)
    }

    /// The INTID that pin `pin` (1 = INTA) of device `dev` raises.
    pub fn intx(&self, dev: u8, pin: u8) -> Option<u32> {
        let bits = (dev as u32) << 11;
        self.routes[..self.nr_routes]
            .iter()
            .find(|r| r.devfn_bits == bits & self.map_mask && r.pin == pin as u32 & self.pin_mask)
            .map(|r| r.intid)
    }
}
