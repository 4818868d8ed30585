//! The record of what `wasmbox node install` did, so that `uninstall`
//! reverts exactly that: one JSON file (by default
//! `/var/lib/wasmbox/install.json`) listing, per configuration installed
//! into, each file written (its original's backup and hash, or that it was
//! created) and the shim copied.

use crate::error::Error;
use crate::files;
use crate::handler::{Added, Version};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the record is kept unless `--state` says otherwise.
pub const DEFAULT_STATE: &str = "/var/lib/wasmbox/install.json";

/// A file as it was before the first install touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    /// A byte-for-byte copy of it.
    pub backup: PathBuf,
    pub sha256: String,
}

/// A configuration file the install wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: PathBuf,
    /// None: the install created the file.
    pub original: Option<Original>,
    /// The file as the install left it.
    pub written_sha256: String,
    /// Whether it is a k3s/RKE2 template (for taking the runtime out of a
    /// file changed since).
    pub template: bool,
    /// The form the runtime was written in.
    pub version: Version,
    pub added: Added,
}

/// The shim the install copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRecord {
    pub path: PathBuf,
    pub sha256: String,
    /// None: there was no shim at that path before.
    pub original: Option<Original>,
}

/// One install: a configuration and what was done for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The configuration installed into (a template, for k3s and RKE2).
    pub config: PathBuf,
    /// The layout found, in words.
    pub layout: String,
    pub files: Vec<FileRecord>,
    pub shim: Option<ShimRecord>,
    /// Files changed and containerd not restarted since.
    pub restart_pending: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub installs: Vec<Record>,
}

impl State {
    /// The state at `path`; none recorded if there is no file.
    pub fn load(path: &Path) -> Result<State, Error> {
        match files::read_opt(path)? {
            None => Ok(State::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::State {
                path: path.to_path_buf(),
                reason: format!("not a record wasmbox wrote ({e}); move it away to start afresh"),
            }),
        }
    }

    /// Writes the state to `path` (creating its directory), or removes the
    /// file when nothing is recorded.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        if self.installs.is_empty() {
            return files::remove(path);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::State { path: path.to_path_buf(), reason: e.to_string() })?;
        json.push(b'\n');
        files::write_atomic(path, &json, files::Attrs::of_or(path, 0o644))
    }

    /// Holds the state file for one install or uninstall at a time (two
    /// installer pods of one host, say): an exclusive lock on `PATH.lock`,
    /// released (and the lock file, and a directory made for it, removed
    /// when nothing is recorded) when the guard is dropped.
    pub fn lock(path: &Path) -> Result<Lock, Error> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf);
        let made_dir = match &dir {
            Some(d) if !d.exists() => {
                std::fs::create_dir_all(d).map_err(Error::io("creating", d))?;
                Some(d.clone())
            }
            _ => None,
        };
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        let lock = std::path::PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(Error::io("opening", &lock))?;
        file.lock().map_err(Error::io("locking", &lock))?;
        Ok(Lock { _file: file, lock, state: path.to_path_buf(), made_dir })
    }

    /// The record of the configuration `config`.
    pub fn find(&self, config: &Path) -> Option<&Record> {
        self.installs.iter().find(|r| r.config == config)
    }

    /// Puts `record` in place of the one for its configuration.
    pub fn put(&mut self, record: Record) {
        self.installs.retain(|r| r.config != record.config);
        self.installs.push(record);
    }

    pub fn remove(&mut self, config: &Path) {
        self.installs.retain(|r| r.config != config);
    }
}

/// The lock [`State::lock`] holds.
pub struct Lock {
    _file: std::fs::File,
    lock: std::path::PathBuf,
    state: std::path::PathBuf,
    made_dir: Option<std::path::PathBuf>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.state.exists() {
            let _ = std::fs::remove_file(&self.lock);
            if let Some(d) = &self.made_dir {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}
