//! Integration tests of the core with no containerd: the `wasmbox` binary
//! (`wasmbox run`, `wasmbox image build`) and the instance-process protocol.
mod image;
mod instance;
mod run;

use std::path::PathBuf;
use std::process::{Command, Output};

pub const WASMBOX: &str = env!("CARGO_BIN_EXE_wasmbox");

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wasmbox-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn wasmbox(args: &[&str], cache: &std::path::Path) -> Output {
    Command::new(WASMBOX).args(args).env("WASMBOX_CACHE_DIR", cache).output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
