//! Library half of the kernel: everything but the entry point, so that the
//! mm core, the console and the parsers are tested on the host.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

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
