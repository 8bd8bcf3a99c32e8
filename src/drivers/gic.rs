//! The Arm Generic Interrupt Controller (v2, v3 and v4) through the
//! `arm-gic` crate, as far as the kernel uses it: interrupts are wake-ups,
//! never taken. CPUs run with IRQs masked; a pending interrupt (the UART's
//! on CPU 0, an SGI on the others) ends a `wfi`, and the CPU acknowledges it
//! so that the next `wfi` sleeps again.
//!
//! Nothing the device tree says reaches a panic: a GIC whose registers are
//! not where and as large as the driver needs is refused with
//! [`GicError`], and the kernel runs without interrupts.

use core::fmt;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use arm_gic::gicv2::registers::{Gicc, Gicd as GicdV2};
use arm_gic::gicv2::{self, GicV2, SgiTargetListFilter};
use arm_gic::gicv3::registers::{Gicd as GicdV3, GicrSgi};
use arm_gic::gicv3::{self, GicCpuInterface, GicV3, SgiTarget, SgiTargetGroup};
use arm_gic::{IntId, InterruptGroup, UniqueMmioPointer};
use spin::Mutex;

use crate::platform::{GicVersion, MAX_CPUS};

/// The SGI that wakes a parked secondary CPU.
pub const WAKE_SGI: IntId = IntId::sgi(0);

/// The most of each register window the driver touches, so that a device
/// tree's oversized `reg` never maps more: the distributor (GICv3's is
/// 64 KiB, GICv2's 4 KiB), the GICv2 CPU interface (8 KiB), and per CPU a
/// redistributor of GICv4's size (RD, SGI and two VLPI frames; GICv3 has
/// only the first two).
pub const DIST_WINDOW: u64 = 0x1_0000;
pub const CPU_IF_WINDOW: u64 = 0x2000;
pub const REDIST_WINDOW_PER_CPU: u64 = 2 * size_of::<GicrSgi>() as u64;

/// Where the GIC's registers are mapped, and how many bytes of each.
#[derive(Clone, Copy, Debug)]
pub struct GicMmio {
    pub version: GicVersion,
    pub dist: usize,
    pub dist_size: usize,
    /// GICv2: the CPU interface; GICv3/v4: the redistributors.
    pub cpu: usize,
    pub cpu_size: usize,
}

/// Why a GIC cannot be driven.
#[derive(Clone, Copy, Debug)]
pub enum GicError {
    /// A register window is misaligned or smaller than its registers.
    Window(&'static str),
    /// Fewer redistributors fit the region than there are CPUs.
    Redistributors {
        fit: usize,
        cpus: usize,
    },
    /// Redistributor `n` is not CPU `n`'s (arm-gic indexes them by CPU).
    RedistributorOrder(usize),
    /// CPU `n`'s Aff0 is 16 or more: arm-gic's SGI target list cannot name
    /// it (that needs ICC_SGI1R_EL1.RS, which it does not set).
    Affinity(usize),
    /// What arm-gic refused, e.g. a frame layout it does not know.
    Driver(gicv3::GicError),
    DriverV2(gicv2::Error),
}

impl fmt::Display for GicError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Window(what) => write!(f, "{what} registers misaligned or too small"),
            Self::Redistributors { fit, cpus } => {
                write!(f, "redistributors for {fit} of {cpus} CPUs")
            }
            Self::RedistributorOrder(cpu) => {
                write!(f, "redistributor {cpu} is not CPU {cpu}'s")
            }
            Self::Affinity(cpu) => write!(f, "CPU {cpu}'s Aff0 is beyond an SGI target list"),
            Self::Driver(e) => write!(f, "{e}"),
            Self::DriverV2(e) => write!(f, "{e}"),
        }
    }
}

impl From<gicv3::GicError> for GicError {
    fn from(e: gicv3::GicError) -> Self {
        Self::Driver(e)
    }
}

impl From<gicv2::Error> for GicError {
    fn from(e: gicv2::Error) -> Self {
        Self::DriverV2(e)
    }
}

enum Driver {
    V2(Mutex<GicV2<'static>>),
    V3(Mutex<GicV3<'static>>),
}

pub struct Gic {
    driver: Driver,
    /// 2, 3 or 4 (a GICv3 whose redistributors have VLPI frames).
    revision: u8,
    /// MPIDR of each CPU, CPU 0 first (SGI targets and SPI routing).
    mpidr: [u64; MAX_CPUS],
    nr_cpus: usize,
}

/// `va` as a `T` if it is aligned for one and `len` bytes hold it.
fn window<T>(va: usize, len: usize, what: &'static str) -> Result<NonNull<T>, GicError> {
    if !va.is_multiple_of(align_of::<T>()) || len < size_of::<T>() {
        return Err(GicError::Window(what));
    }
    NonNull::new(va as *mut T).ok_or(GicError::Window(what))
}

/// Affinity fields of an MPIDR, as GICR_TYPER and GICD_IROUTER hold them.
const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

impl Gic {
    /// Enables the distributor and CPU 0's interface (CPU 0 must be the
    /// caller), for the CPUs whose MPIDRs `cpus` lists (CPU 0 first).
    ///
    /// # Safety
    /// `mmio` describes this GIC's registers, mapped as device memory for
    /// good, and nothing else accesses them.
    pub unsafe fn init(mmio: GicMmio, cpus: &[u64]) -> Result<Self, GicError> {
        let listed = cpus.len().min(MAX_CPUS);
        let mut mpidr = [0; MAX_CPUS];
        mpidr[..listed].copy_from_slice(&cpus[..listed]);
        // A DT without CPUs still has the one running this.
        let nr_cpus = listed.max(1);
        let (driver, revision) = match mmio.version {
            // SAFETY: the caller's promise, passed on.
            GicVersion::V2 => (unsafe { Self::init_v2(mmio)? }, 2),
            // SAFETY: the caller's promise, passed on.
            GicVersion::V3 => unsafe { Self::init_v3(mmio, &mpidr[..nr_cpus])? },
        };
        let gic = Self {
            driver,
            revision,
            mpidr,
            nr_cpus,
        };
        gic.init_cpu(0);
        Ok(gic)
    }

    /// # Safety
    /// As [`Gic::init`].
    unsafe fn init_v2(mmio: GicMmio) -> Result<Driver, GicError> {
        let gicd = window::<GicdV2>(mmio.dist, mmio.dist_size, "distributor")?;
        let gicc = window::<Gicc>(mmio.cpu, mmio.cpu_size, "CPU interface")?;
        // arm-gic 0.10 cannot set GICD_ITARGETSR, and with more than one CPU
        // interface an SPI no CPU is targeted at never arrives. So, as Linux's
        // gic_dist_init, every SPI goes to the calling CPU (CPU 0), before the
        // driver takes the registers.
        // SAFETY: `gicd` holds a whole `Gicd` (checked above), mapped as
        // device memory (the caller); nothing else uses it yet. Only
        // ITARGETSR is written, TYPER and the banked ITARGETSR0 read.
        unsafe {
            let d = gicd.as_ptr();
            let typer = (&raw const (*d).typer).read_volatile().0;
            let targets = (&raw mut (*d).itargetsr).cast::<u32>();
            // ITARGETSR0's bytes read as the calling CPU's interface (RAZ
            // on a uniprocessor GIC, where targets do not matter).
            let me = targets.read_volatile() & 0xff;
            let me = if me == 0 { 1 } else { me };
            for word in 8..(typer.num_irqs() as usize / 4).min(0x100) {
                targets.add(word).write_volatile(me * 0x0101_0101);
            }
        }
        // SAFETY: both windows hold their registers (checked above), mapped
        // as device memory; the raw pointer above is no longer used, so the
        // driver is their one user from here on (the caller's promise).
        let mut gic = unsafe { GicV2::new(gicd.as_ptr(), gicc.as_ptr()) };
        gic.setup();
        Ok(Driver::V2(Mutex::new(gic)))
    }

    /// # Safety
    /// As [`Gic::init`].
    unsafe fn init_v3(mmio: GicMmio, mpidr: &[u64]) -> Result<(Driver, u8), GicError> {
        let gicd = window::<GicdV3>(mmio.dist, mmio.dist_size, "distributor")?;
        let gicr = window::<GicrSgi>(mmio.cpu, mmio.cpu_size, "redistributor")?;
        // arm-gic steps from one CPU's redistributor to the next by the
        // stride GICR_TYPER.VLPIS implies (GICv4 adds two VLPI frames); the
        // region must hold that many, or the driver would step out of it.
        // SAFETY: the first redistributor is within the window (checked
        // above), mapped as device memory; reading GICR_TYPER has no effect.
        let vlpis = unsafe { (&raw const (*gicr.as_ptr()).gicr.typer).read_volatile() }
            .0
            .virtual_lpis_supported();
        let stride = size_of::<GicrSgi>() * if vlpis { 2 } else { 1 };
        // The last CPU needs its RD and SGI frames only.
        let fit = (mmio.cpu_size - size_of::<GicrSgi>()) / stride + 1;
        if fit < mpidr.len() {
            return Err(GicError::Redistributors {
                fit,
                cpus: mpidr.len(),
            });
        }
        // SAFETY: the distributor window holds a whole `Gicd` (checked
        // above), mapped as device memory, and the driver is its one user
        // (the caller's promise).
        let gicd = unsafe { UniqueMmioPointer::new(gicd) };
        // SAFETY: the redistributor window holds one redistributor per CPU
        // at the stride the driver uses (checked above), mapped as device
        // memory, and the driver is its one user (the caller's promise).
        let mut gic = unsafe { GicV3::new(gicd, gicr, mpidr.len())? };
        for (cpu, &m) in mpidr.iter().enumerate() {
            if gic.gicr_typer(cpu)?.core_mpidr() != m & MPIDR_AFFINITY {
                return Err(GicError::RedistributorOrder(cpu));
            }
            if m & 0xff >= 16 {
                return Err(GicError::Affinity(cpu));
            }
        }
        // Also CPU 0's interface: ICC_SRE_EL1, GICR_WAKER, ICC_CTLR_EL1.
        gic.setup(0);
        Ok((Driver::V3(Mutex::new(gic)), if vlpis { 4 } else { 3 }))
    }

    /// 2, 3 or 4, for the log.
    pub fn revision(&self) -> u8 {
        self.revision
    }

    /// Enables this CPU's interface and its wake-up SGI, on the CPU itself.
    pub fn init_cpu(&self, cpu: usize) {
        match &self.driver {
            // The CPU interface and the SGI/PPI group registers are banked
            // per CPU: each CPU runs setup (the shared part is the same
            // every time). CPU 0 ran it at init.
            Driver::V2(gic) if cpu != 0 => gic.lock().setup(),
            Driver::V2(_) => {}
            Driver::V3(gic) => {
                if cpu != 0 {
                    gic.lock().init_cpu(cpu);
                    GicCpuInterface::enable_group1(true);
                }
                GicCpuInterface::set_priority_mask(0xff);
            }
        }
        self.enable(WAKE_SGI, Some(cpu));
    }

    /// Enables SGI or PPI `intid` (< 32) on `cpu`, which must be the
    /// calling CPU with GICv2 (the registers are banked).
    pub fn enable_private(&self, cpu: usize, intid: u32) {
        match IntId::try_from(intid)
            .ok()
            .filter(|i| i.is_sgi() || i.is_ppi())
        {
            Some(id) => self.enable(id, Some(cpu)),
            None => crate::pr_warn!("GIC: {intid} is not an SGI or PPI"),
        }
    }

    /// Enables shared peripheral interrupt `intid` (32..1020) towards CPU 0
    /// (level-triggered, Non-secure group 1, as set up at init).
    pub fn enable_spi(&self, intid: u32) {
        match IntId::try_from(intid).ok().filter(|i| i.is_spi()) {
            Some(id) => self.enable(id, None),
            None => crate::pr_warn!("GIC: {intid} is not an SPI"),
        }
    }

    /// Enables `id` on `cpu` if it is private, else routed to CPU 0.
    fn enable(&self, id: IntId, cpu: Option<usize>) {
        let done = match &self.driver {
            // SPIs were targeted at CPU 0 at init.
            Driver::V2(gic) => gic
                .lock()
                .enable_interrupt(id, true)
                .map_err(GicError::from),
            Driver::V3(gic) => {
                let mut gic = gic.lock();
                match cpu {
                    Some(_) => Ok(()),
                    None => gic.distributor().set_routing(id, Some(self.mpidr[0])),
                }
                .and_then(|()| gic.enable_interrupt(id, cpu, true))
                .map_err(GicError::from)
            }
        };
        if let Err(e) = done {
            crate::pr_warn!("GIC: {id:?}: {e}");
        }
    }

    /// Sends the wake-up SGI to the CPUs in `mask` (bit n: CPU n).
    pub fn wake(&self, mask: u16) {
        match &self.driver {
            // GICv2 CPU interface n is CPU n on the machines the kernel
            // runs on (QEMU virt numbers both in DT order).
            Driver::V2(gic) => gic.lock().send_sgi(
                WAKE_SGI,
                gicv2::SgiTarget::List {
                    target_list_filter: SgiTargetListFilter::CPUTargetList,
                    target_list: mask & 0xff,
                },
            ),
            // One SGI per CPU: its affinity, from its MPIDR, names it
            // wherever it sits. The interface is a system register, so no
            // lock.
            Driver::V3(_) => {
                for cpu in (0..self.nr_cpus).filter(|cpu| mask & (1 << cpu) != 0) {
                    let m = self.mpidr[cpu];
                    let aff = |n: u32| (m >> n) as u8;
                    let target = SgiTarget::List {
                        affinity3: aff(32),
                        affinity2: aff(16),
                        affinity1: aff(8),
                        // Below 16: checked at init.
                        target_list: 1 << aff(0),
                    };
                    // Only fails for a non-SGI, and WAKE_SGI is one.
                    let _ =
                        GicCpuInterface::send_sgi(WAKE_SGI, target, SgiTargetGroup::CurrentGroup1);
                }
            }
        }
    }

    /// Acknowledges whatever is pending at this CPU's interface, so that the
    /// next `wfi` sleeps until something new arrives.
    pub fn ack(&self) {
        // 1020-1023 are special (nothing pending, or for another state):
        // nothing to end.
        let real = |id: &IntId| !(1020..1024).contains(&u32::from(*id));
        match &self.driver {
            // The kernel runs Non-secure: GICC_IAR (arm-gic's group 0
            // accessor) is the register it acknowledges through.
            Driver::V2(gic) => {
                let mut gic = gic.lock();
                if let Some(id) = gic
                    .get_and_acknowledge_interrupt(InterruptGroup::Group0)
                    .filter(real)
                {
                    gic.end_interrupt(id, InterruptGroup::Group0);
                }
            }
            Driver::V3(_) => {
                if let Some(id) =
                    GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1)
                        .filter(real)
                {
                    GicCpuInterface::end_interrupt(id, InterruptGroup::Group1);
                }
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
