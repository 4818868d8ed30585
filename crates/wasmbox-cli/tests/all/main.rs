//! Integration tests of the core with no containerd: the `wasmbox` binary
//! (`wasmbox run`, `wasmbox image build`) and the instance-process protocol.
mod image;
mod instance;
mod run;

use std::path::Path;
use std::process::{Command, Output};

pub const WASMBOX: &str = env!("CARGO_BIN_EXE_wasmbox");

/// A scratch directory, removed (with all it holds) when dropped.
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

pub fn tmpdir(name: &str) -> Scratch {
    Scratch(tempfile::Builder::new().prefix(&format!("wasmbox-it-{name}-")).tempdir().unwrap())
}

pub fn wasmbox(args: &[&str], cache: &std::path::Path) -> Output {
    // The cache must be a private directory: one the command creates.
    Command::new(WASMBOX).args(args).env("WASMBOX_CACHE_DIR", cache.join("cache")).output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
