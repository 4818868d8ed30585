//! A content-addressed cache of compiled code: `DIR/<sha256 of the wasm>-<engine hash>.cwasm`.
//!
//! Entries are written to a temporary file and renamed into place, so a
//! reader never sees half an entry and concurrent writers of the same entry
//! are harmless. Entries are loaded with `deserialize_file`, which maps the
//! file, so every instance of one wasm shares the same compiled pages.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache rooted at `dir`, created (mode 0700) if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Cache> {
        let dir = dir.into();
        // Entries are native code loaded without re-validation: only the
        // owner may write here.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating cache directory {}", dir.display()), e))?;
        Ok(Cache { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry for `wasm` compiled by an engine whose compatibility hash is `engine`.
    pub fn entry(&self, wasm: &[u8], engine: &impl Hash) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.hash(&mut h);
        self.dir.join(format!("{:x}-{:016x}.cwasm", Sha256::digest(wasm), h.finish()))
    }

    /// Stores `compiled` at `entry` atomically (temp file + rename).
    pub fn store(&self, entry: &Path, compiled: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            entry.file_name().unwrap_or_default().to_string_lossy()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(compiled)?;
            f.sync_data()?;
            std::fs::rename(&tmp, entry)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("writing cache entry {}", entry.display()), e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_keyed_by_content_and_engine() {
        let scratch = tempfile::Builder::new().prefix("wasmbox-cache-").tempdir().unwrap();
        let dir = scratch.path().join("cache");
        let c = Cache::new(&dir).unwrap();
        let a = c.entry(b"one", &1u32);
        assert_eq!(a, c.entry(b"one", &1u32));
        assert_ne!(a, c.entry(b"two", &1u32));
        assert_ne!(a, c.entry(b"one", &2u32));
        c.store(&a, b"compiled").unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"compiled");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }
}
