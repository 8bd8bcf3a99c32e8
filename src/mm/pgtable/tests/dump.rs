//! ptdump: runs that tile the range, Linux's arm64 format, markers.

use super::*;
use crate::mm::layout::PAGE_END;

/// The linear-map part of the kernel's markers.
fn linear_markers() -> &'static [Marker] {
    &crate::mm::layout::MARKERS[..2]
}

/// Lines are runs that tile the dumped range exactly, none empty.
fn check_dump_shape(dump: &str, first: u64, last: u64) {
    let mut at = first;
    for line in dump.lines().filter(|l| l.starts_with("0x")) {
        let (range, rest) = line.split_at(37);
        let start = u64::from_str_radix(&range[2..18], 16).unwrap();
        let end = u64::from_str_radix(&range[21..37], 16).unwrap();
        assert_eq!(&range[18..21], "-0x", "{line}");
        assert_eq!(start, at, "runs must tile the range: {line}");
        assert!(end > start, "empty run: {line}");
        assert!(rest.starts_with("   "), "{line}");
        at = end;
    }
    assert_eq!(at, last);
}

pub(super) fn dump_tiles_the_range<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let b = block::<G>();
    let markers = linear_markers();
    // An empty table dumps as one hole.
    let dump = env.dump(markers);
    check_dump_shape(&dump, PAGE_OFFSET, PAGE_END);
    assert_eq!(dump.lines().count(), 3, "{dump}");

    // The very first entry mapped (no empty run may be printed before it).
    env.map(
        va(PAGE_OFFSET),
        va(PAGE_OFFSET + p),
        pa(0),
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    env.map(
        VA0 + b,
        VA0 + 2 * b,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::blocks(b),
    )
    .unwrap();
    env.map(
        VA0 + 2 * b,
        VA0 + 2 * b + 3 * p,
        PA0,
        Attributes::DEVICE,
        MapHints::pages(),
    )
    .unwrap();
    let dump = env.dump(markers);
    check_dump_shape(&dump, PAGE_OFFSET, PAGE_END);
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines[0], "---[ Linear Mapping start ]---");
    assert_eq!(*lines.last().unwrap(), "---[ Linear Mapping end ]---");
    let size = |n: u64| {
        let (mut v, mut u) = (n >> 10, 0);
        while v % 1024 == 0 && u < 5 {
            v >>= 10;
            u += 1;
        }
        std::format!("{v:>9}{}", ['K', 'M', 'G', 'T', 'P', 'E'][u])
    };
    assert!(lines[1].starts_with(&std::format!(
        "0x{PAGE_OFFSET:016x}-0x{:016x}   {} PTE       RW",
        PAGE_OFFSET + p,
        size(p)
    )));
    let blk = std::format!(
        "0x{:016x}-0x{:016x}   {} PMD       RW NX SHD AF        BLK UXN    MEM/NORMAL",
        VA0 + b,
        VA0 + 2 * b,
        size(b)
    );
    assert!(lines.contains(&blk.as_str()), "{dump}");
    let dev = std::format!(
        "0x{:016x}-0x{:016x}   {} PTE       RW NX     AF            UXN    DEVICE/nGnRE",
        VA0 + 2 * b,
        VA0 + 2 * b + 3 * p,
        size(3 * p)
    );
    assert!(lines.contains(&dev.as_str()), "{dump}");
    // The first level is the PGD whatever the granule (64K folds level 0;
    // 16K has a single first-level entry for the whole linear map).
    if G::level_size(G::START_LEVEL) < PAGE_END - PAGE_OFFSET {
        assert!(lines.iter().any(|l| l.ends_with(" PGD")), "{dump}");
    }
    assert!(!lines.iter().any(|l| l.contains(" PUD")) || G::LEVELS == 4);
}

#[test]
fn dump_matches_linux_arm64_ptdump() {
    let mut env = Env::<Granule4K>::new();
    let rw = Attributes::KERNEL_RW;
    env.map(
        va(0xffff_0000_4000_0000),
        va(0xffff_0000_4020_0000),
        pa(0x4000_0000),
        rw,
        MapHints::blocks(2 << 20),
    )
    .unwrap();
    env.map(
        va(0xffff_0000_4020_0000),
        va(0xffff_0000_4020_4000),
        pa(0x4020_0000),
        rw,
        MapHints::blocks(2 << 20),
    )
    .unwrap();
    let ro_cont = MapHints::pages().with_contiguous();
    env.map(
        va(0xffff_0000_4021_0000),
        va(0xffff_0000_4022_0000),
        pa(0x4021_0000),
        Attributes::KERNEL_RO,
        ro_cont,
    )
    .unwrap();
    env.map(
        va(0xffff_0000_4022_0000),
        va(0xffff_0000_4022_2000),
        pa(0x4022_0000),
        Attributes::KERNEL_ROX,
        ro_cont,
    )
    .unwrap();
    let dump = env.dump(linear_markers());
    let want = "\
---[ Linear Mapping start ]---
0xffff000000000000-0xffff000040000000           1G PUD
0xffff000040000000-0xffff000040200000           2M PMD       RW NX SHD AF        BLK UXN    MEM/NORMAL
0xffff000040200000-0xffff000040204000          16K PTE       RW NX SHD AF            UXN    MEM/NORMAL
0xffff000040204000-0xffff000040210000          48K PTE
0xffff000040210000-0xffff000040220000          64K PTE       ro NX SHD AF    CON     UXN    MEM/NORMAL
0xffff000040220000-0xffff000040222000           8K PTE       ro x  SHD AF            UXN    MEM/NORMAL
0xffff000040222000-0xffff000040400000        1912K PTE
0xffff000040400000-0xffff000080000000        1020M PMD
0xffff000080000000-0xffff008000000000         510G PUD
0xffff008000000000-0xffff800000000000      130560G PGD
---[ Linear Mapping end ]---
";
    assert_eq!(dump, want, "\n{dump}");
}

#[test]
fn dump_prints_every_marker_it_crosses() {
    let mut env = Env::<Granule4K>::new();
    env.map(
        VA0,
        VA0 + 0x1000,
        pa(0),
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    let markers = [
        Marker {
            addr: (VA0 - (1 << 30)).as_u64(),
            name: "a",
        },
        Marker {
            addr: (VA0).as_u64(),
            name: "b",
        },
        Marker {
            addr: (VA0 + 0x1000).as_u64(),
            name: "c",
        },
        Marker {
            addr: (VA0 + (1 << 30)).as_u64(),
            name: "d",
        },
    ];
    let dump = env.dump(&markers);
    let want = std::format!(
        "---[ a ]---\n\
         0x{:016x}-0x{:016x}           1G PGD\n\
         ---[ b ]---\n\
         0x{:016x}-0x{:016x}           4K PTE       RW NX SHD AF            UXN    MEM/NORMAL\n\
         ---[ c ]---\n\
         0x{:016x}-0x{:016x}        2044K PTE\n\
         0x{:016x}-0x{:016x}        1022M PMD\n\
         ---[ d ]---\n",
        VA0 - (1 << 30),
        VA0,
        VA0,
        VA0 + 0x1000,
        VA0 + 0x1000,
        VA0 + 0x20_0000,
        VA0 + 0x20_0000,
        VA0 + (1 << 30)
    );
    assert_eq!(dump, want, "\n{dump}");
}
