//! A strict check of a flattened device tree before the `fdt` crate reads
//! it.
//!
//! The crate trusts its input: a property longer than the structure block,
//! a name without its NUL, unbalanced nodes, a missing `/chosen` or
//! `/cpus`, a `cpu` node without `reg`, an empty `bootargs` or a short
//! `#address-cells` make it panic (slice bounds, `expect`, `assert`), and an
//! alias that names itself makes `find_node` recurse without end. The boot
//! DTB comes from outside (QEMU, firmware), so [`parse`] first walks the
//! blob as the devicetree specification lays it out and accepts only what
//! the crate reads without panicking: the layout `dtc` and QEMU write
//! (no `FDT_NOP` tokens, properties before child nodes, one root).

use fdt::{Fdt, FdtError};

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;

/// Largest DTB read, as Linux's arm64 `MAX_FDT_SIZE`: the header's
/// `totalsize` is not trusted further than this.
pub const MAX_FDT_SIZE: usize = 2 << 20;

/// Header bytes (version 17).
const HEADER_SIZE: usize = 40;

/// Deepest node nesting accepted (the crate keeps 63 parents).
const MAX_DEPTH: usize = 32;

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A NUL-terminated UTF-8 string at the start of `bytes`, and its length
/// with the NUL.
fn cstr(bytes: &[u8]) -> Option<(&str, usize)> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some((core::str::from_utf8(&bytes[..end]).ok()?, end + 1))
}

fn align4(n: usize) -> Option<usize> {
    Some(n.checked_add(3)? & !3)
}

/// `name` without its unit address (`cpu@0` is `cpu`), as the crate
/// matches paths.
fn base(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// What a node on the walk's stack is, for the rules the crate needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Other,
    Root,
    Aliases,
    /// The first `/cpus`: its children's `#address-cells`.
    Cpus {
        address_cells: u32,
    },
    /// A `cpu` child of the first `/cpus`: whether it has a `reg` of
    /// `address_cells` cells.
    Cpu {
        address_cells: u32,
        reg: bool,
    },
}

/// Checks `blob` (the whole DTB, `totalsize` bytes or more) as described in
/// the module documentation.
pub fn check(blob: &[u8]) -> Result<(), &'static str> {
    let field = |i: usize| {
        be32(blob, i * 4)
            .map(|v| v as usize)
            .ok_or("truncated header")
    };
    if field(0)? as u32 != FDT_MAGIC {
        return Err("bad magic");
    }
    let total = field(1)?;
    if total < HEADER_SIZE || total > blob.len() || total > MAX_FDT_SIZE {
        return Err("bad totalsize");
    }
    let (off_struct, off_strings, off_rsvmap) = (field(2)?, field(3)?, field(4)?);
    let (version, size_strings, size_struct) = (field(5)?, field(8)?, field(9)?);
    if version < 17 {
        return Err("version before 17");
    }
    let within = |off: usize, size: usize| off.checked_add(size).is_some_and(|end| end <= total);
    if !within(off_struct, size_struct) || off_struct % 4 != 0 || size_struct % 4 != 0 {
        return Err("structure block outside the blob");
    }
    if !within(off_strings, size_strings) {
        return Err("strings block outside the blob");
    }
    if !within(off_rsvmap, 0) || off_rsvmap % 8 != 0 {
        return Err("memory reservation block outside the blob");
    }
    let structs = &blob[off_struct..off_struct + size_struct];
    let strings = &blob[off_strings..off_strings + size_strings];

    let mut stack = [Kind::Other; MAX_DEPTH + 1];
    let mut depth = 0;
    let mut props_allowed = false;
    let (mut root_done, mut chosen, mut cpus) = (false, false, false);
    let mut pos = 0;
    loop {
        let token = be32(structs, pos).ok_or("structure block ends early")?;
        pos += 4;
        if root_done && token != FDT_END {
            return Err("more than one root node");
        }
        match token {
            FDT_BEGIN_NODE => {
                let (name, len) = structs.get(pos..).and_then(cstr).ok_or("bad node name")?;
                pos = pos
                    .checked_add(align4(len).ok_or("bad node name")?)
                    .ok_or("bad node name")?;
                if depth == MAX_DEPTH {
                    return Err("nodes nested too deep");
                }
                let kind = match (depth, stack[depth]) {
                    (0, _) if name.is_empty() => Kind::Root,
                    (0, _) => return Err("root node with a name"),
                    (1, _) if base(name) == "aliases" => Kind::Aliases,
                    (1, _) if base(name) == "chosen" => {
                        chosen = true;
                        Kind::Other
                    }
                    (1, _) if base(name) == "cpus" && !cpus => {
                        cpus = true;
                        // The crate's default when `#address-cells` is absent.
                        Kind::Cpus { address_cells: 2 }
                    }
                    (2, Kind::Cpus { address_cells }) if base(name) == "cpu" => Kind::Cpu {
                        address_cells,
                        reg: false,
                    },
                    _ => Kind::Other,
                };
                depth += 1;
                stack[depth] = kind;
                props_allowed = true;
            }
            FDT_PROP => {
                if !props_allowed {
                    return Err("property after a child node");
                }
                let len = be32(structs, pos).ok_or("truncated property")? as usize;
                let name_off = be32(structs, pos + 4).ok_or("truncated property")? as usize;
                pos += 8;
                let value = pos
                    .checked_add(len)
                    .and_then(|end| structs.get(pos..end))
                    .ok_or("property value past the structure block")?;
                pos = pos
                    .checked_add(align4(len).ok_or("bad property length")?)
                    .filter(|&p| p <= structs.len())
                    .ok_or("property value past the structure block")?;
                let (name, _) = strings
                    .get(name_off..)
                    .and_then(cstr)
                    .ok_or("bad property name")?;
                if name.starts_with('/') {
                    return Err("property name starting with '/'");
                }
                match name {
                    "#address-cells" | "#size-cells" if len != 4 => {
                        return Err("#address-cells or #size-cells not one cell")
                    }
                    "bootargs" | "stdout-path" | "stdin-path" if len == 0 => {
                        return Err("empty path or bootargs")
                    }
                    _ => {}
                }
                match &mut stack[depth] {
                    // Alias values are paths: an alias that is not one would
                    // be looked up as an alias again, without end.
                    Kind::Aliases if value.first() != Some(&b'/') => {
                        return Err("alias that is not an absolute path")
                    }
                    Kind::Cpus { address_cells } if name == "#address-cells" => {
                        *address_cells = be32(value, 0).unwrap_or(0);
                    }
                    Kind::Cpu { address_cells, reg } if name == "reg" && !*reg => {
                        // The crate reads the first `reg` only, one id of
                        // one or two cells.
                        if !matches!(address_cells, 1 | 2) || len < 4 * *address_cells as usize {
                            return Err("cpu node with a bad reg");
                        }
                        *reg = true;
                    }
                    _ => {}
                }
            }
            FDT_END_NODE => {
                if depth == 0 {
                    return Err("unbalanced end of node");
                }
                if let Kind::Cpu { reg: false, .. } = stack[depth] {
                    return Err("cpu node without reg");
                }
                depth -= 1;
                props_allowed = false;
                root_done = depth == 0;
            }
            FDT_END if root_done => break,
            _ => return Err("bad structure token"),
        }
    }
    if !chosen || !cpus {
        return Err("no /chosen or /cpus node");
    }
    Ok(())
}

/// The FDT at `ptr`, once [`check`] has found it sound.
///
/// # Safety
/// `ptr` must be readable for the header's `totalsize` bytes, or
/// [`MAX_FDT_SIZE`] if that is less (for 40 bytes at least), and stay so
/// for as long as the result is used.
pub unsafe fn parse(ptr: *const u8) -> Result<Fdt<'static>, FdtError> {
    if ptr.is_null() {
        return Err(FdtError::BadPtr);
    }
    // SAFETY: the caller's promise: the header's 40 bytes are readable.
    let header = unsafe { core::slice::from_raw_parts(ptr, HEADER_SIZE) };
    let total = be32(header, 4).unwrap_or(0) as usize;
    if total > MAX_FDT_SIZE {
        return Err(FdtError::BufferTooSmall);
    }
    // SAFETY: the caller's promise: `totalsize` bytes (at most
    // MAX_FDT_SIZE, checked above) are readable and stay so.
    let blob = unsafe { core::slice::from_raw_parts(ptr, total.max(HEADER_SIZE)) };
    check(blob).map_err(|_| FdtError::BadMagic)?;
    Fdt::new(blob)
}
