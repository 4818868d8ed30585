//! Running wasm: wasmtime engines and their settings ([`engine`]), the
//! verified compile cache ([`cache`]), wasm proposals ([`proposals`]), what
//! a guest is given ([`guest`]: its WASI context and memory limiter), the
//! guest's network policy ([`net`]), serving `wasi:http/proxy`
//! components and Spin applications ([`serve`]) and the host interfaces
//! of Spin's components ([`app_host`]).
//!
//! Must not depend on Linux containment (the instance process applies it
//! before the engine runs) or on containerd.

pub mod app_host;
pub mod cache;
pub mod engine;
pub mod guest;
pub mod net;
pub mod proposals;
pub mod serve;
pub mod threads;
pub mod tier;
pub mod tuning;
