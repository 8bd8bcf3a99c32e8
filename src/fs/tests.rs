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

use super::read_for_test as read;

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

/// A `/proc` file as `name value` pairs (`/proc/vmstat`, `/proc/meminfo`).
fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (n, rest) = l.split_once([':', ' '])?;
            (n.trim() == name).then(|| rest.split_whitespace().next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The block of `/proc/zoneinfo` for `zone`, from its `Node 0, zone` line
/// to the next.
fn zone_section<'a>(zoneinfo: &'a str, zone: &str) -> &'a str {
    let head = format!("Node 0, zone {zone:>8}\n");
    let start = zoneinfo
        .find(&head)
        .unwrap_or_else(|| panic!("no {head:?} in {zoneinfo}"));
    let rest = &zoneinfo[start + head.len()..];
    &rest[..rest.find("Node 0, zone").unwrap_or(rest.len())]
}

/// A `name value` field of a zoneinfo section (`pages free` is `free`).
fn zone_field(section: &str, name: &str) -> u64 {
    section
        .lines()
        .find_map(|l| {
            let l = l
                .trim_start()
                .strip_prefix("pages ")
                .unwrap_or(l.trim_start());
            let (n, v) = l.rsplit_once(char::is_whitespace)?;
            (n.trim_end().trim_end_matches(':') == name).then(|| v.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in {section}"))
}

#[test]
fn zoneinfo_follows_linux_layout_and_the_zones() {
    use crate::mm::test_system::{BLOCK_PAGES, BOOT_RESERVED};
    let mut fx = boot();
    let mut files = Files {
        mm: &mut fx.mm,
        cpus_online: 0b11,
    };
    let zi = read(&mut files, "/proc/zoneinfo");
    // Every zone of the node, in Linux's order; the node's statistics
    // under the first populated one.
    let heads: alloc::vec::Vec<&str> = zi.lines().filter(|l| l.starts_with("Node")).collect();
    assert_eq!(
        heads,
        [
            "Node 0, zone   Normal",
            "Node 0, zone  Movable",
            "Node 0, zone   Device"
        ]
    );
    let normal = zone_section(&zi, "Normal");
    assert!(normal.starts_with("  per-node stats\n"), "{normal}");
    assert!(normal.contains("\n  pages free     "), "{normal}");
    assert!(
        normal.contains("\n        protection: (0, 0, 0)\n"),
        "{normal}"
    );
    assert!(normal.contains("\n  pagesets\n    cpu: 0\n"), "{normal}");
    assert!(normal.contains("\n    cpu: 1\n"), "{normal}");
    assert_eq!(zone_field(normal, "spanned"), BLOCK_PAGES);
    assert_eq!(zone_field(normal, "present"), BLOCK_PAGES);
    assert_eq!(zone_field(normal, "managed"), BLOCK_PAGES - BOOT_RESERVED);
    assert_eq!(zone_field(normal, "start_pfn"), BOOT * BLOCK_PAGES);
    assert_eq!(zone_field(normal, "free"), files.mm.buddy().nr_free_total());
    assert!(zone_field(normal, "min") > 0);
    // Unpopulated zones stop after their reserves, as Linux's do.
    let movable = zone_section(&zi, "Movable");
    assert!(movable.ends_with("protection: (0, 0, 0)\n"), "{movable}");
    assert_eq!(zone_field(movable, "min"), 32);
    assert!(!movable.contains("per-node"), "{movable}");

    files
        .write(
            "/sys/devices/system/memory/probe",
            &format!("{:#x}", start_of(HOT_FIRST + 1)),
        )
        .unwrap();
    files
        .write(
            &format!("/sys/devices/system/memory/memory{}/state", HOT_FIRST + 1),
            "online_movable",
        )
        .unwrap();
    files
        .mm
        .memremap_pages(0, crate::mm::system::DevMapKind::Mem)
        .unwrap();
    let zi = read(&mut files, "/proc/zoneinfo");
    let movable = zone_section(&zi, "Movable");
    assert_eq!(zone_field(movable, "spanned"), BLOCK_PAGES);
    assert_eq!(zone_field(movable, "managed"), BLOCK_PAGES);
    assert_eq!(
        zone_field(movable, "start_pfn"),
        (HOT_FIRST + 1) * BLOCK_PAGES
    );
    assert_eq!(
        zone_field(movable, "min"),
        (BLOCK_PAGES / 1024).clamp(32, 128)
    );
    let reserve = BLOCK_PAGES / 32;
    let normal = zone_section(&zi, "Normal");
    assert!(
        normal.contains(&format!("protection: (0, {reserve}, {reserve})")),
        "{normal}"
    );
    // ZONE_DEVICE spans mapped device memory but has nothing present.
    let device = zone_section(&zi, "Device");
    assert_eq!(zone_field(device, "spanned"), 2 * BLOCK_PAGES);
    assert_eq!(zone_field(device, "present"), 0);
}

#[test]
fn mem_available_and_memmap_counters() {
    use crate::mm::hotplug::vmemmap_pages_per_block;
    let mut fx = boot();
    let mut files = Files {
        mm: &mut fx.mm,
        cpus_online: 1,
    };
    let meminfo = read(&mut files, "/proc/meminfo");
    let names: alloc::vec::Vec<&str> = meminfo
        .lines()
        .map(|l| &l[..l.find(':').unwrap()])
        .collect();
    assert_eq!(&names[..3], ["MemTotal", "MemFree", "MemAvailable"]);
    let (free, avail) = (field(&meminfo, "MemFree"), field(&meminfo, "MemAvailable"));
    let reserve = crate::mm::vmstat::totalreserve_pages(
        crate::mm::page::Zone::ALL.map(|z| files.mm.buddy().managed(z)),
    );
    assert!(reserve > 0);
    assert_eq!(
        avail,
        free - ((reserve * crate::mm::layout::PAGE_SIZE) >> 10)
    );

    let vmstat = read(&mut files, "/proc/vmstat");
    assert_eq!(
        field(&vmstat, "nr_memmap_boot_pages"),
        vmemmap_pages_per_block()
    );
    assert_eq!(field(&vmstat, "nr_memmap_pages"), 0);
    // Linux's names first, in Linux's order, then the kernel's own.
    let names: alloc::vec::Vec<&str> = vmstat
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        &names[..4],
        [
            "nr_free_pages",
            "nr_page_table_pages",
            "nr_memmap_pages",
            "nr_memmap_boot_pages"
        ]
    );
    let probe = |files: &mut Files<ArenaTranslation>, id: u64| {
        files
            .write(
                "/sys/devices/system/memory/probe",
                &format!("{:#x}", start_of(id)),
            )
            .unwrap()
    };
    probe(&mut files, HOT_FIRST);
    let vmstat = read(&mut files, "/proc/vmstat");
    assert_eq!(field(&vmstat, "nr_memmap_pages"), vmemmap_pages_per_block());
    // Struct pages on the block itself (altmap) are not system RAM's.
    files.mm.set_memmap_on_memory(true);
    probe(&mut files, HOT_FIRST + 1);
    let vmstat = read(&mut files, "/proc/vmstat");
    assert_eq!(field(&vmstat, "nr_memmap_pages"), vmemmap_pages_per_block());
    assert_eq!(
        field(&vmstat, "nr_memmap_boot_pages"),
        vmemmap_pages_per_block()
    );
}

/// `ls` with the heap out: every allocation it makes is fallible, so each
/// injected failure is `ENOMEM` (an infallible one aborts the test binary),
/// and once they all pass the listing is whole.
#[test]
fn ls_with_the_heap_out_is_enomem() {
    use crate::mm::testing::heap_faults;
    let mut fx = boot();
    fx.mm
        .add_memory(start_of(HOT_FIRST), BLOCK)
        .expect("hot-add for a block directory");
    let mut files = Files {
        mm: &mut fx.mm,
        cpus_online: 1,
    };
    for dir in [
        "/",
        "/sys/devices/system/memory",
        &format!("/sys/devices/system/memory/memory{HOT_FIRST}"),
    ] {
        let whole = files.list(dir).unwrap();
        for n in 0.. {
            assert!(n < 100, "{dir}: never got past its allocations");
            heap_faults::fail_nth(Some(n));
            let r = files.list(dir);
            let fired = heap_faults::fired();
            heap_faults::fail_nth(None);
            match r {
                Err(e) => {
                    assert!(fired, "{dir}, n={n}: {e:?}");
                    assert_eq!(e.errno, Errno::ENOMEM, "{dir}, n={n}");
                }
                Ok(names) => {
                    assert!(!fired, "{dir}, n={n}: a failure was swallowed");
                    assert_eq!(names, whole);
                    break;
                }
            }
        }
    }
}
