//! util-linux's `lsmem` and `chmem` (`sys-utils/lsmem.c`, `chmem.c`):
//! they read and write `/sys/devices/system/memory` as the real tools do,
//! through the kernel's files, so they see what a user's `cat` sees.
//!
//! Differences, for the console's contract: `chmem` is all or nothing (the
//! real one keeps what it managed and exits 64; here a failure puts every
//! block back and prints one error line), and `lsmem` has no JSON, pairs or
//! `--split` output. Both take util-linux's options otherwise.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use super::{Command, Kernel};
use crate::error::{Error, Result};
use crate::fs::memory::MEMORY_DIR;
use crate::fs::Files;
use crate::{bail, err, pr_warn};

pub fn commands<K: Kernel>() -> Vec<Command<K>> {
    vec![
        Command {
            name: "lsmem",
            usage: "lsmem [-abnr] [-o COLS]",
            about: "memory ranges and their state (util-linux)",
            run: lsmem,
        },
        Command {
            name: "chmem",
            usage: "chmem -e|-d [-b] SIZE|RANGE",
            about: "set memory online or offline (util-linux; also -v, -z ZONE)",
            run: chmem,
        },
    ]
}

/// Runs `f` on the kernel's files.
fn with_files<K: Kernel, R>(k: &mut K, f: impl FnOnce(&mut Files<K::T>) -> Result<R>) -> Result<R> {
    let cpus_online = k.cpus_online();
    k.with_mm(|mm| f(&mut Files { mm, cpus_online }))
}

/// util-linux's `size_to_human_string(SIZE_SUFFIX_1LETTER)`: `128M`,
/// `1.5G`, `0B`; one decimal, rounded.
pub fn human_size(bytes: u64) -> String {
    let mut shift = 10;
    while shift <= 60 && bytes >= 1u64 << shift {
        shift += 10;
    }
    let exp = shift - 10;
    let letter = b"BKMGTPE"[exp as usize / 10] as char;
    let mut dec = bytes >> exp;
    let mut frac = if exp == 0 {
        0
    } else {
        bytes & ((1 << exp) - 1)
    };
    if frac != 0 {
        frac = ((frac >> (exp - 10)) + 50) / 100;
        if frac == 10 {
            dec += 1;
            frac = 0;
        }
    }
    match frac {
        0 => format!("{dec}{letter}"),
        f => format!("{dec}.{f}{letter}"),
    }
}

/// One `memoryN` directory as the tools read it.
#[derive(Clone, Debug)]
struct Block {
    index: u64,
    count: u64,
    online: bool,
    removable: bool,
    /// `valid_zones`, words as read.
    zones: Vec<String>,
    node: Option<u64>,
}

fn read_file<T: crate::mm::pgtable::Translation>(f: &mut Files<T>, path: &str) -> Result<String> {
    let mut s = String::new();
    f.read(path, &mut s)?;
    Ok(s.trim_end().to_string())
}

fn block_size<T: crate::mm::pgtable::Translation>(f: &mut Files<T>) -> Result<u64> {
    let s = read_file(f, &format!("{MEMORY_DIR}/block_size_bytes"))?;
    u64::from_str_radix(&s, 16).map_err(|_| err!(EIO, "bad block_size_bytes {s:?}"))
}

/// The `memoryN` directories, in index order (`versionsort`).
fn read_blocks<T: crate::mm::pgtable::Translation>(f: &mut Files<T>) -> Result<Vec<Block>> {
    let mut ids: Vec<u64> = f
        .list(MEMORY_DIR)?
        .iter()
        .filter_map(|e| e.strip_prefix("memory")?.trim_end_matches('/').parse().ok())
        .collect();
    ids.sort_unstable();
    ids.into_iter()
        .map(|id| {
            let dir = format!("{MEMORY_DIR}/memory{id}");
            let state = read_file(f, &format!("{dir}/state"))?;
            let removable = read_file(f, &format!("{dir}/removable"))? == "1";
            let zones = read_file(f, &format!("{dir}/valid_zones"))?;
            let node = f
                .list(&dir)?
                .iter()
                .find_map(|e| e.strip_prefix("node")?.trim_end_matches('/').parse().ok());
            Ok(Block {
                index: id,
                count: 1,
                online: state == "online",
                removable,
                zones: zones.split_whitespace().map(String::from).collect(),
                node,
            })
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Range,
    Size,
    State,
    Removable,
    Block,
    Node,
    Zones,
}

impl Col {
    const ALL: [Col; 7] = [
        Col::Range,
        Col::Size,
        Col::State,
        Col::Removable,
        Col::Block,
        Col::Node,
        Col::Zones,
    ];
    const DEFAULT: [Col; 5] = [
        Col::Range,
        Col::Size,
        Col::State,
        Col::Removable,
        Col::Block,
    ];

    fn name(self) -> &'static str {
        match self {
            Col::Range => "RANGE",
            Col::Size => "SIZE",
            Col::State => "STATE",
            Col::Removable => "REMOVABLE",
            Col::Block => "BLOCK",
            Col::Node => "NODE",
            Col::Zones => "ZONES",
        }
    }

    /// Every column but RANGE is right-aligned.
    fn right(self) -> bool {
        self != Col::Range
    }

    /// Columns whose differing values split a range (`set_split_policy`).
    fn splits(self, a: &Block, b: &Block) -> bool {
        match self {
            Col::State => a.online != b.online,
            Col::Removable => a.removable != b.removable,
            Col::Node => a.node != b.node,
            Col::Zones => a.zones != b.zones,
            _ => false,
        }
    }
}

/// `-o LIST`: names, case-insensitive; a leading `+` appends to the
/// defaults. At most twice the number of columns, as util-linux.
fn parse_columns(list: &str) -> Result<Vec<Col>> {
    let (mut cols, list) = match list.strip_prefix('+') {
        Some(rest) => (Col::DEFAULT.to_vec(), rest),
        None => (Vec::new(), list),
    };
    for name in list.split(',') {
        let col = Col::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| err!(EINVAL, "unknown column: {name}"))?;
        cols.push(col);
    }
    if cols.len() > 2 * Col::ALL.len() {
        bail!(
            EINVAL,
            "too many columns specified, the limit is {} columns",
            2 * Col::ALL.len() - 1
        );
    }
    Ok(cols)
}

/// An option found: its short letter and argument.
type Opt<'a> = (char, Option<&'a str>);

/// getopt_long over `argv[1..]`: `-abc` clusters, `-oX`/`-o X`,
/// `--name=X`/`--name X`. `opts` maps each option (short letter or long
/// name) to its canonical short letter and whether it takes an argument.
fn getopt<'a>(
    argv: &[&'a str],
    opts: &[(char, &str, bool)],
) -> Result<(Vec<Opt<'a>>, Vec<&'a str>)> {
    let (mut found, mut free) = (Vec::new(), Vec::new());
    let mut args = argv.iter().skip(1).copied();
    while let Some(arg) = args.next() {
        if let Some(long) = arg.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let &(c, _, takes) = opts
                .iter()
                .find(|o| o.1 == name)
                .ok_or_else(|| err!(EINVAL, "unrecognized option '--{name}'"))?;
            let value = match (takes, value) {
                (true, None) => Some(
                    args.next()
                        .ok_or_else(|| err!(EINVAL, "option '--{name}' requires an argument"))?,
                ),
                (false, Some(_)) if c != 'S' => {
                    bail!(EINVAL, "option '--{name}' doesn't allow an argument")
                }
                (_, v) => v,
            };
            found.push((c, value));
        } else if let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            for (i, c) in shorts.char_indices() {
                let &(_, _, takes) = opts
                    .iter()
                    .find(|o| o.0 == c && o.0.is_ascii_alphabetic())
                    .ok_or_else(|| err!(EINVAL, "invalid option -- '{c}'"))?;
                if !takes {
                    found.push((c, None));
                    continue;
                }
                let rest = &shorts[i + c.len_utf8()..];
                let value = match rest {
                    "" => args
                        .next()
                        .ok_or_else(|| err!(EINVAL, "option requires an argument -- '{c}'"))?,
                    r => r,
                };
                found.push((c, Some(value)));
                break;
            }
        } else {
            free.push(arg);
        }
    }
    Ok((found, free))
}

/// Where `--summary` puts the table and the summary.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Want {
    table: bool,
    summary: bool,
}

fn lsmem<K: Kernel>(k: &mut K, argv: &[&str], out: &mut dyn Write) -> Result<()> {
    // `S` stands for `--summary` (its argument is optional).
    let opts = [
        ('a', "all", false),
        ('b', "bytes", false),
        ('n', "noheadings", false),
        ('o', "output", true),
        ('O', "output-all", false),
        ('r', "raw", false),
        ('S', "summary", false),
    ];
    let (found, free) = getopt(argv, &opts)?;
    if let Some(w) = free.first() {
        bail!(
            EINVAL,
            "unexpected argument {w:?}; usage: lsmem [-abnr] [-o COLS]"
        );
    }
    let (mut all, mut bytes, mut headings, mut raw) = (false, false, true, false);
    let mut want = Want {
        table: true,
        summary: true,
    };
    let mut cols = Col::DEFAULT.to_vec();
    for (c, v) in found {
        match (c, v) {
            ('a', _) => all = true,
            ('b', _) => bytes = true,
            ('n', _) => headings = false,
            ('o', Some(list)) => cols = parse_columns(list)?,
            ('O', _) => cols = Col::ALL.to_vec(),
            ('r', _) => {
                raw = true;
                want.summary = false;
            }
            ('S', None | Some("only")) => want.table = false,
            ('S', Some("never")) => want.summary = false,
            ('S', Some("always")) => want.summary = true,
            ('S', Some(w)) => bail!(EINVAL, "unsupported --summary argument {w:?}"),
            _ => bail!(EINVAL, "usage: lsmem [-abnr] [-o COLS]"),
        }
    }
    if !want.table && !want.summary {
        bail!(
            EINVAL,
            "options --raw and --summary=only are mutually exclusive"
        );
    }
    let (block_size, blocks) = with_files(k, |f| Ok((block_size(f)?, read_blocks(f)?)))?;

    let (mut online, mut offline) = (0u64, 0u64);
    let mut ranges: Vec<Block> = Vec::new();
    for b in blocks {
        *if b.online { &mut online } else { &mut offline } += block_size;
        match ranges.last_mut() {
            Some(r)
                if !all
                    && r.index + r.count == b.index
                    && !cols.iter().any(|c| c.splits(r, &b)) =>
            {
                r.count += 1
            }
            _ => ranges.push(b),
        }
    }
    let size = |n: u64| match bytes {
        true => format!("{n}"),
        false => human_size(n),
    };
    if want.table {
        let cell = |r: &Block, c: Col| -> String {
            let (start, len) = (r.index * block_size, r.count * block_size);
            match c {
                Col::Range => format!("0x{start:016x}-0x{:016x}", start + len - 1),
                Col::Size => size(len),
                Col::State => (if r.online { "online" } else { "offline" }).into(),
                Col::Removable if r.online => (if r.removable { "yes" } else { "no" }).into(),
                Col::Removable => String::new(),
                Col::Block if r.count == 1 => format!("{}", r.index),
                Col::Block => format!("{}-{}", r.index, r.index + r.count - 1),
                Col::Node => r.node.map(|n| format!("{n}")).unwrap_or_default(),
                Col::Zones => r.zones.join("/"),
            }
        };
        let mut rows: Vec<Vec<String>> = Vec::new();
        if headings {
            rows.push(cols.iter().map(|c| c.name().to_string()).collect());
        }
        rows.extend(
            ranges
                .iter()
                .map(|r| cols.iter().map(|&c| cell(r, c)).collect()),
        );
        let widths: Vec<usize> = (0..cols.len())
            .map(|i| rows.iter().map(|r| r[i].len()).fold(0, usize::max))
            .collect();
        for row in rows {
            let mut line = String::new();
            for (i, text) in row.iter().enumerate() {
                if i > 0 {
                    line.push(' ');
                }
                match (raw, cols[i].right()) {
                    (true, _) => line += text,
                    (false, true) => line += &format!("{text:>w$}", w = widths[i]),
                    (false, false) => line += &format!("{text:<w$}", w = widths[i]),
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        if want.summary {
            writeln!(out)?;
        }
    }
    if want.summary {
        for (name, n) in [
            ("Memory block size:", block_size),
            ("Total online memory:", online),
            ("Total offline memory:", offline),
        ] {
            match bytes {
                true => writeln!(out, "{name:<23} {n:>15}")?,
                false => writeln!(out, "{name:<23} {:>5}", human_size(n))?,
            }
        }
    }
    Ok(())
}

/// util-linux's zone names (`chmem -z`), matched without case.
const ZONE_NAMES: [&str; 6] = ["DMA", "DMA32", "Normal", "Highmem", "Movable", "Device"];

/// util-linux's `strtosize`: a number with an optional `K`, `M`, `G`, ...
/// suffix (`KiB` the same, `KB` powers of 1000).
fn strtosize(s: &str) -> Option<u64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..end].parse().ok()?;
    let suffix = &s[end..];
    let (letter, rest) = match suffix.chars().next() {
        None => return Some(n),
        Some(c) => (c.to_ascii_uppercase(), &suffix[c.len_utf8()..]),
    };
    let power = "KMGTPE".find(letter)? as u32 + 1;
    let base: u64 = match rest {
        "" | "iB" => 1024,
        "B" => 1000,
        _ => return None,
    };
    n.checked_mul(base.checked_pow(power)?)
}

/// What `chmem` was asked for.
enum Target {
    /// This many blocks, any.
    Size(u64),
    /// Blocks `first..=last`.
    Blocks(u64, u64),
}

fn parse_target(param: &str, use_blocks: bool, block_size: u64) -> Result<Target> {
    let parts: Vec<&str> = param.split('-').collect();
    let num = |s: &str, what: &str| -> Result<u64> {
        s.parse()
            .map_err(|_| err!(EINVAL, "Failed to parse {what}: '{s}'"))
    };
    let hex = |s: &str, what: &str| -> Result<u64> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| err!(EINVAL, "Invalid {what} address format: {s}"))?;
        u64::from_str_radix(digits, 16)
            .map_err(|_| err!(EINVAL, "Failed to parse {what} address: '{s}'"))
    };
    let aligned = || {
        err!(
            EINVAL,
            "Start address and (end address + 1) must be aligned to memory block size ({})",
            human_size(block_size)
        )
    };
    let (first, last) = match (parts.as_slice(), use_blocks) {
        ([one], true) => {
            let b = num(one, "block number")?;
            (b, b)
        }
        ([one], false) => {
            let mut size =
                strtosize(one).ok_or_else(|| err!(EINVAL, "Failed to parse size: '{one}'"))?;
            if one.ends_with(|c: char| c.is_ascii_digit()) {
                size = size
                    .checked_mul(1 << 20)
                    .ok_or_else(|| err!(ERANGE, "Failed to parse size: '{one}'"))?;
            }
            if size % block_size != 0 {
                bail!(
                    EINVAL,
                    "Size must be aligned to memory block size ({})",
                    human_size(block_size)
                );
            }
            return Ok(Target::Size(size / block_size));
        }
        ([s, e], true) => (num(s, "start")?, num(e, "end")?),
        ([s, e], false) => {
            let (s, e) = (hex(s, "start")?, hex(e, "end")?);
            let end = e.checked_add(1).ok_or_else(aligned)?;
            if s % block_size != 0 || end % block_size != 0 {
                return Err(aligned());
            }
            (s / block_size, e / block_size)
        }
        _ => bail!(EINVAL, "Invalid parameter: {param}"),
    };
    if first > last {
        bail!(EINVAL, "Invalid range: {param}");
    }
    Ok(Target::Blocks(first, last))
}

/// `Memory Block N (0x...-0x...)`, as chmem names a block.
fn block_name(index: u64, block_size: u64) -> String {
    let start = index * block_size;
    format!(
        "Memory Block {index} (0x{start:016x}-0x{:016x})",
        start + block_size - 1
    )
}

/// A block changed, and how to put it back.
struct Done {
    index: u64,
    undo: &'static str,
}

fn chmem<K: Kernel>(k: &mut K, argv: &[&str], out: &mut dyn Write) -> Result<()> {
    const USAGE: &str = "usage: chmem -e|-d [-bv] [-z ZONE] SIZE|RANGE|BLOCKRANGE";
    let opts = [
        ('b', "blocks", false),
        ('d', "disable", false),
        ('e', "enable", false),
        ('v', "verbose", false),
        ('z', "zone", true),
    ];
    let (found, free) = getopt(argv, &opts)?;
    let (mut enable, mut use_blocks, mut verbose, mut zone) = (None, false, false, None);
    for (c, v) in found {
        match c {
            'e' | 'd' => {
                if enable.is_some_and(|e| e != (c == 'e')) {
                    bail!(EINVAL, "mutually exclusive arguments: --disable --enable");
                }
                enable = Some(c == 'e');
            }
            'b' => use_blocks = true,
            'v' => verbose = true,
            _ => zone = v,
        }
    }
    let (Some(enable), [param]) = (enable, free.as_slice()) else {
        bail!(EINVAL, "bad usage; {USAGE}");
    };
    let zone = match zone {
        None => None,
        Some(z) => Some(
            *ZONE_NAMES
                .iter()
                .find(|n| n.eq_ignore_ascii_case(z))
                .ok_or_else(|| err!(EINVAL, "unknown memory zone: {z}"))?,
        ),
    };
    with_files(k, |f| {
        let block_size = block_size(f)?;
        let target = parse_target(param, use_blocks, block_size)?;
        let blocks = read_blocks(f)?;
        let plan = plan(&blocks, &target, enable, zone, block_size)?;
        let mut report = String::new();
        let mut done: Vec<Done> = Vec::new();
        let mut failed: Option<Error> = None;
        let verb = if enable { "enable" } else { "disable" };
        for step in plan.steps {
            let name = block_name(step.index, block_size);
            let path = format!("{MEMORY_DIR}/memory{}/state", step.index);
            match f.write(&path, step.write) {
                Ok(()) => {
                    if verbose {
                        writeln!(report, "{name} {verb}d")?;
                    }
                    done.push(Done {
                        index: step.index,
                        undo: step.undo,
                    });
                    if plan.want == Some(done.len() as u64) {
                        break;
                    }
                }
                // A size takes any blocks: one that fails is skipped, as
                // chmem does; a range needs every one.
                Err(e) if plan.want.is_some() => {
                    writeln!(report, "chmem: {name} {verb} failed: {}", e.msg)?;
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    undo(f, &done);
                    return Err(Error::new(
                        e.errno,
                        format!("{name} {verb} failed: {}", e.msg),
                    ));
                }
            }
        }
        if let Some(want) = plan.want.filter(|&w| w != done.len() as u64) {
            undo(f, &done);
            let got = human_size(done.len() as u64 * block_size);
            let asked = human_size(want * block_size);
            let errno = failed.map_or(crate::error::Errno::ENOSPC, |e| e.errno);
            let msg = format!("Could only {verb} {got} of {asked} of memory; nothing changed");
            return Err(Error::new(errno, msg));
        }
        for index in plan.already {
            if verbose {
                let name = block_name(index, block_size);
                writeln!(report, "{name} already {verb}d")?;
            }
        }
        Ok(out.write_str(&report)?)
    })
}

/// One state write and the write that undoes it.
struct Step {
    index: u64,
    write: &'static str,
    undo: &'static str,
}

struct Plan {
    steps: Vec<Step>,
    /// For a size: blocks wanted (the steps are candidates in order).
    want: Option<u64>,
    /// For a range: blocks in the state asked for already.
    already: Vec<u64>,
}

/// What chmem writes, decided before anything is written: candidate blocks
/// in chmem's order (upwards to enable, downwards to disable), each with
/// the state to write (`online_movable` where Movable is valid and no zone
/// was asked for, as chmem) and the write that puts it back.
fn plan(
    blocks: &[Block],
    target: &Target,
    enable: bool,
    zone: Option<&'static str>,
    block_size: u64,
) -> Result<Plan> {
    let has = |b: &Block, z: &str| b.zones.iter().any(|w| w.eq_ignore_ascii_case(z));
    let write = |b: &Block| match (enable, zone) {
        (false, _) => "offline",
        (true, Some(z)) if z.eq_ignore_ascii_case("Movable") => "online_movable",
        (true, Some(_)) => "online_kernel",
        (true, None) if has(b, "Movable") => "online_movable",
        (true, None) => "online",
    };
    // An online block's valid_zones is its zone: online it there again.
    let undo = |b: &Block| match (enable, b.zones.first().map(String::as_str)) {
        (true, _) => "offline",
        (false, Some("Movable")) => "online_movable",
        (false, _) => "online_kernel",
    };
    // A block may take the zone: enabling, it lists it; disabling, it is in it.
    let zone_ok = |b: &Block| {
        zone.is_none_or(|z| match enable {
            true => has(b, z),
            false => b.zones.first().is_some_and(|f| f.eq_ignore_ascii_case(z)),
        })
    };
    let step = |b: &Block| Step {
        index: b.index,
        write: write(b),
        undo: undo(b),
    };
    match *target {
        Target::Size(n) => {
            let order: Vec<&Block> = match enable {
                true => blocks.iter().collect(),
                false => blocks.iter().rev().collect(),
            };
            let steps = order
                .into_iter()
                .filter(|b| b.online != enable && zone_ok(b))
                .map(step)
                .collect();
            Ok(Plan {
                steps: if n == 0 { Vec::new() } else { steps },
                want: Some(n),
                already: Vec::new(),
            })
        }
        Target::Blocks(first, last) => {
            let (mut steps, mut already) = (Vec::new(), Vec::new());
            for index in first..=last {
                let name = || block_name(index, block_size);
                let b = blocks
                    .iter()
                    .find(|b| b.index == index)
                    .ok_or_else(|| err!(ENOENT, "{} is not present", name()))?;
                let verb = if enable { "enable" } else { "disable" };
                if b.online == enable {
                    already.push(index);
                } else if !zone_ok(b) {
                    bail!(EINVAL, "{} {verb} failed: Zone mismatch", name());
                } else {
                    steps.push(step(b));
                }
            }
            Ok(Plan {
                steps,
                want: None,
                already,
            })
        }
    }
}

/// Puts back what a failed chmem changed, latest first.
fn undo<T: crate::mm::pgtable::Translation>(f: &mut Files<T>, done: &[Done]) {
    for d in done.iter().rev() {
        let path = format!("{MEMORY_DIR}/memory{}/state", d.index);
        if let Err(e) = f.write(&path, d.undo) {
            pr_warn!("chmem: memory{} not put back: {e}", d.index);
        }
    }
}
