//! A harness that boots the kernel on QEMU and drives its serial console
//! (`console.md`): one [`Qemu`] per test, talking over `-serial stdio`.
//!
//! ```ignore
//! let mut q = Qemu::boot(Opts::new().mem("1G"));
//! assert_eq!(q.read("/sys/devices/system/cpu/online"), "0\n");
//! q.run_err("cat /nope", "ENOENT");
//! q.poweroff();
//! ```
//!
//! Every wait is bounded; a timeout or any failed expectation panics with
//! the whole console log so far (and QEMU's stderr). Dropping a [`Qemu`]
//! kills and reaps the process. At most [`MAX_QEMUS`] instances run at
//! once, whatever the number of test threads.
//!
//! By topic: [`qemu`] starts and bounds QEMU, [`console`] talks to the
//! kernel's console, [`qmp`] to QEMU's QMP socket, and [`granule`] says
//! which granule (and kernel) is under test. Everything a test uses is
//! re-exported here.

// Each test binary uses only part of the harness.
#![allow(dead_code, unused_imports)]

// Every test crate gets every dependency (unused_crate_dependencies).
#[path = "../../src/extern_deps.rs"]
mod extern_deps;
use aarch64_paging as _;
use hpk as _;
use proptest as _;

mod console;
mod granule;
mod qemu;
mod qmp;

pub use console::{figure, MISUSE_COUNTERS, PROMPT};
pub use granule::{
    block_id, block_kb, block_size, boot_blocks, granule, granule_kernel, kernel_elf, page_size,
    struct_pages_kb, struct_pages_per_block_kb, vmemmap_va, Granule, RAM_BASE,
};
pub use qemu::{Opts, Qemu, MAX_QEMUS, TIMEOUT};
pub use qmp::Qmp;
