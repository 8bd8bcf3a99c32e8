//! The commands over a booted host system, through the shell as a user
//! types them.

use alloc::string::String;

use super::{Kernel, Shell};
use crate::console::run;
use crate::error::{Errno, Result};
use crate::mm::layout::PAGE_SIZE;
use crate::mm::system::MemorySystem;
use crate::mm::test_system::TestSystem;
use crate::mm::testing::heap_faults;
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

/// A redirected command whose target cannot be written does not run, as
/// a shell opens the target first (found by `any_line_runs_or_fails_cleanly`:
/// `unpin > cat` unpinned, then failed).
#[test]
fn a_command_redirected_nowhere_does_not_run() {
    let mut s = shell();
    sh(&mut s, "pin 8K").unwrap();
    let pinned = s.kernel.sys.mm.meminfo();
    for (line, want) in [
        ("unpin > cat", Errno::ENOENT),
        ("unpin > /proc/meminfo", Errno::EPERM),
        ("unpin > /sys", Errno::EISDIR),
        ("pin 4K >> /nowhere", Errno::ENOENT),
    ] {
        assert_eq!(errno(sh(&mut s, line)), want, "{line}");
        assert_eq!(s.kernel.sys.mm.meminfo(), pinned, "{line}");
    }
    sh(&mut s, "unpin").unwrap();
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
    assert_eq!(human_size(0).to_string(), "0B");
    assert_eq!(human_size(1023).to_string(), "1023B");
    assert_eq!(human_size(128 << 20).to_string(), "128M");
    assert_eq!(human_size(3 << 29).to_string(), "1.5G");
    assert_eq!(human_size((1 << 30) - 1).to_string(), "1024M");
    assert_eq!(human_size(u64::MAX).to_string(), "16E");
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

/// What a console line may change, read with the heap whole: the memory
/// figures, the layout (iomem, blocks, page tables, vmemmap), the buddy's
/// free lists, the counters, the devices, memhog's areas, `pin`'s pages
/// and the settings.
fn memory_state(s: &mut Shell<HostKernel>) -> String {
    let mut all = format!(
        "{:?}\npinned {}\n",
        s.kernel.sys.mm.meminfo(),
        s.kernel.pinned.len()
    );
    // Of the counters, those of the state (`nr_*`) and of misuse: events
    // (online, TLB invalidations, ...) happen in a rollback too.
    let vmstat = sh(s, "cat /proc/vmstat").unwrap();
    for l in vmstat.lines().filter(|l| {
        !["memory_", "devmem_", "pgtable_", "tlb_", "pgmigrate_"]
            .iter()
            .any(|p| l.starts_with(p))
    }) {
        all += l;
        all.push('\n');
    }
    for line in [
        "cat /proc/iomem /proc/buddyinfo /proc/zoneinfo",
        "lsmem -a -o BLOCK,STATE,ZONES,NODE",
        "devmem list",
        "memhog list",
        "cat /sys/devices/system/memory/auto_online_blocks",
        "cat /sys/module/memory_hotplug/parameters/memmap_on_memory",
        "cat /sys/kernel/debug/fail_nth_alloc",
        "cat /sys/devices/system/node/online /sys/devices/system/node/has_memory",
        "cat /sys/kernel/debug/kernel_page_tables /sys/kernel/debug/vmemmap",
    ] {
        all += &sh(s, line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    all
}

/// `got` is `want`, or the first line where they part.
fn assert_same_state(what: &str, got: &str, want: &str) {
    if got == want {
        return;
    }
    let (mut g, mut w) = (got.lines(), want.lines());
    for i in 0.. {
        let (a, b) = (g.next(), w.next());
        assert_eq!(a, b, "{what}: memory state differs at line {i}");
        if a.is_none() {
            break;
        }
    }
}

/// Runs `line` after `setup` with the n-th heap allocation failing, for
/// n = 0, 1, ... until it gets past them all. Each failure is `ENOMEM`
/// (or, where the line fails anyway, its own errno with a shortened
/// message), prints nothing and leaves the memory state as it was; the
/// run past them all does what a run with the heap whole does. An
/// infallible allocation aborts the test binary. How many allocations
/// the line made.
fn every_allocation_fails_in_turn(setup: &[&str], line: &str) -> u64 {
    let fresh = || {
        let mut s = shell();
        for l in setup {
            sh(&mut s, l).unwrap_or_else(|e| panic!("{l}: {e}"));
        }
        s
    };
    let mut whole = fresh();
    let want = sh(&mut whole, line);
    let want_state = memory_state(&mut whole);
    let mut s = fresh();
    let before = memory_state(&mut s);
    let want_len = want.as_ref().map_or(0, String::len);
    for n in 0.. {
        assert!(n < 5000, "{line}: never got past its allocations");
        // Room for the output before the faults: the sink is the
        // caller's, not on the path under test.
        let mut out = String::with_capacity(2 * want_len + 64);
        heap_faults::fail_nth(Some(n));
        let r = run(&mut s, line, &mut out);
        let fired = heap_faults::fired();
        heap_faults::fail_nth(None);
        let what = format!("{line}, n={n}");
        if !fired {
            match (r, &want) {
                (Ok(()), Ok(w)) => assert_eq!(&out, w, "{what}"),
                (Err(e), Err(w)) => assert_eq!(e, *w, "{what}"),
                (r, w) => panic!("{what}: {r:?} where the whole heap gives {w:?}"),
            }
            assert_same_state(&what, &memory_state(&mut s), &want_state);
            return n;
        }
        match r {
            Ok(()) => panic!("{what}: an allocation failed and the line went on: {out:?}"),
            Err(e) if e.errno == Errno::ENOMEM => {}
            Err(e) => assert_eq!(
                Some(e.errno),
                want.as_ref().err().map(|w| w.errno),
                "{what}: {e}"
            ),
        }
        assert_eq!(out, "", "{what}");
        assert_same_state(&what, &memory_state(&mut s), &before);
    }
    unreachable!()
}

/// Issue 10: a heap exhausted (by `pin`, say) makes a command `ENOMEM`
/// with nothing changed, never an abort. Every command of the console
/// table that runs on the host (the others need the CPU: `touch`, `crash`,
/// `poke`, `page`, `dmesg`, `poweroff`, `reboot`, `bench`, `stress`), and
/// the shell's built-ins, with each allocation failed in turn; one test
/// per command, so that an abort names it.
fn each_line_with_the_heap_out(cases: &[(&[&str], &str)]) {
    for &(setup, line) in cases {
        every_allocation_fails_in_turn(setup, line);
    }
}

fn probe_line(id: u64) -> String {
    let addr = crate::mm::test_system::start_of(id);
    format!("echo {addr:#x} > /sys/devices/system/memory/probe")
}

fn online_movable_line(id: u64) -> String {
    format!("echo online_movable > /sys/devices/system/memory/memory{id}/state")
}

#[test]
fn builtins_with_the_heap_out_are_enomem() {
    use crate::mm::test_system::HOT_FIRST;
    let p0 = probe_line(HOT_FIRST);
    each_line_with_the_heap_out(&[
        (&[], "help"),
        (&[], "echo a b c"),
        (&[], "echo -n \"a  b\" 'c'"),
        (&[], "cat proc//meminfo/ /proc/buddyinfo"),
        (&[], "ls / /proc"),
        (&[&p0], "ls /sys/devices/system/memory"),
        (&[], "frobnicate"),
    ]);
}

#[test]
fn lsmem_with_the_heap_out_is_enomem() {
    use crate::mm::test_system::HOT_FIRST;
    let (p0, p1, p2) = (
        probe_line(HOT_FIRST),
        probe_line(HOT_FIRST + 1),
        probe_line(HOT_FIRST + 2),
    );
    let on1 = online_movable_line(HOT_FIRST + 1);
    let blocks = [p0.as_str(), p1.as_str(), p2.as_str(), on1.as_str()];
    each_line_with_the_heap_out(&[
        (&blocks, "lsmem"),
        (&blocks, "lsmem -a -o +ZONES,NODE"),
        (&blocks, "lsmem -b --summary"),
        (&blocks, "lsmem -r -n --output-all"),
        (
            &blocks,
            "lsmem -o BLOCK,SIZE,RANGE,STATE,REMOVABLE,NODE,ZONES",
        ),
    ]);
}

#[test]
fn chmem_with_the_heap_out_is_enomem() {
    use crate::mm::test_system::{start_of, HOT_FIRST};
    let (p0, p1, p2) = (
        probe_line(HOT_FIRST),
        probe_line(HOT_FIRST + 1),
        probe_line(HOT_FIRST + 2),
    );
    let (on0, on1) = (
        online_movable_line(HOT_FIRST),
        online_movable_line(HOT_FIRST + 1),
    );
    let blocks = [p0.as_str(), p1.as_str(), p2.as_str(), on1.as_str()];
    let online = [p0.as_str(), p1.as_str(), on0.as_str(), on1.as_str()];
    let range = format!(
        "chmem -e -z normal {:#x}-{:#x}",
        start_of(HOT_FIRST),
        start_of(HOT_FIRST + 1) - 1
    );
    each_line_with_the_heap_out(&[
        (&blocks, "chmem -e 256M"),
        (&blocks, "chmem -v -e -b 9-11"),
        (&blocks, &range),
        (&online, "chmem -v -d 256M"),
        (&online, "chmem -d -b 9-10"),
    ]);
}

#[test]
fn devmem_with_the_heap_out_is_enomem() {
    let movable = "echo online_movable > /sys/devices/system/memory/auto_online_blocks";
    each_line_with_the_heap_out(&[
        (&[], "devmem list"),
        (&[], "devmem map 0 --map=dev"),
        (&[], "devmem map 0 --map=mem"),
        (&["devmem map 0 --map=dev"], "devmem unmap 0"),
        (&[movable], "devmem reconfigure 0 --mode=system-ram"),
        (
            &[movable, "devmem reconfigure 0 --mode=system-ram"],
            "devmem reconfigure 0 --mode=devdax",
        ),
    ]);
}

#[test]
fn pin_with_the_heap_out_is_enomem() {
    each_line_with_the_heap_out(&[
        (&[], "pin 1M"),
        // Past a chunk of the list of pinned pages.
        (&["pin 4K"], "pin 40M"),
        (&["pin 1M"], "unpin"),
    ]);
}

#[test]
fn memhog_with_the_heap_out_is_enomem() {
    let two_areas = ["memhog 1M", "memhog 64K"];
    each_line_with_the_heap_out(&[
        (&[], "memhog 1M"),
        (&two_areas, "memhog list"),
        (&two_areas, "memhog check"),
        (&two_areas, "memhog check 1"),
        (&two_areas, "memhog free 0"),
        (&two_areas, "memhog free"),
    ]);
}

/// Every console file, read and written, with each allocation failed in
/// turn (see [`every_allocation_fails_in_turn`]).
#[test]
fn files_with_the_heap_out_are_enomem() {
    use crate::mm::test_system::{start_of, HOT_FIRST};
    let id = HOT_FIRST;
    let probe = format!(
        "echo {:#x} > /sys/devices/system/memory/probe",
        start_of(id)
    );
    let online = format!("echo online_movable > /sys/devices/system/memory/memory{id}/state");
    let busy = [
        probe.as_str(),
        online.as_str(),
        "memhog 64K",
        "devmem map 0 --map=mem",
    ];
    // Every file under `/`, found as `ls` lists them.
    let mut s = shell();
    for l in busy {
        sh(&mut s, l).unwrap();
    }
    let (mut dirs, mut files) = (vec![String::new()], Vec::new());
    while let Some(d) = dirs.pop() {
        let listing = sh(&mut s, &format!("ls {d}/")).unwrap();
        for e in listing.lines() {
            match e.strip_suffix('/') {
                // `nodeN/memoryM` and `memoryM/nodeN` are the directories
                // walked from `memory` and `node`, again.
                Some(_) if d.contains("/memory/") || d.contains("/node/") => {}
                Some(sub) => dirs.push(format!("{d}/{sub}")),
                None => files.push(format!("{d}/{e}")),
            }
        }
    }
    assert!(files.len() > 30, "{files:?}");
    for f in &files {
        every_allocation_fails_in_turn(&busy, &format!("cat {f}"));
    }
    let mem = "/sys/devices/system/memory";
    let block = format!("{mem}/memory{id}");
    let via_node = format!("/sys/devices/system/node/node0/memory{id}");
    let offline = [probe.as_str()];
    let writes: &[(&[&str], String)] = &[
        (&[], format!("echo online > {mem}/auto_online_blocks")),
        (&[], format!("echo {:#x} > {mem}/probe", start_of(id))),
        (&offline, format!("echo {:#x} > {mem}/remove", start_of(id))),
        (
            &[],
            "echo Y > /sys/module/memory_hotplug/parameters/memmap_on_memory".into(),
        ),
        (&[], "echo 3 > /sys/kernel/debug/fail_nth_alloc".into()),
        (&offline, format!("echo online > {block}/state")),
        (&offline, format!("echo online_kernel > {via_node}/state")),
        (&offline, format!("echo online_movable > {block}/state")),
        (&offline, format!("echo 1 > {block}/online")),
        (&busy[..2], format!("echo offline > {block}/state")),
        (&busy[..2], format!("echo 0 > {via_node}/online")),
    ];
    for (setup, line) in writes {
        every_allocation_fails_in_turn(setup, line);
    }
}
