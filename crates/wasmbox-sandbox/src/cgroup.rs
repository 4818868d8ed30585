//! A container's cgroup, from the OCI spec's `linux.cgroupsPath` and
//! `linux.resources`, through `cgroups-rs`: cgroup v1 (each controller its
//! own hierarchy) or v2 (unified), a cgroupfs path (`/kubepods/pod1/c1`) or
//! the systemd form (`kubepods-burstable-pod1.slice:cri-containerd:c1`, laid
//! out under each hierarchy as systemd would place that scope).
//!
//! The shim creates the cgroup and applies the resources before the
//! container's process exists; the process enters it between fork and
//! exec (see [`Cgroup::procs_files`]), so everything it does is charged to
//! the container. Live updates, freezing and removal go through here too.

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::hugetlb::HugeTlbController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{hierarchies, Controller, MaxValue};
use cgroups_rs::FreezerState;
use oci_spec::runtime::LinuxResources;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wasmbox_spec::{Error, Result};

/// A container's cgroup.
pub struct Cgroup {
    inner: cgroups_rs::fs::Cgroup,
    /// The path inside each hierarchy, without a leading `/`.
    pub path: String,
}

impl std::fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroup").field("path", &self.path).field("v2", &self.inner.v2()).finish()
    }
}

fn cg_err(what: String) -> impl FnOnce(cgroups_rs::fs::error::Error) -> Error {
    move |e| Error::io(what, std::io::Error::other(e.to_string()))
}

fn field(what: &str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument { what: format!("OCI spec field {what}"), reason: reason.into() }
}

/// A spec's `linux.cgroupsPath`, empty when it has none.
pub fn spec_path(spec: &oci_spec::runtime::Spec) -> String {
    spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()).map(|p| p.display().to_string()).unwrap_or_default()
}

/// The path of a container's cgroup inside each hierarchy (no leading
/// `/`), from the spec's `linux.cgroupsPath`: a cgroupfs path, or the
/// systemd form `slice:prefix:name`. Without one, `wasmbox/<id>`.
pub fn relative_path(cgroups_path: &str, id: &str) -> Result<String> {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let path = if parts.len() == 3 && !cgroups_path.starts_with('/') {
        let slice = if parts[0].is_empty() { "system.slice" } else { parts[0] };
        let unit = if parts[2].ends_with(".slice") {
            parts[2].to_string()
        } else if parts[1].is_empty() {
            format!("{}.scope", parts[2])
        } else {
            format!("{}-{}.scope", parts[1], parts[2])
        };
        // `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice`, as systemd nests slices.
        let base = cgroups_rs::systemd::utils::expand_slice(slice)
            .map_err(|_| field("linux.cgroupsPath", format!("{slice:?} is not a systemd slice name")))?;
        if base.is_empty() {
            unit
        } else {
            format!("{base}/{unit}")
        }
    } else if cgroups_path.is_empty() {
        format!("wasmbox/{id}")
    } else {
        cgroups_path.trim_start_matches('/').to_string()
    };
    if path.is_empty() || path.split('/').any(|c| c == ".." || c == ".") || path.contains('\0') {
        return Err(field("linux.cgroupsPath", format!("{cgroups_path:?} is not a cgroup path")));
    }
    Ok(path)
}

/// The cgroup background compiles run in (see [`background`]), at the top
/// of each hierarchy.
pub const BACKGROUND_CGROUP: &str = "wasmbox-compile";

/// The CPU weight of [`BACKGROUND_CGROUP`]: the least each version has
/// (v2 `cpu.weight` 1 of 10000, v1 `cpu.shares` 2), against the 100 (1024
/// on v1) every other cgroup has by default.
const BACKGROUND_WEIGHT: [(&str, &str); 2] = [("cpu.weight", "1"), ("cpu.shares", "2")];

/// Creates (or opens) the cgroup background compiles run in and gives it
/// the least CPU weight, so that a compile gets only the CPU that busy
/// containers and pods leave: SCHED_IDLE and nice hold within a cgroup
/// only, and a compile sharing the shim's cgroup took half the CPUs from
/// the container it was meant to yield to. One cgroup for the node (a
/// compile outlives its container, and one runs at a time), not removed:
/// it is empty between compiles.
pub fn background() -> Result<Cgroup> {
    let cg = Cgroup::create(BACKGROUND_CGROUP)?;
    if cg.v2() {
        // The CPU controller, enabled for the root's children where it is
        // not yet (the root may hold processes; its children's files
        // appear once it is).
        if let Some(root) = cg.dirs().first().and_then(|d| d.parent()) {
            let control = root.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "cpu") {
                std::fs::write(&control, "+cpu")
                    .map_err(|e| Error::io(format!("enabling the cpu controller in {}", control.display()), e))?;
            }
        }
    }
    for dir in cg.dirs() {
        for (file, value) in BACKGROUND_WEIGHT {
            let f = dir.join(file);
            if f.exists() {
                std::fs::write(&f, value).map_err(|e| Error::io(format!("writing {value} to {}", f.display()), e))?;
            }
        }
    }
    Ok(cg)
}

impl Cgroup {
    /// Creates (or opens) the cgroup at `path` (see [`relative_path`]) in
    /// every hierarchy the host mounts.
    pub fn create(path: &str) -> Result<Cgroup> {
        let inner = cgroups_rs::fs::Cgroup::new(hierarchies::auto(), path)
            .map_err(cg_err(format!("creating cgroup {path} (linux.cgroupsPath)")))?;
        Ok(Cgroup { inner, path: path.to_string() })
    }

    /// Moves process `pid` (all its threads) into the cgroup at `path` of
    /// every hierarchy, creating the cgroup where it is missing: the
    /// shim's own cgroup (the `ShimCgroup` runtime option). `what` names
    /// the setting in errors.
    pub fn join(path: &str, pid: u32, what: &str) -> Result<Cgroup> {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == ".." || c == ".") || rel.contains('\0') {
            return Err(Error::InvalidArgument {
                what: what.to_string(),
                reason: format!("{path:?} is not a cgroup path"),
            });
        }
        let inner = cgroups_rs::fs::Cgroup::new(hierarchies::auto(), rel)
            .map_err(cg_err(format!("creating cgroup {path} ({what})")))?;
        inner
            .add_task_by_tgid(cgroups_rs::CgroupPid::from(u64::from(pid)))
            .map_err(cg_err(format!("moving process {pid} into cgroup {path} ({what})")))?;
        Ok(Cgroup { inner, path: rel.to_string() })
    }

    /// The cgroup at `path`, without touching the file system.
    pub fn load(path: &str) -> Cgroup {
        Cgroup { inner: cgroups_rs::fs::Cgroup::load(hierarchies::auto(), path), path: path.to_string() }
    }

    pub fn v2(&self) -> bool {
        self.inner.v2()
    }

    /// The cgroups-rs handle, for reading its controllers' figures.
    pub fn inner(&self) -> &cgroups_rs::fs::Cgroup {
        &self.inner
    }

    /// The directories of this cgroup, one per hierarchy (one on v2).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> =
            self.inner.subsystems().iter().map(|s| s.to_controller().path().to_path_buf()).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Each hierarchy's `cgroup.procs` of this cgroup, open for writing:
    /// a child writes `0` to each between fork and exec to enter it.
    pub fn procs_files(&self) -> Result<Vec<OwnedFd>> {
        self.dirs()
            .into_iter()
            .filter(|d| d.join("cgroup.procs").exists())
            .map(|d| {
                let f = d.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .map(OwnedFd::from)
                    .map_err(|e| Error::io(format!("opening {}", f.display()), e))
            })
            .collect()
    }

    /// Applies `linux.resources` (at create and for live updates). A
    /// resource the host's cgroups cannot hold is an error naming it.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        let v2 = self.v2();
        let err = |what: &str| {
            let what = format!("setting {what} of cgroup {}", self.path);
            cg_err(what)
        };
        if let Some(cpu) = r.cpu() {
            let needs_cpuset = cpu.cpus().as_deref().is_some_and(|s| !s.is_empty())
                || cpu.mems().as_deref().is_some_and(|s| !s.is_empty());
            match self.inner.controller_of::<CpuSetController>() {
                Some(c) => {
                    if let Some(s) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
                        c.set_cpus(s).map_err(err("linux.resources.cpu.cpus"))?;
                    }
                    if let Some(s) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
                        c.set_mems(s).map_err(err("linux.resources.cpu.mems"))?;
                    }
                }
                None if needs_cpuset => {
                    return Err(field("linux.resources.cpu.cpus", "the host has no cpuset controller"))
                }
                None => {}
            }
            let wants_cpu = cpu.shares().is_some_and(|s| s != 0)
                || cpu.quota().is_some_and(|q| q != 0)
                || cpu.period().is_some_and(|p| p != 0);
            match self.inner.controller_of::<CpuController>() {
                Some(c) => {
                    if let Some(s) = cpu.shares().filter(|&s| s != 0) {
                        c.set_shares(if v2 { shares_to_weight(s) } else { s })
                            .map_err(err("linux.resources.cpu.shares"))?;
                    }
                    let (q, p) = (cpu.quota().filter(|&q| q != 0), cpu.period().filter(|&p| p != 0));
                    if v2 {
                        if q.is_some() || p.is_some() {
                            c.set_cfs_quota_and_period(q, p).map_err(err("linux.resources.cpu.quota/period"))?;
                        }
                    } else {
                        // The period first: a quota is checked against it.
                        if let Some(p) = p {
                            c.set_cfs_period(p).map_err(err("linux.resources.cpu.period"))?;
                        }
                        if let Some(q) = q {
                            c.set_cfs_quota(q).map_err(err("linux.resources.cpu.quota"))?;
                        }
                    }
                }
                None if wants_cpu => return Err(field("linux.resources.cpu", "the host has no cpu controller")),
                None => {}
            }
            if cpu.realtime_runtime().is_some_and(|v| v != 0) || cpu.realtime_period().is_some_and(|v| v != 0) {
                return Err(field("linux.resources.cpu.realtimeRuntime", "real-time scheduling is not supported"));
            }
        }
        if let Some(m) = r.memory() {
            let limit = m.limit().filter(|&l| l != 0);
            let swap = m.swap().filter(|&s| s != 0);
            let reservation = m.reservation().filter(|&r| r != 0);
            match self.inner.controller_of::<MemController>() {
                Some(c) => {
                    if v2 {
                        // OCI's swap is memory+swap; v2's swap.max is swap alone.
                        let sw = match (swap, limit) {
                            (Some(-1), _) | (Some(_), Some(-1)) => swap,
                            (Some(s), Some(l)) if s >= l => Some(s - l),
                            (Some(s), _) => {
                                return Err(field(
                                    "linux.resources.memory.swap",
                                    format!("{s} is below the memory limit (it counts memory plus swap)"),
                                ))
                            }
                            (None, _) => None,
                        };
                        if let Some(s) = sw {
                            c.set_memswap_limit(s).map_err(err("linux.resources.memory.swap"))?;
                        }
                        if let Some(l) = limit {
                            c.set_limit(l).map_err(err("linux.resources.memory.limit"))?;
                        }
                    } else {
                        // memsw must stay >= the limit at every step.
                        let current = c.memory_stat().limit_in_bytes;
                        let swap_first = matches!((limit, swap), (Some(_), Some(s)) if s == -1 || current < s);
                        if swap_first {
                            if let Some(s) = swap {
                                c.set_memswap_limit(s).map_err(err("linux.resources.memory.swap"))?;
                            }
                            if let Some(l) = limit {
                                c.set_limit(l).map_err(err("linux.resources.memory.limit"))?;
                            }
                        } else {
                            if let Some(l) = limit {
                                c.set_limit(l).map_err(err("linux.resources.memory.limit"))?;
                            }
                            if let Some(s) = swap {
                                c.set_memswap_limit(s).map_err(err("linux.resources.memory.swap"))?;
                            }
                        }
                    }
                    if let Some(res) = reservation {
                        c.set_soft_limit(res).map_err(err("linux.resources.memory.reservation"))?;
                    }
                    if let Some(sw) = m.swappiness().filter(|_| !v2) {
                        if sw <= 100 {
                            c.set_swappiness(sw).map_err(err("linux.resources.memory.swappiness"))?;
                        }
                    }
                }
                None if limit.is_some() || swap.is_some() || reservation.is_some() => {
                    return Err(field("linux.resources.memory", "the host has no memory controller"))
                }
                None => {}
            }
            if m.kernel().is_some_and(|k| k != 0) || m.kernel_tcp().is_some_and(|k| k != 0) {
                return Err(field("linux.resources.memory.kernel", "kernel memory limits are not supported"));
            }
        }
        if let Some(p) = r.pids() {
            match self.inner.controller_of::<PidController>() {
                Some(c) => c
                    .set_pid_max(if p.limit() > 0 { MaxValue::Value(p.limit()) } else { MaxValue::Max })
                    .map_err(err("linux.resources.pids.limit"))?,
                None if p.limit() > 0 => return Err(field("linux.resources.pids", "the host has no pids controller")),
                None => {}
            }
        }
        for h in r.hugepage_limits().iter().flatten() {
            match self.inner.controller_of::<HugeTlbController>() {
                Some(c) if c.size_supported(h.page_size()) => {
                    c.set_limit_in_bytes(h.page_size(), h.limit() as u64)
                        .map_err(err(&format!("linux.resources.hugepageLimits[{}]", h.page_size())))?;
                }
                // Kubernetes lists every page size with limit 0: nothing asked, nothing to refuse.
                _ if h.limit() == 0 => {}
                _ => {
                    return Err(field(
                        "linux.resources.hugepageLimits",
                        format!("the host has no hugetlb controller for page size {}", h.page_size()),
                    ))
                }
            }
        }
        if let Some(b) = r.block_io() {
            let throttles = [
                b.throttle_read_bps_device(),
                b.throttle_write_bps_device(),
                b.throttle_read_iops_device(),
                b.throttle_write_iops_device(),
            ];
            if b.weight().is_some()
                || b.leaf_weight().is_some()
                || b.weight_device().as_ref().is_some_and(|w| !w.is_empty())
                || throttles.iter().any(|t| t.as_ref().is_some_and(|t| !t.is_empty()))
            {
                return Err(field("linux.resources.blockIO", "block I/O limits are not supported yet"));
            }
        }
        if r.network().is_some() {
            return Err(field("linux.resources.network", "network classes and priorities are not supported"));
        }
        if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(field("linux.resources.rdma", "not supported"));
        }
        if let Some(u) = r.unified().as_ref().filter(|u| !u.is_empty()) {
            if !v2 {
                return Err(field("linux.resources.unified", "needs cgroup v2; this host has cgroup v1"));
            }
            let dir = self.dirs().into_iter().next().unwrap_or_default();
            for (k, v) in u {
                if k.contains('/') || k.starts_with('.') {
                    return Err(field("linux.resources.unified", format!("{k:?} is not a cgroup file name")));
                }
                std::fs::write(dir.join(k), v)
                    .map_err(|e| Error::io(format!("setting linux.resources.unified {k}={v}"), e))?;
            }
        }
        // Devices: wasm containers get none at all (nothing is mounted with
        // device files), whatever the spec's device rules allow.
        Ok(())
    }

    /// Freezes every process of the cgroup and waits until the kernel says
    /// they are (bounded).
    pub fn freeze(&self) -> Result<()> {
        let f = self
            .inner
            .controller_of::<FreezerController>()
            .ok_or_else(|| Error::Unsupported("pause: the host has no freezer cgroup controller".into()))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut wait = Duration::from_millis(1);
        loop {
            f.freeze().map_err(cg_err(format!("freezing cgroup {}", self.path)))?;
            let frozen = if self.v2() {
                std::fs::read_to_string(f.path().join("cgroup.events"))
                    .map(|s| s.lines().any(|l| l == "frozen 1"))
                    .unwrap_or(false)
            } else {
                matches!(f.state(), Ok(FreezerState::Frozen))
            };
            if frozen {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = f.thaw();
                return Err(Error::io(
                    format!("freezing cgroup {}", self.path),
                    std::io::Error::other("still not frozen after 5 s"),
                ));
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(50));
        }
    }

    pub fn thaw(&self) -> Result<()> {
        let f = self
            .inner
            .controller_of::<FreezerController>()
            .ok_or_else(|| Error::Unsupported("resume: the host has no freezer cgroup controller".into()))?;
        f.thaw().map_err(cg_err(format!("thawing cgroup {}", self.path)))
    }

    /// Whether the cgroup is frozen (or freezing).
    pub fn frozen(&self) -> bool {
        match self.inner.controller_of::<FreezerController>() {
            Some(f) if self.v2() => {
                std::fs::read_to_string(f.path().join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
            }
            Some(f) => matches!(f.state(), Ok(FreezerState::Frozen | FreezerState::Freezing)),
            None => false,
        }
    }

    /// Pids of the processes in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        self.inner.procs().into_iter().map(|p| p.pid as u32).collect()
    }

    /// Removes the cgroup once its processes are gone (retrying while the
    /// kernel still counts exiting ones).
    pub fn remove(&self) -> Result<()> {
        let mut wait = Duration::from_millis(5);
        for _ in 0..10 {
            if !self.inner.exists() || (self.inner.delete().is_ok() && !self.inner.exists()) {
                return Ok(());
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(200));
        }
        self.inner.delete().map_err(cg_err(format!("removing cgroup {}", self.path)))
    }
}

/// cgroup v1 cpu.shares -> v2 cpu.weight, the conversion runc and crun use.
fn shares_to_weight(s: u64) -> u64 {
    if s <= 2 {
        1
    } else if s >= 262144 {
        10000
    } else {
        1 + (s - 2) * 9999 / 262142
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths() {
        assert_eq!(relative_path("/kubepods/pod1/c1", "c1").unwrap(), "kubepods/pod1/c1");
        assert_eq!(relative_path("default/c1", "c1").unwrap(), "default/c1");
        assert_eq!(relative_path("", "c1").unwrap(), "wasmbox/c1");
        assert_eq!(
            relative_path("kubepods-burstable-pod123.slice:cri-containerd:abc", "abc").unwrap(),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod123.slice/cri-containerd-abc.scope"
        );
        assert_eq!(relative_path(":runc:abc", "abc").unwrap(), "system.slice/runc-abc.scope");
        assert_eq!(relative_path("-.slice::x.slice", "x").unwrap(), "x.slice");
        assert!(relative_path("/a/../../etc", "x").unwrap_err().to_string().contains("linux.cgroupsPath"));
        assert!(relative_path("bad:x:y", "y").unwrap_err().to_string().contains("slice"));
        assert!(relative_path("a--b.slice:p:n", "n").is_err());
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262144), 10000);
    }
}
