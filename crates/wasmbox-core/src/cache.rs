//! A content-addressed cache of compiled code: `DIR/<sha256 of the wasm>-<engine hash>.cwasm`.
//!
//! Entries are written to a temporary file and renamed into place, so a
//! reader never sees half an entry and concurrent writers of the same entry
//! are harmless. Entries are loaded with `deserialize_file`, which maps the
//! file, so every instance of one wasm shares the same compiled pages.
//!
//! The cache is bounded (`WASMBOX_CACHE_MAX_MB`, default 512): a store that
//! takes it over the limit removes the least recently used entries (a hit
//! refreshes an entry's mtime). The shim's default directory is under
//! containerd's state, which is usually a tmpfs: unbounded, it would hold
//! every wasm a node ever ran in RAM.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable bounding the cache, in MiB.
pub const MAX_MB_ENV: &str = "WASMBOX_CACHE_MAX_MB";
const DEFAULT_MAX_MB: u64 = 512;

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

impl Cache {
    /// A cache rooted at `dir`, created (mode 0700) if missing, bounded by
    /// `WASMBOX_CACHE_MAX_MB` (default 512 MiB).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Cache> {
        let mb = std::env::var(MAX_MB_ENV).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_MAX_MB);
        Cache::with_limit(dir, mb.saturating_mul(1024 * 1024))
    }

    /// A cache rooted at `dir` holding at most `max_bytes` of entries.
    pub fn with_limit(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Cache> {
        let dir = dir.into();
        // Entries are native code loaded without re-validation: only the
        // owner may write here.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating cache directory {}", dir.display()), e))?;
        Ok(Cache { dir, max_bytes })
    }

    /// Marks `entry` as just used (best effort).
    pub fn touch(&self, entry: &Path) {
        if let Ok(f) = std::fs::File::options().append(true).open(entry) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Removes least recently used entries, never `keep`, until the cache
    /// fits its limit.
    fn evict(&self, keep: &Path) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = rd
            .filter_map(|e| {
                let e = e.ok()?;
                let path = e.path();
                if path.extension()? != "cwasm" {
                    return None;
                }
                let md = e.metadata().ok()?;
                Some((md.modified().ok()?, md.len(), path))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                log::info!("compile cache over {} bytes: removed {}", self.max_bytes, path.display());
                total -= len;
            }
        }
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
        })?;
        self.evict(entry);
        Ok(())
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

    #[test]
    fn least_recently_used_entries_go_first() {
        let scratch = tempfile::Builder::new().prefix("wasmbox-cache-").tempdir().unwrap();
        let c = Cache::with_limit(scratch.path(), 20).unwrap();
        let (a, b, d) = (c.entry(b"a", &0u8), c.entry(b"b", &0u8), c.entry(b"d", &0u8));
        c.store(&a, b"12345678").unwrap();
        c.store(&b, b"12345678").unwrap();
        let ago = |s| std::time::SystemTime::now() - std::time::Duration::from_secs(s);
        let set = |p: &Path, t| std::fs::File::options().append(true).open(p).unwrap().set_modified(t).unwrap();
        set(&a, ago(100));
        set(&b, ago(50));
        // a is used again: b is now the least recently used.
        c.touch(&a);
        c.store(&d, b"12345678").unwrap();
        assert!(a.exists() && d.exists() && !b.exists());
        // An entry larger than the whole limit is still kept (it is in use).
        let big = c.entry(b"big", &0u8);
        c.store(&big, &[0u8; 64]).unwrap();
        assert!(big.exists());
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 1);
    }
}
