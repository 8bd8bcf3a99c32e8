//! Every dependency, named once, for the crates Cargo hands all of them to
//! but whose own code uses few: the kernel binary (a shell around `hpk`)
//! and the QEMU tests (which drive the kernel over its console). They
//! include this file (`#[path]`), so that `unused_crate_dependencies`
//! ([lints.rust] in Cargo.toml) holds for every crate of the package while
//! its check stays meaningful for the library itself. Not a module of
//! `hpk`. A new dependency goes in Cargo.toml and here.

use aarch64_cpu as _;
#[cfg(target_arch = "aarch64")]
use arm_gic as _;
use bitflags as _;
use fdt as _;
use linked_list_allocator as _;
use log as _;
use smccc as _;
use spin as _;
use tock_registers as _;
use virtio_drivers as _;
