//! What `wasmbox node install` and `uninstall` can fail on. Every variant
//! names the file (or command) and the reason, so a user can act on it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, written, renamed or removed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML (containerd could not read it either).
    #[error("{path} is not valid TOML, so it cannot be edited safely: {reason}; nothing was changed")]
    Unparsable { path: PathBuf, reason: String },
    /// A runtime named `wasmbox` is there already, set up differently.
    #[error(
        "{path} already has a runtime named \"wasmbox\" with other settings ({found}); remove it (or give it another name) and install again; nothing was changed"
    )]
    Conflict { path: PathBuf, found: String },
    /// A shape of configuration this installer does not edit.
    #[error("{path}: {reason}; nothing was changed")]
    Unsupported { path: PathBuf, reason: String },
    /// The shim to install is missing or not a program.
    #[error("the shim to install, {path}: {reason}")]
    Shim { path: PathBuf, reason: String },
    /// The copied shim does not hash like its source.
    #[error("{path}: the copy's SHA-256 is {got}, its source's {want}; the copy was removed")]
    CopyMismatch { path: PathBuf, got: String, want: String },
    /// The record of what install did cannot be used.
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    /// Uninstall without `--config` while several installs are recorded.
    #[error("{state} records installs into several configurations ({recorded}): say which with --config")]
    Ambiguous { state: PathBuf, recorded: String },
    /// Uninstall would remove a shim that processes still run from.
    #[error(
        "{path} is running ({} processes: {pids:?}); containerd needs it to take their containers back when it restarts: stop the wasm containers first (drain the node), or uninstall with --force; nothing was changed",
        pids.len()
    )]
    InUse { path: PathBuf, pids: Vec<i32> },
    /// containerd's version could not be found out.
    #[error("{path}: {reason}")]
    Containerd { path: PathBuf, reason: String },
    /// The restart command failed.
    #[error("restarting containerd with `{command}`: {reason}")]
    Restart { command: String, reason: String },
    /// A call to the Kubernetes API failed.
    #[error("{what}: {reason}")]
    Api { what: String, reason: String },
    /// containerd did not come back after the restart.
    #[error("containerd did not answer on {socket} within {secs} s after `{command}`: {last}")]
    NoAnswer { socket: PathBuf, secs: u64, command: String, last: String },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
        Error::Unsupported { path: path.into(), reason: reason.into() }
    }
}
