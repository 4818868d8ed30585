//! What to run: an OCI bundle (`config.json` and rootfs) read into a
//! [`Plan`] (the wasm to run, its args, env, preopens and limits), whether a
//! container is wasm or Linux ([`detect`]), what a `.wasm` is ([`wasm`]),
//! every annotation wasmbox reads ([`annotations`]) and a node's defaults
//! for them ([`defaults`]).
//!
//! Must not depend on wasmtime, on Linux containment (namespaces, cgroups,
//! seccomp) or on containerd: it reads files and makes no other syscalls,
//! so every other crate can use it.

pub mod annotations;
pub mod defaults;
pub mod detect;
pub mod error;
pub mod plan;
pub mod wasm;

pub use error::{Error, ErrorKind, Result};
pub use plan::{FileMount, Limits, Plan, Preopen, Workload};
