//! `/sys/devices/system/memory` (Linux's `drivers/base/memory.c`) and the
//! `memory_hotplug` module parameters.

use core::fmt::Write;

use super::Files;
use crate::error::Result;
use crate::mm::addr::PhysAddr;
use crate::mm::layout::MEMORY_BLOCK_SIZE;
use crate::mm::online::{OnlineConfig, OnlineType};
use crate::mm::page::Zone;
use crate::mm::pgtable::Translation;
use crate::mm::system::{BlockState, MemorySystem};
use crate::platform::cmdline::memparse;
use crate::{bail, err};

pub const MEMORY_DIR: &str = "/sys/devices/system/memory";

pub type BlockShow<T> = fn(&MemorySystem<T>, u64, &mut dyn Write) -> Result<()>;
pub type BlockStore<T> = fn(&mut MemorySystem<T>, u64, &str) -> Result<()>;

/// A file of every `memoryN` directory: its show and store for block N.
pub struct BlockAttr<T: Translation> {
    pub name: &'static str,
    pub show: BlockShow<T>,
    pub store: Option<BlockStore<T>>,
}

impl<T: Translation> Clone for BlockAttr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Translation> Copy for BlockAttr<T> {}

pub fn block_attrs<T: Translation>() -> [BlockAttr<T>; 5] {
    [
        BlockAttr {
            name: "online",
            show: show_online,
            store: Some(store_online),
        },
        BlockAttr {
            name: "phys_index",
            show: |_, id, out| Ok(writeln!(out, "{id:08x}")?),
            store: None,
        },
        BlockAttr {
            name: "removable",
            // Always 1 since Linux 5.9: whether offlining works is only
            // known by trying.
            show: |_, _, out| Ok(writeln!(out, "1")?),
            store: None,
        },
        BlockAttr {
            name: "state",
            show: show_state,
            store: Some(store_state),
        },
        BlockAttr {
            name: "valid_zones",
            show: show_valid_zones,
            store: None,
        },
    ]
}

/// `memoryN` and the file in it, for paths under [`MEMORY_DIR`].
pub fn block_path(path: &str) -> Option<(u64, Option<&str>)> {
    indexed(path.strip_prefix(MEMORY_DIR)?.strip_prefix('/')?, "memory")
}

/// `(N, rest)` of `{name}N` or `{name}N/rest` (sysfs entries like
/// `memoryN`, `nodeN`).
pub(super) fn indexed<'a>(s: &'a str, name: &str) -> Option<(u64, Option<&'a str>)> {
    let rest = s.strip_prefix(name)?;
    let (n, file) = match rest.split_once('/') {
        Some((n, f)) => (n, Some(f)),
        None => (rest, None),
    };
    Some((parse_index(n)?, file))
}

/// The `N` of a sysfs name like `memoryN`: decimal digits, no leading 0.
pub(super) fn parse_index(n: &str) -> Option<u64> {
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    n.parse().ok()
}

fn state<T: Translation>(mm: &MemorySystem<T>, id: u64) -> BlockState {
    mm.blocks()[&id].state
}

fn show_online<T: Translation>(mm: &MemorySystem<T>, id: u64, out: &mut dyn Write) -> Result<()> {
    Ok(writeln!(
        out,
        "{}",
        u8::from(state(mm, id) != BlockState::Offline)
    )?)
}

/// The device core's switch: 1 onlines in the default zone, 0 offlines.
fn store_online<T: Translation>(mm: &mut MemorySystem<T>, id: u64, data: &str) -> Result<()> {
    match data {
        "1" => store_state(mm, id, "online"),
        "0" => store_state(mm, id, "offline"),
        _ => bail!(EINVAL, "online takes 1 or 0, not {data:?}"),
    }
}

fn show_state<T: Translation>(mm: &MemorySystem<T>, id: u64, out: &mut dyn Write) -> Result<()> {
    let s = match state(mm, id) {
        BlockState::Offline => "offline",
        BlockState::Online(_) => "online",
    };
    Ok(writeln!(out, "{s}")?)
}

fn parse_online_type(file: &str, data: &str) -> Result<OnlineType> {
    OnlineType::parse(data).ok_or_else(|| {
        err!(
            EINVAL,
            "{file} takes online, online_kernel, online_movable or offline, not {data:?}"
        )
    })
}

fn store_state<T: Translation>(mm: &mut MemorySystem<T>, id: u64, data: &str) -> Result<()> {
    match mm.zone_for(id, parse_online_type("state", data)?) {
        Some(zone) => mm.online_block(id, zone),
        None => Ok(mm.offline_block(id)?),
    }
}

fn show_valid_zones<T: Translation>(
    mm: &MemorySystem<T>,
    id: u64,
    out: &mut dyn Write,
) -> Result<()> {
    match state(mm, id) {
        BlockState::Online(z) => writeln!(out, "{}", z.name())?,
        // The zone `online` would pick first, as Linux prints it.
        BlockState::Offline => match mm.zone_for(id, OnlineType::Online) {
            Some(Zone::Movable) => writeln!(out, "Movable Normal")?,
            _ => writeln!(out, "Normal Movable")?,
        },
    }
    Ok(())
}

pub fn block_size_bytes<T: Translation>(_: &Files<T>, out: &mut dyn Write) -> Result<()> {
    Ok(writeln!(out, "{MEMORY_BLOCK_SIZE:x}")?)
}

/// Parses `0x<phys> [size]` as `probe` and `remove` take it.
fn parse_range(data: &str) -> Result<(PhysAddr, u64)> {
    let mut words = data.split_ascii_whitespace();
    let parse = |w: Option<&str>, what: &str| -> Result<u64> {
        let w = w.ok_or_else(|| err!(EINVAL, "missing {what}"))?;
        memparse(w).ok_or_else(|| err!(EINVAL, "bad {what} {w:?}"))
    };
    let start = parse(words.next(), "address")?;
    let size = match words.next() {
        None => MEMORY_BLOCK_SIZE,
        w => parse(w, "size")?,
    };
    if let Some(w) = words.next() {
        bail!(EINVAL, "unexpected {w:?}");
    }
    Ok((PhysAddr::new(start), size))
}

pub fn probe<T: Translation>(f: &mut Files<T>, data: &str) -> Result<()> {
    let (start, size) = parse_range(data)?;
    f.mm.add_memory(start, size)
}

pub fn remove<T: Translation>(f: &mut Files<T>, data: &str) -> Result<()> {
    let (start, size) = parse_range(data)?;
    f.mm.remove_memory(start, size)
}

pub fn show_memmap_on_memory<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    Ok(writeln!(
        out,
        "{}",
        if f.mm.memmap_on_memory() { 'Y' } else { 'N' }
    )?)
}

pub fn store_memmap_on_memory<T: Translation>(f: &mut Files<T>, data: &str) -> Result<()> {
    let on = match data {
        "Y" | "y" | "1" => true,
        "N" | "n" | "0" => false,
        _ => bail!(EINVAL, "memmap_on_memory takes Y or N, not {data:?}"),
    };
    f.mm.set_memmap_on_memory(on);
    Ok(())
}

pub fn show_auto_online_blocks<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    Ok(writeln!(
        out,
        "{}",
        f.mm.online_config().default_type.name()
    )?)
}

pub fn store_auto_online_blocks<T: Translation>(f: &mut Files<T>, data: &str) -> Result<()> {
    let default_type = parse_online_type("auto_online_blocks", data)?;
    f.mm.set_online_config(OnlineConfig {
        default_type,
        ..f.mm.online_config()
    });
    Ok(())
}
