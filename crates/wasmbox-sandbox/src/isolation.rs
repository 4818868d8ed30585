//! Setting an instance process up from the OCI spec's `linux` and `process`
//! sections, as runc sets up a Linux container: namespaces created or
//! joined, the rootfs and file mounts in the container's own mount
//! namespace (without devices or setuid), hostname and sysctls, rlimits,
//! `oomScoreAdj`, the user and groups, capabilities, `noNewPrivileges` and
//! the seccomp profile.
//!
//! [`Isolation::from_spec`] reads and checks everything first, so a field
//! that cannot be honoured fails Create with its name; the `enter_*` and
//! `apply_*` steps then run in the instance process in the order a Linux
//! container's init runs them. Capabilities are per thread and `unshare` of
//! a mount namespace needs a single-threaded process, so the whole set-up
//! happens while the instance has one thread (checked before privileges
//! are dropped).

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Spec};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use wasmbox_spec::{Error, Result};

/// One namespace the container is placed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub kind: LinuxNamespaceType,
    /// Join this one (`/proc/PID/ns/net`, a CNI netns file) instead of
    /// creating a new one.
    pub path: Option<PathBuf>,
}

/// The credentials the guest runs with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
}

/// Capability sets by name (`CAP_NET_BIND_SERVICE`); a set the spec does
/// not give is empty, as runc leaves it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapSets {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub inheritable: Vec<String>,
    pub permitted: Vec<String>,
    pub ambient: Vec<String>,
}

/// Everything the spec asks of the process that runs a container's guest.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    pub namespaces: Vec<Namespace>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    /// `linux.rootfsPropagation` for `/` in the container's mount namespace.
    pub propagation: Option<MsFlags>,
    pub sysctl: Vec<(String, String)>,
    pub creds: Creds,
    /// Empty sets where the spec has no `process.capabilities`.
    pub caps: CapSets,
    pub no_new_privileges: bool,
    pub rlimits: Vec<(PosixRlimitType, u64, u64)>,
    pub oom_score_adj: Option<i32>,
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

/// The first of `(field, is set, why)` that is set, as an error naming it.
fn refuse_set(fields: &[(&str, bool, &str)]) -> Result<()> {
    match fields.iter().find(|(_, set, _)| *set) {
        Some((field, _, why)) => Err(unsupported(field, why)),
        None => Ok(()),
    }
}

fn unsupported(field: &str, why: &str) -> Error {
    Error::Unsupported(format!("OCI spec field {field}: {why}"))
}

fn invalid(field: &str, why: impl Into<String>) -> Error {
    Error::InvalidArgument { what: format!("OCI spec field {field}"), reason: why.into() }
}

/// The spec's capability names, as the kernel's headers spell them.
fn cap_names(set: &Option<oci_spec::runtime::Capabilities>) -> Vec<String> {
    let mut names: Vec<String> = set
        .iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_string)))
        .collect();
    names.sort();
    names
}

/// sysctls that belong to a namespace the container has of its own (as
/// runc allows them): IPC's `kernel.*` queues and semaphores, `fs.mqueue.*`
/// and, in a network namespace of its own, `net.*`.
fn namespaced_sysctl(key: &str, own: &[LinuxNamespaceType]) -> bool {
    let ipc = own.contains(&LinuxNamespaceType::Ipc);
    let ipc_key = matches!(
        key,
        "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
            | "kernel.sem"
            | "kernel.shmall"
            | "kernel.shmmax"
            | "kernel.shmmni"
            | "kernel.shm_rmid_forced"
    ) || key.starts_with("fs.mqueue.");
    (ipc && ipc_key)
        || (own.contains(&LinuxNamespaceType::Network) && key.starts_with("net."))
        || (own.contains(&LinuxNamespaceType::Uts) && matches!(key, "kernel.hostname" | "kernel.domainname"))
}

fn propagation(value: &str) -> Result<MsFlags> {
    Ok(match value {
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => return Err(invalid("linux.rootfsPropagation", format!("unknown propagation {other:?}"))),
    })
}

impl Isolation {
    /// Reads and checks the spec's `linux` and `process` sections. Every
    /// field wasmbox cannot honour is an error naming it.
    pub fn from_spec(spec: &Spec) -> Result<Isolation> {
        let mut iso = Isolation::default();
        if let Some(p) = spec.process() {
            let u = p.user();
            iso.creds = Creds {
                uid: u.uid(),
                gid: u.gid(),
                additional_gids: u.additional_gids().clone().unwrap_or_default(),
                umask: u.umask(),
            };
            if let Some(c) = p.capabilities() {
                iso.caps = CapSets {
                    bounding: cap_names(c.bounding()),
                    effective: cap_names(c.effective()),
                    inheritable: cap_names(c.inheritable()),
                    permitted: cap_names(c.permitted()),
                    ambient: cap_names(c.ambient()),
                };
            }
            iso.no_new_privileges = p.no_new_privileges().unwrap_or(false);
            iso.rlimits = p.rlimits().iter().flatten().map(|r| (r.typ(), r.soft(), r.hard())).collect();
            for (typ, soft, hard) in &iso.rlimits {
                if soft > hard {
                    return Err(invalid(
                        "process.rlimits",
                        format!("{typ:?}: soft limit {soft} above hard limit {hard}"),
                    ));
                }
            }
            iso.oom_score_adj = p.oom_score_adj();
            if let Some(adj) = iso.oom_score_adj {
                if !(-1000..=1000).contains(&adj) {
                    return Err(invalid("process.oomScoreAdj", format!("{adj} is outside -1000..1000")));
                }
            }
            refuse_set(&[
                (
                    "process.apparmorProfile",
                    p.apparmor_profile().as_deref().is_some_and(|s| !s.is_empty()),
                    "AppArmor profiles are not applied by wasmbox",
                ),
                (
                    "process.selinuxLabel",
                    p.selinux_label().as_deref().is_some_and(|s| !s.is_empty()),
                    "SELinux labels are not applied by wasmbox",
                ),
                ("process.ioPriority", p.io_priority().is_some(), "not applied by wasmbox"),
                ("process.scheduler", p.scheduler().is_some(), "not applied by wasmbox"),
                ("process.execCPUAffinity", p.exec_cpu_affinity().is_some(), "not applied by wasmbox"),
            ])?;
        }
        iso.hostname = spec.hostname().clone().filter(|h| !h.is_empty());
        iso.domainname = spec.domainname().clone().filter(|h| !h.is_empty());
        let Some(linux) = spec.linux() else {
            return Err(invalid("linux", "missing: a Linux container spec is required"));
        };
        for ns in linux.namespaces().iter().flatten() {
            let kind = ns.typ();
            let path = ns.path().clone().filter(|p| !p.as_os_str().is_empty());
            match kind {
                LinuxNamespaceType::User => return Err(unsupported(
                    "linux.namespaces",
                    "user namespaces are not supported yet (run without --uidmap/--gidmap, or with hostUsers: true)",
                )),
                LinuxNamespaceType::Time => {
                    return Err(unsupported("linux.namespaces", "time namespaces are not supported"))
                }
                LinuxNamespaceType::Mount if path.is_some() => {
                    return Err(unsupported("linux.namespaces", "joining an existing mount namespace is not supported"))
                }
                _ => {}
            }
            if iso.namespaces.iter().any(|n| n.kind == kind) {
                return Err(invalid("linux.namespaces", format!("namespace {kind} is listed twice")));
            }
            iso.namespaces.push(Namespace { kind, path });
        }
        if !iso.namespaces.iter().any(|n| n.kind == LinuxNamespaceType::Mount) {
            return Err(invalid(
                "linux.namespaces",
                "no mount namespace: a container's rootfs and mounts must live in a mount namespace of its own",
            ));
        }
        if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        {
            return Err(unsupported("linux.uidMappings/gidMappings", "user namespaces are not supported yet"));
        }
        if iso.hostname.is_some() && !iso.owns(LinuxNamespaceType::Uts) {
            // runc's rule: a hostname needs a UTS namespace of the container's own.
            return Err(invalid("hostname", "set, but the container has no UTS namespace of its own"));
        }
        iso.propagation =
            linux.rootfs_propagation().as_deref().filter(|s| !s.is_empty()).map(propagation).transpose()?;
        // Written in the namespaces the container is in, its own or joined
        // (CRI puts a pod's sysctls in the sandbox's spec, which joins the
        // CNI network namespace).
        let joined_or_own: Vec<LinuxNamespaceType> = iso.namespaces.iter().map(|n| n.kind).collect();
        let mut sysctl: Vec<(String, String)> =
            linux.sysctl().iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        sysctl.sort();
        for (k, _) in &sysctl {
            if !namespaced_sysctl(k, &joined_or_own) || k.contains("..") || k.contains('/') {
                return Err(invalid(
                    "linux.sysctl",
                    format!("{k:?} is not a sysctl of a namespace the container has (only net.* with a network namespace, IPC queue/semaphore keys with an IPC namespace)"),
                ));
            }
        }
        iso.sysctl = sysctl;
        refuse_set(&[
            (
                "linux.devices",
                linux.devices().as_ref().is_some_and(|d| !d.is_empty()),
                "wasm containers get no device nodes",
            ),
            ("linux.intelRdt", linux.intel_rdt().is_some(), "not applied by wasmbox"),
            ("linux.personality", linux.personality().is_some(), "not applied by wasmbox"),
            ("linux.memoryPolicy", linux.memory_policy().is_some(), "not applied by wasmbox"),
            (
                "linux.timeOffsets",
                linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty()),
                "time namespaces are not supported",
            ),
            ("linux.netDevices", linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()), "not applied by wasmbox"),
            (
                "linux.mountLabel",
                linux.mount_label().as_deref().is_some_and(|s| !s.is_empty()),
                "SELinux labels are not applied by wasmbox",
            ),
        ])?;
        iso.seccomp = linux.seccomp().clone();
        if let Some(s) = &iso.seccomp {
            crate::seccomp::check(s)?;
        }
        Ok(iso)
    }

    /// Whether the container has a namespace of `kind` of its own (new, not joined).
    pub fn owns(&self, kind: LinuxNamespaceType) -> bool {
        self.namespaces.iter().any(|n| n.kind == kind && n.path.is_none())
    }

    /// Whether the container's process lives in a pid namespace other than the shim's.
    /// For an exec: every namespace the container has is joined, those of
    /// its process `pid` (its mounts, hostname and sysctls are set already).
    pub fn for_exec(mut self, pid: u32) -> Isolation {
        for ns in &mut self.namespaces {
            let name = match ns.kind {
                LinuxNamespaceType::Mount => "mnt",
                LinuxNamespaceType::Pid => "pid",
                LinuxNamespaceType::Network => "net",
                LinuxNamespaceType::Ipc => "ipc",
                LinuxNamespaceType::Uts => "uts",
                LinuxNamespaceType::Cgroup => "cgroup",
                LinuxNamespaceType::User => "user",
                LinuxNamespaceType::Time => "time",
            };
            ns.path = Some(PathBuf::from(format!("/proc/{pid}/ns/{name}")));
        }
        self.hostname = None;
        self.domainname = None;
        self.sysctl.clear();
        self.propagation = None;
        self
    }

    pub fn pid_namespace(&self) -> bool {
        self.namespaces.iter().any(|n| n.kind == LinuxNamespaceType::Pid)
    }

    /// Joins the namespaces the spec names by path and creates the new
    /// ones (a new pid namespace holds the caller's next child, not the
    /// caller: fork after this when [`Self::pid_namespace`]). Must run
    /// while the process has one thread.
    pub fn enter_namespaces(&self) -> Result<()> {
        // Open every path first: joining one may change what the next names.
        let mut joins: Vec<(OwnedFd, &Namespace)> = Vec::new();
        for ns in &self.namespaces {
            if let Some(path) = &ns.path {
                let f = std::fs::File::open(path).map_err(|e| {
                    Error::io(format!("opening {} namespace {} (linux.namespaces)", ns.kind, path.display()), e)
                })?;
                joins.push((f.into(), ns));
            }
        }
        for (fd, ns) in &joins {
            // SAFETY: setns with an fd we own and a namespace flag.
            if unsafe { libc::setns(fd.as_raw_fd(), ns.kind as libc::c_int) } != 0 {
                let path = ns.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                return Err(Error::io(
                    format!("joining {} namespace {path} (linux.namespaces)", ns.kind),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        let flags = self.namespaces.iter().filter(|n| n.path.is_none()).fold(0, |acc, n| acc | n.kind as libc::c_int);
        // SAFETY: unshare with namespace flags only.
        if flags != 0 && unsafe { libc::unshare(flags) } != 0 {
            return Err(Error::io("creating the container's namespaces", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Hostname, domain name and sysctls, in the container's own namespaces.
    pub fn apply_uts_and_sysctl(&self) -> Result<()> {
        if let Some(h) = &self.hostname {
            nix::unistd::sethostname(h).map_err(|e| Error::io(format!("setting hostname {h:?}"), e.into()))?;
        }
        if let Some(d) = &self.domainname {
            // SAFETY: the pointer and length describe `d`'s bytes.
            if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
                return Err(Error::io(format!("setting domain name {d:?}"), std::io::Error::last_os_error()));
            }
        }
        for (k, v) in &self.sysctl {
            let path = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&path, v).map_err(|e| Error::io(format!("setting sysctl {k}={v} (linux.sysctl)"), e))?;
        }
        Ok(())
    }

    /// rlimits, the OOM score and the umask: the last steps that need the
    /// instance's privileges before [`Self::drop_privileges`].
    pub fn apply_limits(&self) -> Result<()> {
        for (typ, soft, hard) in &self.rlimits {
            let resource = rlimit_resource(*typ);
            let lim = libc::rlimit { rlim_cur: *soft as libc::rlim_t, rlim_max: *hard as libc::rlim_t };
            // SAFETY: setrlimit with a resource number and a valid struct.
            if unsafe { libc::setrlimit(resource as _, &lim) } != 0 {
                return Err(Error::io(
                    format!("setting {typ:?} to soft {soft}, hard {hard} (process.rlimits)"),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        if let Some(adj) = self.oom_score_adj {
            std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
                let current = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
                Error::io(
                    format!(
                        "setting process.oomScoreAdj to {adj} (now {}; lowering it needs CAP_SYS_RESOURCE)",
                        current.trim()
                    ),
                    e,
                )
            })?;
        }
        if let Some(mask) = self.creds.umask {
            // SAFETY: umask only sets the process's file mode mask.
            unsafe { libc::umask(mask as libc::mode_t) };
        }
        Ok(())
    }

    /// Becomes the spec's user with the spec's capabilities, then applies
    /// `noNewPrivileges` and the seccomp profile. The process must have one
    /// thread: capabilities are per thread.
    pub fn drop_privileges(&self) -> Result<()> {
        let threads = thread_count();
        if threads != 1 {
            return Err(Error::io(
                format!("dropping privileges with {threads} threads running (must be 1)"),
                std::io::Error::other("internal error"),
            ));
        }
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, which
        // the spec's capabilities usually lack: load it first (as runc does);
        // its rules must then allow what follows (they do in every default profile).
        if !self.no_new_privileges {
            if let Some(s) = &self.seccomp {
                crate::seccomp::load(s)?;
            }
        }
        use caps::{CapSet, CapsHashSet};
        let names = |names: &[String], set: &str| -> Result<CapsHashSet> {
            // Names this kernel does not know cannot be held: left out, as runc does.
            let supported = caps::runtime::thread_all_supported();
            names
                .iter()
                .map(|n| {
                    n.parse::<caps::Capability>()
                        .map_err(|_| invalid(&format!("process.capabilities.{set}"), format!("unknown capability {n}")))
                })
                .filter(|c| c.as_ref().map_or(true, |c| supported.contains(c)))
                .collect()
        };
        let caps_err = |what: &'static str| {
            move |e: caps::errors::CapsError| Error::io(format!("setting {what}"), std::io::Error::other(e.to_string()))
        };
        let bounding = names(&self.caps.bounding, "bounding")?;
        let inheritable = names(&self.caps.inheritable, "inheritable")?;
        let permitted = names(&self.caps.permitted, "permitted")?;
        let ambient = names(&self.caps.ambient, "ambient")?;
        // The bounding set first: dropping needs CAP_SETPCAP, which the
        // uid change below takes away.
        for cap in caps::all() {
            if !bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(caps_err("process.capabilities.bounding"))?;
            }
        }
        let c = &self.creds;
        let gids: Vec<libc::gid_t> = c.additional_gids.clone();
        // SAFETY: setgroups reads `gids.len()` entries.
        if unsafe { libc::setgroups(gids.len(), gids.as_ptr()) } != 0 {
            return Err(Error::io(
                format!("setting additional gids {gids:?} (process.user)"),
                std::io::Error::last_os_error(),
            ));
        }
        // Keep the permitted set across the uid change; the sets are set below.
        caps::securebits::set_keepcaps(true).map_err(caps_err("keepcaps"))?;
        // SAFETY: raw syscalls with integer ids: glibc's wrappers would
        // broadcast to other threads, and there are none.
        if unsafe { libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid) } != 0 {
            return Err(Error::io(format!("setting gid {} (process.user)", c.gid), std::io::Error::last_os_error()));
        }
        // SAFETY: as above.
        if unsafe { libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid) } != 0 {
            return Err(Error::io(format!("setting uid {} (process.user)", c.uid), std::io::Error::last_os_error()));
        }
        caps::securebits::set_keepcaps(false).map_err(caps_err("keepcaps"))?;
        // runc sets these sets and then execs the process, and execve
        // recomputes them; the guest runs here with no exec, so it gets
        // what a runc process holds after its exec (of a binary without
        // file capabilities): root gets bounding and inheritable, any other
        // user only the ambient set.
        let ambient: CapsHashSet =
            ambient.into_iter().filter(|c| permitted.contains(c) && inheritable.contains(c)).collect();
        let held: CapsHashSet =
            if c.uid == 0 { bounding.union(&inheritable).copied().collect() } else { ambient.clone() };
        // Inheritable while permitted is still full, then effective, then permitted.
        caps::set(None, CapSet::Inheritable, &inheritable).map_err(caps_err("process.capabilities.inheritable"))?;
        caps::set(None, CapSet::Effective, &held).map_err(caps_err("process.capabilities.effective"))?;
        caps::set(None, CapSet::Permitted, &held).map_err(caps_err("process.capabilities.permitted"))?;
        let _ = caps::clear(None, CapSet::Ambient);
        for cap in &ambient {
            if let Err(e) = caps::raise(None, CapSet::Ambient, *cap) {
                log::warn!("process.capabilities.ambient: cannot raise {cap}: {e}");
            }
        }
        if self.no_new_privileges {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(Error::io("setting process.noNewPrivileges", std::io::Error::last_os_error()));
            }
            if let Some(s) = &self.seccomp {
                crate::seccomp::load(s)?;
            }
        }
        Ok(())
    }
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Threads of this process, from /proc.
pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().parse().unwrap_or(0))))
        .unwrap_or(0)
}

/// Mount flags every mount the container gets carries: no device files,
/// no setuid.
const SAFE: MsFlags = MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID);

fn mount_err(what: String) -> impl FnOnce(nix::errno::Errno) -> Error {
    move |e| Error::io(what, e.into())
}

/// Binds `path` onto itself in this mount namespace, cut off from
/// propagation, then remounts it without devices or setuid (read-only when
/// asked). Only this namespace sees the result.
fn seal_mount(path: &Path, readonly: bool) -> Result<()> {
    let shown = path.display();
    mount(Some(path), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(mount_err(format!("binding {shown} in the container's mount namespace")))?;
    mount(None::<&str>, path, None::<&str>, MsFlags::MS_PRIVATE | MsFlags::MS_REC, None::<&str>)
        .map_err(mount_err(format!("making {shown} private")))?;
    remount(path, readonly)
}

fn remount(path: &Path, readonly: bool) -> Result<()> {
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | SAFE;
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    // Keep the flags the mount already has that a bind remount would clear.
    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
        use nix::sys::statvfs::FsFlags;
        let f = st.flags();
        if f.contains(FsFlags::ST_RDONLY) {
            flags |= MsFlags::MS_RDONLY;
        }
        if f.contains(FsFlags::ST_NOEXEC) {
            flags |= MsFlags::MS_NOEXEC;
        }
        for (fs, ms) in [
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(fs) {
                flags |= ms;
            }
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>).map_err(mount_err(format!(
        "remounting {} nodev,nosuid{}",
        path.display(),
        if readonly { ",ro" } else { "" }
    )))
}

/// The mount side of a container, in its new mount namespace: `/` gets the
/// spec's propagation (rslave by default, as runc), the rootfs and every
/// directory the guest is granted are sealed ([`seal_mount`]), and single
/// files are bind-mounted into the rootfs, sealed too. The host's copy of
/// the rootfs mount can then go: the container keeps its own.
pub fn setup_mounts(
    propagation: Option<MsFlags>,
    rootfs: &Path,
    root_readonly: bool,
    dirs: &[(PathBuf, bool)],
    files: &[wasmbox_spec::FileMount],
) -> Result<()> {
    let prop = propagation.unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
        .map_err(mount_err("setting the propagation of / (linux.rootfsPropagation)".into()))?;
    seal_mount(rootfs, false)?;
    for (dir, readonly) in dirs {
        seal_mount(dir, *readonly)?;
    }
    for f in files {
        let result = (|| -> std::io::Result<()> {
            if let Some(parent) = f.target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if std::fs::symlink_metadata(&f.target).is_err() {
                std::fs::OpenOptions::new().write(true).create_new(true).open(&f.target)?;
            }
            Ok(())
        })();
        result.map_err(|e| Error::io(format!("creating the mount point of {} in the rootfs", f.destination), e))?;
        mount(Some(&f.source), &f.target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(mount_err(format!("bind-mounting file {} at {}", f.source.display(), f.destination)))?;
        remount(&f.target, f.readonly)?;
    }
    if root_readonly {
        remount(rootfs, true)?;
    }
    Ok(())
}

/// For a process that works on untrusted input on the host without a
/// container around it (a background compile of a guest's wasm): no
/// capability in any set, none to be gained again (no_new_privs). Its uid
/// stays, so it can still write what that uid owns (the compile cache).
/// Capabilities are per thread: call it before starting any.
pub fn drop_all_capabilities() -> Result<()> {
    use caps::CapSet;
    let caps_err = |what: &'static str| {
        move |e: caps::errors::CapsError| Error::io(format!("dropping {what}"), std::io::Error::other(e.to_string()))
    };
    // The bounding set first: dropping from it needs CAP_SETPCAP.
    for cap in caps::all() {
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps_err("the bounding set"))?;
        }
    }
    for (set, what) in [
        (CapSet::Ambient, "the ambient set"),
        (CapSet::Inheritable, "the inheritable set"),
        (CapSet::Effective, "the effective set"),
        (CapSet::Permitted, "the permitted set"),
    ] {
        caps::clear(None, set).map_err(caps_err(what))?;
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::io("setting no_new_privs", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 1000, "gid": 1000, "additionalGids": [5]}, "args": ["/a.wasm"], "cwd": "/",
                "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true, "oomScoreAdj": 5},
            "hostname": "box",
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "uts"}, {"type": "network", "path": "/proc/1/ns/net"}],
                      "sysctl": {"net.ipv4.ip_forward": "0"}}
        })
    }

    #[test]
    fn reads_the_process_and_linux_sections() {
        let iso = Isolation::from_spec(&spec(base())).unwrap();
        assert_eq!(iso.creds, Creds { uid: 1000, gid: 1000, additional_gids: vec![5], umask: None });
        assert_eq!(iso.caps.bounding, vec!["CAP_CHOWN".to_string(), "CAP_KILL".to_string()]);
        assert_eq!(iso.caps.effective, vec!["CAP_KILL".to_string()]);
        assert!(iso.caps.ambient.is_empty());
        assert!(iso.no_new_privileges);
        assert_eq!(iso.oom_score_adj, Some(5));
        assert_eq!(iso.rlimits, vec![(PosixRlimitType::RlimitNofile, 1024, 1024)]);
        assert!(iso.owns(LinuxNamespaceType::Uts) && !iso.owns(LinuxNamespaceType::Network));
        assert!(iso.pid_namespace());
        assert_eq!(iso.hostname.as_deref(), Some("box"));
    }

    #[test]
    fn fields_that_cannot_be_honoured_are_named() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "user"}]}}), "user namespaces"),
            (serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}}), "no mount namespace"),
            (
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}], "sysctl": {"kernel.panic": "1"}}}),
                "kernel.panic",
            ),
            (
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}], "sysctl": {"net.ipv4.ip_forward": "1"}}}),
                "linux.sysctl",
            ),
            (serde_json::json!({"hostname": "h", "linux": {"namespaces": [{"type": "mount"}]}}), "UTS"),
            (
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}], "devices": [{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]}}),
                "linux.devices",
            ),
            (
                serde_json::json!({"linux": {"namespaces": [{"type": "mount", "path": "/proc/1/ns/mnt"}]}}),
                "mount namespace",
            ),
            (
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}], "rootfsPropagation": "sideways"}}),
                "rootfsPropagation",
            ),
            (
                serde_json::json!({"process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "oomScoreAdj": 5000}, "linux": {"namespaces": [{"type": "mount"}]}}),
                "oomScoreAdj",
            ),
            (
                serde_json::json!({"process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "apparmorProfile": "x"}, "linux": {"namespaces": [{"type": "mount"}]}}),
                "apparmorProfile",
            ),
            (serde_json::json!({"ociVersion": "1.0.2"}), "linux"),
        ];
        for (mut json, needle) in cases {
            json["ociVersion"] = "1.0.2".into();
            let e = Isolation::from_spec(&spec(json.clone())).unwrap_err().to_string();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
