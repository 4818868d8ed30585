//! The core's error type. Every variant carries what a user needs to act on
//! it: the file, the container path, the reason.

use std::path::PathBuf;

/// What kind of failure this is, so callers (the shim, the CLI) can map it to
/// their own protocol without matching on every variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's input is wrong: a bad image, spec or argument.
    InvalidArgument,
    /// A file the user named does not exist.
    NotFound,
    /// The request is well formed but this build cannot do it (yet).
    Unsupported,
    /// Something on the host failed (I/O, process creation).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading OCI spec {path}: {reason}")]
    Spec { path: PathBuf, reason: String },

    #[error("OCI spec {path}: process.args is empty: the first argument must name the .wasm file to run")]
    NoEntrypoint { path: PathBuf },

    #[error("wasm entrypoint {guest_path:?} not found (looked for {host_path})")]
    WasmNotFound { guest_path: String, host_path: PathBuf },

    #[error("{guest_path:?} (entrypoint or mount destination) escapes the container's root filesystem: {reason}")]
    HostilePath { guest_path: String, reason: String },

    #[error("{path} is not a WebAssembly file: {reason}")]
    NotWasm { path: PathBuf, reason: String },

    #[error("{path} is not a valid WebAssembly {what}: {reason}")]
    InvalidWasm { path: PathBuf, what: &'static str, reason: String },

    #[error("{path} has no exported function {name:?} to call (exported functions: {available})")]
    ExportNotFound { path: PathBuf, name: String, available: String },

    #[error("{path}: {reason}")]
    NotRunnable { path: PathBuf, reason: String },

    #[error("mount {destination}: source {source_path} does not exist")]
    MountSourceMissing { destination: String, source_path: PathBuf },

    #[error("invalid argument {what}: {reason}")]
    InvalidArgument { what: String, reason: String },

    #[error("not supported: {0}")]
    Unsupported(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::WasmNotFound { .. } | Error::MountSourceMissing { .. } => ErrorKind::NotFound,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Io { .. } => ErrorKind::Internal,
            Error::Spec { .. }
            | Error::NoEntrypoint { .. }
            | Error::HostilePath { .. }
            | Error::NotWasm { .. }
            | Error::InvalidWasm { .. }
            | Error::ExportNotFound { .. }
            | Error::NotRunnable { .. }
            | Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
