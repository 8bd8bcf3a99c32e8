//! `memhog` (numactl's name): anonymous memory that offlining migrates
//! (`mm::anon`), filled with a pattern of each word's address and the
//! area's generation, and checked through its mapping.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use super::{Command, Kernel};
use crate::error::Result;
use crate::mm::anon::area_base;
use crate::mm::layout::PAGE_SIZE;
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
            let ids: Vec<usize> = match id(argv.get(2))? {
                Some(i) => vec![i],
                None => mm.anon().areas().map(|(i, _)| i).collect(),
            };
            let mut pages = 0;
            for &i in &ids {
                #[cfg(target_os = "none")]
                mm.anon_check_via_mmu(i)?;
                #[cfg(not(target_os = "none"))]
                mm.anon_check(i)?;
                pages += mm.anon().area(i).map_or(0, |a| a.pages);
            }
            Ok(writeln!(
                out,
                "memhog: {} areas, {pages} pages OK",
                ids.len()
            )?)
        }
        Some("free") => {
            match id(argv.get(2))? {
                Some(i) => mm.anon_free(i)?,
                None => {
                    let ids: Vec<usize> = mm.anon().areas().map(|(i, _)| i).collect();
                    for i in ids {
                        mm.anon_free(i)?;
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
            Ok(writeln!(out, "memhog {i}: {kb} kB at {:#x}", area_base(i))?)
        }
        _ => bail!(EINVAL, "{USAGE}"),
    })
}
