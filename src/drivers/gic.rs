//! Arm Generic Interrupt Controller, v2 and v3, as far as the kernel uses
//! it: route an SPI to CPU 0 and let a pending interrupt end a `wfi`. The
//! kernel runs with IRQs masked and polls: an interrupt here is a wake-up.

use core::ptr::{read_volatile, write_volatile};

use crate::platform::GicVersion;

pub struct Gic {
    version: GicVersion,
    dist: usize,
    /// GICv2 CPU interface or GICv3 redistributor of CPU 0.
    cpu: usize,
}

const GICD_CTLR: usize = 0x000;
const GICD_IGROUPR: usize = 0x080;
const GICD_ISENABLER: usize = 0x100;
const GICD_IPRIORITYR: usize = 0x400;
const GICD_ITARGETSR: usize = 0x800;
const GICD_IROUTER: usize = 0x6000;
const GICR_WAKER: usize = 0x14;

fn rd(addr: usize) -> u32 {
    unsafe { read_volatile(addr as *const u32) }
}

fn wr(addr: usize, v: u32) {
    unsafe { write_volatile(addr as *mut u32, v) }
}

impl Gic {
    /// `dist` and `cpu` are the mapped distributor and CPU interface (v2) or
    /// redistributor (v3) bases.
    pub fn init(version: GicVersion, dist: usize, cpu: usize) -> Self {
        let gic = Self { version, dist, cpu };
        match version {
            GicVersion::V2 => {
                wr(dist + GICD_CTLR, 1);
                wr(cpu, 1); // GICC_CTLR: enable
                wr(cpu + 0x4, 0xff); // GICC_PMR: let every priority through
            }
            GicVersion::V3 => {
                // ARE_NS | EnableGrp1NS, then wait for RWP.
                wr(dist + GICD_CTLR, (1 << 4) | (1 << 1));
                while rd(dist + GICD_CTLR) & (1 << 31) != 0 {}
                // Wake CPU 0's redistributor.
                wr(cpu + GICR_WAKER, rd(cpu + GICR_WAKER) & !(1 << 1));
                while rd(cpu + GICR_WAKER) & (1 << 2) != 0 {}
                #[cfg(target_os = "none")]
                unsafe {
                    core::arch::asm!(
                        "mrs {t}, s3_0_c12_c12_5", // ICC_SRE_EL1
                        "orr {t}, {t}, #1",
                        "msr s3_0_c12_c12_5, {t}",
                        "isb",
                        "mov {t}, #0xff",
                        "msr s3_0_c4_c6_0, {t}", // ICC_PMR_EL1
                        "mov {t}, #1",
                        "msr s3_0_c12_c12_7, {t}", // ICC_IGRPEN1_EL1
                        "isb",
                        t = out(reg) _,
                    )
                }
            }
        }
        gic
    }

    /// Enables shared peripheral interrupt `intid` (>= 32) towards CPU 0.
    pub fn enable_spi(&self, intid: u32) {
        let (word, bit) = ((intid / 32) as usize * 4, 1 << (intid % 32));
        let byte = self.dist + GICD_IPRIORITYR + intid as usize;
        unsafe { write_volatile(byte as *mut u8, 0xa0) };
        match self.version {
            GicVersion::V2 => unsafe {
                write_volatile((self.dist + GICD_ITARGETSR + intid as usize) as *mut u8, 1)
            },
            GicVersion::V3 => {
                wr(
                    self.dist + GICD_IGROUPR + word,
                    rd(self.dist + GICD_IGROUPR + word) | bit,
                );
                unsafe {
                    write_volatile(
                        (self.dist + GICD_IROUTER + 8 * intid as usize) as *mut u64,
                        0,
                    )
                };
            }
        }
        wr(self.dist + GICD_ISENABLER + word, bit);
        let _ = self.cpu;
    }
}
