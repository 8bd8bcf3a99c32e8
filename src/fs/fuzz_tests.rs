//! Every writable file of the fs table over arbitrary text, on a booted host
//! system: each write succeeds or fails, never panics, and a failed write
//! changes nothing any file shows.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use proptest::prelude::*;

use super::{attributes, memory, Files};
use crate::mm::test_system::{start_of, TestSystem, BOOT, HOT_END, HOT_FIRST};
use crate::mm::testing::ArenaTranslation;

type F<'a> = Files<'a, ArenaTranslation>;

/// Memory blocks the writes aim at: boot blocks, hot-pluggable ones, and
/// ids no block has.
fn block_ids() -> Vec<u64> {
    let mut ids = alloc::vec![0, BOOT - 1, BOOT, BOOT + 1, HOT_FIRST, HOT_FIRST + 1];
    ids.extend([HOT_END - 1, HOT_END, u64::MAX]);
    ids
}

/// Every path a write can go to: each fixed file (writable or not) and
/// each file of the `memoryN` directories.
fn targets() -> Vec<String> {
    let mut paths: Vec<String> = attributes::<ArenaTranslation>()
        .iter()
        .map(|a| a.path.to_string())
        .collect();
    for id in block_ids() {
        for a in memory::block_attrs::<ArenaTranslation>() {
            paths.push(format!("{}/memory{id}/{}", memory::MEMORY_DIR, a.name));
        }
    }
    paths.push(memory::MEMORY_DIR.to_string());
    paths
}

/// What every readable file shows, but `/proc/vmstat` (its event counters
/// count failed attempts too) and `fail_nth_alloc` (a failed allocation
/// uses up the injected failure: that is its point).
fn snapshot(f: &mut F) -> Vec<(String, String)> {
    let mut paths: Vec<String> = attributes::<ArenaTranslation>()
        .iter()
        .filter(|a| a.show.is_some())
        .map(|a| a.path.to_string())
        .filter(|p| !p.ends_with("/vmstat") && !p.ends_with("/fail_nth_alloc"))
        .collect();
    let ids: Vec<u64> = f.mm.blocks().keys().copied().collect();
    for id in ids {
        for a in memory::block_attrs::<ArenaTranslation>() {
            paths.push(format!("{}/memory{id}/{}", memory::MEMORY_DIR, a.name));
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let mut s = String::new();
            let r = f.read(&p, &mut s);
            (p, format!("{r:?} {s}"))
        })
        .collect()
}

/// Values: the words the files take, addresses and sizes of blocks,
/// numbers of every size, and text of any kind.
fn value() -> impl Strategy<Value = String> {
    let words = [
        "online",
        "offline",
        "online_kernel",
        "online_movable",
        "1",
        "0",
        "Y",
        "N",
        "y",
        "n",
        "",
        " ",
        "128M",
        "1G",
        "0x",
        "-1",
        "online ",
        "\u{e9}",
    ];
    let addr = (BOOT - 2..HOT_END + 2).prop_map(|id| format!("{:#x}", start_of(id).as_u64()));
    prop_oneof![
        4 => proptest::sample::select(words.to_vec()).prop_map(String::from),
        3 => addr.clone(),
        2 => (addr, proptest::sample::select(alloc::vec!["0x8000000", "0x10000000", "128M", "1", "0", "0x7ffffff", "99999999999999999999"]))
            .prop_map(|(a, s)| format!("{a} {s}")),
        1 => (1u64..40).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| format!("{n:#x}")),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        2 => ".{0,40}",
        1 => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Sequences of writes (with fault injection among them): no panic;
    /// every failed write leaves every file as it was.
    #[test]
    fn any_write_to_any_file(
        writes in proptest::collection::vec(
            (proptest::sample::select(targets()), value()),
            1..24,
        )
    ) {
        let mut fx = TestSystem::boot();
        let mut files = Files { mm: &mut fx.mm, cpus_online: 1 };
        for (path, data) in &writes {
            let before = snapshot(&mut files);
            if let Err(e) = files.write(path, data) {
                let after = snapshot(&mut files);
                for (b, a) in before.iter().zip(&after) {
                    prop_assert_eq!(b, a, "{:?} > {}: {}", data, path, e);
                }
                prop_assert_eq!(before.len(), after.len(), "{:?} > {}: {}", data, path, e);
            }
        }
    }
}
