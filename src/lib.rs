//! Library half of the kernel: everything but the entry point, so that the
//! mm core, the console and the parsers are tested on the host.
#![cfg_attr(any(not(test), target_os = "none"), no_std)]

#[cfg(all(test, target_os = "none"))]
compile_error!(
    "the tests run on the host: `cargo htest` (host unit tests) or `scripts/test` (everything)"
);

extern crate alloc;

// One granule per kernel (mm::granule): `--all-features` cannot build one.
#[cfg(all(feature = "granule-16k", feature = "granule-64k"))]
compile_error!("features granule-16k and granule-64k exclude each other: enable one");

// Dev-dependencies of the QEMU tests' QMP client and of the walker
// benchmark (examples/); the host unit tests get them too
// (unused_crate_dependencies).
#[cfg(test)]
use aarch64_paging as _;
#[cfg(test)]
use serde_json as _;

pub mod arch;
pub mod commands;
pub mod console;
pub mod drivers;
pub mod error;
pub mod fs;
pub mod init;
pub mod log;
pub mod mm;
pub mod platform;
