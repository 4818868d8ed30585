//! Link the binary as a plain (non-PIE) executable. A PIE of this size has
//! ~55k relative relocations that the dynamic loader applies at every exec,
//! dirtying ~0.9 MB of pages per process; non-PIE resolves them at link
//! time, so each start is faster and those pages stay shared.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
