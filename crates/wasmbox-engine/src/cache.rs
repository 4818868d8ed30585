//! A content-addressed cache of compiled code that is never executed
//! unless verified: `DIR/<sha256 of the wasm>-<engine hash>.cwasm`.
//!
//! Trust:
//! - The directory must be a directory (not a symlink) owned by the
//!   process's effective user (root, for the shim) and closed to everyone
//!   else (no group or other permission bits). Otherwise [`Cache::new`]
//!   refuses it with the reason, and the caller compiles without a cache.
//! - Each entry has a record beside it, `<entry>.sum`, written before the
//!   entry is renamed into place: the entry's name, its size and the
//!   SHA-256 of its bytes. A load opens the entry, checks name, size and
//!   digest over the open file, and maps that same file; an entry that is
//!   corrupt, truncated, renamed from another module's, or without a
//!   record is discarded (with the reason) and the module recompiled. An
//!   entry of another engine (another wasmtime or other settings) is
//!   refused by wasmtime's own header check and discarded likewise.
//!
//! Concurrency: a lock file per entry (`<entry>.lock`, flock). Loaders hold
//! it shared while they verify and map; a compiler holds it exclusively,
//! so two containers starting one uncached module compile it once (the
//! second waits, then loads the first's entry). Eviction takes an entry's
//! lock without waiting and skips entries in use. A compile that was
//! killed leaves a `.tmp-` file, removed by the next compile of that entry
//! or by [`Cache::prune`].
//!
//! The cache is bounded (`WASMBOX_CACHE_MAX_MB`, default 512): a store that
//! takes it over the limit removes the least recently used entries (a hit
//! refreshes an entry's mtime). The shim's default directory is under
//! containerd's state, which is usually a tmpfs (so it lasts until a
//! reboot); an operator who wants compiled code to survive reboots points
//! `WASMBOX_CACHE_DIR` at a node directory such as `/var/lib/wasmbox/cache`.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use wasmbox_spec::{Error, Result};

/// Environment variable bounding the cache, in MiB.
pub const MAX_MB_ENV: &str = "WASMBOX_CACHE_MAX_MB";
const DEFAULT_MAX_MB: u64 = 512;
/// `off`: this workload's code is compiled without the cache.
pub use wasmbox_spec::annotations::COMPILE_CACHE as CACHE_ANNOTATION;
const RECORD_MAGIC: &str = "wasmbox-cache-v1";

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

/// A held flock on an entry's lock file; released when dropped.
pub struct Lock(#[allow(dead_code)] File);

/// One entry, as `wasmbox cache ls` shows it.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub path: PathBuf,
    pub bytes: u64,
    pub last_used: SystemTime,
    /// Its record is present and names it.
    pub recorded: bool,
}

/// What [`Cache::prune`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub entries: usize,
    pub bytes: u64,
    pub leftovers: usize,
    /// Entries skipped because a process holds them.
    pub in_use: usize,
}

fn sha256_hex(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn flock(f: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor this process owns.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

impl Cache {
    /// A cache rooted at `dir`, created (mode 0700) if missing, bounded by
    /// `WASMBOX_CACHE_MAX_MB` (default 512 MiB). An existing directory
    /// that is not private to this user is refused.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Cache> {
        let mb = std::env::var(MAX_MB_ENV).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_MAX_MB);
        Cache::with_limit(dir, mb.saturating_mul(1024 * 1024))
    }

    /// A cache rooted at `dir` holding at most `max_bytes` of entries.
    pub fn with_limit(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Cache> {
        let dir = dir.into();
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating cache directory {}", dir.display()), e))?;
        Cache::check_private(&dir)?;
        Ok(Cache { dir, max_bytes })
    }

    /// Entries are native code: only this user may have written them.
    fn check_private(dir: &Path) -> Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let refused = |reason: String| Error::InvalidArgument {
            what: format!("compile cache directory {}", dir.display()),
            reason: format!("{reason}; compiled code is only loaded from a private directory"),
        };
        let md = std::fs::symlink_metadata(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if !md.file_type().is_dir() {
            return Err(refused("it is not a directory (a symlink?)".into()));
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if md.uid() != me {
            return Err(refused(format!("it is owned by uid {}, not by uid {me}", md.uid())));
        }
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(refused(format!("its mode is {mode:o}: group or others may use it")));
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry for `wasm` compiled by an engine whose compatibility hash is `engine`.
    pub fn entry(&self, wasm: &[u8], engine: &impl Hash) -> PathBuf {
        self.entry_for(&Cache::digest(wasm), engine)
    }

    /// The wasm's digest, as entries are named by it (computed once for
    /// several engines' entries).
    pub fn digest(wasm: &[u8]) -> String {
        format!("{:x}", Sha256::digest(wasm))
    }

    /// [`Cache::entry`] for a wasm whose [`Cache::digest`] is `digest`.
    pub fn entry_for(&self, digest: &str, engine: &impl Hash) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.hash(&mut h);
        self.dir.join(format!("{digest}-{:016x}.cwasm", h.finish()))
    }

    fn record_of(entry: &Path) -> PathBuf {
        entry.with_extension("cwasm.sum")
    }

    fn lock_of(entry: &Path) -> PathBuf {
        entry.with_extension("cwasm.lock")
    }

    fn lock_with(&self, entry: &Path, op: libc::c_int) -> Option<Lock> {
        let f = File::options().create(true).truncate(false).write(true).open(Cache::lock_of(entry)).ok()?;
        flock(&f, op).then_some(Lock(f))
    }

    /// Waits for `entry`'s lock, shared (to load) or exclusive (to
    /// compile); `None` if the lock file cannot be had (then nothing is
    /// held, and the caller goes on without).
    pub fn lock(&self, entry: &Path, exclusive: bool) -> Option<Lock> {
        self.lock_with(entry, if exclusive { libc::LOCK_EX } else { libc::LOCK_SH })
    }

    /// [`Cache::lock`] without waiting: `None` when another process holds
    /// it in a conflicting mode (or the lock file cannot be had).
    pub fn try_lock(&self, entry: &Path, exclusive: bool) -> Option<Lock> {
        self.lock_with(entry, if exclusive { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB)
    }

    /// Waits for the node's one compile slot (`DIR/.compile.lock`): background
    /// compiles run one at a time. `None` if the lock file cannot be had.
    pub fn compile_slot(&self) -> Option<Lock> {
        let f = File::options().create(true).truncate(false).write(true).open(self.dir.join(".compile.lock")).ok()?;
        flock(&f, libc::LOCK_EX).then_some(Lock(f))
    }

    /// Opens `entry` and checks it against its record. `Ok(None)`: there
    /// is no entry. `Err(reason)`: there was one, and it was discarded.
    pub fn open_verified(&self, entry: &Path) -> std::result::Result<Option<File>, String> {
        let mut file = match File::open(entry) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.discard(entry, &format!("unreadable: {e}"))),
        };
        let why = match self.check(entry, &mut file) {
            Ok(()) => return Ok(Some(file)),
            Err(why) => why,
        };
        Err(self.discard(entry, &why))
    }

    fn check(&self, entry: &Path, file: &mut File) -> std::result::Result<(), String> {
        let record = std::fs::read_to_string(Cache::record_of(entry)).map_err(|e| format!("no record: {e}"))?;
        let mut lines = record.lines();
        let name = entry.file_name().unwrap_or_default().to_string_lossy();
        if lines.next() != Some(RECORD_MAGIC) {
            return Err("its record is not one of ours".into());
        }
        let recorded_name = lines.next().unwrap_or("");
        if recorded_name != name {
            return Err(format!("its record is for {recorded_name:?}: a foreign entry"));
        }
        let size: u64 = lines.next().and_then(|s| s.parse().ok()).ok_or("its record has no size")?;
        let digest = lines.next().ok_or("its record has no digest")?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len != size {
            return Err(format!("it has {len} bytes, its record {size}: truncated or grown"));
        }
        let actual = sha256_hex(&mut *file).map_err(|e| format!("reading it: {e}"))?;
        if actual != digest {
            return Err(format!("its sha256 is {actual}, its record's {digest}: corrupt or tampered"));
        }
        Ok(())
    }

    /// Removes `entry` and its record; the reason, with the entry, for the
    /// caller's log.
    pub fn discard(&self, entry: &Path, why: &str) -> String {
        let _ = std::fs::remove_file(entry);
        let _ = std::fs::remove_file(Cache::record_of(entry));
        format!("cache entry {} discarded: {why}", entry.display())
    }

    /// Marks `entry` as just used (best effort).
    pub fn touch(&self, entry: &Path) {
        if let Ok(f) = File::options().append(true).open(entry) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Stores `compiled` at `entry`: its record first, then the entry, each
    /// written to a temporary file and renamed into place. Call it holding
    /// the entry's exclusive lock: leftovers of a killed compile of the
    /// same entry are removed first.
    pub fn store(&self, entry: &Path, compiled: &[u8]) -> Result<()> {
        let name = entry.file_name().unwrap_or_default().to_string_lossy().into_owned();
        self.remove_leftovers(Some(&name));
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let tmp = |what: &str| self.dir.join(format!(".tmp-{name}-{what}-{}-{nanos}", std::process::id()));
        let (tmp_record, tmp_entry) = (tmp("sum"), tmp("code"));
        let record =
            format!("{RECORD_MAGIC}\n{name}\n{}\n{}\n", compiled.len(), sha256_hex(compiled).unwrap_or_default());
        let write = |path: &Path, data: &[u8], dest: &Path| -> std::io::Result<()> {
            let mut f = File::create(path)?;
            f.write_all(data)?;
            f.sync_data()?;
            std::fs::rename(path, dest)
        };
        let written = write(&tmp_record, record.as_bytes(), &Cache::record_of(entry))
            .and_then(|()| write(&tmp_entry, compiled, entry));
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp_record);
            let _ = std::fs::remove_file(&tmp_entry);
            Error::io(format!("writing cache entry {}", entry.display()), e)
        })?;
        self.evict(entry);
        Ok(())
    }

    /// Temporary files of compiles no longer running (their entry's lock
    /// is free), of one entry or of all; how many were removed.
    fn remove_leftovers(&self, of: Option<&str>) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return 0 };
        let mut removed = 0;
        for e in rd.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = file.strip_prefix(".tmp-") else { continue };
            let Some(entry_name) = rest.split_once(".cwasm-").map(|(stem, _)| format!("{stem}.cwasm")) else {
                continue;
            };
            match of {
                // The caller holds this entry's lock.
                Some(name) if name != entry_name => continue,
                Some(_) => {}
                None => {
                    if self.lock_with(&self.dir.join(&entry_name), libc::LOCK_EX | libc::LOCK_NB).is_none() {
                        continue;
                    }
                }
            }
            if std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    fn entries(&self) -> Vec<EntryInfo> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        rd.flatten()
            .filter_map(|e| {
                let path = e.path();
                if path.extension()? != "cwasm" || e.file_name().to_string_lossy().starts_with('.') {
                    return None;
                }
                let md = e.metadata().ok()?;
                let name = e.file_name().to_string_lossy().into_owned();
                let recorded = std::fs::read_to_string(Cache::record_of(&path))
                    .is_ok_and(|r| r.lines().nth(1) == Some(name.as_str()));
                Some(EntryInfo { path, bytes: md.len(), last_used: md.modified().ok()?, recorded })
            })
            .collect()
    }

    /// The entries, least recently used first.
    pub fn list(&self) -> Vec<EntryInfo> {
        let mut v = self.entries();
        v.sort_by_key(|e| e.last_used);
        v
    }

    /// Removes `entry`, its record and its lock file if no process holds it.
    fn remove_unused(&self, entry: &Path) -> bool {
        let Some(_held) = self.lock_with(entry, libc::LOCK_EX | libc::LOCK_NB) else { return false };
        let removed = std::fs::remove_file(entry).is_ok();
        let _ = std::fs::remove_file(Cache::record_of(entry));
        let _ = std::fs::remove_file(Cache::lock_of(entry));
        removed
    }

    /// Removes every entry not in use (or only those unused since
    /// `older_than`), and the leftovers of killed compiles.
    pub fn prune(&self, older_than: Option<SystemTime>) -> Pruned {
        let mut p = Pruned { leftovers: self.remove_leftovers(None), ..Default::default() };
        for e in self.list() {
            if older_than.is_some_and(|t| e.last_used >= t) {
                continue;
            }
            if self.remove_unused(&e.path) {
                p.entries += 1;
                p.bytes += e.bytes;
            } else if e.path.exists() {
                p.in_use += 1;
            }
        }
        p
    }

    /// Removes least recently used entries, never `keep` nor one in use,
    /// until the cache fits its limit.
    fn evict(&self, keep: &Path) {
        let entries = self.list();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        for e in entries {
            if total <= self.max_bytes {
                break;
            }
            if e.path != keep && self.remove_unused(&e.path) {
                log::info!("compile cache over {} bytes: removed {}", self.max_bytes, e.path.display());
                total -= e.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("wasmbox-cache-").tempdir().unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn entries_are_keyed_by_content_and_engine_and_verified() {
        let scratch = scratch();
        let dir = scratch.path().join("cache");
        let c = Cache::new(&dir).unwrap();
        let a = c.entry(b"one", &1u32);
        assert_eq!(a, c.entry(b"one", &1u32));
        assert_ne!(a, c.entry(b"two", &1u32));
        assert_ne!(a, c.entry(b"one", &2u32));
        assert!(c.open_verified(&a).unwrap().is_none());
        c.store(&a, b"compiled").unwrap();
        let mut f = c.open_verified(&a).unwrap().expect("a verified entry");
        // The file handed back is read from its start by the loader.
        use std::io::Seek;
        f.rewind().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"compiled");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // No temporary file is left behind: the entry and its record.
        let n = a.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(names(&dir), vec![n.clone(), format!("{}.sum", n)]);
    }

    #[test]
    fn corrupt_truncated_foreign_and_unrecorded_entries_are_discarded() {
        let scratch = scratch();
        let c = Cache::new(scratch.path().join("c")).unwrap();
        let (a, b) = (c.entry(b"a", &0u8), c.entry(b"b", &0u8));
        let cases: [(&str, &dyn Fn()); 4] = [
            ("corrupt", &|| std::fs::write(&a, b"compilex").unwrap()),
            ("truncated", &|| std::fs::write(&a, b"comp").unwrap()),
            ("foreign", &|| {
                c.store(&b, b"other code").unwrap();
                std::fs::rename(&b, &a).unwrap();
                std::fs::rename(Cache::record_of(&b), Cache::record_of(&a)).unwrap();
            }),
            ("no record", &|| std::fs::remove_file(Cache::record_of(&a)).unwrap()),
        ];
        for (what, spoil) in cases {
            c.store(&a, b"compiled").unwrap();
            spoil();
            let why = c.open_verified(&a).unwrap_err();
            assert!(why.contains("discarded"), "{what}: {why}");
            assert!(!a.exists() && !Cache::record_of(&a).exists(), "{what}: still there");
        }
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = scratch();
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o733)).unwrap();
        let e = Cache::new(scratch.path()).unwrap_err().to_string();
        assert!(e.contains("mode is 733") && e.contains(&scratch.path().display().to_string()), "{e}");
        let link = scratch.path().with_extension("link");
        std::os::unix::fs::symlink(scratch.path(), &link).unwrap();
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = Cache::new(&link).unwrap_err().to_string();
        let _ = std::fs::remove_file(&link);
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn least_recently_used_entries_go_first_but_not_those_in_use() {
        let scratch = scratch();
        let c = Cache::with_limit(scratch.path().join("c"), 20).unwrap();
        let (a, b, d) = (c.entry(b"a", &0u8), c.entry(b"b", &0u8), c.entry(b"d", &0u8));
        c.store(&a, b"12345678").unwrap();
        c.store(&b, b"12345678").unwrap();
        let ago = |s| SystemTime::now() - std::time::Duration::from_secs(s);
        let set = |p: &Path, t| File::options().append(true).open(p).unwrap().set_modified(t).unwrap();
        set(&a, ago(100));
        set(&b, ago(50));
        // a is used again: b is now the least recently used.
        c.touch(&a);
        c.store(&d, b"12345678").unwrap();
        assert!(a.exists() && d.exists() && !b.exists());
        // An entry being loaded is not evicted, even the oldest.
        set(&a, ago(200));
        let held = c.lock(&a, false).unwrap();
        let e = c.entry(b"e", &0u8);
        c.store(&e, b"12345678").unwrap();
        assert!(a.exists() && !d.exists() && e.exists());
        drop(held);
        // An entry larger than the whole limit is still kept (it is in use).
        let big = c.entry(b"big", &0u8);
        c.store(&big, &[0u8; 64]).unwrap();
        assert!(big.exists());
        assert_eq!(c.list().len(), 1);
    }

    #[test]
    fn prune_removes_unused_entries_and_leftovers() {
        let scratch = scratch();
        let c = Cache::new(scratch.path().join("c")).unwrap();
        let (a, b) = (c.entry(b"a", &0u8), c.entry(b"b", &0u8));
        c.store(&a, b"code a").unwrap();
        c.store(&b, b"code b").unwrap();
        // A compile of b that was killed halfway.
        let b_name = b.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(c.dir().join(format!(".tmp-{b_name}-code-999-1")), b"half").unwrap();
        let held = c.lock(&a, false).unwrap();
        let p = c.prune(None);
        assert_eq!(p, Pruned { entries: 1, bytes: 6, leftovers: 1, in_use: 1 });
        drop(held);
        assert_eq!(c.prune(None).entries, 1);
        assert!(names(c.dir()).is_empty(), "{:?}", names(c.dir()));
    }
}
