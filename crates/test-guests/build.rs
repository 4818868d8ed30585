//! Compiles `guests/` for wasm32-wasip1 and wasm32-wasip2, and `http/`,
//! `p3-cli/`, `p3-http/` and `spin-app/` for wasm32-wasip2, with a nested
//! cargo, and `proposals/*.wat` with `wat`, and exposes the paths as
//! constants (`P1`, `P2`, `HTTP`, `P3_CLI`, `P3_HTTP`, `SPIN_APP`,
//! `PROPOSALS`) in the crate.
use std::path::{Path, PathBuf};
use std::process::Command;

/// `cargo build --release` of the guest crate in `dir` for `targets`,
/// into `target_dir`, rebuilt when its sources change.
fn build_guest(dir: &Path, targets: &[&str], target_dir: &Path, env: &[(&str, &str)]) {
    println!("cargo:rerun-if-changed={}", dir.join("src").display());
    println!("cargo:rerun-if-changed={}", dir.join("Cargo.toml").display());
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--release"]);
    for t in targets {
        cmd.args(["--target", t]);
    }
    cmd.arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        // The outer build's flags are for the host, not for the guests.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .envs(env.iter().copied());
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("run cargo for the wasm guests in {} (is rustup's {targets:?} installed?): {e}", dir.display())
    });
    assert!(
        status.success(),
        "building the wasm guests in {} failed: run `rustup target add {}`",
        dir.display(),
        targets.join(" ")
    );
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out.join("guests-target");
    build_guest(
        &manifest.join("guests"),
        &["wasm32-wasip1", "wasm32-wasip2"],
        &target_dir,
        // `greet` is exported from the core module so `#greet` can call it.
        &[("CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS", "-Clink-arg=--export=greet")],
    );
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
    build_guest(&manifest.join("http"), &["wasm32-wasip2"], &target_dir, &[]);
    let path = target_dir.join("wasm32-wasip2").join("release").join("httpguest.wasm");
    assert!(path.exists(), "missing {}", path.display());
    consts.push_str(&format!(
        "/// The wasi:http/proxy component (routes: /, /echo, /trap, /sleep, /fetch, /env).\npub const HTTP: &str = {:?};\n",
        path.display().to_string()
    ));
    // WASI 0.3 guests (the component model's async ABI): a command and an
    // HTTP handler, built with the wasip3 bindings crate.
    for (name, dir, krate, what) in [
        (
            "P3_CLI",
            "p3-cli",
            "p3cli",
            "The wasi:cli/command@0.3.0 component (verbs: hello, env, read, exit, fail, sleep, trap).",
        ),
        (
            "P3_HTTP",
            "p3-http",
            "p3http",
            "The wasi:http/service@0.3.0 component (routes: /, /echo, /stream, /trap, /env).",
        ),
    ] {
        build_guest(&manifest.join(dir), &["wasm32-wasip2"], &target_dir, &[]);
        let path = target_dir.join("wasm32-wasip2").join("release").join(format!("{krate}.wasm"));
        assert!(path.exists(), "missing {}", path.display());
        consts.push_str(&format!("/// {what}\npub const {name}: &str = {:?};\n", path.display().to_string()));
    }
    // A Spin component built with Spin's own SDK.
    build_guest(&manifest.join("spin-app"), &["wasm32-wasip2"], &target_dir, &[]);
    let path = target_dir.join("wasm32-wasip2").join("release").join("spinapp.wasm");
    assert!(path.exists(), "missing {}", path.display());
    consts.push_str(&format!(
        "/// A Spin HTTP component built with spin-sdk 5.2 (routes: /hello, /var, /route).\npub const SPIN_APP: &str = {:?};\n",
        path.display().to_string()
    ));
    // One core module per wasm proposal the engine enables, from the text
    // format: each exits 42 when the proposal works.
    let proposals = manifest.join("proposals");
    println!("cargo:rerun-if-changed={}", proposals.display());
    let mut names: Vec<String> = std::fs::read_dir(&proposals)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".wat").map(str::to_string))
        .collect();
    names.sort();
    std::fs::create_dir_all(out.join("proposals")).unwrap();
    consts
        .push_str("/// (proposal, core module using it): each exits 42.\npub const PROPOSALS: &[(&str, &str)] = &[\n");
    for name in names {
        let wasm = wat::parse_file(proposals.join(format!("{name}.wat")))
            .unwrap_or_else(|e| panic!("proposals/{name}.wat: {e}"));
        let path = out.join("proposals").join(format!("{name}.wasm"));
        std::fs::write(&path, wasm).unwrap();
        consts.push_str(&format!("    ({name:?}, {:?}),\n", path.display().to_string()));
    }
    consts.push_str("];\n");
    std::fs::write(out.join("guests.rs"), consts).unwrap();
}
