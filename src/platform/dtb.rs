//! Checks a flattened device tree before the `fdt` crate reads it, and
//! drops its `FDT_NOP` tokens.
//!
//! The crate trusts its input: a string offset past the strings block, a
//! name without its NUL, a short `#address-cells` or a missing `/cpus`
//! panics it. Everything it would index is checked here first, so that a
//! bad DT is refused (boot halts: there is no console without one) rather
//! than a panic. It also stops at an `FDT_NOP` between nodes, which libfdt
//! leaves where a node or property was deleted (QEMU's fixups of a `-dtb`
//! file do that to the `/memory` nodes): the nodes after it, `/cpus`
//! among them, would be lost. The tree is packed in place instead, as
//! libfdt's `fdt_pack` would.

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
const HEADER_SIZE: usize = 40;
/// Linux's limit (`MAX_FDT_SIZE`); it also keeps a forged size inside the
/// memory boot maps for the DT.
pub const MAX_FDT_SIZE: usize = 2 << 20;
/// Deeper nesting than any real tree (the crate walks nodes recursively).
const MAX_DEPTH: usize = 16;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let w = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

/// The total size a header claims, if it is an FDT of a size we accept.
pub fn total_size(header: &[u8]) -> Result<usize, &'static str> {
    if be32(header, 0) != Some(FDT_MAGIC) {
        return Err("no FDT magic");
    }
    let size = be32(header, 4).ok_or("truncated header")? as usize;
    if !(HEADER_SIZE..=MAX_FDT_SIZE).contains(&size) {
        return Err("total size out of range");
    }
    Ok(size)
}

/// A NUL-terminated UTF-8 string at `at` within `b`; its length.
fn cstr(b: &[u8], at: usize) -> Option<usize> {
    let rest = b.get(at..)?;
    let len = rest.iter().position(|&c| c == 0)?;
    core::str::from_utf8(&rest[..len]).ok()?;
    Some(len)
}

fn align4(n: usize) -> Option<usize> {
    Some(n.checked_add(3)? & !3)
}

/// Checks the whole blob (`blob.len()` is its total size) and removes every
/// `FDT_NOP` from the structure block, shrinking `size_dt_struct` (a tree
/// without any is not written to). On an error nothing is written.
pub fn check_and_pack(blob: &mut [u8]) -> Result<(), &'static str> {
    let total = total_size(blob)?;
    if blob.len() != total {
        return Err("buffer is not the total size");
    }
    let field = |i: usize| be32(blob, 4 * i).map(|v| v as usize);
    let (off_struct, off_strings, off_rsvmap) = (field(2), field(3), field(4));
    let (size_strings, size_struct) = (field(8), field(9));
    let (Some(off_struct), Some(off_strings), Some(off_rsvmap)) =
        (off_struct, off_strings, off_rsvmap)
    else {
        return Err("truncated header");
    };
    let (Some(size_strings), Some(size_struct)) = (size_strings, size_struct) else {
        return Err("truncated header");
    };
    if field(6).is_none_or(|v| v > 17) {
        return Err("last compatible version is newer than 17");
    }
    let within = |off: usize, len: usize| off.checked_add(len).is_some_and(|e| e <= total);
    if !within(off_struct, size_struct) || !within(off_strings, size_strings) {
        return Err("a block lies outside the blob");
    }
    if !off_struct.is_multiple_of(4) || !off_rsvmap.is_multiple_of(8) || off_rsvmap < HEADER_SIZE {
        return Err("misaligned block");
    }
    // The reservation map: (address, size) pairs up to a (0, 0).
    let mut at = off_rsvmap;
    loop {
        let (Some(a), Some(s)) = (
            blob.get(at..at + 8).filter(|_| within(at, 16)),
            blob.get(at + 8..at + 16),
        ) else {
            return Err("memory reservation map runs off the blob");
        };
        if a.iter().chain(s).all(|&b| b == 0) {
            break;
        }
        at += 16;
    }
    let strings = off_strings..off_strings + size_strings;
    let structs = off_struct..off_struct + size_struct;
    // Packing moves the structure block within itself: the strings it
    // reads meanwhile must lie elsewhere.
    if structs.start < HEADER_SIZE
        || strings.start < HEADER_SIZE
        || (structs.start < strings.end && strings.start < structs.end)
    {
        return Err("blocks overlap");
    }
    let (start, end) = (off_struct, off_struct + size_struct);
    // Checked whole first, then packed: an error leaves the blob as it was.
    walk(blob, start..end, strings.clone(), false)?;
    let out = walk(blob, start..end, strings, true)?;
    if out != end {
        let packed = (out - start) as u32;
        blob[36..40].copy_from_slice(&packed.to_be_bytes());
    }
    Ok(())
}

/// Walks the structure block `structs` (strings in `strings`), checking
/// every token; with `pack`, copies every one but `FDT_NOP` down. Where
/// the packed block ends.
fn walk(
    blob: &mut [u8],
    structs: core::ops::Range<usize>,
    strings: core::ops::Range<usize>,
    pack: bool,
) -> Result<usize, &'static str> {
    let (start, end) = (structs.start, structs.end);
    let (mut at, mut out, mut depth, mut roots) = (start, start, 0usize, 0usize);
    let mut ended = false;
    while !ended {
        let token = be32(&blob[..end], at).ok_or("structure block ends without FDT_END")?;
        let len = match token {
            FDT_BEGIN_NODE => {
                if depth == 0 {
                    roots += 1;
                    if roots > 1 {
                        return Err("more than one root node");
                    }
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err("nodes nested too deep");
                }
                let name = cstr(&blob[..end], at + 4).ok_or("bad node name")?;
                4 + align4(name + 1).ok_or("bad node name")?
            }
            FDT_END_NODE => {
                depth = depth.checked_sub(1).ok_or("unbalanced FDT_END_NODE")?;
                4
            }
            FDT_PROP => {
                if depth == 0 {
                    return Err("property outside a node");
                }
                let vlen = be32(&blob[..end], at + 4).ok_or("truncated property")? as usize;
                let nameoff = be32(&blob[..end], at + 8).ok_or("truncated property")? as usize;
                let strings = &blob[strings.clone()];
                let nlen = cstr(strings, nameoff).ok_or("bad property name")?;
                let name = &strings[nameoff..nameoff + nlen];
                if (name == b"#address-cells" || name == b"#size-cells") && vlen != 4 {
                    return Err("#address-cells or #size-cells is not one cell");
                }
                align4(vlen)
                    .and_then(|v| v.checked_add(12))
                    .ok_or("property too long")?
            }
            FDT_NOP => 4,
            FDT_END => {
                if depth != 0 || roots != 1 {
                    return Err("FDT_END inside a node or without a root");
                }
                ended = true;
                4
            }
            _ => return Err("unknown token"),
        };
        if at + len > end {
            return Err("token runs off the structure block");
        }
        if token != FDT_NOP {
            // A tree without NOPs is left unwritten (it may be read-only).
            if pack && out != at {
                blob.copy_within(at..at + len, out);
            }
            out += len;
        }
        at += len;
    }
    Ok(out)
}

/// Host tests build device trees with this (and `tests/platform.rs`
/// edits QEMU's with it).
#[cfg(test)]
pub mod build;

#[cfg(test)]
mod tests {
    use super::build::{Fdt, Node};
    use super::*;

    fn sample() -> Fdt {
        let mut root = Node::new("");
        root.u32s("#address-cells", &[2]);
        root.u32s("#size-cells", &[2]);
        root.child(Node::new("chosen"));
        let mut cpus = Node::new("cpus");
        cpus.u32s("#address-cells", &[1]);
        cpus.u32s("#size-cells", &[0]);
        root.child(cpus);
        Fdt::new(root)
    }

    #[test]
    fn a_good_tree_passes_and_nops_are_packed_out() {
        let mut blob = sample().nops_after_first_child(3).to_bytes();
        let before = be32(&blob, 36).unwrap();
        check_and_pack(&mut blob).unwrap();
        assert_eq!(be32(&blob, 36).unwrap(), before - 12);
        let mut again = blob.clone();
        check_and_pack(&mut again).unwrap();
        assert_eq!(again, blob, "packing is idempotent");
        let fdt = fdt::Fdt::new(&blob).unwrap();
        assert!(fdt.find_node("/cpus").is_some());
    }

    #[test]
    fn every_single_byte_corruption_is_refused_or_harmless() {
        // Not a proof, but a net: flipping any byte of the header or the
        // tree either is refused here or leaves a tree the crate walks
        // without panicking.
        let good = sample().to_bytes();
        for i in 0..good.len() {
            for v in [0x00, 0xff, 0x01, 0x80] {
                let mut blob = good.clone();
                blob[i] = v;
                if check_and_pack(&mut blob).is_ok() {
                    let fdt = fdt::Fdt::new(&blob).unwrap();
                    for n in fdt.all_nodes() {
                        let _ = n.reg().map(|r| r.count());
                        for p in n.properties() {
                            let _ = p.as_str();
                        }
                    }
                    let _ = fdt.memory_reservations().count();
                }
            }
        }
    }

    #[test]
    fn malformed_trees_are_refused() {
        let good = sample().to_bytes();
        let set = |at: usize, v: u32| {
            let mut b = good.clone();
            b[at..at + 4].copy_from_slice(&v.to_be_bytes());
            b
        };
        let off_struct = be32(&good, 8).unwrap() as usize;
        let cases = [
            (set(0, 0xdead_beef), "no FDT magic"),
            (set(4, 0x1000_0000), "total size out of range"),
            (set(12, 0xffff_fff0), "a block lies outside the blob"),
            (set(32, 0xffff), "a block lies outside the blob"),
            (set(off_struct, FDT_END_NODE), "unbalanced FDT_END_NODE"),
            (set(off_struct, 7), "unknown token"),
        ];
        for (mut blob, why) in cases {
            let total = be32(&blob, 4).unwrap() as usize;
            if total != blob.len() {
                assert_eq!(check_and_pack(&mut blob), Err(why));
                continue;
            }
            assert_eq!(check_and_pack(&mut blob), Err(why));
        }
        // An error after the NOPs leaves the blob unwritten.
        let nops = sample().nops_after_first_child(2).to_bytes();
        let last = (be32(&nops, 8).unwrap() + be32(&nops, 36).unwrap()) as usize - 4;
        let mut bad = nops.clone();
        bad[last..last + 4].copy_from_slice(&7u32.to_be_bytes());
        let before = bad.clone();
        assert_eq!(check_and_pack(&mut bad), Err("unknown token"));
        assert_eq!(bad, before, "a refused tree is not written");
        let mut short = sample();
        short.root.props.push(("#size-cells".into(), vec![0, 0]));
        let mut blob = short.to_bytes();
        assert_eq!(
            check_and_pack(&mut blob),
            Err("#address-cells or #size-cells is not one cell")
        );
    }
}
