//! The console's files (`console.md`): Linux's procfs and sysfs names and
//! formats over a [`MemorySystem`], plus the documented extensions.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use super::Result;
use crate::mm::layout::*;
use crate::mm::page::Zone;
use crate::mm::pgtable::Translation;
use crate::mm::system::{BlockState, MemInfo, MemorySystem};
use crate::platform::cmdline::parse_u64;
use crate::{bail, err};

pub const MEMORY_DIR: &str = "/sys/devices/system/memory";

/// Directories and the files in them; `memoryN` directories are added.
const TREE: &[(&str, &[&str])] = &[
    ("/", &["proc/", "sys/"]),
    ("/proc", &["buddyinfo", "iomem", "meminfo", "vmstat"]),
    ("/sys", &["devices/", "kernel/", "module/"]),
    ("/sys/devices", &["system/"]),
    ("/sys/devices/system", &["cpu/", "memory/"]),
    ("/sys/devices/system/cpu", &["online"]),
    (
        "/sys/devices/system/memory",
        &["block_size_bytes", "probe", "remove"],
    ),
    ("/sys/kernel", &["debug/"]),
    (
        "/sys/kernel/debug",
        &["fail_nth_alloc", "kernel_page_tables", "vmemmap"],
    ),
    ("/sys/module", &["memory_hotplug/"]),
    ("/sys/module/memory_hotplug", &["parameters/"]),
    (
        "/sys/module/memory_hotplug/parameters",
        &["memmap_on_memory"],
    ),
];

const BLOCK_FILES: &[&str] = &["online", "phys_index", "removable", "state", "valid_zones"];

/// `memoryN/file` under [`MEMORY_DIR`].
fn block_path(path: &str) -> Option<(u64, Option<&str>)> {
    let rest = path.strip_prefix(MEMORY_DIR)?.strip_prefix("/memory")?;
    let (n, file) = match rest.split_once('/') {
        Some((n, f)) => (n, Some(f)),
        None => (rest, None),
    };
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    Some((n.parse().ok()?, file))
}

/// Parses `0x<phys> [size]` as `probe` and `remove` take it.
fn parse_range(data: &str) -> Result<(u64, u64)> {
    let mut words = data.split_ascii_whitespace();
    let parse = |w: Option<&str>, what: &str| -> Result<u64> {
        let w = w.ok_or_else(|| err!(EINVAL, "missing {what}"))?;
        crate::platform::cmdline::memparse(w).ok_or_else(|| err!(EINVAL, "bad {what} {w:?}"))
    };
    let start = parse(words.next(), "address")?;
    let size = match words.next() {
        None => MEMORY_BLOCK_SIZE,
        w => parse(w, "size")?,
    };
    if let Some(w) = words.next() {
        bail!(EINVAL, "unexpected {w:?}");
    }
    Ok((start, size))
}

/// A CPU mask as Linux prints it: ranges, `0-3,6`.
pub fn cpu_list(mask: u64) -> String {
    let mut out = String::new();
    let mut cpu = 0;
    while cpu < 64 {
        if mask & (1 << cpu) == 0 {
            cpu += 1;
            continue;
        }
        let first = cpu;
        while cpu < 64 && mask & (1 << cpu) != 0 {
            cpu += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        match cpu - 1 - first {
            0 => out += &format!("{first}"),
            _ => out += &format!("{first}-{}", cpu - 1),
        }
    }
    out
}

pub fn write_meminfo(info: &MemInfo, out: &mut dyn Write) -> Result<()> {
    for (name, bytes) in MemInfo::FIELDS.iter().zip(info.values()) {
        writeln!(out, "{:<16}{:>8} kB", format!("{name}:"), bytes >> 10)?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File,
}

pub struct Files<'a, T: Translation> {
    pub mm: &'a mut MemorySystem<T>,
    /// CPUs running, bit n for CPU n.
    pub cpus_online: u64,
}

impl<T: Translation> Files<'_, T> {
    /// What `path` names, from the tree alone (no file is read).
    fn lookup(&self, path: &str) -> Option<Node> {
        if TREE.iter().any(|(dir, _)| *dir == path) {
            return Some(Node::Dir);
        }
        let (dir, name) = path.rsplit_once('/')?;
        let dir = if dir.is_empty() { "/" } else { dir };
        if let Some((_, files)) = TREE.iter().find(|(d, _)| *d == dir) {
            if files.contains(&name) {
                return Some(Node::File);
            }
        }
        match block_path(path)? {
            (id, _) if !self.mm.blocks.contains_key(&id) => None,
            (_, None) => Some(Node::Dir),
            (_, Some(f)) => BLOCK_FILES.contains(&f).then_some(Node::File),
        }
    }
    pub fn read(&mut self, path: &str, out: &mut dyn Write) -> Result<()> {
        let mm = &mut *self.mm;
        match path {
            "/proc/meminfo" => write_meminfo(&mm.meminfo(), out)?,
            "/proc/iomem" => mm.iomem.show(out)?,
            "/proc/buddyinfo" => {
                // Linux's format: free blocks per order, populated zones.
                for zone in Zone::BUDDY_ZONES
                    .into_iter()
                    .filter(|&z| mm.buddy.managed(z) > 0)
                {
                    write!(out, "Node 0, zone {:>8} ", zone.name())?;
                    for order in 0..=MAX_ORDER {
                        write!(out, "{:>6} ", mm.buddy.nr_free_blocks(zone, order))?;
                    }
                    writeln!(out)?;
                }
            }
            "/proc/vmstat" => self.vmstat(out)?,
            "/sys/devices/system/memory/block_size_bytes" => {
                writeln!(out, "{MEMORY_BLOCK_SIZE:x}")?
            }
            "/sys/devices/system/cpu/online" => writeln!(out, "{}", cpu_list(self.cpus_online))?,
            "/sys/module/memory_hotplug/parameters/memmap_on_memory" => {
                writeln!(out, "{}", if mm.memmap_on_memory { 'Y' } else { 'N' })?
            }
            "/sys/kernel/debug/kernel_page_tables" => mm.pt.dump(MARKERS, out)?,
            "/sys/kernel/debug/vmemmap" => {
                mm.for_each_vmemmap_leaf(|va, size, pa, owner| {
                    let backing = owner.map_or("system".to_string(), |o| format!("altmap:{o}"));
                    let _ = writeln!(
                        out,
                        "0x{va:016x}-0x{:016x} {:>6}K pfn {:#x} {backing}",
                        va + size,
                        size >> 10,
                        phys_to_pfn(pa)
                    );
                });
            }
            "/sys/kernel/debug/fail_nth_alloc" => {
                writeln!(out, "{}", mm.fail_nth_alloc.map_or(0, |n| n + 1))?
            }
            "/sys/devices/system/memory/probe" | "/sys/devices/system/memory/remove" => {
                bail!(EACCES, "{path}: write-only file")
            }
            _ => return self.read_block(path, out),
        }
        Ok(())
    }

    fn read_block(&mut self, path: &str, out: &mut dyn Write) -> Result<()> {
        let (Some((id, Some(file))), Some(Node::File)) = (block_path(path), self.lookup(path))
        else {
            return Err(match self.lookup(path) {
                Some(Node::Dir) => err!(EISDIR, "{path}: is a directory"),
                _ => err!(ENOENT, "{path}: no such file or directory"),
            });
        };
        let block = &self.mm.blocks[&id];
        match file {
            "online" => writeln!(out, "{}", u8::from(block.state != BlockState::Offline))?,
            "state" => writeln!(
                out,
                "{}",
                if block.state == BlockState::Offline {
                    "offline"
                } else {
                    "online"
                }
            )?,
            "phys_index" => writeln!(out, "{id:08x}")?,
            "removable" => writeln!(out, "{}", u8::from(!block.boot))?,
            "valid_zones" => match block.state {
                BlockState::Online(z) => writeln!(out, "{}", z.name())?,
                BlockState::Offline => writeln!(out, "Normal Movable")?,
            },
            _ => bail!(ENOENT, "{path}: no such file"),
        }
        Ok(())
    }

    fn vmstat(&self, out: &mut dyn Write) -> Result<()> {
        let mm = &*self.mm;
        let (e, s, w, b) = (mm.events, mm.pt.stats, mm.warnings, mm.buddy.stats());
        let rows: [(&str, u64); 15] = [
            ("nr_free_pages", mm.buddy.nr_free_total()),
            ("nr_page_table_pages", s.tables),
            ("memory_hotplug_add", e.hotplug_add),
            ("memory_hotplug_remove", e.hotplug_remove),
            ("memory_online", e.online),
            ("memory_offline", e.offline),
            ("devmem_map", e.devmem_map),
            ("devmem_unmap", e.devmem_unmap),
            ("pgtable_alloc", s.tables_allocated),
            ("pgtable_free", s.tables_freed),
            ("tlb_kernel_invalidations", s.tlbi_ops),
            ("altmap_without_free_mapped", w.altmap_without_free_mapped),
            ("hotplug_reserved_page_free", w.reserved_page_freed),
            ("altmap_bad_free", w.altmap_bad_free),
            ("buddy_bad_free", b.bad_frees),
        ];
        for (name, v) in rows {
            writeln!(out, "{name} {v}")?;
        }
        Ok(())
    }

    pub fn write(&mut self, path: &str, data: &str) -> Result<()> {
        let data = data.trim();
        let mm = &mut *self.mm;
        match path {
            "/sys/devices/system/memory/probe" => {
                let (start, size) = parse_range(data)?;
                mm.add_memory(start, size)
            }
            "/sys/devices/system/memory/remove" => {
                let (start, size) = parse_range(data)?;
                mm.remove_memory(start, size)
            }
            "/sys/module/memory_hotplug/parameters/memmap_on_memory" => {
                mm.memmap_on_memory = match data {
                    "Y" | "y" | "1" => true,
                    "N" | "n" | "0" => false,
                    _ => bail!(EINVAL, "memmap_on_memory takes Y or N, not {data:?}"),
                };
                Ok(())
            }
            "/sys/kernel/debug/fail_nth_alloc" => {
                let n = parse_u64(data).ok_or_else(|| err!(EINVAL, "not a number: {data:?}"))?;
                mm.fail_nth_alloc = n.checked_sub(1);
                Ok(())
            }
            _ => match block_path(path) {
                Some((id, Some(file @ ("state" | "online")))) => {
                    if !mm.blocks.contains_key(&id) {
                        bail!(ENOENT, "{path}: no such file");
                    }
                    // `online` is the device core's switch: 1 onlines in
                    // the default zone, 0 offlines.
                    let data = match (file, data) {
                        ("online", "1") => "online",
                        ("online", "0") => "offline",
                        ("online", _) => bail!(EINVAL, "online takes 1 or 0, not {data:?}"),
                        (_, data) => data,
                    };
                    match data {
                        "online" | "online_kernel" => mm.online_block(id, Zone::Normal),
                        "online_movable" => mm.online_block(id, Zone::Movable),
                        "offline" => mm.offline_block(id),
                        _ => bail!(EINVAL, "state takes online, online_kernel, online_movable or offline, not {data:?}"),
                    }
                }
                _ => match self.lookup(path) {
                    Some(Node::Dir) => bail!(EISDIR, "{path}: is a directory"),
                    Some(Node::File) => bail!(EPERM, "{path}: read-only file"),
                    None => bail!(ENOENT, "{path}: no such file or directory"),
                },
            },
        }
    }

    pub fn list(&mut self, path: &str) -> Result<Vec<String>> {
        if let Some((_, files)) = TREE.iter().find(|(dir, _)| *dir == path) {
            let mut names: Vec<String> = files.iter().map(|f| f.to_string()).collect();
            if path == MEMORY_DIR {
                names.extend(self.mm.blocks.keys().map(|id| format!("memory{id}/")));
            }
            return Ok(names);
        }
        match self.lookup(path) {
            Some(Node::Dir) => Ok(BLOCK_FILES.iter().map(|f| f.to_string()).collect()),
            Some(Node::File) => bail!(ENOTDIR, "{path}: not a directory"),
            None => bail!(ENOENT, "{path}: no such file or directory"),
        }
    }
}
