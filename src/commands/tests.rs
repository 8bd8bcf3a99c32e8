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
    let help = crate::console::System::help(&s);
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
