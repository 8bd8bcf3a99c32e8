//! util-linux's `lsmem` and `chmem` (`sys-utils/lsmem.c`, `chmem.c`):
//! they read and write `/sys/devices/system/memory` as the real tools do,
//! through the kernel's files, so they see what a user's `cat` sees.
//!
//! Differences, for the console's contract: `chmem` is all or nothing (the
//! real one keeps what it managed and exits 64; here a failure puts every
//! block back and prints one error line), and `lsmem` has no JSON, pairs or
//! `--split` output. Both take util-linux's options otherwise.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::{self, Display, Write};

use super::{Command, Kernel};
use crate::error::{try_format, try_push, Errno, Error, FallibleString, Result};
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

/// The heap is out: what every allocation here fails with.
fn enomem<E>(_: E) -> Error {
    Error::from(Errno::ENOMEM)
}

/// util-linux's `size_to_human_string(SIZE_SUFFIX_1LETTER)`: `128M`,
/// `1.5G`, `0B`; one decimal, rounded. Written where it is shown, never
/// built on the heap.
pub fn human_size(bytes: u64) -> HumanSize {
    HumanSize(bytes)
}

pub struct HumanSize(u64);

impl Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
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
            0 => write!(f, "{dec}{letter}"),
            frac => write!(f, "{dec}.{frac}{letter}"),
        }
    }
}

/// Counts what is written to it: the width of a cell without building it.
struct Len(usize);

impl Write for Len {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// How wide `text` is when written (all of it is ASCII).
fn text_len(text: impl Display) -> usize {
    let mut len = Len(0);
    let _ = write!(len, "{text}");
    len.0
}

fn spaces(out: &mut dyn Write, n: usize) -> fmt::Result {
    (0..n).try_for_each(|_| out.write_char(' '))
}

/// One `memoryN` directory as the tools read it.
#[derive(Debug)]
struct Block {
    index: u64,
    count: u64,
    online: bool,
    removable: bool,
    /// `valid_zones` as read: zone names separated by spaces.
    zones: String,
    node: Option<u64>,
}

impl Block {
    fn zones(&self) -> impl Iterator<Item = &str> {
        self.zones.split_whitespace()
    }
}

/// A file's text without its trailing newline. Every allocation is
/// fallible: `ENOMEM` when the heap is out.
fn read_file<T: crate::mm::pgtable::Translation>(
    f: &mut Files<T>,
    path: fmt::Arguments<'_>,
) -> Result<String> {
    let path = try_format(path)?;
    let mut text = FallibleString::new();
    let r = f.read(&path, &mut text);
    // A full heap explains a failed read (the write into `text` is EIO
    // otherwise).
    let mut text = text.into_result()?;
    r?;
    text.truncate(text.trim_end().len());
    Ok(text)
}

fn block_size<T: crate::mm::pgtable::Translation>(f: &mut Files<T>) -> Result<u64> {
    let s = read_file(f, format_args!("{MEMORY_DIR}/block_size_bytes"))?;
    u64::from_str_radix(&s, 16).map_err(|_| err!(EIO, "bad block_size_bytes {s:?}"))
}

/// The `memoryN` directories, in index order (`versionsort`).
fn read_blocks<T: crate::mm::pgtable::Translation>(f: &mut Files<T>) -> Result<Vec<Block>> {
    let mut ids: Vec<u64> = Vec::new();
    {
        let names = f.list(MEMORY_DIR)?;
        ids.try_reserve_exact(names.len()).map_err(enomem)?;
        ids.extend(names.iter().filter_map(|e| {
            e.strip_prefix("memory")?
                .trim_end_matches('/')
                .parse::<u64>()
                .ok()
        }));
    }
    ids.sort_unstable();
    let mut blocks = Vec::new();
    blocks.try_reserve_exact(ids.len()).map_err(enomem)?;
    for id in ids {
        let state = read_file(f, format_args!("{MEMORY_DIR}/memory{id}/state"))?;
        let removable = read_file(f, format_args!("{MEMORY_DIR}/memory{id}/removable"))?;
        let zones = read_file(f, format_args!("{MEMORY_DIR}/memory{id}/valid_zones"))?;
        let node = f
            .list(&try_format(format_args!("{MEMORY_DIR}/memory{id}"))?)?
            .iter()
            .find_map(|e| e.strip_prefix("node")?.trim_end_matches('/').parse().ok());
        blocks.push(Block {
            index: id,
            count: 1,
            online: state == "online",
            removable: removable == "1",
            zones,
            node,
        });
    }
    Ok(blocks)
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
            Col::Zones => !a.zones().eq(b.zones()),
            _ => false,
        }
    }
}

/// Columns asked for: at most twice the number there are, as util-linux.
#[derive(Clone, Copy)]
struct Cols {
    list: [Col; 2 * Col::ALL.len()],
    len: usize,
}

impl Cols {
    fn new(cols: &[Col]) -> Self {
        let mut list = [Col::Range; 2 * Col::ALL.len()];
        list[..cols.len()].copy_from_slice(cols);
        Cols {
            list,
            len: cols.len(),
        }
    }

    fn push(&mut self, col: Col) -> Result<()> {
        let Some(slot) = self.list.get_mut(self.len) else {
            bail!(
                EINVAL,
                "too many columns specified, the limit is {} columns",
                2 * Col::ALL.len() - 1
            );
        };
        *slot = col;
        self.len += 1;
        Ok(())
    }
}

impl core::ops::Deref for Cols {
    type Target = [Col];

    fn deref(&self) -> &[Col] {
        &self.list[..self.len]
    }
}

/// `-o LIST`: names, case-insensitive; a leading `+` appends to the
/// defaults.
fn parse_columns(list: &str) -> Result<Cols> {
    let (mut cols, list) = match list.strip_prefix('+') {
        Some(rest) => (Cols::new(&Col::DEFAULT), rest),
        None => (Cols::new(&[]), list),
    };
    for name in list.split(',') {
        let col = Col::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| err!(EINVAL, "unknown column: {name}"))?;
        cols.push(col)?;
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
            try_push(&mut found, (c, value))?;
        } else if let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            for (i, c) in shorts.char_indices() {
                let &(_, _, takes) = opts
                    .iter()
                    .find(|o| o.0 == c && o.0.is_ascii_alphabetic())
                    .ok_or_else(|| err!(EINVAL, "invalid option -- '{c}'"))?;
                if !takes {
                    try_push(&mut found, (c, None))?;
                    continue;
                }
                let rest = &shorts[i + c.len_utf8()..];
                let value = match rest {
                    "" => args
                        .next()
                        .ok_or_else(|| err!(EINVAL, "option requires an argument -- '{c}'"))?,
                    r => r,
                };
                try_push(&mut found, (c, Some(value)))?;
                break;
            }
        } else {
            try_push(&mut free, arg)?;
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
    let mut cols = Cols::new(&Col::DEFAULT);
    for (c, v) in found {
        match (c, v) {
            ('a', _) => all = true,
            ('b', _) => bytes = true,
            ('n', _) => headings = false,
            ('o', Some(list)) => cols = parse_columns(list)?,
            ('O', _) => cols = Cols::new(&Col::ALL),
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
    ranges.try_reserve_exact(blocks.len()).map_err(enomem)?;
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
    // Written straight to the output, cell by cell: the table is never
    // built on the heap.
    if want.table {
        let cell = |r, c| Cell {
            r,
            c,
            block_size,
            bytes,
        };
        let mut widths = [0; 2 * Col::ALL.len()];
        for (i, &c) in cols.iter().enumerate() {
            let heading = headings.then_some(None);
            widths[i] = heading
                .into_iter()
                .chain(ranges.iter().map(Some))
                .map(|r| text_len(cell(r, c)))
                .fold(0, usize::max);
        }
        if headings {
            write_row(out, &cols, &widths, raw, |c| cell(None, c))?;
        }
        for r in &ranges {
            write_row(out, &cols, &widths, raw, |c| cell(Some(r), c))?;
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
                false => {
                    write!(out, "{name:<23} ")?;
                    spaces(out, 5usize.saturating_sub(text_len(human_size(n))))?;
                    writeln!(out, "{}", human_size(n))?;
                }
            }
        }
    }
    Ok(())
}

/// One cell of lsmem's table: a range's column, or (`r` None) its heading.
struct Cell<'a> {
    r: Option<&'a Block>,
    c: Col,
    block_size: u64,
    bytes: bool,
}

impl Display for Cell<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(r) = self.r else {
            return f.write_str(self.c.name());
        };
        let (start, len) = (r.index * self.block_size, r.count * self.block_size);
        match self.c {
            Col::Range => write!(f, "0x{start:016x}-0x{:016x}", start + len - 1),
            Col::Size if self.bytes => write!(f, "{len}"),
            Col::Size => write!(f, "{}", human_size(len)),
            Col::State => f.write_str(if r.online { "online" } else { "offline" }),
            Col::Removable if r.online => f.write_str(if r.removable { "yes" } else { "no" }),
            Col::Removable => Ok(()),
            Col::Block if r.count == 1 => write!(f, "{}", r.index),
            Col::Block => write!(f, "{}-{}", r.index, r.index + r.count - 1),
            Col::Node => r.node.map_or(Ok(()), |n| write!(f, "{n}")),
            Col::Zones => {
                for (i, z) in r.zones().enumerate() {
                    let sep = if i == 0 { "" } else { "/" };
                    write!(f, "{sep}{z}")?;
                }
                Ok(())
            }
        }
    }
}

/// One line of the table: cells padded to `widths` (unless `raw`),
/// separated by a space, without trailing blanks.
fn write_row<'a>(
    out: &mut dyn Write,
    cols: &[Col],
    widths: &[usize],
    raw: bool,
    cell: impl Fn(Col) -> Cell<'a>,
) -> Result<()> {
    // Blanks after the last cell with text would be trimmed: stop there.
    let last = cols.iter().rposition(|&c| text_len(cell(c)) > 0);
    for (i, &c) in cols.iter().enumerate().take(last.map_or(0, |l| l + 1)) {
        if i > 0 {
            out.write_char(' ')?;
        }
        let text = cell(c);
        let pad = if raw { 0 } else { widths[i] - text_len(&text) };
        if c.right() {
            spaces(out, pad)?;
        }
        write!(out, "{text}")?;
        if !c.right() && Some(i) != last {
            spaces(out, pad)?;
        }
    }
    Ok(writeln!(out)?)
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
    let mut parts = param.split('-');
    let parts = (parts.next(), parts.next(), parts.next());
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
    let (first, last) = match (parts, use_blocks) {
        ((Some(one), None, None), true) => {
            let b = num(one, "block number")?;
            (b, b)
        }
        ((Some(one), None, None), false) => {
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
        ((Some(s), Some(e), None), true) => (num(s, "start")?, num(e, "end")?),
        ((Some(s), Some(e), None), false) => {
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

/// `Memory Block N (0x...-0x...)`, as chmem names a block: block N of
/// blocks of the size given.
struct BlockName(u64, u64);

impl Display for BlockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let BlockName(index, block_size) = *self;
        let start = index * block_size;
        write!(
            f,
            "Memory Block {index} (0x{start:016x}-0x{:016x})",
            start + block_size - 1
        )
    }
}

/// Every allocation is made before the first block changes (the plan, the
/// list of blocks done) or is undone with them (the report): the heap
/// running out is `ENOMEM` with every block as it was.
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
        let mut report = FallibleString::new();
        // Indices into the plan's steps of the blocks changed.
        let mut done: Vec<usize> = Vec::new();
        done.try_reserve_exact(plan.steps.len()).map_err(enomem)?;
        let mut failed: Option<Error> = None;
        let verb = if enable { "enable" } else { "disable" };
        for (i, step) in plan.steps.iter().enumerate() {
            let name = BlockName(step.index, block_size);
            match f.write(&step.path, step.write) {
                Ok(()) => {
                    done.push(i);
                    if verbose {
                        let _ = writeln!(report, "{name} {verb}d");
                    }
                    if plan.want == Some(done.len() as u64) {
                        break;
                    }
                }
                // The heap running out is no fault of the block: nothing
                // else is tried.
                Err(e) if e.errno == Errno::ENOMEM => {
                    undo(f, &plan.steps, &done);
                    return Err(e);
                }
                // A size takes any blocks: one that fails is skipped, as
                // chmem does; a range needs every one.
                Err(e) if plan.want.is_some() => {
                    let _ = writeln!(report, "chmem: {name} {verb} failed: {}", e.msg);
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    undo(f, &plan.steps, &done);
                    let why = format_args!("{name} {verb} failed: {}", e.msg);
                    return Err(Error::from_args(e.errno, why));
                }
            }
        }
        if let Some(want) = plan.want.filter(|&w| w != done.len() as u64) {
            undo(f, &plan.steps, &done);
            let got = human_size(done.len() as u64 * block_size);
            let asked = human_size(want * block_size);
            let errno = failed.map_or(Errno::ENOSPC, |e| e.errno);
            return Err(Error::from_args(
                errno,
                format_args!("Could only {verb} {got} of {asked} of memory; nothing changed"),
            ));
        }
        if verbose {
            for &index in &plan.already {
                let name = BlockName(index, block_size);
                let _ = writeln!(report, "{name} already {verb}d");
            }
        }
        if report.failed() || out.write_str(&report).is_err() {
            undo(f, &plan.steps, &done);
            bail!(
                ENOMEM,
                "no kernel memory for chmem's report; nothing changed"
            );
        }
        Ok(())
    })
}

/// One state write and the write that undoes it, to the block's `state`
/// file at `path`.
struct Step {
    index: u64,
    path: String,
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
    let has = |b: &Block, z: &str| b.zones().any(|w| w.eq_ignore_ascii_case(z));
    let write = |b: &Block| match (enable, zone) {
        (false, _) => "offline",
        (true, Some(z)) if z.eq_ignore_ascii_case("Movable") => "online_movable",
        (true, Some(_)) => "online_kernel",
        (true, None) if has(b, "Movable") => "online_movable",
        (true, None) => "online",
    };
    // An online block's valid_zones is its zone: online it there again.
    let undo = |b: &Block| match (enable, b.zones().next()) {
        (true, _) => "offline",
        (false, Some("Movable")) => "online_movable",
        (false, _) => "online_kernel",
    };
    // A block may take the zone: enabling, it lists it; disabling, it is in it.
    let zone_ok = |b: &Block| {
        zone.is_none_or(|z| match enable {
            true => has(b, z),
            false => b.zones().next().is_some_and(|f| f.eq_ignore_ascii_case(z)),
        })
    };
    let step = |b: &Block| -> Result<Step> {
        Ok(Step {
            index: b.index,
            path: try_format(format_args!("{MEMORY_DIR}/memory{}/state", b.index))?,
            write: write(b),
            undo: undo(b),
        })
    };
    let (mut steps, mut already) = (Vec::new(), Vec::new());
    match *target {
        Target::Size(n) => {
            let mut candidate = |b: &Block| match n != 0 && b.online != enable && zone_ok(b) {
                true => try_push(&mut steps, step(b)?),
                false => Ok(()),
            };
            match enable {
                true => blocks.iter().try_for_each(&mut candidate)?,
                false => blocks.iter().rev().try_for_each(&mut candidate)?,
            }
            Ok(Plan {
                steps,
                want: Some(n),
                already,
            })
        }
        Target::Blocks(first, last) => {
            for index in first..=last {
                let b = blocks.iter().find(|b| b.index == index).ok_or_else(|| {
                    err!(ENOENT, "{} is not present", BlockName(index, block_size))
                })?;
                let verb = if enable { "enable" } else { "disable" };
                if b.online == enable {
                    try_push(&mut already, index)?;
                } else if !zone_ok(b) {
                    bail!(
                        EINVAL,
                        "{} {verb} failed: Zone mismatch",
                        BlockName(index, block_size)
                    );
                } else {
                    try_push(&mut steps, step(b)?)?;
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

/// Puts back what a failed chmem changed, latest first: the steps `done`
/// names. Nothing here allocates (the paths were made with the plan).
fn undo<T: crate::mm::pgtable::Translation>(f: &mut Files<T>, steps: &[Step], done: &[usize]) {
    for s in done.iter().rev().filter_map(|&i| steps.get(i)) {
        if let Err(e) = f.write(&s.path, s.undo) {
            pr_warn!("chmem: memory{} not put back: {e}", s.index);
        }
    }
}
