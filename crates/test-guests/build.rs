//! Compiles `guests/` for wasm32-wasip1 and wasm32-wasip2 with a nested cargo
//! and exposes the paths as constants (`P1`, `P2`) in the crate.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let guests = manifest.join("guests");
    println!("cargo:rerun-if-changed={}", guests.join("src").display());
    println!("cargo:rerun-if-changed={}", guests.join("Cargo.toml").display());
    let target_dir = out.join("guests-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip1", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags are for the host, not for the guests.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        // `greet` is exported from the core module so `#greet` can call it.
        .env("CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS", "-Clink-arg=--export=greet")
        .status()
        .expect("run cargo for the wasm guests (is rustup's wasm32-wasip1/wasip2 target installed?)");
    assert!(status.success(), "building the wasm guests failed: run `rustup target add wasm32-wasip1 wasm32-wasip2`");
    let mut consts = String::new();
    for (name, triple) in [("P1", "wasm32-wasip1"), ("P2", "wasm32-wasip2")] {
        let path = target_dir.join(triple).join("release").join("testguest.wasm");
        assert!(path.exists(), "missing {}", path.display());
        consts.push_str(&format!(
            "/// testguest built for {triple}.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    // The wasi:http/proxy component (a cdylib for wasm32-wasip2).
    let http = manifest.join("http");
    println!("cargo:rerun-if-changed={}", http.join("src").display());
    println!("cargo:rerun-if-changed={}", http.join("Cargo.toml").display());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(http.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo for the http guest");
    assert!(status.success(), "building the http guest failed");
    let path = target_dir.join("wasm32-wasip2").join("release").join("httpguest.wasm");
    assert!(path.exists(), "missing {}", path.display());
    consts.push_str(&format!(
        "/// The wasi:http/proxy component (routes: /, /echo, /trap, /sleep, /fetch, /env).\npub const HTTP: &str = {:?};\n",
        path.display().to_string()
    ));
    std::fs::write(out.join("guests.rs"), consts).unwrap();
}
