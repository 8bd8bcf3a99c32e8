//! Arm Generic Interrupt Controller, v2 and v3, as far as the kernel uses
//! it: interrupts are wake-ups, never taken. CPUs run with IRQs masked; a
//! pending interrupt (the UART's on CPU 0, an SGI on the others) ends a
//! `wfi`, and the CPU acknowledges it by reading the IAR.

use core::ptr::{read_volatile, write_volatile};

use crate::platform::GicVersion;

#[derive(Clone, Copy, Debug)]
pub struct Gic {
    version: GicVersion,
    dist: usize,
    /// GICv2 CPU interface (banked per CPU), or the GICv3 redistributors
    /// (one 128 KiB frame pair per CPU, in CPU order).
    cpu: usize,
}

const GICD_CTLR: usize = 0x000;
const GICD_IGROUPR: usize = 0x080;
const GICD_ISENABLER: usize = 0x100;
const GICD_IPRIORITYR: usize = 0x400;
const GICD_ITARGETSR: usize = 0x800;
const GICD_SGIR: usize = 0xf00;
const GICD_IROUTER: usize = 0x6000;
const GICC_CTLR: usize = 0x00;
const GICC_PMR: usize = 0x04;
const GICC_IAR: usize = 0x0c;
const GICC_EOIR: usize = 0x10;
const GICR_STRIDE: usize = 0x20000;
const GICR_WAKER: usize = 0x14;
const GICR_SGI: usize = 0x10000;

/// The SGI that wakes a parked secondary CPU.
pub const WAKE_SGI: u32 = 0;

fn rd(addr: usize) -> u32 {
    unsafe { read_volatile(addr as *const u32) }
}

fn wr(addr: usize, v: u32) {
    unsafe { write_volatile(addr as *mut u32, v) }
}

#[cfg(target_os = "none")]
mod icc {
    use core::arch::asm;

    pub fn enable() {
        unsafe {
            asm!(
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

    pub fn sgi1r(v: u64) {
        unsafe { asm!("msr s3_0_c12_c11_5, {}", "isb", in(reg) v) }
    }

    pub fn ack() -> u64 {
        let iar: u64;
        unsafe { asm!("mrs {}, s3_0_c12_c12_0", out(reg) iar) };
        if iar & 0xffffff < 1020 {
            unsafe { asm!("msr s3_0_c12_c12_1, {}", in(reg) iar) };
        }
        iar
    }
}

#[cfg(not(target_os = "none"))]
mod icc {
    pub fn enable() {}
    pub fn sgi1r(_: u64) {}
    pub fn ack() -> u64 {
        1023
    }
}

impl Gic {
    /// Enables the distributor and CPU 0's interface. `dist` and `cpu` are
    /// the mapped distributor and CPU interface (v2) or redistributors (v3).
    pub fn init(version: GicVersion, dist: usize, cpu: usize) -> Self {
        let gic = Self { version, dist, cpu };
        match version {
            GicVersion::V2 => wr(dist + GICD_CTLR, 1),
            GicVersion::V3 => {
                // ARE_NS | EnableGrp1NS, then wait for RWP.
                wr(dist + GICD_CTLR, (1 << 4) | (1 << 1));
                while rd(dist + GICD_CTLR) & (1 << 31) != 0 {}
            }
        }
        gic.init_cpu(0);
        gic
    }

    /// Enables this CPU's interface and its wake-up SGI.
    pub fn init_cpu(&self, cpu: usize) {
        match self.version {
            GicVersion::V2 => {
                wr(self.cpu + GICC_CTLR, 1);
                wr(self.cpu + GICC_PMR, 0xff);
            }
            GicVersion::V3 => {
                let rd_base = self.cpu + cpu * GICR_STRIDE;
                wr(rd_base + GICR_WAKER, rd(rd_base + GICR_WAKER) & !(1 << 1));
                while rd(rd_base + GICR_WAKER) & (1 << 2) != 0 {}
                icc::enable();
            }
        }
        self.enable_private(cpu, WAKE_SGI);
    }

    /// Enables SGI or PPI `intid` (< 32) on `cpu`, which must be the
    /// calling CPU with GICv2 (the registers are banked).
    pub fn enable_private(&self, cpu: usize, intid: u32) {
        match self.version {
            GicVersion::V2 => wr(self.dist + GICD_ISENABLER, 1 << intid),
            GicVersion::V3 => {
                let sgi = self.cpu + cpu * GICR_STRIDE + GICR_SGI;
                wr(sgi + GICD_IGROUPR, rd(sgi + GICD_IGROUPR) | 1 << intid);
                wr(sgi + GICD_ISENABLER, 1 << intid);
            }
        }
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
    }

    /// Sends the wake-up SGI to the CPUs in `mask` (CPU n = Aff0 n).
    pub fn wake(&self, mask: u16) {
        match self.version {
            GicVersion::V2 => wr(
                self.dist + GICD_SGIR,
                ((mask as u32 & 0xff) << 16) | WAKE_SGI,
            ),
            GicVersion::V3 => icc::sgi1r(((WAKE_SGI as u64) << 24) | mask as u64),
        }
    }

    /// Acknowledges whatever is pending at this CPU's interface, so that the
    /// next `wfi` sleeps until something new arrives.
    pub fn ack(&self) {
        match self.version {
            GicVersion::V2 => {
                let iar = rd(self.cpu + GICC_IAR);
                if iar & 0x3ff < 1020 {
                    wr(self.cpu + GICC_EOIR, iar);
                }
            }
            GicVersion::V3 => {
                icc::ack();
            }
        }
    }
}

static GIC: spin::Once<Gic> = spin::Once::new();

/// Keeps the machine's GIC for good; the one every later user gets.
pub fn install(gic: Gic) -> &'static Gic {
    GIC.call_once(|| gic)
}

/// The machine's GIC, once [`install`]ed.
pub fn get() -> Option<&'static Gic> {
    GIC.get()
}

#[cfg(target_os = "none")]
impl crate::arch::aarch64::smp::Wakeup for Gic {
    fn init_cpu(&self, cpu: usize) {
        Gic::init_cpu(self, cpu)
    }

    fn ack(&self) {
        Gic::ack(self)
    }

    fn wake(&self, mask: u16) {
        Gic::wake(self, mask)
    }
}
