//! The commands over a booted host system, through the shell as a user
//! types them.

use alloc::string::String;

use super::{Kernel, Shell};
use crate::console::run;
use crate::error::{Errno, Result};
use crate::mm::layout::PAGE_SIZE;
use crate::mm::system::MemorySystem;
use crate::mm::test_system::TestSystem;
use crate::mm::testing::ArenaTranslation;

pub(super) struct HostKernel {
    pub(super) sys: TestSystem,
    pinned: super::mem::Pinned,
}

impl Kernel for HostKernel {
    type T = ArenaTranslation;

    fn with_mm<R>(
        &mut self,
        f: impl FnOnce(&mut MemorySystem<ArenaTranslation>) -> Result<R>,
    ) -> Result<R> {
        f(&mut self.sys.mm)
    }

    fn cpus_online(&self) -> u64 {
        0b11
    }

    fn pinned(&mut self) -> &mut super::mem::Pinned {
        &mut self.pinned
    }
}

pub(super) fn shell() -> Shell<HostKernel> {
    Shell::new(HostKernel {
        sys: TestSystem::boot(),
        pinned: Default::default(),
    })
}

fn sh(shell: &mut Shell<HostKernel>, line: &str) -> Result<String> {
    let mut out = String::new();
    run(shell, line, &mut out).map(|()| out)
}

fn errno(r: Result<String>) -> Errno {
    r.expect_err("the command must fail").errno
}

#[test]
fn help_lists_every_command_once_per_usage_aligned() {
    let s = shell();
    let mut help = String::new();
    crate::console::System::help(&s, &mut help).unwrap();
    for c in super::commands::<HostKernel>() {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(c.usage))
            .unwrap_or_else(|| panic!("{} missing from {help}", c.usage));
        assert_eq!(line.find(c.about), Some(2 + super::HELP_COLUMN), "{line:?}");
    }
}

#[test]
fn devmem_maps_and_unmaps_exactly() {
    let mut s = shell();
    let before = s.kernel.sys.mm.meminfo();
    let list = sh(&mut s, "devmem list").unwrap();
    assert_eq!(list, "0 0xa0000000-0xafffffff pmem unmapped\n");
    sh(&mut s, "devmem map 0 --map=dev").unwrap();
    assert!(sh(&mut s, "devmem list")
        .unwrap()
        .ends_with("mapped(dev)\n"));
    assert_eq!(errno(sh(&mut s, "devmem map 0 --map=mem")), Errno::EBUSY);
    let mapped = s.kernel.sys.mm.meminfo();
    assert_eq!(mapped.device_mem, 256 << 20);
    assert_eq!(
        mapped.vmemmap, before.vmemmap,
        "dev keeps struct pages on the device"
    );
    sh(&mut s, "devmem unmap 0").unwrap();
    assert_eq!(s.kernel.sys.mm.meminfo(), before);
    for bad in [
        "devmem",
        "devmem map",
        "devmem map x --map=dev",
        "devmem map 0",
        "devmem map 0 --map=x",
        "devmem unmap 0",
        "devmem frob",
    ] {
        let e = errno(sh(&mut s, bad));
        assert!(matches!(e, Errno::EINVAL | Errno::ENODEV), "{bad}: {e}");
        assert_eq!(s.kernel.sys.mm.meminfo(), before, "{bad}");
    }
    assert_eq!(errno(sh(&mut s, "devmem map 7 --map=dev")), Errno::ENODEV);
}

#[test]
fn pin_holds_memory_until_unpin() {
    let mut s = shell();
    let before = s.kernel.sys.mm.meminfo();
    assert_eq!(sh(&mut s, "pin 1M").unwrap(), "pinned 1024 KiB in all\n");
    assert_eq!(sh(&mut s, "pin 8K").unwrap(), "pinned 1032 KiB in all\n");
    let pinned = s.kernel.sys.mm.meminfo();
    assert_eq!(before.free - pinned.free, 1032 << 10);
    assert_eq!(s.kernel.pinned.len() as u64, (1032 << 10) / PAGE_SIZE);
    sh(&mut s, "unpin").unwrap();
    assert_eq!(s.kernel.sys.mm.meminfo(), before);
    assert_eq!(errno(sh(&mut s, "pin")), Errno::EINVAL);
    assert_eq!(errno(sh(&mut s, "pin lots")), Errno::EINVAL);
}

#[test]
fn pin_past_memory_keeps_what_it_got_and_says_enomem() {
    let mut s = shell();
    let before = s.kernel.sys.mm.meminfo();
    assert_eq!(errno(sh(&mut s, "pin 1G")), Errno::ENOMEM);
    assert_eq!(s.kernel.sys.mm.meminfo().free, 0);
    sh(&mut s, "unpin").unwrap();
    assert_eq!(s.kernel.sys.mm.meminfo(), before);
}

#[test]
fn unknown_commands_are_enoent() {
    let mut s = shell();
    assert_eq!(errno(sh(&mut s, "frobnicate")), Errno::ENOENT);
}

/// Hot-adds block `id` of the test system's held-back RAM, offline.
fn probe(s: &mut Shell<HostKernel>, id: u64) {
    let addr = crate::mm::test_system::start_of(id);
    sh(
        s,
        &format!("echo {addr:#x} > /sys/devices/system/memory/probe"),
    )
    .unwrap();
}

fn state(s: &mut Shell<HostKernel>, id: u64) -> String {
    sh(
        s,
        &format!("cat /sys/devices/system/memory/memory{id}/state"),
    )
    .unwrap()
}

#[test]
fn lsmem_prints_util_linux_tables() {
    use crate::mm::test_system::{BOOT, HOT_FIRST};
    let mut s = shell();
    assert_eq!(
        sh(&mut s, "lsmem").unwrap(),
        format!(
            "RANGE                                 SIZE  STATE REMOVABLE BLOCK\n\
             0x0000000040000000-0x0000000047ffffff 128M online       yes     {BOOT}\n\
             \n\
             Memory block size:       128M\n\
             Total online memory:     128M\n\
             Total offline memory:      0B\n"
        )
    );
    for id in HOT_FIRST..HOT_FIRST + 3 {
        probe(&mut s, id);
    }
    sh(
        &mut s,
        "echo online_movable > /sys/devices/system/memory/memory11/state",
    )
    .unwrap();
    // Ranges merge while state and removable agree; offline blocks have no
    // REMOVABLE.
    assert_eq!(
        sh(&mut s, "lsmem").unwrap(),
        "RANGE                                 SIZE   STATE REMOVABLE BLOCK\n\
         0x0000000040000000-0x0000000047ffffff 128M  online       yes     8\n\
         0x0000000048000000-0x0000000057ffffff 256M offline            9-10\n\
         0x0000000058000000-0x000000005fffffff 128M  online       yes    11\n\
         \n\
         Memory block size:       128M\n\
         Total online memory:     256M\n\
         Total offline memory:    256M\n"
    );
    // -b: bytes; -o: columns, `+` appending; ZONES splits by zone.
    assert_eq!(
        sh(&mut s, "lsmem -b -o block,size --summary=never").unwrap(),
        "BLOCK      SIZE\n 8-11 536870912\n"
    );
    assert_eq!(
        sh(&mut s, "lsmem -n -o +ZONES --summary=never").unwrap(),
        "0x0000000040000000-0x0000000047ffffff 128M  online yes    8         Normal\n\
         0x0000000048000000-0x0000000057ffffff 256M offline     9-10 Normal/Movable\n\
         0x0000000058000000-0x000000005fffffff 128M  online yes   11        Movable\n"
    );
    assert_eq!(
        sh(&mut s, "lsmem -b --summary").unwrap(),
        "Memory block size:            134217728\n\
         Total online memory:          268435456\n\
         Total offline memory:         268435456\n"
    );
    assert_eq!(
        sh(&mut s, "lsmem -a -r -o BLOCK,STATE").unwrap(),
        "BLOCK STATE\n8 online\n9 offline\n10 offline\n11 online\n"
    );
    let before = s.kernel.sys.mm.meminfo();
    for bad in [
        "lsmem -o FOO",
        "lsmem -o",
        "lsmem -x",
        "lsmem extra",
        "lsmem --summary=sometimes",
        "lsmem --bogus",
        "lsmem -r --summary=only",
    ] {
        assert_eq!(errno(sh(&mut s, bad)), Errno::EINVAL, "{bad}");
        assert_eq!(s.kernel.sys.mm.meminfo(), before, "{bad}");
    }
}

#[test]
fn human_sizes_as_util_linux() {
    use super::lsmem::human_size;
    assert_eq!(human_size(0), "0B");
    assert_eq!(human_size(1023), "1023B");
    assert_eq!(human_size(128 << 20), "128M");
    assert_eq!(human_size(3 << 29), "1.5G");
    assert_eq!(human_size((1 << 30) - 1), "1024M");
    assert_eq!(human_size(u64::MAX), "16E");
}

#[test]
fn chmem_enables_and_disables_like_util_linux() {
    use crate::mm::test_system::HOT_FIRST;
    let mut s = shell();
    for id in HOT_FIRST..HOT_FIRST + 4 {
        probe(&mut s, id);
    }
    // A size takes the lowest offline blocks; Movable where valid.
    assert_eq!(sh(&mut s, "chmem -e 256M").unwrap(), "");
    assert_eq!(state(&mut s, 9), "online\n");
    assert_eq!(state(&mut s, 10), "online\n");
    assert_eq!(state(&mut s, 11), "offline\n");
    let zones = sh(&mut s, "cat /sys/devices/system/memory/memory9/valid_zones").unwrap();
    assert_eq!(zones, "Movable\n");
    // Disabling takes the highest online ones (a bare number is MiB).
    let out = sh(&mut s, "chmem -v -d 128").unwrap();
    assert_eq!(
        out,
        "Memory Block 10 (0x0000000050000000-0x0000000057ffffff) disabled\n"
    );
    // A range of blocks, verbose; already-enabled ones are said so.
    let out = sh(&mut s, "chmem -v -e -b 9-11").unwrap();
    assert_eq!(
        out,
        "Memory Block 10 (0x0000000050000000-0x0000000057ffffff) enabled\n\
         Memory Block 11 (0x0000000058000000-0x000000005fffffff) enabled\n\
         Memory Block 9 (0x0000000048000000-0x000000004fffffff) already enabled\n"
    );
    // An address range, into the kernel zone.
    sh(&mut s, "chmem -d 0x60000000-0x67ffffff").unwrap();
    sh(&mut s, "chmem -e -z normal 0x60000000-0x67ffffff").unwrap();
    let zones = sh(
        &mut s,
        "cat /sys/devices/system/memory/memory12/valid_zones",
    )
    .unwrap();
    assert_eq!(zones, "Normal\n");
    // Disable with a zone: only blocks in it.
    sh(&mut s, "chmem -d -z Normal --blocks 12").unwrap();
    assert_eq!(state(&mut s, 12), "offline\n");
}

#[test]
fn chmem_bad_input_and_failures_change_nothing() {
    use crate::mm::test_system::{BOOT, HOT_FIRST};
    let mut s = shell();
    for id in HOT_FIRST..HOT_FIRST + 2 {
        probe(&mut s, id);
    }
    sh(&mut s, "chmem -e -b 10").unwrap();
    let snapshot = |s: &mut Shell<HostKernel>| {
        (
            s.kernel.sys.mm.meminfo(),
            sh(s, "lsmem -a -o BLOCK,STATE,ZONES").unwrap(),
        )
    };
    let before = snapshot(&mut s);
    for (bad, want) in [
        ("chmem", Errno::EINVAL),
        ("chmem 128M", Errno::EINVAL),
        ("chmem -e", Errno::EINVAL),
        ("chmem -e -d 128M", Errno::EINVAL),
        ("chmem -e 100M", Errno::EINVAL),
        ("chmem -e 12q", Errno::EINVAL),
        ("chmem -e 99999999999999999999", Errno::EINVAL),
        ("chmem -e 18446744073709551615", Errno::ERANGE),
        ("chmem -e 0x48000000-0x48000fff", Errno::EINVAL),
        ("chmem -e 48000000-4fffffff", Errno::EINVAL),
        ("chmem -e 0x50000000-0x47ffffff", Errno::EINVAL),
        ("chmem -e 1-2-3", Errno::EINVAL),
        ("chmem -e -b x", Errno::EINVAL),
        ("chmem -e -b 10-9", Errno::EINVAL),
        ("chmem -e -z Foo 128M", Errno::EINVAL),
        ("chmem -e -z", Errno::EINVAL),
        ("chmem -e 128M 256M", Errno::EINVAL),
        ("chmem --frob -e 128M", Errno::EINVAL),
        // Not present: all of the range or nothing.
        ("chmem -e -b 9-12", Errno::ENOENT),
        // More than there is: what was enabled is put back.
        ("chmem -e 512M", Errno::ENOSPC),
        // Boot memory refuses to go offline: the other block comes back.
        ("chmem -d -b 8-10", Errno::EBUSY),
        ("chmem -d 256M", Errno::EBUSY),
        // Zone mismatch in a range.
        ("chmem -d -z Normal -b 10", Errno::EINVAL),
    ] {
        let r = sh(&mut s, bad);
        assert!(r.is_err(), "{bad}: {r:?}");
        assert_eq!(errno(r), want, "{bad}");
        assert_eq!(snapshot(&mut s), before, "{bad}");
    }
    let _ = BOOT;
}

/// A block that refuses is skipped when a size is asked for, and said so,
/// as util-linux's chmem warns; the size is still met by another.
#[test]
fn chmem_size_skips_a_busy_block() {
    use crate::mm::test_system::HOT_FIRST;
    let mut s = shell();
    probe(&mut s, HOT_FIRST);
    sh(&mut s, "chmem -e -z normal -b 9").unwrap();
    probe(&mut s, HOT_FIRST + 1);
    sh(&mut s, "chmem -e -b 10").unwrap();
    // Pinned pages land in Movable: memory10.
    sh(&mut s, "pin 4K").unwrap();
    let out = sh(&mut s, "chmem -d 128M").unwrap();
    assert!(
        out.starts_with(
            "chmem: Memory Block 10 (0x0000000050000000-0x0000000057ffffff) disable failed: "
        ),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(state(&mut s, 9), "offline\n");
    assert_eq!(state(&mut s, 10), "online\n");
}

/// `devmem reconfigure`: kmem hot-adds device memory as System RAM, onlined
/// by the policy, and gives it back when free; bad input changes nothing.
#[test]
fn devmem_reconfigure_is_kmem() {
    let mut s = shell();
    let before = s.kernel.sys.mm.meminfo();
    let iomem = sh(&mut s, "cat /proc/iomem").unwrap();
    sh(
        &mut s,
        "echo online_movable > /sys/devices/system/memory/auto_online_blocks",
    )
    .unwrap();
    sh(&mut s, "devmem reconfigure 0 --mode=system-ram").unwrap();
    assert_eq!(
        sh(&mut s, "devmem list").unwrap(),
        "0 0xa0000000-0xafffffff pmem system-ram\n"
    );
    let io = sh(&mut s, "cat /proc/iomem").unwrap();
    assert!(
        io.contains(
            "a0000000-afffffff : Persistent Memory (legacy)\n  a0000000-a7ffffff : System RAM (kmem)\n  a8000000-afffffff : System RAM (kmem)\n"
        ),
        "{io}"
    );
    assert_eq!(state(&mut s, 20), "online\n");
    let zones = sh(
        &mut s,
        "cat /sys/devices/system/memory/memory21/valid_zones",
    )
    .unwrap();
    assert_eq!(zones, "Movable\n");
    let added = s.kernel.sys.mm.meminfo();
    assert_eq!(added.total - before.total, 256 << 20);
    // Busy: a map, a second reconfigure, removal from the console.
    for (bad, want) in [
        ("devmem map 0 --map=dev", Errno::EBUSY),
        ("devmem reconfigure 0 --mode=system-ram", Errno::EBUSY),
        (
            "echo 0xa0000000 > /sys/devices/system/memory/remove",
            Errno::EBUSY,
        ),
    ] {
        assert_eq!(errno(sh(&mut s, bad)), want, "{bad}");
        assert_eq!(s.kernel.sys.mm.meminfo(), added, "{bad}");
    }
    // In use: devdax is refused and every block stays online.
    sh(&mut s, "pin 4K").unwrap();
    let pinned = s.kernel.sys.mm.meminfo();
    assert_eq!(
        errno(sh(&mut s, "devmem reconfigure 0 --mode=devdax")),
        Errno::EBUSY
    );
    assert_eq!(s.kernel.sys.mm.meminfo(), pinned);
    assert_eq!(state(&mut s, 20), "online\n");
    assert_eq!(state(&mut s, 21), "online\n");
    sh(&mut s, "unpin").unwrap();
    sh(&mut s, "devmem reconfigure 0 --mode=devdax").unwrap();
    assert_eq!(s.kernel.sys.mm.meminfo(), before);
    assert_eq!(sh(&mut s, "cat /proc/iomem").unwrap(), iomem);
    assert_eq!(
        sh(&mut s, "devmem list").unwrap(),
        "0 0xa0000000-0xafffffff pmem unmapped\n"
    );
    for bad in [
        "devmem reconfigure",
        "devmem reconfigure 0",
        "devmem reconfigure x --mode=devdax",
        "devmem reconfigure 0 --mode=frob",
        "devmem reconfigure 0 --mode=devdax",
        "devmem reconfigure 0 --mode=system-ram extra",
        "devmem reconfigure 9 --mode=system-ram",
    ] {
        let e = errno(sh(&mut s, bad));
        assert!(matches!(e, Errno::EINVAL | Errno::ENODEV), "{bad}: {e}");
        assert_eq!(s.kernel.sys.mm.meminfo(), before, "{bad}");
    }
    // Mapped as ZONE_DEVICE: kmem refuses.
    sh(&mut s, "devmem map 0 --map=mem").unwrap();
    assert_eq!(
        errno(sh(&mut s, "devmem reconfigure 0 --mode=system-ram")),
        Errno::EBUSY
    );
}

/// Issue 10: a heap exhausted (by `pin`, say) makes a command `ENOMEM`,
/// never an abort. Each allocation from the line to the printed output is
/// failed in turn: every run either fails with `ENOMEM` and prints
/// nothing, or gets past them all and prints what it does with the heap
/// free.
#[test]
fn commands_with_the_heap_out_are_enomem() {
    use crate::mm::testing::heap_faults;
    let mut s = shell();
    for line in [
        "cat /proc/meminfo",
        "cat proc//meminfo/ /proc/buddyinfo",
        "echo a b c",
        "echo -n \"a  b\" 'c'",
        "ls /sys/devices/system/memory",
        "ls / /proc",
        "help",
    ] {
        let whole = sh(&mut s, line).unwrap();
        for n in 0.. {
            assert!(n < 1000, "{line}: never got past its allocations");
            // Room for the output before the faults: the sink is the
            // caller's, not on the path under test.
            let mut out = String::with_capacity(2 * whole.len());
            heap_faults::fail_nth(Some(n));
            let r = run(&mut s, line, &mut out);
            let fired = heap_faults::fired();
            heap_faults::fail_nth(None);
            match r {
                Err(e) => {
                    assert!(fired, "{line}, n={n}: {e:?}");
                    assert_eq!(e.errno, Errno::ENOMEM, "{line}, n={n}: {e}");
                    assert_eq!(out, "", "{line}, n={n}");
                }
                Ok(()) => {
                    assert!(!fired, "{line}, n={n}: a failure was swallowed");
                    assert_eq!(out, whole, "{line}, n={n}");
                    break;
                }
            }
        }
    }
}
