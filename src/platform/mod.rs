//! What the device tree says about the machine, read once at boot.

pub mod cmdline;
mod fdt_check;
#[cfg(test)]
mod fuzz_tests;
pub mod pci;

pub use crate::mm::addr::{PhysAddr, PhysRange};

/// How PSCI calls reach the firmware (`/psci` `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    Hvc = 1,
    Smc = 2,
}

pub const MAX_MEMORY: usize = 16;
pub const MAX_CPUS: usize = 16;

/// What the DT's compatible says. `arm,gic-v3` also stands for GICv4
/// (QEMU's `gic-version=4`): the driver tells them apart by the
/// redistributors' own registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicVersion {
    V2,
    V3,
}

#[derive(Clone, Copy, Debug)]
pub struct GicInfo {
    pub version: GicVersion,
    pub dist: PhysRange,
    /// GICv2: the CPU interface; GICv3/v4: the (first) redistributor
    /// region, as large as the DT says.
    pub cpu_or_redist: PhysRange,
}

/// Everything boot needs from the DT; no address is assumed.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    pub dtb: PhysRange,
    pub memory: [PhysRange; MAX_MEMORY],
    pub nr_memory: usize,
    pub uart: Option<PhysRange>,
    /// The UART's interrupt as a GIC INTID (SPIs from 32).
    pub uart_intid: Option<u32>,
    pub psci: Option<Conduit>,
    pub gic: Option<GicInfo>,
    pub pci: Option<pci::PciHost>,
    pub nr_cpus: usize,
    /// MPIDR of each CPU, in DT order (CPU 0 first).
    pub cpu_mpidr: [u64; MAX_CPUS],
    bootargs: [u8; 1024],
    bootargs_len: usize,
}

/// A `reg` entry as a physical range (no size: empty).
fn region(r: &fdt::standard_nodes::MemoryRegion) -> PhysRange {
    PhysRange::new(
        PhysAddr::new(r.starting_address as u64),
        r.size.unwrap_or(0) as u64,
    )
}

pub const FDT_MAGIC: u32 = 0xd00d_feed;

/// Whether a flattened device tree starts at `pa` (reachable as a pointer:
/// the boot identity map).
///
/// # Safety
/// `pa` must be readable.
pub unsafe fn is_fdt(pa: PhysAddr) -> bool {
    pa.as_u64() != 0
        && pa.is_aligned(8)
        // SAFETY: the caller's promise that `pa` is readable; aligned above.
        && u32::from_be(unsafe { (pa.as_u64() as *const u32).read_volatile() }) == FDT_MAGIC
}

impl Platform {
    /// Reads the DT at `ptr`.
    ///
    /// # Safety
    /// `ptr` must point at a readable FDT header and as many bytes as it
    /// says (see [`fdt_check::parse`]); what they hold is checked.
    pub unsafe fn from_fdt(ptr: *const u8) -> Result<Self, fdt::FdtError> {
        // SAFETY: the caller's promise: a readable FDT at `ptr`.
        let fdt = unsafe { fdt_check::parse(ptr)? };
        let mut p = Platform {
            dtb: PhysRange::new(PhysAddr::new(ptr as u64), fdt.total_size() as u64),
            memory: [PhysRange::default(); MAX_MEMORY],
            nr_memory: 0,
            uart: None,
            uart_intid: None,
            psci: None,
            gic: None,
            pci: None,
            nr_cpus: fdt.cpus().count().min(MAX_CPUS),
            cpu_mpidr: [0; MAX_CPUS],
            bootargs: [0; 1024],
            bootargs_len: 0,
        };
        for node in fdt.all_nodes() {
            let is_memory = node.property("device_type").and_then(|d| d.as_str()) == Some("memory");
            if !is_memory {
                continue;
            }
            for r in node.reg().into_iter().flatten() {
                if p.nr_memory < MAX_MEMORY && r.size.unwrap_or(0) > 0 {
                    p.memory[p.nr_memory] = region(&r);
                    p.nr_memory += 1;
                }
            }
        }
        p.memory[..p.nr_memory].sort_unstable_by_key(|r| r.base);
        for (slot, cpu) in p.cpu_mpidr.iter_mut().zip(fdt.cpus()) {
            *slot = cpu.ids().first() as u64;
        }
        if let Some(args) = fdt.chosen().bootargs() {
            let n = args.len().min(p.bootargs.len());
            p.bootargs[..n].copy_from_slice(&args.as_bytes()[..n]);
            p.bootargs_len = n;
        }
        let first_reg =
            |node: fdt::node::FdtNode| node.reg().and_then(|mut r| r.next()).map(|r| region(&r));
        // The console is the one /chosen names, else the first PL011.
        let stdout = fdt.chosen().stdout().filter(|n| {
            n.compatible()
                .is_some_and(|c| c.all().any(|s| s == "arm,pl011"))
        });
        let uart = stdout.or_else(|| fdt.find_compatible(&["arm,pl011"]));
        p.uart = uart.and_then(first_reg);
        // `interrupts = <type number flags>`: type 0 is an SPI (INTID 32 + n).
        p.uart_intid = uart
            .and_then(|n| n.property("interrupts"))
            .and_then(|prop| {
                let cell = |i: usize| {
                    prop.value
                        .get(i * 4..i * 4 + 4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                };
                match (cell(0)?, cell(1)?) {
                    (0, n) => n.checked_add(32),
                    (1, n) => n.checked_add(16),
                    _ => None,
                }
            });
        p.psci = fdt
            .find_compatible(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"])
            .and_then(|n| match n.property("method").and_then(|m| m.as_str()) {
                Some("hvc") => Some(Conduit::Hvc),
                Some("smc") => Some(Conduit::Smc),
                _ => None,
            });
        p.pci = fdt
            .find_compatible(&["pci-host-ecam-generic"])
            .and_then(|n| pci::PciHost::from_node(&fdt, n));
        if let Some(gic) = fdt.find_compatible(&["arm,gic-v3", "arm,cortex-a15-gic", "arm,gic-400"])
        {
            let version = if gic
                .compatible()
                .is_some_and(|c| c.all().any(|s| s == "arm,gic-v3"))
            {
                GicVersion::V3
            } else {
                GicVersion::V2
            };
            let mut regs = gic.reg().into_iter().flatten();
            let mut next = || regs.next().map(|r| region(&r));
            if let (Some(dist), Some(cpu_or_redist)) = (next(), next()) {
                p.gic = Some(GicInfo {
                    version,
                    dist,
                    cpu_or_redist,
                });
            }
        }
        Ok(p)
    }

    pub fn memory(&self) -> &[PhysRange] {
        &self.memory[..self.nr_memory]
    }

    pub fn bootargs(&self) -> &str {
        core::str::from_utf8(&self.bootargs[..self.bootargs_len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> Platform {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(path).unwrap();
        // The parser reads through a pointer: keep the blob 8-byte aligned.
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_ne_bytes(w)
            })
            .collect();
        // SAFETY: `words` holds the whole DTB (8-byte aligned) and outlives `p` (forgotten).
        let p = unsafe { Platform::from_fdt(words.as_ptr() as *const u8) }.unwrap();
        std::mem::forget(words);
        p
    }

    #[test]
    fn reads_qemu_virt_gicv2() {
        let p = load("virt-gicv2.dtb");
        assert_eq!(
            p.memory(),
            &[PhysRange::new(PhysAddr::new(0x4000_0000), 1 << 30)]
        );
        assert_eq!(
            p.uart,
            Some(PhysRange::new(PhysAddr::new(0x900_0000), 0x1000))
        );
        assert_eq!(p.uart_intid, Some(33));
        assert_eq!(p.psci, Some(Conduit::Hvc));
        let gic = p.gic.unwrap();
        assert_eq!(gic.version, GicVersion::V2);
        assert_eq!(gic.dist.base, PhysAddr::new(0x800_0000));
        assert_eq!(gic.cpu_or_redist.base, PhysAddr::new(0x801_0000));
        assert_eq!(p.nr_cpus, 1);
    }

    /// QEMU's `gic-version=4` says `arm,gic-v3`, with the whole
    /// redistributor region (the driver finds the v4 stride itself).
    #[test]
    fn reads_qemu_virt_gicv4_as_v3_compatible() {
        let p = load("virt-gicv4-smp2.dtb");
        let gic = p.gic.unwrap();
        assert_eq!(gic.version, GicVersion::V3);
        assert_eq!(
            gic.dist,
            PhysRange::new(PhysAddr::new(0x800_0000), 0x1_0000)
        );
        assert_eq!(
            gic.cpu_or_redist,
            PhysRange::new(PhysAddr::new(0x80a_0000), 0xf6_0000)
        );
        assert_eq!(p.nr_cpus, 2);
        assert_eq!(&p.cpu_mpidr[..2], &[0, 1]);
    }

    #[test]
    fn reads_qemu_virt_gicv3_at_el2() {
        let p = load("virt-gicv3-el2.dtb");
        assert_eq!(
            p.memory(),
            &[PhysRange::new(PhysAddr::new(0x4000_0000), 2 << 30)]
        );
        assert_eq!(p.psci, Some(Conduit::Smc));
        let gic = p.gic.unwrap();
        assert_eq!(gic.version, GicVersion::V3);
        assert_eq!(gic.cpu_or_redist.base, PhysAddr::new(0x80a_0000));
        assert_eq!(p.nr_cpus, 2);
        assert_eq!(&p.cpu_mpidr[..2], &[0, 1]);
        let pci = p.pci.unwrap();
        assert_eq!(
            pci.ecam,
            PhysRange::new(PhysAddr::new(0x40_1000_0000), 0x1000_0000)
        );
        assert_eq!(
            pci.mmio32,
            pci::PciWindow {
                pci: 0x1000_0000,
                cpu: 0x1000_0000,
                size: 0x2eff_0000
            }
        );
        assert_eq!(
            pci.mmio64,
            Some(pci::PciWindow {
                pci: 0x80_0000_0000,
                cpu: 0x80_0000_0000,
                size: 0x80_0000_0000
            })
        );
        // virt swizzles INTx: device d, pin p raises SPI 3 + (d + p - 1) % 4.
        assert_eq!(pci.intx(0, 1), Some(35));
        assert_eq!(pci.intx(1, 1), Some(36));
        assert_eq!(pci.intx(2, 1), Some(37));
        assert_eq!(pci.intx(3, 2), Some(35));
        assert_eq!(pci.intx(4, 1), Some(35));
        assert_eq!(p.uart_intid, Some(33));
    }
}
