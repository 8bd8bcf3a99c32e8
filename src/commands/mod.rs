//! The console's commands beyond the shell's built-ins: one table of
//! (name, usage, what it does, handler), from which `help` is made.
//!
//! Commands reach memory through [`Kernel::with_mm`], so those that only
//! need the memory system run on the host over any [`MemorySystem`];
//! the ones that need the real CPU (faults, firmware, other CPUs) are
//! built for the target only.

#[cfg(target_os = "none")]
mod bench;
#[cfg(target_os = "none")]
mod debug;
#[cfg(all(test, not(any(feature = "granule-16k", feature = "granule-64k"))))]
mod fuzz_tests;
#[cfg(target_os = "none")]
mod lockbench;
mod lsmem;
pub mod mem;
mod memhog;
#[cfg(target_os = "none")]
mod stress;
#[cfg(all(test, not(any(feature = "granule-16k", feature = "granule-64k"))))]
mod tests;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::console::System;
use crate::err;
use crate::error::{Error, Result};
use crate::fs::Files;
use crate::mm::pgtable::Translation;
use crate::mm::system::MemorySystem;
use crate::platform::cmdline::parse_u64;

/// What commands and files need of the machine.
pub trait Kernel {
    type T: Translation;
    /// Runs `f` on the memory system, under its lock.
    fn with_mm<R>(&mut self, f: impl FnOnce(&mut MemorySystem<Self::T>) -> Result<R>) -> Result<R>;
    /// CPUs running, bit n for CPU n.
    fn cpus_online(&self) -> u64;
    /// Pages held by `pin`, as a process would hold them.
    fn pinned(&mut self) -> &mut mem::Pinned;
}

pub type Handler<K> = fn(&mut K, &[&str], &mut dyn Write) -> Result<()>;

/// One command: `argv[0]`, its usage line and what it does (for `help`).
pub struct Command<K> {
    pub name: &'static str,
    pub usage: &'static str,
    pub about: &'static str,
    pub run: Handler<K>,
}

/// Every command, in `help` order.
pub fn commands<K: Kernel>() -> Vec<Command<K>> {
    let mut all = Vec::new();
    #[cfg(target_os = "none")]
    all.extend(debug::commands::<K>());
    all.extend(lsmem::commands::<K>());
    all.extend(mem::commands::<K>());
    all.extend(memhog::commands::<K>());
    #[cfg(target_os = "none")]
    all.extend([
        Command {
            name: "stress",
            usage: "stress [--hotplug-only|--workers-only|--spin-workers|--memhog] [--profile] [CYCLES|MS [WORKERS]]",
            about: "secondary CPUs churn pages while CPU 0 cycles hotplug of held-back RAM",
            run: |_, argv, out| stress::stress(argv, out),
        },
        Command {
            name: "bench",
            usage: "bench hotplug ADDR SIZE | bench lock [MS [CPUS]]",
            about: "time hotplug of held-back RAM (RAM, TLBIs); fairness of the ticket lock",
            run: bench::command,
        },
        Command {
            name: "bench",
            usage: "bench migrate ADDR",
            about: "time the offline of a block full of memhog pages against a copy",
            run: bench::command,
        },
    ]);
    all
}

/// The column `help` aligns descriptions at.
const HELP_COLUMN: usize = 28;

/// Writes `help`'s lines for `cmds`.
pub fn help<K>(cmds: &[Command<K>], out: &mut dyn Write) -> Result<()> {
    for c in cmds {
        writeln!(out, "  {:<w$}{}", c.usage, c.about, w = HELP_COLUMN)?;
    }
    Ok(())
}

/// A number or address argument (`0x...` or decimal).
pub fn parse_number(w: Option<&&str>, what: &str) -> Result<u64> {
    let w = w.ok_or_else(|| err!(EINVAL, "missing {what}"))?;
    parse_u64(w).ok_or_else(|| err!(EINVAL, "bad {what} {w:?}"))
}

/// The shell's view of the kernel: its files and its commands.
pub struct Shell<K: Kernel> {
    pub kernel: K,
    commands: Vec<Command<K>>,
}

impl<K: Kernel> Shell<K> {
    pub fn new(kernel: K) -> Self {
        Shell {
            kernel,
            commands: commands(),
        }
    }

    fn with_files<R>(&mut self, f: impl FnOnce(&mut Files<K::T>) -> Result<R>) -> Result<R> {
        let cpus_online = self.kernel.cpus_online();
        self.kernel.with_mm(|mm| f(&mut Files { mm, cpus_online }))
    }
}

impl<K: Kernel> System for Shell<K> {
    fn read(&mut self, path: &str, out: &mut dyn Write) -> Result<()> {
        self.with_files(|f| f.read(path, out))
    }

    fn write(&mut self, path: &str, data: &str) -> Result<()> {
        self.with_files(|f| f.write(path, data))
    }

    fn writable(&mut self, path: &str) -> Result<()> {
        self.with_files(|f| f.writable(path))
    }

    fn list(&mut self, path: &str) -> Result<Vec<String>> {
        self.with_files(|f| f.list(path))
    }

    fn command(&mut self, argv: &[&str], out: &mut dyn Write) -> Result<()> {
        match self.commands.iter().find(|c| c.name == argv[0]) {
            Some(c) => (c.run)(&mut self.kernel, argv, out),
            None => Err(Error::unknown_command(argv[0])),
        }
    }

    fn help(&self, out: &mut dyn Write) -> Result<()> {
        help(&self.commands, out)
    }
}

/// The running kernel: the one memory system, the CPUs SMP started.
#[cfg(target_os = "none")]
#[derive(Default)]
pub struct Machine {
    pinned: mem::Pinned,
}

#[cfg(target_os = "none")]
impl Kernel for Machine {
    type T = crate::mm::translation::KernelTranslation;

    fn with_mm<R>(&mut self, f: impl FnOnce(&mut MemorySystem<Self::T>) -> Result<R>) -> Result<R> {
        crate::mm::global::with_mm(f)?
    }

    fn cpus_online(&self) -> u64 {
        crate::arch::aarch64::smp::online_mask()
    }

    fn pinned(&mut self) -> &mut mem::Pinned {
        &mut self.pinned
    }
}
