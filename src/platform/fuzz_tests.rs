//! Reading the device tree from mutated and made-up blobs: an error or a
//! platform, never a panic (`dtb::check_and_pack` keeps the `fdt` crate to
//! what it reads safely).

use super::dtb::{check_and_pack, MAX_FDT_SIZE};
use super::Platform;
use proptest::prelude::*;

/// QEMU virt DTBs (`-machine virt,dumpdtb=...`), in tests/data.
const DTBS: [&[u8]; 3] = [
    include_bytes!("../../tests/data/virt-gicv2.dtb"),
    include_bytes!("../../tests/data/virt-gicv3-el2.dtb"),
    include_bytes!("../../tests/data/virt-gicv4-smp2.dtb"),
];

/// Checks a copy of `blob` (packing writes into it).
fn check(blob: &[u8]) -> Result<(), &'static str> {
    check_and_pack(&mut blob.to_vec())
}

fn be32(bytes: &[u8], at: usize) -> usize {
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Reads `bytes` as the boot DTB, from an 8-byte-aligned copy followed by
/// zeroes up to its header's `totalsize` (memory after a DTB is readable;
/// `parse` reads no more than `MAX_FDT_SIZE`).
fn read(bytes: &[u8]) -> Option<Platform> {
    let len = bytes.len().max(be32(bytes, 4).min(MAX_FDT_SIZE)).max(64);
    let mut words = vec![0u64; len.div_ceil(8)];
    for (i, &b) in bytes.iter().enumerate() {
        words[i / 8] |= (b as u64) << (8 * (i % 8));
    }
    if cfg!(target_endian = "big") {
        words.iter_mut().for_each(|w| *w = w.swap_bytes());
    }
    // SAFETY: `words` holds `len` bytes, at least the header's totalsize
    // (capped as `parse` caps it), and outlives the call; the platform keeps
    // no reference into it.
    unsafe { Platform::from_fdt(words.as_mut_ptr() as *mut u8) }.ok()
}

/// A platform read from a blob must still be in its bounds.
fn sane(p: &Platform) -> bool {
    p.nr_memory <= super::MAX_MEMORY
        && p.nr_cpus <= super::MAX_CPUS
        && p.memory().windows(2).all(|w| w[0].base <= w[1].base)
        && p.bootargs().len() <= 1024
}

#[derive(Clone, Debug)]
enum Mutation {
    /// One byte anywhere.
    Byte(usize, u8),
    /// A big-endian word at a 4-aligned offset of the structure block:
    /// a token, a length, a name offset or a cell.
    StructWord(usize, u32),
    /// A small value there (tokens 1..9, cell counts, short lengths).
    StructSmall(usize, u8),
    /// A header field.
    Header(usize, u32),
    /// Cut the blob short.
    Truncate(usize),
    /// Copy a run of the blob over another place (duplicated nodes and
    /// properties, misplaced tokens).
    Copy { from: usize, to: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(o, b)| Mutation::Byte(o, b)),
        3 => (any::<usize>(), any::<u32>()).prop_map(|(o, w)| Mutation::StructWord(o, w)),
        4 => (any::<usize>(), 0u8..12).prop_map(|(o, w)| Mutation::StructSmall(o, w)),
        1 => (0usize..10, any::<u32>()).prop_map(|(f, v)| Mutation::Header(f, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<usize>(), 1usize..64)
            .prop_map(|(from, to, len)| Mutation::Copy { from, to, len }),
    ]
}

fn apply(blob: &mut Vec<u8>, m: &Mutation) {
    let n = blob.len();
    if n == 0 {
        return;
    }
    let (off_struct, size_struct) = (be32(blob, 8), be32(blob, 36));
    let struct_word = |o: usize| {
        let words = (size_struct / 4).max(1);
        off_struct + (o % words) * 4
    };
    let put = |blob: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(slot) = blob.get_mut(at + i) {
                *slot = b;
            }
        }
    };
    match *m {
        Mutation::Byte(o, b) => put(blob, o % n, &[b]),
        Mutation::StructWord(o, w) => put(blob, struct_word(o), &w.to_be_bytes()),
        Mutation::StructSmall(o, w) => put(blob, struct_word(o), &(w as u32).to_be_bytes()),
        Mutation::Header(f, v) => put(blob, f * 4, &v.to_be_bytes()),
        Mutation::Truncate(o) => blob.truncate(o % n),
        Mutation::Copy { from, to, len } => {
            let from = from % n;
            let run: Vec<u8> = blob[from..(from + len).min(n)].to_vec();
            put(blob, to % n, &run);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// QEMU's DTBs with a few mutations: read without a panic; what is
    /// read is in bounds.
    #[test]
    fn mutated_dtbs_never_panic(
        which in 0usize..DTBS.len(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let mut blob = DTBS[which].to_vec();
        for m in &mutations {
            apply(&mut blob, m);
        }
        if let Some(p) = read(&blob) {
            prop_assert!(sane(&p));
        }
    }

    /// Bytes of any kind behind a plausible header.
    #[test]
    fn arbitrary_blobs_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        fields in proptest::collection::vec(0u32..600, 8),
    ) {
        let mut blob = 0xd00d_feedu32.to_be_bytes().to_vec();
        blob.extend((body.len() as u32 + 40).to_be_bytes());
        for (i, f) in fields.iter().enumerate() {
            // version (field 5) 17 to pass the version check.
            let v = if i == 3 { 17 } else { *f };
            blob.extend(v.to_be_bytes());
        }
        blob.extend(&body);
        if let Some(p) = read(&blob) {
            prop_assert!(sane(&p));
        }
    }
}

#[test]
fn qemus_dtbs_pass_the_check() {
    for dtb in DTBS {
        assert_eq!(check(dtb), Ok(()));
        assert!(read(dtb).is_some_and(|p| sane(&p)));
    }
}

/// A DTB from a tree: nodes of (name, properties, children).
struct Node {
    name: &'static str,
    props: Vec<(&'static str, Vec<u8>)>,
    children: Vec<Node>,
}

fn node(name: &'static str, props: Vec<(&'static str, Vec<u8>)>, children: Vec<Node>) -> Node {
    Node {
        name,
        props,
        children,
    }
}

fn cells(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|c| c.to_be_bytes()).collect()
}

fn build(root: &Node) -> Vec<u8> {
    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }
    fn emit(n: &Node, structs: &mut Vec<u8>, strings: &mut Vec<u8>) {
        structs.extend(1u32.to_be_bytes());
        structs.extend(n.name.as_bytes());
        structs.push(0);
        pad(structs);
        for (name, value) in &n.props {
            let off = strings.len() as u32;
            strings.extend(name.as_bytes());
            strings.push(0);
            structs.extend(3u32.to_be_bytes());
            structs.extend((value.len() as u32).to_be_bytes());
            structs.extend(off.to_be_bytes());
            structs.extend(value);
            pad(structs);
        }
        for c in &n.children {
            emit(c, structs, strings);
        }
        structs.extend(2u32.to_be_bytes());
    }
    let (mut structs, mut strings) = (Vec::new(), Vec::new());
    emit(root, &mut structs, &mut strings);
    structs.extend(9u32.to_be_bytes());
    let rsvmap = 40;
    let off_struct = rsvmap + 16;
    let off_strings = off_struct + structs.len();
    let total = off_strings + strings.len();
    let header = [
        0xd00d_feed,
        total,
        off_struct,
        off_strings,
        rsvmap,
        17,
        16,
        0,
        strings.len(),
        structs.len(),
    ];
    let mut blob: Vec<u8> = header
        .iter()
        .flat_map(|&f| (f as u32).to_be_bytes())
        .collect();
    blob.extend([0; 16]);
    blob.extend(structs);
    blob.extend(strings);
    blob
}

/// A minimal tree QEMU could have written, with `chosen` and `cpu0`
/// properties replaced.
fn tree(chosen: Vec<(&'static str, Vec<u8>)>, cpu0: Vec<(&'static str, Vec<u8>)>) -> Node {
    node(
        "",
        vec![
            ("#address-cells", cells(&[2])),
            ("#size-cells", cells(&[2])),
        ],
        vec![
            node("chosen", chosen, vec![]),
            node(
                "cpus",
                vec![
                    ("#address-cells", cells(&[1])),
                    ("#size-cells", cells(&[0])),
                ],
                vec![node("cpu@0", cpu0, vec![])],
            ),
            node(
                "memory@40000000",
                vec![
                    ("device_type", b"memory\0".to_vec()),
                    ("reg", cells(&[0, 0x4000_0000, 0, 0x4000_0000])),
                ],
                vec![],
            ),
        ],
    )
}

#[test]
fn a_built_tree_is_read() {
    let blob = build(&tree(
        vec![("bootargs", b"mem=512M\0".to_vec())],
        vec![("reg", cells(&[0]))],
    ));
    let p = read(&blob).unwrap();
    assert_eq!(p.bootargs(), "mem=512M");
    assert_eq!(p.nr_cpus, 1);
    assert_eq!(p.memory().len(), 1);
}

/// Trees the `fdt` crate's own accessors panic on (or recurse on without
/// end) are read by hand: what is readable is kept, the rest dropped.
#[test]
fn trees_the_crates_accessors_cannot_read_are_read_by_hand() {
    let p = read(&build(&tree(
        vec![("bootargs", vec![])],
        vec![("reg", cells(&[0]))],
    )))
    .unwrap();
    assert_eq!((p.bootargs(), p.nr_cpus), ("", 1));
    for cpu0 in [vec![], vec![("reg", vec![0, 0])]] {
        assert_eq!(read(&build(&tree(vec![], cpu0))).unwrap().nr_cpus, 0);
    }
    let p = read(&build(&node(
        "",
        vec![],
        vec![
            node("aliases", vec![("serial0", b"serial0\0".to_vec())], vec![]),
            node(
                "chosen",
                vec![("stdout-path", b"serial0\0".to_vec())],
                vec![],
            ),
            node("cpus", vec![], vec![]),
        ],
    )))
    .unwrap();
    assert_eq!(p.uart, None);
}

/// Trees the `fdt` crate panics on are refused before it sees them.
#[test]
fn trees_the_crate_cannot_read_are_refused() {
    let bad: Vec<(&str, Node)> = vec![
        (
            "no chosen",
            node("", vec![], vec![node("cpus", vec![], vec![])]),
        ),
        (
            "no cpus",
            node("", vec![], vec![node("chosen", vec![], vec![])]),
        ),
        (
            "short #address-cells",
            node(
                "",
                vec![("#address-cells", vec![0, 2])],
                vec![node("chosen", vec![], vec![]), node("cpus", vec![], vec![])],
            ),
        ),
    ];
    for (what, t) in bad {
        let blob = build(&t);
        assert!(read(&blob).is_none(), "{what}: read");
    }
    // Nested deeper than the crate keeps parents.
    let mut deep = node("leaf", vec![], vec![]);
    for _ in 0..70 {
        deep = node("n", vec![], vec![deep]);
    }
    let t = node(
        "",
        vec![],
        vec![
            node("chosen", vec![], vec![]),
            node("cpus", vec![], vec![]),
            deep,
        ],
    );
    assert!(read(&build(&t)).is_none());
    // A totalsize past MAX_FDT_SIZE is not believed.
    let mut blob = build(&tree(vec![], vec![("reg", cells(&[0]))]));
    blob[4..8].copy_from_slice(&(MAX_FDT_SIZE as u32 + 8).to_be_bytes());
    assert!(read(&blob).is_none());
}
