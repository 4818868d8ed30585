//! Linux containment of a process, set up from the OCI spec's `linux` and
//! `process` sections as runc sets up a container: namespaces created or
//! joined, mounts, the cgroup and its limits, user and groups,
//! capabilities, no_new_privs, rlimits and the seccomp profile.
//!
//! Must not depend on wasmtime or on containerd: it contains any process,
//! whatever runs in it.

pub mod cgroup;
pub mod isolation;
pub mod seccomp;
