//! What the device tree says about the machine, read once at boot.

pub mod cmdline;
pub mod dtb;
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
/// `distance-map` entries kept: a full matrix of `MAX_NUMNODES` nodes.
pub const MAX_DISTANCES: usize = crate::mm::node::MAX_NUMNODES * crate::mm::node::MAX_NUMNODES;
pub const MAX_CPUS: usize = 16;
/// DT reservations kept one by one; more are folded into their nearest
/// neighbour (reserving the gap too: more reserved is safe, less is not).
pub const MAX_RESERVED: usize = 32;

/// Where a reservation came from, for the boot log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationKind {
    /// `/memreserve/`.
    MemReserve,
    /// A `/reserved-memory` child with `reg`.
    ReservedMemory,
    /// `/chosen` `linux,initrd-start`/`-end`.
    Initrd,
    /// `/chosen` `linux,elfcorehdr`.
    ElfCoreHdr,
    /// Several folded into one (more reservations than slots).
    Merged,
}

/// Memory the DT says is not the kernel's to allocate (Linux's
/// `early_init_fdt_scan_reserved_mem`). `no_map` ones (`/reserved-memory`
/// `no-map`) are not even to be in the linear map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub range: PhysRange,
    pub no_map: bool,
    pub kind: ReservationKind,
}

/// What the DT said that could not be taken as it is, for the boot log
/// (the DT is read before there is a console).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Memory regions beyond [`MAX_MEMORY`].
    pub memory: usize,
    /// Reservations folded into a neighbour (beyond [`MAX_RESERVED`]).
    pub reservations_merged: usize,
    /// `/reserved-memory` children without `reg` (dynamic allocation,
    /// not supported), or with a `reg` the parser cannot read.
    pub reservations_unreadable: usize,
    /// CPUs beyond [`MAX_CPUS`].
    pub cpus: usize,
}

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
    /// Each memory range's `numa-node-id`, if its node has one.
    pub memory_nid: [Option<u32>; MAX_MEMORY],
    /// Each CPU's `numa-node-id`, if its node has one.
    pub cpu_nid: [Option<u32>; MAX_CPUS],
    /// `/distance-map`'s `distance-matrix`: (node, node, distance).
    distances: [(u32, u32, u32); MAX_DISTANCES],
    nr_distances: usize,
    /// A `distance-map` that could not be read whole.
    pub distance_map_malformed: bool,
    reserved: [Reservation; MAX_RESERVED],
    nr_reserved: usize,
    pub dropped: Dropped,
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

/// A `reg` entry as a physical range (no size: empty), cut short rather
/// than wrap around the address space.
fn region(r: &fdt::standard_nodes::MemoryRegion) -> PhysRange {
    let base = r.starting_address as u64;
    let size = (r.size.unwrap_or(0) as u64).min(u64::MAX - base);
    PhysRange::new(PhysAddr::new(base), size)
}

/// The node `/chosen` `stdout-path` names, through one alias at most: the
/// crate's own lookup recurses without end on an alias naming itself.
fn stdout_node<'b, 'a>(
    fdt: &'b fdt::Fdt<'a>,
    chosen: Option<fdt::node::FdtNode<'b, 'a>>,
) -> Option<fdt::node::FdtNode<'b, 'a>> {
    let path = chosen?.property("stdout-path")?.as_str()?;
    let path = path.split(':').next()?;
    let path = match path.starts_with('/') {
        true => path,
        false => fdt
            .find_node("/aliases")?
            .property(path)?
            .as_str()
            .filter(|p| p.starts_with('/'))?,
    };
    fdt.find_node(path)
}

/// A big-endian number of one or two cells (as `linux,initrd-start`).
/// A node's `numa-node-id` (one cell); `u32::MAX` for one that is not
/// one cell, so that the topology logs it as invalid.
fn numa_node_id(node: fdt::node::FdtNode) -> Option<u32> {
    let v = node.property("numa-node-id")?.value;
    Some(match <[u8; 4]>::try_from(v) {
        Ok(b) => u32::from_be_bytes(b),
        Err(_) => u32::MAX,
    })
}

fn be_number(value: &[u8]) -> Option<u64> {
    match value.len() {
        4 => Some(u32::from_be_bytes(value.try_into().ok()?) as u64),
        8 => Some(u64::from_be_bytes(value.try_into().ok()?)),
        _ => None,
    }
}

/// `status` absent, `"okay"` or `"ok"` (Linux's `of_fdt_device_is_available`).
fn available(node: fdt::node::FdtNode) -> bool {
    node.property("status")
        .and_then(|s| s.as_str())
        .is_none_or(|s| s == "okay" || s == "ok")
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
    /// Checks the DT at `ptr` ([`dtb::check_and_pack`]: dropping its
    /// `FDT_NOP`s in place) and reads it.
    ///
    /// # Safety
    /// `ptr` must point at an FDT header, readable and writable for as long
    /// as the header says (at most [`dtb::MAX_FDT_SIZE`]), used by nothing
    /// else.
    pub unsafe fn from_fdt(ptr: *mut u8) -> Result<Self, &'static str> {
        // SAFETY: the caller's promise: an FDT header is readable at `ptr`.
        let header = unsafe { core::slice::from_raw_parts(ptr, 8) };
        let total = dtb::total_size(header)?;
        // SAFETY: the caller's promise for the size the header gives,
        // bounded above.
        let blob = unsafe { core::slice::from_raw_parts_mut(ptr, total) };
        dtb::check_and_pack(blob)?;
        Self::parse(blob, PhysAddr::new(ptr as u64))
    }

    /// Reads a DT that passed [`dtb::check_and_pack`], found at `pa`.
    fn parse(blob: &[u8], pa: PhysAddr) -> Result<Self, &'static str> {
        let fdt = fdt::Fdt::new(blob).map_err(|_| "unreadable FDT")?;
        // The crate panics on a tree without these (`chosen()`, `cpus()`).
        let (Some(_), Some(cpus)) = (fdt.find_node("/chosen"), fdt.find_node("/cpus")) else {
            return Err("no /chosen or no /cpus node");
        };
        let mut p = Platform {
            dtb: PhysRange::new(pa, fdt.total_size() as u64),
            memory: [PhysRange::default(); MAX_MEMORY],
            nr_memory: 0,
            memory_nid: [None; MAX_MEMORY],
            cpu_nid: [None; MAX_CPUS],
            distances: [(0, 0, 0); MAX_DISTANCES],
            nr_distances: 0,
            distance_map_malformed: false,
            reserved: [Reservation {
                range: PhysRange::default(),
                no_map: false,
                kind: ReservationKind::MemReserve,
            }; MAX_RESERVED],
            nr_reserved: 0,
            dropped: Dropped::default(),
            uart: None,
            uart_intid: None,
            psci: None,
            gic: None,
            pci: None,
            nr_cpus: 0,
            cpu_mpidr: [0; MAX_CPUS],
            bootargs: [0; 1024],
            bootargs_len: 0,
        };
        for node in fdt.all_nodes() {
            let is_memory = node.property("device_type").and_then(|d| d.as_str()) == Some("memory");
            if !is_memory || !available(node) {
                continue;
            }
            let nid = numa_node_id(node);
            for r in node.reg().into_iter().flatten() {
                if r.size.unwrap_or(0) == 0 {
                    continue;
                }
                if p.nr_memory < MAX_MEMORY {
                    p.memory[p.nr_memory] = region(&r);
                    p.memory_nid[p.nr_memory] = nid;
                    p.nr_memory += 1;
                } else {
                    p.dropped.memory += 1;
                }
            }
        }
        let mut pairs = [(PhysRange::default(), None); MAX_MEMORY];
        for (i, pair) in pairs.iter_mut().enumerate().take(p.nr_memory) {
            *pair = (p.memory[i], p.memory_nid[i]);
        }
        pairs[..p.nr_memory].sort_unstable_by_key(|r| r.0.base);
        for (i, &(r, nid)) in pairs.iter().enumerate().take(p.nr_memory) {
            (p.memory[i], p.memory_nid[i]) = (r, nid);
        }
        // CPU nodes and their `reg` by hand: the crate's `Cpu::ids` and
        // `reg()` panic on a missing or short `reg`. A CPU node is one
        // named `cpu` or typed `cpu`, as Linux's `of_get_next_cpu_node`.
        let cells = cpus
            .property("#address-cells")
            .and_then(|c| be_number(c.value))
            .unwrap_or(2) as usize;
        let cpu_nodes = cpus.children().filter(|c| {
            c.name.split('@').next() == Some("cpu")
                || c.property("device_type").and_then(|d| d.as_str()) == Some("cpu")
        });
        for cpu in cpu_nodes {
            let mpidr = cpu
                .property("reg")
                .and_then(|r| r.value.get(..cells * 4))
                .and_then(be_number);
            let Some(mpidr) = mpidr else {
                continue;
            };
            if p.nr_cpus == MAX_CPUS {
                p.dropped.cpus += 1;
                continue;
            }
            p.cpu_mpidr[p.nr_cpus] = mpidr;
            p.cpu_nid[p.nr_cpus] = numa_node_id(cpu);
            p.nr_cpus += 1;
        }
        p.read_distance_map(&fdt);
        p.read_reservations(&fdt);
        // Raw bytes: the crate's `bootargs()` panics on an empty value.
        let chosen = fdt.find_node("/chosen");
        if let Some(args) = chosen.and_then(|c| c.property("bootargs")) {
            let args = args.value.split(|&b| b == 0).next().unwrap_or(&[]);
            let n = args.len().min(p.bootargs.len());
            p.bootargs[..n].copy_from_slice(&args[..n]);
            p.bootargs_len = n;
        }
        let first_reg =
            |node: fdt::node::FdtNode| node.reg().and_then(|mut r| r.next()).map(|r| region(&r));
        // The console is the one /chosen names, else the first PL011.
        let stdout = stdout_node(&fdt, chosen).filter(|n| {
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

    /// Linux's `of_numa_parse_distance_map_v1`: the `distance-matrix` of
    /// the `numa-distance-map-v1` node, as triples; checked later (the
    /// topology logs and drops bad entries).
    fn read_distance_map(&mut self, fdt: &fdt::Fdt) {
        let Some(map) = fdt.find_compatible(&["numa-distance-map-v1"]) else {
            if fdt.find_node("/distance-map").is_some() {
                self.distance_map_malformed = true;
            }
            return;
        };
        let Some(matrix) = map.property("distance-matrix") else {
            self.distance_map_malformed = true;
            return;
        };
        self.distance_map_malformed |= matrix.value.len() % 12 != 0;
        let cell = |c: &[u8], i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
        for e in matrix.value.chunks_exact(12) {
            if self.nr_distances == MAX_DISTANCES {
                self.distance_map_malformed = true;
                break;
            }
            self.distances[self.nr_distances] = (cell(e, 0), cell(e, 4), cell(e, 8));
            self.nr_distances += 1;
        }
    }

    /// The NUMA topology the DT describes (`numa=off`: one node); bad
    /// properties are logged and replaced.
    pub fn numa(&self, numa_off: bool) -> crate::mm::node::Topology {
        let mut memory = [(PhysRange::default(), None); MAX_MEMORY];
        for (i, m) in memory.iter_mut().enumerate().take(self.nr_memory) {
            *m = (self.memory[i], self.memory_nid[i]);
        }
        let desc = crate::mm::node::NumaDesc {
            memory: &memory[..self.nr_memory],
            cpus: &self.cpu_nid[..self.nr_cpus],
            distances: &self.distances[..self.nr_distances],
            distance_map_malformed: self.distance_map_malformed,
        };
        crate::mm::node::Topology::build(&desc, numa_off)
    }

    /// What the DT reserves: `/memreserve/`, `/reserved-memory` children
    /// with `reg`, the initrd and the crash kernel's ELF core header.
    pub fn reserved(&self) -> &[Reservation] {
        &self.reserved[..self.nr_reserved]
    }

    /// Records a reservation; with every slot taken, folds it into the
    /// nearest one (`no_map` only if both were).
    fn reserve(&mut self, range: PhysRange, no_map: bool, kind: ReservationKind) {
        if range.size == 0 {
            return;
        }
        if self.nr_reserved < MAX_RESERVED {
            self.reserved[self.nr_reserved] = Reservation {
                range,
                no_map,
                kind,
            };
            self.nr_reserved += 1;
            return;
        }
        let gap = |r: &Reservation| {
            if r.range.end() <= range.base {
                range.base - r.range.end()
            } else {
                r.range.base.as_u64().saturating_sub(range.end().as_u64())
            }
        };
        let Some(near) = self.reserved.iter_mut().min_by_key(|r| gap(r)) else {
            return;
        };
        let base = near.range.base.min(range.base);
        let end = near.range.end().max(range.end());
        *near = Reservation {
            range: PhysRange::from_bounds(base, end),
            no_map: near.no_map && no_map,
            kind: ReservationKind::Merged,
        };
        self.dropped.reservations_merged += 1;
    }

    /// Linux's `early_init_fdt_scan_reserved_mem` and
    /// `fdt_reserve_elfcorehdr`, plus the initrd (`arm64_memblock_init`).
    fn read_reservations(&mut self, fdt: &fdt::Fdt) {
        for r in fdt.memory_reservations() {
            let base = r.address() as u64;
            let size = (r.size() as u64).min(u64::MAX - base);
            self.reserve(
                PhysRange::new(PhysAddr::new(base), size),
                false,
                ReservationKind::MemReserve,
            );
        }
        if let Some(parent) = fdt.find_node("/reserved-memory") {
            for child in parent.children().filter(|&c| available(c)) {
                let no_map = child.property("no-map").is_some();
                let Some(reg) = child.reg() else {
                    self.dropped.reservations_unreadable += 1;
                    continue;
                };
                for r in reg {
                    self.reserve(region(&r), no_map, ReservationKind::ReservedMemory);
                }
            }
        }
        let Some(chosen) = fdt.find_node("/chosen") else {
            return;
        };
        let number = |name| chosen.property(name).and_then(|p| be_number(p.value));
        if let (Some(start), Some(end)) = (number("linux,initrd-start"), number("linux,initrd-end"))
        {
            let range = PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end));
            self.reserve(range, false, ReservationKind::Initrd);
        }
        // `linux,elfcorehdr` is a `reg` in the root's cells.
        let cells = fdt.root().cell_sizes();
        if let Some(p) = chosen.property("linux,elfcorehdr") {
            let (a, s) = (cells.address_cells * 4, cells.size_cells * 4);
            if let (Some(base), Some(size)) = (
                p.value.get(..a).and_then(be_number),
                p.value.get(a..a + s).and_then(be_number),
            ) {
                let size = size.min(u64::MAX - base);
                self.reserve(
                    PhysRange::new(PhysAddr::new(base), size),
                    false,
                    ReservationKind::ElfCoreHdr,
                );
            }
        }
    }

    pub fn bootargs(&self) -> &str {
        core::str::from_utf8(&self.bootargs[..self.bootargs_len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn load(name: &str) -> Platform {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(path).unwrap();
        // The parser reads through a pointer: keep the blob 8-byte aligned.
        let mut words: Vec<u64> = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_ne_bytes(w)
            })
            .collect();
        // SAFETY: `words` holds the whole DTB (8-byte aligned) and outlives `p` (forgotten).
        let p = unsafe { Platform::from_fdt(words.as_mut_ptr() as *mut u8) }.unwrap();
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

    /// QEMU's own tree passed back with `-dtb`: its fixups leave FDT_NOPs
    /// where the `/memory` node was rewritten (the copy in guest memory,
    /// saved with the monitor's `pmemsave`). The crate alone loses every
    /// node after them, `/cpus` among them, and panics.
    #[test]
    fn reads_qemu_fixed_up_dtb_with_nops() {
        let p = load("virt-fixed-up-nops.dtb");
        assert_eq!(
            p.memory(),
            &[PhysRange::new(PhysAddr::new(0x4000_0000), 1 << 30)]
        );
        assert_eq!(p.nr_cpus, 1);
        assert_eq!(p.uart_intid, Some(33));
        assert!(p.gic.is_some() && p.pci.is_some());
    }

    use super::dtb::build::{Fdt, Node};

    fn parse(fdt: &Fdt) -> Result<Platform, &'static str> {
        let bytes = fdt.to_bytes();
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` has room for `bytes`, a plain copy.
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                words.as_mut_ptr() as *mut u8,
                bytes.len(),
            )
        };
        // SAFETY: the blob is in `words`, which outlives the call (forgotten).
        let p = unsafe { Platform::from_fdt(words.as_mut_ptr() as *mut u8) };
        std::mem::forget(words);
        p
    }

    /// A minimal virt-like tree: 2 GiB of RAM at 1 GiB, one CPU.
    fn minimal() -> Fdt {
        let mut root = Node::new("");
        root.u32s("#address-cells", &[2]).u32s("#size-cells", &[2]);
        root.child(Node::new("chosen"));
        let mut mem = Node::new("memory@40000000");
        mem.string("device_type", "memory")
            .reg64(&[(0x4000_0000, 2 << 30)]);
        root.child(mem);
        let mut cpus = Node::new("cpus");
        cpus.u32s("#address-cells", &[1]).u32s("#size-cells", &[0]);
        let mut cpu = Node::new("cpu@0");
        cpu.string("device_type", "cpu").u32s("reg", &[0]);
        cpus.child(cpu);
        root.child(cpus);
        Fdt::new(root)
    }

    fn reserved_memory(children: Vec<Node>) -> Node {
        let mut rm = Node::new("reserved-memory");
        rm.u32s("#address-cells", &[2])
            .u32s("#size-cells", &[2])
            .prop("ranges", &[]);
        for c in children {
            rm.child(c);
        }
        rm
    }

    fn range(base: u64, size: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(base), size)
    }

    /// `/memreserve/`, `/reserved-memory` children (`no-map`, disabled,
    /// dynamic), the initrd and the ELF core header, as Linux reads them.
    #[test]
    fn reads_every_kind_of_reservation() {
        let mut fdt = minimal();
        fdt.reservations = vec![(0x4800_0000, 0x1_0000), (0x4900_0000, 0)];
        let mut nomap = Node::new("fw@50000000");
        nomap.reg64(&[(0x5000_0000, 0x20_0000)]).prop("no-map", &[]);
        let mut plain = Node::new("buf@51000000");
        plain.reg64(&[(0x5100_0000, 0x1000), (0x5200_0000, 0x2000)]);
        let mut off = Node::new("off@53000000");
        off.reg64(&[(0x5300_0000, 0x1000)])
            .string("status", "disabled");
        let mut dynamic = Node::new("pool");
        dynamic.u32s("size", &[0, 0x40_0000]);
        fdt.root
            .child(reserved_memory(vec![nomap, plain, off, dynamic]));
        let chosen = fdt.root.find("chosen").unwrap();
        chosen
            .u32s("linux,initrd-start", &[0x4400_0000])
            .u32s("linux,initrd-end", &[0, 0x4410_0000])
            .u32s("linux,elfcorehdr", &[0, 0x4500_0000, 0, 0x1_0000]);
        let p = parse(&fdt).unwrap();
        let got: Vec<_> = p
            .reserved()
            .iter()
            .map(|r| (r.range, r.no_map, r.kind))
            .collect();
        use ReservationKind::*;
        assert_eq!(
            got,
            [
                (range(0x4800_0000, 0x1_0000), false, MemReserve),
                (range(0x5000_0000, 0x20_0000), true, ReservedMemory),
                (range(0x5100_0000, 0x1000), false, ReservedMemory),
                (range(0x5200_0000, 0x2000), false, ReservedMemory),
                (range(0x4400_0000, 0x10_0000), false, Initrd),
                (range(0x4500_0000, 0x1_0000), false, ElfCoreHdr),
            ]
        );
        assert_eq!(p.dropped.reservations_unreadable, 1);
    }

    /// More regions than the fixed tables hold: memory and CPUs beyond them
    /// are counted (and logged at boot); reservations are folded into their
    /// neighbours, so that every reserved byte stays reserved.
    #[test]
    fn more_regions_than_slots_are_counted_or_folded_never_lost() {
        let mut fdt = minimal();
        let mut asked = Vec::new();
        for i in 0..3 * MAX_RESERVED as u64 {
            let r = (0x4000_0000 + i * 0x10_0000, 0x1000);
            fdt.reservations.push(r);
            asked.push(range(r.0, r.1));
        }
        for i in 0..MAX_MEMORY as u64 + 3 {
            let mut m = Node::new(&format!("memory@{:x}", 0x1_0000_0000 + i * 0x1000_0000));
            m.string("device_type", "memory")
                .reg64(&[(0x1_0000_0000 + i * 0x1000_0000, 0x1000_0000)]);
            fdt.root.child(m);
        }
        let cpus = fdt.root.find("cpus").unwrap();
        for i in 1..MAX_CPUS as u32 + 2 {
            let mut cpu = Node::new(&format!("cpu@{i}"));
            cpu.string("device_type", "cpu").u32s("reg", &[i]);
            cpus.child(cpu);
        }
        // A CPU without `reg` is skipped (the crate would panic on it).
        let mut bad = Node::new("cpu@99");
        bad.string("device_type", "cpu");
        cpus.child(bad);
        let p = parse(&fdt).unwrap();
        assert_eq!(p.nr_memory, MAX_MEMORY);
        assert_eq!(p.dropped.memory, 4);
        assert_eq!(p.nr_cpus, MAX_CPUS);
        assert_eq!(p.dropped.cpus, 2);
        assert_eq!(p.reserved().len(), MAX_RESERVED);
        assert_eq!(p.dropped.reservations_merged, 2 * MAX_RESERVED);
        for r in &asked {
            assert!(p.reserved().iter().any(|x| x.range.covers(r)), "{r:?} lost");
        }
    }

    /// A reservation or memory region that would wrap around the address
    /// space is cut short at its top.
    #[test]
    fn wrapping_regions_are_cut_short() {
        let mut fdt = minimal();
        fdt.reservations = vec![(u64::MAX - 0xfff, 0x10_000)];
        let mut nomap = Node::new("top");
        nomap
            .reg64(&[(u64::MAX - 0x1fff, u64::MAX)])
            .prop("no-map", &[]);
        fdt.root.child(reserved_memory(vec![nomap]));
        let p = parse(&fdt).unwrap();
        for r in p.reserved() {
            assert!(r.range.base.checked_add(r.range.size).is_some(), "{r:?}");
        }
    }

    /// QEMU's NUMA description: memory and CPU nodes with `numa-node-id`
    /// (in any order), a `distance-map` naming a memory-less node 2; and
    /// `numa=off`.
    fn numa_tree(matrix: &[u32]) -> Fdt {
        let mut fdt = minimal();
        fdt.root.children.retain(|c| !c.name.starts_with("memory"));
        for (base, nid) in [(0x6000_0000u64, 1u32), (0x4000_0000, 0)] {
            let mut m = Node::new(&format!("memory@{base:x}"));
            m.string("device_type", "memory")
                .reg64(&[(base, 0x2000_0000)])
                .u32s("numa-node-id", &[nid]);
            fdt.root.child(m);
        }
        let cpus = fdt.root.find("cpus").unwrap();
        cpus.children[0].u32s("numa-node-id", &[0]);
        let mut cpu = Node::new("cpu@1");
        cpu.string("device_type", "cpu")
            .u32s("reg", &[1])
            .u32s("numa-node-id", &[1]);
        cpus.child(cpu);
        let mut map = Node::new("distance-map");
        map.string("compatible", "numa-distance-map-v1")
            .u32s("distance-matrix", matrix);
        fdt.root.child(map);
        fdt
    }

    #[test]
    fn reads_numa_nodes_and_distances() {
        let matrix = [0, 0, 10, 0, 1, 21, 0, 2, 31, 1, 1, 10, 1, 2, 41, 2, 2, 10];
        let p = parse(&numa_tree(&matrix)).unwrap();
        assert_eq!(p.memory_nid[..2], [Some(0), Some(1)]);
        assert_eq!(p.memory()[0].base, PhysAddr::new(0x4000_0000));
        assert_eq!(p.cpu_nid[..2], [Some(0), Some(1)]);
        let t = p.numa(false);
        assert_eq!(format!("{}", t.possible()), "0-2");
        assert_eq!((t.distance(1, 0), t.distance(2, 1)), (21, 41));
        assert_eq!(t.phys_to_node(PhysAddr::new(0x7000_0000)), Some(1));
        assert_eq!(t.cpu_node(1), 1);
        let off = p.numa(true);
        assert_eq!(format!("{}", off.possible()), "0");
        assert_eq!(off.phys_to_node(PhysAddr::new(0x7000_0000)), Some(0));
    }

    /// A matrix cut short, or a `numa-node-id` of the wrong size: logged,
    /// default distances and node 0, never a panic.
    #[test]
    fn malformed_numa_properties_fall_back() {
        let mut fdt = numa_tree(&[0, 1, 25, 1]);
        let mem = fdt.root.find("memory@60000000").unwrap();
        mem.prop("numa-node-id", &[0, 1]);
        let p = parse(&fdt).unwrap();
        assert!(p.distance_map_malformed);
        let t = p.numa(false);
        assert_eq!(t.distance(0, 1), 25);
        assert_eq!(t.phys_to_node(PhysAddr::new(0x6000_0000)), Some(0));
        let map = fdt.root.find("distance-map").unwrap();
        map.props.retain(|(n, _)| n != "compatible");
        let p = parse(&fdt).unwrap();
        assert!(p.distance_map_malformed);
        assert_eq!(p.numa(false).distance(0, 1), 20);
    }

    /// The crate panics on a tree without `/chosen` or `/cpus`: refused.
    #[test]
    fn a_tree_without_chosen_or_cpus_is_refused() {
        for name in ["chosen", "cpus"] {
            let mut fdt = minimal();
            fdt.root.children.retain(|c| c.name != name);
            assert_eq!(parse(&fdt).err(), Some("no /chosen or no /cpus node"));
        }
    }
}
