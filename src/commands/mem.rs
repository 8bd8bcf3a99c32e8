//! Commands on the memory system alone: `pin`, `unpin`, `devmem` (map,
//! unmap, and kmem's `reconfigure`).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use super::{Command, Kernel};
use crate::error::Result;
use crate::mm::addr::Pfn;
use crate::mm::layout::PAGE_SIZE;
use crate::mm::system::DevMapKind;
use crate::platform::cmdline::memparse;
use crate::{bail, err};

pub fn commands<K: Kernel>() -> Vec<Command<K>> {
    vec![
        Command {
            name: "devmem",
            usage: "devmem list",
            about: "device-memory regions: id, range, owner, state",
            run: devmem,
        },
        Command {
            name: "devmem",
            usage: "devmem map ID --map=dev|mem",
            about: "ZONE_DEVICE; struct pages on the device or in RAM",
            run: devmem,
        },
        Command {
            name: "devmem",
            usage: "devmem unmap ID",
            about: "undo devmem map",
            run: devmem,
        },
        Command {
            name: "devmem",
            usage: "devmem reconfigure ID ...",
            about: "--mode=system-ram (kmem: hot-add as RAM) | --mode=devdax (take back)",
            run: devmem,
        },
        Command {
            name: "pin",
            usage: "pin SIZE",
            about: "hold SIZE of memory (movable first) as a process would",
            run: pin,
        },
        Command {
            name: "unpin",
            usage: "unpin",
            about: "give back everything pinned",
            run: unpin,
        },
    ]
}

fn devmem<K: Kernel>(k: &mut K, argv: &[&str], out: &mut dyn Write) -> Result<()> {
    let id = |w: Option<&&str>| -> Result<usize> {
        let w = w.ok_or_else(|| err!(EINVAL, "missing region id"))?;
        w.parse().map_err(|_| err!(EINVAL, "bad region id {w:?}"))
    };
    k.with_mm(|mm| match argv.get(1).copied() {
        Some("list") => {
            for (i, d) in mm.devmem().iter().enumerate() {
                let state = match &d.mapping {
                    None if mm.is_kmem(i) => "system-ram",
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
        // daxctl's words: kmem's System RAM, or back to a device.
        Some("reconfigure") => {
            let id = id(argv.get(2))?;
            match argv.get(3..) {
                Some(["--mode=system-ram"]) => mm.dev_dax_kmem_probe(id),
                Some(["--mode=devdax"]) => mm.dev_dax_kmem_remove(id),
                _ => bail!(
                    EINVAL,
                    "usage: devmem reconfigure ID --mode=system-ram|devdax"
                ),
            }
        }
        _ => bail!(
            EINVAL,
            "usage: devmem list | map ID --map=dev|mem | unmap ID | reconfigure ID --mode=system-ram|devdax"
        ),
    })
}

/// Pages held by `pin`, in chunks: the list grows by small allocations,
/// each of which may fail (`ENOMEM`) without losing what is pinned.
#[derive(Default)]
pub struct Pinned {
    chunks: Vec<Vec<Pfn>>,
}

/// Pfns per chunk (64 KiB of heap).
const CHUNK: usize = 8192;

impl Pinned {
    fn push(&mut self, pfn: Pfn) -> Result<()> {
        let no_memory = |_| err!(ENOMEM, "no kernel memory to track more pinned pages");
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.try_reserve(1).map_err(no_memory)?;
            let mut chunk = Vec::new();
            chunk.try_reserve_exact(CHUNK).map_err(no_memory)?;
            self.chunks.push(chunk);
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(pfn);
        }
        Ok(())
    }

    /// Gives back (to `free`) every page pinned after the first `len`,
    /// latest first, with the chunks they leave empty.
    fn truncate(&mut self, len: usize, mut free: impl FnMut(Pfn)) {
        let mut n = self.len();
        while n > len {
            let Some(chunk) = self.chunks.last_mut() else {
                break;
            };
            match chunk.pop() {
                Some(pfn) => {
                    free(pfn);
                    n -= 1;
                }
                None => {
                    self.chunks.pop();
                }
            }
        }
        if self.chunks.last().is_some_and(Vec::is_empty) {
            self.chunks.pop();
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn pinned_kib(pages: usize) -> u64 {
    (pages as u64 * PAGE_SIZE) >> 10
}

/// Pins page by page: what is pinned before memory runs out stays pinned,
/// as a process's pages would. The kernel heap running out is different:
/// a page that cannot be recorded, or a report that cannot be written,
/// gives back every page this call pinned (`ENOMEM`, nothing changed).
fn pin<K: Kernel>(k: &mut K, argv: &[&str], out: &mut dyn Write) -> Result<()> {
    let size = argv
        .get(1)
        .and_then(|s| memparse(s))
        .ok_or_else(|| err!(EINVAL, "usage: pin SIZE"))?;
    let mut pinned = core::mem::take(k.pinned());
    let before = pinned.len();
    let r = k.with_mm(|mm| {
        for _ in 0..size.div_ceil(PAGE_SIZE) {
            let Some(pfn) = mm.alloc_movable_first(0) else {
                bail!(
                    ENOMEM,
                    "out of memory; {} KiB pinned in all",
                    pinned_kib(pinned.len())
                );
            };
            if let Err(e) = pinned.push(pfn) {
                mm.free(pfn, 0);
                pinned.truncate(before, |p| {
                    mm.free(p, 0);
                });
                return Err(e);
            }
        }
        if writeln!(out, "pinned {} KiB in all", pinned_kib(pinned.len())).is_err() {
            pinned.truncate(before, |p| {
                mm.free(p, 0);
            });
            bail!(ENOMEM, "no kernel memory for the report; nothing pinned");
        }
        Ok(())
    });
    *k.pinned() = pinned;
    r
}

fn unpin<K: Kernel>(k: &mut K, _: &[&str], _: &mut dyn Write) -> Result<()> {
    let mut pinned = core::mem::take(k.pinned());
    k.with_mm(|mm| {
        pinned.truncate(0, |p| {
            mm.free(p, 0);
        });
        Ok(())
    })
}
