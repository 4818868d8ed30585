//! OCI images around a `.wasm`: image-layout tarballs built, read and
//! inspected with no registry and no daemon ([`layout`]; `ctr image import`
//! takes them as they are), and pushed to and pulled from registries
//! ([`registry`]).
//!
//! Must not depend on wasmtime, on Linux containment or on containerd.

pub mod layout;
pub mod registry;

pub use layout::*;
