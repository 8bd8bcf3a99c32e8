//! Links the kernel with `linker.ld` (and relinks when it changes). Only the
//! bare-metal kernel binary gets it: host builds link as usual.

fn main() {
    println!("cargo::rerun-if-changed=linker.ld");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it");
        println!("cargo::rustc-link-arg-bins=-T{dir}/linker.ld");
    }
}
