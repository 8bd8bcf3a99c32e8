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

#[test]
fn files_speak_linux_formats() {
    let mut fx = boot();
    let mut files = Files {
        mm: &mut fx.mm,
        cpus_online: 0b1011,
    };
    let read = |files: &mut Files<ArenaTranslation>, path: &str| {
        let mut s = String::new();
        files
            .read(path, &mut s)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        s
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
