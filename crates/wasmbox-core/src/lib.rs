#![doc = include_str!("../README.md")]

pub mod cache;
pub mod cgroup;
pub mod detect;
pub mod engine;
pub mod error;
pub mod image;
pub mod instance;
pub mod isolation;
pub mod net;
pub mod node;
pub mod plan;
pub mod proposals;
pub mod registry;
pub mod seccomp;
pub mod serve;
pub mod wasm;

pub use error::{Error, ErrorKind, Result};
pub use plan::{FileMount, Plan, Preopen, Workload};
