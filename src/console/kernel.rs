//! The console as the kernel runs it: the UART as its byte stream and the
//! commands that need the real machine (poweroff, touching addresses).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::files::Files;
use super::{Io, Result, System};
use crate::arch::aarch64::exception;
use crate::arch::esr;
use crate::drivers::{pl011, psci};
use crate::mm::layout::{pfn_to_page_va, PAGE_SHIFT, PAGE_SIZE, PHYS_LIMIT};
use crate::mm::page::Page;
use crate::mm::page::Zone;
use crate::mm::system::{DevMapKind, MemorySystem};
use crate::mm::translation::KernelTranslation;
use crate::platform::cmdline::parse_u64;
use crate::{bail, err};

/// Recurses until the stack runs into its guard page (`crash stack`).
#[inline(never)]
#[allow(unconditional_recursion)]
fn overflow(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 32]);
    overflow(depth + 1) + frame[0]
}

/// Pages held by `pin`, as a process would hold them.
static PINNED: spin::Mutex<Vec<u64>> = spin::Mutex::new(Vec::new());

pub struct Uart;

impl Io for Uart {
    fn read_byte(&mut self) -> Option<u8> {
        pl011::read_byte()
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        pl011::write_bytes(bytes)
    }
}

pub type KernelMm = MemorySystem<KernelTranslation>;

pub struct KernelSystem {
    pub mm: &'static spin::Mutex<Option<KernelMm>>,
}

const HELP: &str = "  dmesg                       the kernel log
  poweroff                    PSCI SYSTEM_OFF
  touch ADDR                  read 8 bytes at virtual ADDR; a fault is reported, not fatal
  crash ADDR                  read ADDR unprotected: a fault there is fatal (oops)
  crash stack [CPU]           overflow CPU's kernel stack into its guard page (oops)
  devmem list                 device-memory regions: id, range, owner, state
  devmem map ID --map=dev|mem ZONE_DEVICE; struct pages on the device or in RAM
  devmem unmap ID             undo devmem map
  stress [CYCLES [WORKERS]]   secondary CPUs churn pages while CPU 0 cycles hotplug of held-back RAM
  poke ADDR VALUE             write 8 bytes at virtual ADDR; a fault is reported, not fatal
  pin SIZE                    hold SIZE of memory (movable first) as a process would
  unpin                       give back everything pinned
  page PFN                    the struct page of PFN through the vmemmap (pfn_to_page)
  bench hotplug ADDR SIZE     time add/online/offline/remove of held-back RAM, count RAM and TLBIs
";

fn parse_addr(w: Option<&&str>) -> Result<u64> {
    let w = w.ok_or_else(|| err!(EINVAL, "missing address"))?;
    parse_u64(w).ok_or_else(|| err!(EINVAL, "bad address {w:?}"))
}

impl KernelSystem {
    /// Runs `f` on the machine's memory, under its lock.
    fn with_mm<R>(&mut self, f: impl FnOnce(&mut KernelMm) -> Result<R>) -> Result<R> {
        let mut guard = self.mm.lock();
        let mm = guard
            .as_mut()
            .ok_or_else(|| err!(EAGAIN, "memory not initialised"))?;
        f(mm)
    }

    fn with_files<R>(
        &mut self,
        f: impl FnOnce(&mut Files<KernelTranslation>) -> Result<R>,
    ) -> Result<R> {
        let cpus_online = crate::arch::aarch64::smp::online_mask();
        self.with_mm(|mm| f(&mut Files { mm, cpus_online }))
    }

    fn devmem(&mut self, argv: &[&str], out: &mut dyn Write) -> Result<()> {
        self.with_mm(|mm| {
            let id = |w: Option<&&str>| -> Result<usize> {
                let w = w.ok_or_else(|| err!(EINVAL, "missing region id"))?;
                w.parse().map_err(|_| err!(EINVAL, "bad region id {w:?}"))
            };
            match argv.get(1).copied() {
                Some("list") => {
                    for (i, d) in mm.devmem.iter().enumerate() {
                        let state = match &d.mapping {
                            None => "unmapped",
                            Some((DevMapKind::Dev, _)) => "mapped(dev)",
                            Some((DevMapKind::Mem, _)) => "mapped(mem)",
                        };
                        writeln!(
                            out,
                            "{i} {:#x}-{:#x} {} {state}",
                            d.range.base,
                            d.range.end() - 1,
                            d.owner
                        )?;
                    }
                    Ok(())
                }
                Some("map") => {
                    let id = id(argv.get(2))?;
                    let kind = match argv.get(3).copied() {
                        Some("--map=dev") => DevMapKind::Dev,
                        Some("--map=mem") => DevMapKind::Mem,
                        _ => bail!(EINVAL, "usage: devmem map ID --map=dev|mem"),
                    };
                    mm.memremap_pages(id, kind)
                }
                Some("unmap") => mm.memunmap_pages(id(argv.get(2))?),
                _ => bail!(
                    EINVAL,
                    "usage: devmem list | map ID --map=dev|mem | unmap ID"
                ),
            }
        })
    }
}

impl System for KernelSystem {
    fn read(&mut self, path: &str, out: &mut dyn Write) -> Result<()> {
        self.with_files(|f| f.read(path, out))
    }

    fn write(&mut self, path: &str, data: &str) -> Result<()> {
        self.with_files(|f| f.write(path, data))
    }

    fn list(&mut self, path: &str) -> Result<Vec<String>> {
        self.with_files(|f| f.list(path))
    }

    fn command(&mut self, argv: &[&str], out: &mut dyn Write) -> Result<()> {
        match argv[0] {
            "poweroff" => psci::system_off(),
            "dmesg" => {
                crate::log::for_each_chunk(|b| {
                    let _ = out.write_str(&String::from_utf8_lossy(b));
                });
                Ok(())
            }
            "touch" => {
                let va = parse_addr(argv.get(1))?;
                match exception::probe(va) {
                    Ok(v) => Ok(writeln!(out, "{va:#018x}: {v:#018x}")?),
                    Err(f) => {
                        let mut what = String::new();
                        esr::describe(f.esr, &mut what)?;
                        bail!(EFAULT, "Unable to handle kernel paging request at virtual address {:016x}: {what}", f.far)
                    }
                }
            }
            "crash" if argv.get(1) == Some(&"stack") => {
                let cpu: usize = argv
                    .get(2)
                    .map_or(Ok(0), |c| c.parse())
                    .map_err(|_| err!(EINVAL, "bad CPU"))?;
                if crate::arch::aarch64::smp::online_mask() & (1 << cpu) == 0 {
                    bail!(EINVAL, "CPU{cpu} is not online");
                }
                if cpu == 0 {
                    overflow(0);
                } else {
                    crate::arch::aarch64::smp::run_on(1 << cpu, |_| {
                        overflow(0);
                    });
                    loop {
                        core::hint::spin_loop();
                    }
                }
                Ok(())
            }
            "crash" => {
                let va = parse_addr(argv.get(1))?;
                // SAFETY: none; a fault here is the point (the oops path).
                let v = unsafe { (va as *const u64).read_volatile() };
                Ok(writeln!(out, "{va:#018x}: {v:#018x}")?)
            }
            "devmem" => self.devmem(argv, out),
            "stress" => super::stress::stress(self.mm, argv, out),
            "poke" => {
                let va = parse_addr(argv.get(1))?;
                let value = parse_addr(argv.get(2))?;
                exception::poke(va, value).map_err(|f| {
                    err!(
                        EFAULT,
                        "Unable to handle kernel paging request at virtual address {:016x}",
                        f.far
                    )
                })
            }
            "pin" => {
                let size = argv
                    .get(1)
                    .and_then(|s| crate::platform::cmdline::memparse(s))
                    .ok_or_else(|| err!(EINVAL, "usage: pin SIZE"))?;
                self.with_mm(|mm| {
                    let mut pinned = PINNED.lock();
                    let pages = size.div_ceil(PAGE_SIZE);
                    for _ in 0..pages {
                        // Movable first: where hot-plugged memory goes.
                        let Some(pfn) = mm
                            .buddy
                            .alloc(0, Zone::Movable)
                            .or_else(|| mm.buddy.alloc(0, Zone::Normal))
                        else {
                            bail!(
                                ENOMEM,
                                "out of memory; {} KiB pinned in all",
                                (pinned.len() as u64 * PAGE_SIZE) >> 10
                            );
                        };
                        pinned.push(pfn);
                    }
                    writeln!(
                        out,
                        "pinned {} KiB in all",
                        (pinned.len() as u64 * PAGE_SIZE) >> 10
                    )?;
                    Ok(())
                })
            }
            "unpin" => self.with_mm(|mm| {
                for pfn in PINNED.lock().drain(..) {
                    mm.buddy.free(pfn, 0);
                }
                Ok(())
            }),
            "page" => {
                let pfn = parse_addr(argv.get(1))?;
                if pfn >= PHYS_LIMIT >> PAGE_SHIFT {
                    bail!(ERANGE, "pfn {pfn:#x} is beyond the physical address range");
                }
                // Through the fault-tolerant read: an unpopulated vmemmap
                // is reported, not fatal.
                let va = pfn_to_page_va(pfn);
                let mut words = [0u64; 8];
                for (i, w) in words.iter_mut().enumerate() {
                    *w = exception::probe(va + 8 * i as u64).map_err(|f| {
                        err!(
                            EFAULT,
                            "pfn {pfn:#x}: struct page at {:#x} is not mapped (FAR {:#x})",
                            va,
                            f.far
                        )
                    })?;
                }
                // SAFETY: any 64 bytes are a valid `Page` (plain integers).
                let page: Page = unsafe { core::mem::transmute(words) };
                let zone = page.zone().map_or("?", |z| z.name());
                writeln!(
                    out,
                    "pfn {pfn:#x} page {va:#x} flags {:?} zone {zone} refcount {} owner {}",
                    page.flags(),
                    page.refcount(),
                    page.private()
                )?;
                Ok(())
            }
            "bench" => {
                let (start, size) = match (argv.get(1).copied(), argv.get(2), argv.get(3)) {
                    (Some("hotplug"), Some(a), Some(s)) => (
                        parse_addr(Some(a))?,
                        crate::platform::cmdline::memparse(s)
                            .ok_or_else(|| err!(EINVAL, "bad size {s:?}"))?,
                    ),
                    _ => bail!(EINVAL, "usage: bench hotplug ADDR SIZE"),
                };
                self.with_mm(|mm| super::bench::hotplug(mm, start, size, out))
            }
            name => Err(super::Error::unknown_command(name)),
        }
    }

    fn help(&self) -> &'static str {
        HELP
    }
}
