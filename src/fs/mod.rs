//! The kernel's files: procfs, sysfs and debugfs under Linux's names and
//! formats (`console.md`), over any [`MemorySystem`].
//!
//! Every fixed path is named once, in [`attributes`], with its show and
//! store functions (Linux's `DEVICE_ATTR` in `drivers/base/memory.c`); the
//! memory-block directories have their own table ([`memory::BLOCK_ATTRS`]).
//! Directories are what the paths imply: nothing lists them separately.

mod debug;
pub mod memory;
pub mod node;
pub mod proc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::error::{try_format, Errno, Result};
use crate::mm::pgtable::Translation;
use crate::mm::system::MemorySystem;
use crate::{bail, err};

/// What a show or store function works on.
pub struct Files<'a, T: Translation> {
    pub mm: &'a mut MemorySystem<T>,
    /// CPUs running, bit n for CPU n.
    pub cpus_online: u64,
}

pub type Show<T> = fn(&Files<T>, &mut dyn Write) -> Result<()>;
pub type Store<T> = fn(&mut Files<T>, &str) -> Result<()>;

/// One file: its path, and what reading and writing it do (`None`: the
/// file is write-only or read-only).
pub struct Attribute<T: Translation> {
    pub path: &'static str,
    pub show: Option<Show<T>>,
    pub store: Option<Store<T>>,
}

/// How many files have fixed paths.
const NR_ATTRIBUTES: usize = 18;

/// Every file at a fixed path.
pub fn attributes<T: Translation>() -> [Attribute<T>; NR_ATTRIBUTES] {
    let a = |path, show, store| Attribute { path, show, store };
    [
        a("/proc/meminfo", Some(proc::meminfo), None),
        a("/proc/iomem", Some(proc::iomem), None),
        a("/proc/buddyinfo", Some(proc::buddyinfo), None),
        a("/proc/vmstat", Some(proc::vmstat), None),
        a("/proc/zoneinfo", Some(proc::zoneinfo), None),
        a("/sys/devices/system/cpu/online", Some(cpu_online), None),
        a(
            "/sys/devices/system/node/has_cpu",
            Some(node::has_cpu),
            None,
        ),
        a(
            "/sys/devices/system/node/has_memory",
            Some(node::has_memory),
            None,
        ),
        a("/sys/devices/system/node/online", Some(node::online), None),
        a(
            "/sys/devices/system/node/possible",
            Some(node::possible),
            None,
        ),
        a(
            "/sys/devices/system/memory/auto_online_blocks",
            Some(memory::show_auto_online_blocks),
            Some(memory::store_auto_online_blocks),
        ),
        a(
            "/sys/devices/system/memory/block_size_bytes",
            Some(memory::block_size_bytes),
            None,
        ),
        a(
            "/sys/devices/system/memory/probe",
            None,
            Some(memory::probe),
        ),
        a(
            "/sys/devices/system/memory/remove",
            None,
            Some(memory::remove),
        ),
        a(
            "/sys/module/memory_hotplug/parameters/memmap_on_memory",
            Some(memory::show_memmap_on_memory),
            Some(memory::store_memmap_on_memory),
        ),
        a(
            "/sys/kernel/debug/kernel_page_tables",
            Some(debug::kernel_page_tables),
            None,
        ),
        a("/sys/kernel/debug/vmemmap", Some(debug::vmemmap), None),
        a(
            "/sys/kernel/debug/fail_nth_alloc",
            Some(debug::show_fail_nth_alloc),
            Some(debug::store_fail_nth_alloc),
        ),
    ]
}

/// What a path names.
enum Node<T: Translation> {
    Dir,
    File(Option<Show<T>>, Option<Store<T>>),
    Block(u64, memory::BlockAttr<T>),
    /// `memoryN` (also as `nodeK/memoryN`).
    BlockDir(u64),
    /// `nodeN` (also as `memoryM/nodeN`).
    NumaDir(usize),
    NumaFile(usize, node::NodeShow<T>),
}

/// What writing a path calls.
enum Writer<T: Translation> {
    File(Store<T>),
    Block(u64, memory::BlockStore<T>),
}

/// A CPU mask as Linux prints it: ranges, `0-3,6`. Written straight to
/// the output: reading a file allocates nothing.
pub struct CpuList(pub u64);

impl core::fmt::Display for CpuList {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mask = self.0;
        let (mut cpu, mut sep) = (0, "");
        while cpu < 64 {
            if mask & (1 << cpu) == 0 {
                cpu += 1;
                continue;
            }
            let first = cpu;
            while cpu < 64 && mask & (1 << cpu) != 0 {
                cpu += 1;
            }
            match cpu - 1 - first {
                0 => write!(f, "{sep}{first}")?,
                _ => write!(f, "{sep}{first}-{}", cpu - 1)?,
            }
            sep = ",";
        }
        Ok(())
    }
}

fn cpu_online<T: Translation>(f: &Files<T>, out: &mut dyn Write) -> Result<()> {
    Ok(writeln!(out, "{}", CpuList(f.cpus_online))?)
}

/// The entry directly under `dir` that `path` goes through: its name and
/// whether it is a directory (`/sys/devices/system/cpu/online` under `/sys`
/// is `devices`, a directory).
fn child_of<'a>(path: &'a str, dir: &str) -> Option<(&'a str, bool)> {
    let rest = match dir {
        "/" => path.strip_prefix('/')?,
        _ => path.strip_prefix(dir)?.strip_prefix('/')?,
    };
    Some(match rest.split_once('/') {
        Some((d, _)) => (d, true),
        None => (rest, false),
    })
}

/// How `ls` orders entries: by the name it shows (a directory's with its
/// `/`).
fn entry_key<'a>(&(name, dir): &(&'a str, bool)) -> impl Iterator<Item = u8> + 'a {
    name.bytes().chain(dir.then_some(b'/'))
}

/// An entry's name as `ls` shows it (a directory ends with `/`), in a
/// string the heap may refuse: `ENOMEM`, never an abort.
fn entry_name(name: &str, dir: bool) -> Result<String> {
    try_format(format_args!("{name}{}", if dir { "/" } else { "" }))
}

impl<T: Translation> Files<'_, T> {
    fn lookup(&self, path: &str) -> Option<Node<T>> {
        let attrs = attributes::<T>();
        if let Some(a) = attrs.iter().find(|a| a.path == path) {
            return Some(Node::File(a.show, a.store));
        }
        if path == "/" || attrs.iter().any(|a| child_of(a.path, path).is_some()) {
            return Some(Node::Dir);
        }
        if let Some((nid, rest)) = node::node_path(path) {
            return self.lookup_node(nid, rest);
        }
        let (id, file) = memory::block_path(path)?;
        self.lookup_block(id, file)
    }

    /// `memoryN` and what is under it; `nodeK` is its node.
    fn lookup_block(&self, id: u64, file: Option<&str>) -> Option<Node<T>> {
        let nid = self.mm.blocks().get(&id)?.nid;
        let Some(f) = file else {
            return Some(Node::BlockDir(id));
        };
        if f.starts_with("node") {
            let (k, file) = memory::indexed(f, "node")?;
            return (k == nid as u64)
                .then(|| self.lookup_node(nid, file))
                .flatten();
        }
        memory::block_attrs::<T>()
            .into_iter()
            .find(|a| a.name == f)
            .map(|a| Node::Block(id, a))
    }

    /// `nodeN` (an online node) and what is under it: its files and its
    /// memory blocks.
    fn lookup_node(&self, nid: usize, file: Option<&str>) -> Option<Node<T>> {
        if !self.mm.node_online().contains(nid) {
            return None;
        }
        let Some(f) = file else {
            return Some(Node::NumaDir(nid));
        };
        if f.starts_with("memory") {
            // Linux's symlink to the block, whose `nodeK` leads back here:
            // followed as often as the path says, as `ls` lists it. Each
            // turn uses up 14 bytes or more of a path of at most a console
            // line (256 bytes), so the recursion stays shallow.
            let (id, file) = memory::indexed(f, "memory")?;
            let on_node = self.mm.blocks().get(&id)?.nid == nid;
            return on_node.then(|| self.lookup_block(id, file)).flatten();
        }
        node::node_attrs::<T>()
            .into_iter()
            .find(|a| a.0 == f)
            .map(|a| Node::NumaFile(nid, a.1))
    }

    /// The entries of a `memoryN` directory: its files and its node.
    fn block_entries(&self, id: u64) -> Result<Vec<String>> {
        let attrs = memory::block_attrs::<T>();
        let mut names = Vec::new();
        names
            .try_reserve_exact(attrs.len() + 1)
            .map_err(|_| Errno::ENOMEM)?;
        for a in &attrs {
            names.push(entry_name(a.name, false)?);
        }
        if let Some(b) = self.mm.blocks().get(&id) {
            names.push(try_format(format_args!("node{}/", b.nid))?);
        }
        // In place: a stable sort would take a buffer from the heap.
        names.sort_unstable();
        Ok(names)
    }

    /// The entries of a `nodeN` directory: its files and memory blocks.
    fn node_entries(&self, nid: usize) -> Result<Vec<String>> {
        let attrs = node::node_attrs::<T>();
        let blocks = self.mm.blocks().iter().filter(|(_, b)| b.nid == nid);
        let mut names = Vec::new();
        names
            .try_reserve_exact(attrs.len() + blocks.clone().count())
            .map_err(|_| Errno::ENOMEM)?;
        for a in &attrs {
            names.push(entry_name(a.0, false)?);
        }
        for (id, _) in blocks {
            names.push(try_format(format_args!("memory{id}/"))?);
        }
        Ok(names)
    }

    /// Names directly under `dir`, sorted, directories ending with `/`;
    /// then the memory blocks, in id order. Every allocation is fallible:
    /// `ls` with the heap out is `ENOMEM`.
    fn children(&self, dir: &str) -> Result<Vec<String>> {
        let attrs = attributes::<T>();
        // Sorted and deduplicated in place, without the heap.
        let mut fixed = [("", false); NR_ATTRIBUTES];
        let mut n = 0;
        for c in attrs.iter().filter_map(|a| child_of(a.path, dir)) {
            fixed[n] = c;
            n += 1;
        }
        fixed[..n].sort_unstable_by(|a, b| entry_key(a).cmp(entry_key(b)));
        let mut unique = 0;
        for i in 0..n {
            if unique == 0 || fixed[i] != fixed[unique - 1] {
                fixed[unique] = fixed[i];
                unique += 1;
            }
        }
        let blocks = if dir == memory::MEMORY_DIR {
            self.mm.blocks().len()
        } else {
            0
        };
        let nodes = if dir == node::NODE_DIR {
            self.mm.node_online().iter().count()
        } else {
            0
        };
        let mut names = Vec::new();
        names
            .try_reserve_exact(unique + nodes + blocks)
            .map_err(|_| Errno::ENOMEM)?;
        for &(name, d) in &fixed[..unique] {
            names.push(entry_name(name, d)?);
        }
        if nodes != 0 {
            for n in self.mm.node_online().iter() {
                names.push(try_format(format_args!("node{n}/"))?);
            }
        }
        if blocks != 0 {
            for id in self.mm.blocks().keys() {
                names.push(try_format(format_args!("memory{id}/"))?);
            }
        }
        Ok(names)
    }

    pub fn read(&mut self, path: &str, out: &mut dyn Write) -> Result<()> {
        match self.lookup(path) {
            Some(Node::File(Some(show), _)) => show(self, out),
            Some(Node::File(None, _)) => bail!(EACCES, "{path}: write-only file"),
            Some(Node::Block(id, a)) => (a.show)(self.mm, id, out),
            Some(Node::NumaFile(nid, show)) => show(self, nid, out),
            Some(Node::Dir | Node::BlockDir(_) | Node::NumaDir(_)) => {
                bail!(EISDIR, "{path}: is a directory")
            }
            None => bail!(ENOENT, "{path}: no such file or directory"),
        }
    }

    pub fn write(&mut self, path: &str, data: &str) -> Result<()> {
        let data = data.trim();
        match self.writer(path)? {
            Writer::File(store) => store(self, data),
            Writer::Block(id, store) => store(self.mm, id, data),
        }
    }

    /// Why `path` cannot be written, if it cannot (the shell asks before a
    /// redirected command runs).
    pub fn writable(&self, path: &str) -> Result<()> {
        self.writer(path).map(|_| ())
    }

    fn writer(&self, path: &str) -> Result<Writer<T>> {
        match self.lookup(path) {
            Some(Node::File(_, Some(store))) => Ok(Writer::File(store)),
            Some(Node::Block(
                id,
                memory::BlockAttr {
                    store: Some(store), ..
                },
            )) => Ok(Writer::Block(id, store)),
            Some(Node::File(..) | Node::Block(..) | Node::NumaFile(..)) => {
                bail!(EPERM, "{path}: read-only file")
            }
            Some(Node::Dir | Node::BlockDir(_) | Node::NumaDir(_)) => {
                bail!(EISDIR, "{path}: is a directory")
            }
            None => bail!(ENOENT, "{path}: no such file or directory"),
        }
    }

    pub fn list(&mut self, path: &str) -> Result<Vec<String>> {
        match self.lookup(path) {
            Some(Node::BlockDir(id)) => self.block_entries(id),
            Some(Node::NumaDir(nid)) => self.node_entries(nid),
            Some(Node::Dir) => self.children(path),
            Some(_) => bail!(ENOTDIR, "{path}: not a directory"),
            None => Err(err!(ENOENT, "{path}: no such file or directory")),
        }
    }
}

/// A file's text, or the test panics.
#[cfg(test)]
pub(crate) fn read_for_test(
    files: &mut Files<crate::mm::testing::ArenaTranslation>,
    path: &str,
) -> String {
    let mut s = String::new();
    files
        .read(path, &mut s)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    s
}

#[cfg(all(test, not(any(feature = "granule-16k", feature = "granule-64k"))))]
mod fuzz_tests;
#[cfg(all(test, not(any(feature = "granule-16k", feature = "granule-64k"))))]
mod tests;
