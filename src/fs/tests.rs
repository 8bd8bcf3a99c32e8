//! The kernel's files over a booted host system: Linux's formats.

use alloc::format;
use alloc::string::String;

use super::Files;
use crate::error::Errno;
use crate::mm::layout::MAX_ORDER;
use crate::mm::test_system::{start_of, TestSystem, BLOCK, BOOT, HOT_FIRST};
use crate::mm::testing::ArenaTranslation;

fn boot() -> TestSystem {
    TestSystem::boot()
}

fn read(files: &mut Files<ArenaTranslation>, path: &str) -> String {
    let mut s = String::new();
    files
        .read(path, &mut s)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    s
}

#[test]
fn files_speak_linux_formats() {
    let mut fx = boot();
    let mut files = Files {
        mm: &mut fx.mm,
        cpus_online: 0b1011,
    };
    let meminfo = read(&mut files, "/proc/meminfo");
    for line in meminfo.lines() {
        // `Name:` padded to 16 columns, the value right-aligned in 8.
        assert_eq!(line.len(), 27, "{line:?}");
        assert!(
            line.ends_with(" kB") && line[..16].trim_end().ends_with(':'),
            "{line:?}"
        );
    }
    assert_eq!(
        read(&mut files, "/sys/devices/system/cpu/online"),
        "0-1,3\n"
    );
    assert_eq!(
        read(&mut files, "/sys/devices/system/memory/block_size_bytes"),
        format!("{BLOCK:x}\n")
    );
    assert_eq!(
        read(
            &mut files,
            &format!("/sys/devices/system/memory/memory{BOOT}/phys_index")
        ),
        format!("{BOOT:08x}\n")
    );
    let buddyinfo = read(&mut files, "/proc/buddyinfo");
    let normal = buddyinfo.lines().next().unwrap();
    assert!(normal.starts_with("Node 0, zone   Normal "), "{normal:?}");
    assert_eq!(
        normal.split_whitespace().count(),
        4 + MAX_ORDER as usize + 1,
        "{normal:?}"
    );
    files
        .write(
            "/sys/devices/system/memory/probe",
            &format!("{:#x}", start_of(HOT_FIRST)),
        )
        .unwrap();
    files
        .write(
            &format!("/sys/devices/system/memory/memory{HOT_FIRST}/state"),
            "online_movable",
        )
        .unwrap();
    let buddyinfo = read(&mut files, "/proc/buddyinfo");
    assert!(
        buddyinfo
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("Node 0, zone  Movable ")),
        "{buddyinfo}"
    );
    assert_eq!(
        read(
            &mut files,
            &format!("/sys/devices/system/memory/memory{HOT_FIRST}/valid_zones")
        ),
        "Movable\n"
    );
    let ls = files.list("/sys/devices/system/memory").unwrap();
    assert!(ls.contains(&format!("memory{HOT_FIRST}/")), "{ls:?}");
    let err = files.write("/proc/meminfo", "1").unwrap_err();
    assert_eq!(err.errno, Errno::EPERM);
    let err = files.read("/nope", &mut String::new()).unwrap_err();
    assert_eq!(err.errno, Errno::ENOENT);
}

/// `auto_online_blocks` and the online policy decide where `probe`d
/// memory goes, as in Linux's `mm/memory_hotplug.c`.
#[test]
fn auto_online_blocks_and_policy_place_probed_memory() {
    use crate::mm::online::{OnlineConfig, OnlinePolicy};
    let mut fx = boot();
    let mut files = Files {
        mm: &mut fx.mm,
        cpus_online: 1,
    };
    let auto = "/sys/devices/system/memory/auto_online_blocks";
    let block = |files: &mut Files<ArenaTranslation>, id: u64, f: &str| {
        read(files, &format!("/sys/devices/system/memory/memory{id}/{f}"))
    };
    let probe = |files: &mut Files<ArenaTranslation>, id: u64| {
        let addr = format!("{:#x}", start_of(id));
        files
            .write("/sys/devices/system/memory/probe", &addr)
            .unwrap();
    };
    // Linux's default: hot-added memory stays offline.
    assert_eq!(read(&mut files, auto), "offline\n");
    probe(&mut files, HOT_FIRST);
    assert_eq!(block(&mut files, HOT_FIRST, "state"), "offline\n");
    assert_eq!(block(&mut files, HOT_FIRST, "removable"), "1\n");
    assert_eq!(block(&mut files, BOOT, "removable"), "1\n");
    files
        .write(
            "/sys/devices/system/memory/remove",
            &format!("{:#x}", start_of(HOT_FIRST)),
        )
        .unwrap();

    let err = files.write(auto, "movable").unwrap_err();
    assert_eq!(err.errno, Errno::EINVAL);
    assert_eq!(read(&mut files, auto), "offline\n");

    // contig-zones: Movable spans HOT_FIRST..HOT_FIRST+3; `online` puts a
    // block inside that span in Movable, one outside every span in Normal.
    files.write(auto, "online_movable").unwrap();
    assert_eq!(read(&mut files, auto), "online_movable\n");
    probe(&mut files, HOT_FIRST);
    probe(&mut files, HOT_FIRST + 2);
    files.write(auto, "online").unwrap();
    probe(&mut files, HOT_FIRST + 1);
    assert_eq!(block(&mut files, HOT_FIRST + 1, "valid_zones"), "Movable\n");
    // An offline block inside Movable's span: `online` would pick Movable.
    files
        .write(
            &format!("/sys/devices/system/memory/memory{}/state", HOT_FIRST + 1),
            "offline",
        )
        .unwrap();
    assert_eq!(
        block(&mut files, HOT_FIRST + 1, "valid_zones"),
        "Movable Normal\n"
    );
    files
        .write(
            &format!("/sys/devices/system/memory/memory{}/online", HOT_FIRST + 1),
            "1",
        )
        .unwrap();
    assert_eq!(block(&mut files, HOT_FIRST + 1, "valid_zones"), "Movable\n");

    probe(&mut files, HOT_FIRST + 3);
    assert_eq!(block(&mut files, HOT_FIRST + 3, "valid_zones"), "Normal\n");
    files.write(auto, "online_kernel").unwrap();
    probe(&mut files, HOT_FIRST + 5);
    assert_eq!(block(&mut files, HOT_FIRST + 5, "valid_zones"), "Normal\n");

    // auto-movable: Movable while it stays within the ratio of boot
    // memory (one block here), else Normal; ratio 0 never Movable.
    for (ratio, zones) in [(200, ["Movable", "Movable", "Normal"]), (0, ["Normal"; 3])] {
        let mut fx = boot();
        let mut files = Files {
            mm: &mut fx.mm,
            cpus_online: 1,
        };
        files.mm.set_online_config(OnlineConfig {
            default_type: crate::mm::online::OnlineType::Online,
            policy: OnlinePolicy::AutoMovable,
            auto_movable_ratio: ratio,
        });
        for (i, zone) in zones.iter().enumerate() {
            let id = HOT_FIRST + i as u64;
            probe(&mut files, id);
            assert_eq!(
                block(&mut files, id, "valid_zones"),
                format!("{zone}\n"),
                "ratio {ratio}"
            );
        }
    }
}
