//! What one guest instance is given: its WASI context (deny by default:
//! only the plan's args, env, cwd, stdio, preopens and network policy) and
//! the limiter that keeps its memories within the container's limit. Shared
//! by commands ([`crate::engine`]) and served components ([`crate::serve`]).

use crate::net::Policy;
use wasmbox_spec::{Error, Plan, Result};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// The error a guest's memory growth past its limit ends it with.
#[derive(Debug)]
pub struct MemoryLimitReached(String);

impl std::fmt::Display for MemoryLimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MemoryLimitReached {}

/// What the guest's memories may grow to, counted over all its linear
/// memories and tables. Growing past it ends the guest with a message that
/// names the limit, before the kernel's OOM killer would act on the
/// container.
#[derive(Default, Clone)]
pub struct GuestLimiter {
    limit: Option<usize>,
    /// Where the limit comes from, for the message.
    source: String,
    total: usize,
}

/// Bytes a table element is counted for.
const TABLE_ELEMENT_BYTES: usize = 8;

impl GuestLimiter {
    /// A limiter that refuses growth past `limit` bytes, naming `source`.
    pub fn new(limit: usize, source: String) -> Self {
        GuestLimiter { limit: Some(limit), source, total: 0 }
    }

    fn grow(&mut self, current: usize, desired: usize, what: &str) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if let Some(limit) = self.limit {
            if total > limit {
                return Err(wasmtime::Error::new(MemoryLimitReached(format!(
                    "memory limit reached: growing a {what} would take the guest to {} MiB, over its limit of {} MiB ({})",
                    total.div_ceil(1 << 20),
                    limit >> 20,
                    self.source
                ))));
            }
        }
        self.total = total;
        Ok(true)
    }
}

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current, desired, "linear memory")
    }
    fn table_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current * TABLE_ELEMENT_BYTES, desired * TABLE_ELEMENT_BYTES, "table")
    }
}

/// The guest's WASI context: its args, env, cwd, stdio, the directories
/// it is granted (opened here, so a bad grant is an error naming it) and
/// its network policy.
pub fn wasi(plan: &Plan, net: &Policy) -> Result<WasiCtxBuilder> {
    let mut b = WasiCtxBuilder::new();
    b.inherit_stdio().args(&plan.args).envs(&plan.env).initial_cwd(&plan.cwd);
    net.police_sockets(&mut b);
    for p in &plan.preopens {
        let perms = if p.readonly { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        b.preopened_dir(&p.host, &p.guest, perms).map_err(|e| Error::InvalidArgument {
            what: format!("directory {} (at {} in the guest)", p.host.display(), p.guest),
            reason: format!("{e:#}"),
        })?;
    }
    Ok(b)
}

/// Resident memory of this process in bytes, from /proc.
pub fn own_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * if page > 0 { page as u64 } else { 4096 })
}
