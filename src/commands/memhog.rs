//! `memhog` (numactl's name): anonymous memory that offlining migrates
//! (`mm::anon`), filled with a pattern of each word's address and the
//! area's generation, and checked through its mapping.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use super::{Command, Kernel};
#[cfg(target_os = "none")]
use crate::error::Error;
use crate::error::Result;
use crate::mm::anon::area_base;
use crate::mm::layout::ANON_MAX_AREAS;
use crate::mm::layout::PAGE_SIZE;
#[cfg(target_os = "none")]
use crate::mm::layout::{MEMORY_BLOCK_SIZE, PAGES_PER_SECTION};
use crate::platform::cmdline::memparse;
use crate::{bail, err};

pub fn commands<K: Kernel>() -> Vec<Command<K>> {
    vec![
        Command {
            name: "memhog",
            usage: "memhog SIZE",
            about: "map and fill SIZE of movable anonymous memory (a new area)",
            run: memhog,
        },
        Command {
            name: "memhog",
            usage: "memhog check|list|free [ID]",
            about: "verify every page through its mapping; list; release",
            run: memhog,
        },
    ]
}

const USAGE: &str = "usage: memhog SIZE | check [ID] | list | free [ID]";

fn memhog<K: Kernel>(k: &mut K, argv: &[&str], out: &mut dyn Write) -> Result<()> {
    let id = |w: Option<&&str>| -> Result<Option<usize>> {
        match w {
            None => Ok(None),
            Some(w) => w
                .parse()
                .map(Some)
                .map_err(|_| err!(EINVAL, "bad memhog id {w:?}")),
        }
    };
    if argv.len() > 3 {
        bail!(EINVAL, "{USAGE}");
    }
    k.with_mm(|mm| match argv.get(1).copied() {
        Some("list") if argv.len() == 2 => {
            for (i, a) in mm.anon().areas() {
                let kb = (a.pages * PAGE_SIZE) >> 10;
                writeln!(out, "{i} {kb} kB at {:#x}", area_base(i))?;
            }
            Ok(())
        }
        Some("check") => {
            // One area, or every slot that holds one: no list of them
            // (and so no heap) is needed.
            let ids = match id(argv.get(2))? {
                Some(i) if mm.anon().area(i).is_none() => {
                    bail!(ENOENT, "no anonymous area {i}")
                }
                Some(i) => i..i + 1,
                None => 0..ANON_MAX_AREAS as usize,
            };
            let (mut areas, mut pages) = (0, 0);
            for i in ids {
                let Some(area) = mm.anon().area(i) else {
                    continue;
                };
                #[cfg(target_os = "none")]
                mm.anon_check_via_mmu(i)?;
                #[cfg(not(target_os = "none"))]
                mm.anon_check(i)?;
                pages += area.pages;
                areas += 1;
            }
            Ok(writeln!(out, "memhog: {areas} areas, {pages} pages OK")?)
        }
        Some("free") => {
            match id(argv.get(2))? {
                Some(i) => mm.anon_free(i)?,
                None => {
                    for i in 0..ANON_MAX_AREAS as usize {
                        if mm.anon().area(i).is_some() {
                            mm.anon_free(i)?;
                        }
                    }
                }
            }
            Ok(())
        }
        Some(size) if argv.len() == 2 => {
            let bytes = memparse(size)
                .filter(|&b| b > 0)
                .ok_or_else(|| err!(EINVAL, "{USAGE}"))?;
            let pages = bytes.div_ceil(PAGE_SIZE);
            let i = mm.anon_map(pages)?;
            let kb = (pages * PAGE_SIZE) >> 10;
            // No report, no area: the heap running out here is ENOMEM
            // with nothing changed.
            if writeln!(out, "memhog {i}: {kb} kB at {:#x}", area_base(i)).is_err() {
                mm.anon_free(i)?;
                bail!(ENOMEM, "no kernel memory for the report; nothing mapped");
            }
            Ok(())
        }
        _ => bail!(EINVAL, "{USAGE}"),
    })
}

/// `bench migrate ADDR`: hot-adds two blocks of held-back RAM at `ADDR` as
/// movable memory, fills the first with one memhog area, and times its
/// offline (every page migrated to the second) against a plain copy of a
/// block and the offline of the same block empty. Everything is given back.
#[cfg(target_os = "none")]
pub fn bench<K: Kernel>(k: &mut K, argv: &[&str], out: &mut dyn Write) -> Result<()> {
    use crate::arch::aarch64 as cpu;
    use crate::mm::addr::PhysAddr;
    use crate::mm::page::Zone;
    use crate::mm::system::block_id;
    let start = PhysAddr::new(super::parse_number(argv.get(2), "address")?);
    let (a, b) = (block_id(start), block_id(start) + 1);
    let us = |t: u64| (t * 1_000_000 / cpu::counter_freq()).max(1);
    k.with_mm(|mm| {
        mm.add_memory(start, 2 * MEMORY_BLOCK_SIZE)?;
        fn run<T: crate::mm::pgtable::Translation>(
            mm: &mut crate::mm::system::MemorySystem<T>,
            start: PhysAddr,
            (a, b): (u64, u64),
        ) -> Result<[u64; 4]> {
            mm.online_block(a, Zone::Movable)?;
            let area = mm.anon_map(PAGES_PER_SECTION)?;
            mm.online_block(b, Zone::Movable)?;
            let moved0 = mm.anon().pgmigrate_success;
            let t = cpu::counter();
            let r = mm.offline_block(a);
            let full = cpu::counter() - t;
            let moved = mm.anon().pgmigrate_success - moved0;
            let copy_and_empty = r.map_err(Error::from).and_then(|_| {
                mm.online_block(a, Zone::Movable)?;
                let (src, dst) = (
                    (start + MEMORY_BLOCK_SIZE).to_virt().as_mut_ptr::<u64>(),
                    start.to_virt().as_mut_ptr::<u64>(),
                );
                let t = cpu::counter();
                // SAFETY: both blocks are online and linear mapped; the
                // first is all free (its contents are nobody's), the
                // second is only read.
                unsafe {
                    core::ptr::copy_nonoverlapping(src, dst, (MEMORY_BLOCK_SIZE / 8) as usize)
                };
                core::hint::black_box(dst);
                let copy = cpu::counter() - t;
                let t = cpu::counter();
                mm.offline_block(a).map_err(Error::from)?;
                Ok((copy, cpu::counter() - t))
            });
            mm.anon_free(area)?;
            let (copy, empty) = copy_and_empty?;
            Ok([full, moved, copy, empty])
        }
        let r = run(mm, start, (a, b));
        for id in [a, b] {
            let _ = mm.offline_block(id);
        }
        mm.remove_memory(start, 2 * MEMORY_BLOCK_SIZE)?;
        let [full, moved, copy, empty] = r?;
        let mib = MEMORY_BLOCK_SIZE >> 20;
        writeln!(
            out,
            "offline of a {mib} MiB block held by memhog: {} us, {moved} pages migrated ({} migrations/s)",
            us(full),
            moved * 1_000_000 / us(full)
        )?;
        writeln!(out, "plain copy of {mib} MiB: {} us", us(copy))?;
        writeln!(out, "offline of the block empty: {} us", us(empty))?;
        writeln!(
            out,
            "ratio to the copy: {}.{:02}, to the empty offline: {}",
            full / copy,
            full * 100 / copy % 100,
            full / empty.max(1)
        )?;
        Ok(())
    })
}
