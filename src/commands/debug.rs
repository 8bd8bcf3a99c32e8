//! Commands that need the real CPU and firmware: the kernel log, power,
//! fault-tolerant reads and writes, deliberate oopses, struct pages read
//! through the vmemmap.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use super::{parse_number, Command, Kernel};
use crate::arch::aarch64::{exception, smp};
use crate::arch::esr;
use crate::drivers::psci;
use crate::error::{FallibleString, Result};
use crate::mm::addr::{Pfn, PhysAddr};
use crate::mm::layout::PHYS_LIMIT;
use crate::mm::page::{Page, PageFlags, Zone, MAX_ORDER_NR_PAGES};
use crate::{bail, err};

pub fn commands<K: Kernel>() -> Vec<Command<K>> {
    vec![
        Command {
            name: "dmesg",
            usage: "dmesg",
            about: "the kernel log",
            run: |_, _, out| {
                // Straight to the output, invalid bytes as U+FFFD: no copy
                // of the log on the heap.
                crate::log::for_each_chunk(|b| {
                    for chunk in b.utf8_chunks() {
                        let _ = out.write_str(chunk.valid());
                        if !chunk.invalid().is_empty() {
                            let _ = out.write_char(char::REPLACEMENT_CHARACTER);
                        }
                    }
                });
                Ok(())
            },
        },
        Command {
            name: "poweroff",
            usage: "poweroff",
            about: "PSCI SYSTEM_OFF",
            run: |_, _, _| psci::system_off(),
        },
        Command {
            name: "reboot",
            usage: "reboot",
            about: "PSCI SYSTEM_RESET",
            run: |_, argv, _| match argv.get(1) {
                Some(a) => bail!(EINVAL, "reboot takes no arguments, not {a:?}"),
                None => psci::system_reset(),
            },
        },
        Command {
            name: "touch",
            usage: "touch ADDR",
            about: "read 8 bytes at virtual ADDR; a fault is reported, not fatal",
            run: touch,
        },
        Command {
            name: "crash",
            usage: "crash ADDR",
            about: "read ADDR unprotected: a fault there is fatal (oops)",
            run: crash,
        },
        Command {
            name: "crash",
            usage: "crash stack [CPU]",
            about: "overflow CPU's kernel stack into its guard page (oops)",
            run: crash,
        },
        Command {
            name: "poke",
            usage: "poke ADDR VALUE",
            about: "write 8 bytes at virtual ADDR; a fault is reported, not fatal",
            run: poke,
        },
        Command {
            name: "page",
            usage: "page PFN",
            about: "the struct page of PFN through the vmemmap (pfn_to_page)",
            run: page,
        },
    ]
}

/// Recurses until the stack runs into its guard page (`crash stack`).
#[inline(never)]
#[allow(unconditional_recursion)]
fn overflow(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 32]);
    overflow(depth + 1) + frame[0]
}

fn touch<K: Kernel>(_: &mut K, argv: &[&str], out: &mut dyn Write) -> Result<()> {
    let va = parse_number(argv.get(1), "address")?;
    match exception::probe(va) {
        Ok(v) => Ok(writeln!(out, "{va:#018x}: {v:#018x}")?),
        Err(f) => {
            // As much of the decoded ESR as the heap has room for: the
            // errno is what matters when it is out.
            let mut what = FallibleString::new();
            let _ = esr::describe(f.esr, &mut what);
            bail!(
                EFAULT,
                "Unable to handle kernel paging request at virtual address {:016x}: {}",
                f.far,
                &*what
            )
        }
    }
}

fn crash<K: Kernel>(_: &mut K, argv: &[&str], out: &mut dyn Write) -> Result<()> {
    if argv.get(1) == Some(&"stack") {
        let cpu: usize = argv
            .get(2)
            .map_or(Ok(0), |c| c.parse())
            .map_err(|_| err!(EINVAL, "bad CPU"))?;
        if cpu >= 64 || smp::online_mask() & (1 << cpu) == 0 {
            bail!(EINVAL, "CPU{cpu} is not online");
        }
        if cpu == 0 {
            overflow(0);
        } else {
            smp::run_on(1 << cpu, |_| {
                overflow(0);
            });
            loop {
                core::hint::spin_loop();
            }
        }
        return Ok(());
    }
    let va = parse_number(argv.get(1), "address")?;
    // SAFETY: none; a fault here is the point (the oops path).
    let v = unsafe { (va as *const u64).read_volatile() };
    Ok(writeln!(out, "{va:#018x}: {v:#018x}")?)
}

fn poke<K: Kernel>(_: &mut K, argv: &[&str], _: &mut dyn Write) -> Result<()> {
    let va = parse_number(argv.get(1), "address")?;
    let value = parse_number(argv.get(2), "value")?;
    exception::poke(va, value).map_err(|f| {
        err!(
            EFAULT,
            "Unable to handle kernel paging request at virtual address {:016x}",
            f.far
        )
    })
}

/// Reads the struct page through the fault-tolerant read: an unpopulated
/// vmemmap is reported, not fatal.
fn page<K: Kernel>(_: &mut K, argv: &[&str], out: &mut dyn Write) -> Result<()> {
    let pfn = Pfn::new(parse_number(argv.get(1), "pfn")?);
    if pfn >= Pfn::down(PhysAddr::new(PHYS_LIMIT)) {
        bail!(ERANGE, "pfn {pfn:#x} is beyond the physical address range");
    }
    let va = pfn.page_va();
    let probe = |pfn: Pfn| -> Result<Page> {
        let va = pfn.page_va();
        let mut words = [0u64; 8];
        for (i, w) in words.iter_mut().enumerate() {
            *w = exception::probe((va + 8 * i as u64).as_u64()).map_err(|f| {
                err!(
                    EFAULT,
                    "pfn {pfn:#x}: struct page at {:#x} is not mapped (FAR {:#x})",
                    va,
                    f.far
                )
            })?;
        }
        // SAFETY: any 64 bytes are a valid `Page` (plain integers).
        Ok(unsafe { core::mem::transmute::<[u64; 8], Page>(words) })
    };
    // Read as the rule of deferred struct pages says (mm/page.rs): the
    // head of the max-order block, in the same section, is mapped too.
    let raw = probe(pfn)?;
    let head = pfn.align_down(MAX_ORDER_NR_PAGES);
    let page = Page::resolve(pfn, raw, || {
        probe(head).unwrap_or(Page::new(Zone::Normal, PageFlags::empty()))
    });
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
