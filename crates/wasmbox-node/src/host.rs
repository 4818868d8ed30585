//! Installing from a pod (`wasmbox node install --host`, the installer
//! DaemonSet of deploy/installer.yaml): the program finds the containerd
//! that runs the pod itself (a node may run several: Docker's and the
//! kubelet's, say), since the shim of the pod's container names that
//! containerd's socket and the containerd serving that socket names its
//! configuration and binary; then it enters that containerd's mount
//! namespace, so every path, `ctr` and `systemctl` are the node's own.
//! (Not PID 1's, as `nsenter -t 1 -m` would: a host may deny access to its
//! init, as these test machines do, and containerd's is the namespace
//! whose files count.)
//!
//! The pod needs `hostPID: true` and a privileged container (entering a
//! mount namespace needs CAP_SYS_ADMIN and CAP_SYS_CHROOT, reading another
//! process's CAP_SYS_PTRACE). Its network namespace stays the pod's, so the
//! API server is reached as from any pod.

use crate::error::Error;
use crate::kube::{InCluster, INSTALLED_LABEL, RUNTIME_LABEL, SHIM_ANNOTATION};
use crate::layout::CONTAINERD_CONFIG;
use crate::restart::Context as RestartContext;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The containerd that runs this pod, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainerd {
    pub pid: i32,
    /// The binary it runs (`/proc/PID/exe`).
    pub exe: PathBuf,
    /// The directory of the program it was started as, when that was an
    /// absolute path (where a shim beside it is on its PATH); else the
    /// binary's directory.
    pub bin_dir: PathBuf,
    /// Its configuration (`--config`, else containerd's default).
    pub config: PathBuf,
    /// Its gRPC socket, as the pod's shim names it.
    pub socket: PathBuf,
    /// The PATH it runs with (where it looks for shims).
    pub path: Option<String>,
}

fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    (!args.is_empty()).then_some(args)
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn base(arg: &str) -> &str {
    arg.rsplit('/').next().unwrap_or(arg)
}

/// The value of option `long` (or `short`) in `args`, in any of the forms
/// Go's flag packages take: `--x V`, `--x=V`, `-x V`, `-x=V`.
pub fn option<'a>(args: &'a [String], long: &str, short: Option<&str>) -> Option<&'a str> {
    let names: Vec<String> = [Some(format!("--{long}")), Some(format!("-{long}")), short.map(|s| format!("-{s}"))]
        .into_iter()
        .flatten()
        .collect();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        for n in &names {
            if a == n {
                return it.next().map(String::as_str);
            }
            if let Some(v) = a.strip_prefix(n.as_str()).and_then(|r| r.strip_prefix('=')) {
                return Some(v);
            }
        }
    }
    None
}

/// The socket of the containerd a shim serves: the first ancestor of
/// `pid` that is a containerd shim names it with `-address`.
pub fn shim_address(pid: i32) -> Result<PathBuf, Error> {
    let mut p = pid;
    for _ in 0..32 {
        let Some(parent) = parent_of(p).filter(|pp| *pp > 0) else { break };
        if let Some(args) = cmdline(parent) {
            if base(&args[0]).starts_with("containerd-shim") {
                return option(&args, "address", None).map(PathBuf::from).ok_or_else(|| {
                    Error::unsupported(
                        format!("/proc/{parent}/cmdline"),
                        format!("the shim running this pod ({}) names no -address", args.join(" ")),
                    )
                });
            }
        }
        p = parent;
    }
    Err(Error::unsupported(
        format!("/proc/{pid}"),
        "no containerd shim among this process's ancestors: the installer pod needs `hostPID: true` (or give --config, --bin-dir and --containerd)",
    ))
}

/// containerd's gRPC socket by its command line and configuration text.
fn socket_in(args: &[String], text: &str) -> PathBuf {
    if let Some(a) = option(args, "address", Some("a")) {
        return PathBuf::from(a);
    }
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("grpc")?.get("address")?.as_str().map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("/run/containerd/containerd.sock"))
}

/// The containerd process serving `socket` (its files read through
/// `/proc/PID/root`, so from any mount namespace).
pub fn containerd_serving(socket: &Path) -> Result<PodContainerd, Error> {
    let procs = std::fs::read_dir("/proc").map_err(Error::io("reading", "/proc"))?;
    let mut seen = Vec::new();
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Some(args) = cmdline(pid) else { continue };
        if base(&args[0]) != "containerd" {
            continue;
        }
        let config = PathBuf::from(option(&args, "config", Some("c")).unwrap_or(CONTAINERD_CONFIG));
        let config = if config.is_relative() {
            std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default().join(config)
        } else {
            config
        };
        let text = std::fs::read_to_string(format!("/proc/{pid}/root{}", config.display())).unwrap_or_default();
        let serves = socket_in(&args, &text);
        if serves != socket {
            seen.push(format!("{pid} serves {}", serves.display()));
            continue;
        }
        let exe =
            std::fs::read_link(format!("/proc/{pid}/exe")).map_err(Error::io("reading", format!("/proc/{pid}/exe")))?;
        let started_as = Path::new(&args[0]);
        let bin_dir = if started_as.is_absolute() { started_as.parent() } else { exe.parent() }
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin"));
        let path = std::fs::read(format!("/proc/{pid}/environ")).ok().and_then(|env| {
            env.split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"PATH=").map(|v| String::from_utf8_lossy(v).into_owned()))
        });
        return Ok(PodContainerd { pid, exe, bin_dir, config, socket: socket.to_path_buf(), path });
    }
    Err(Error::unsupported(
        socket,
        format!(
            "no containerd process serves this socket, which the pod's shim names (containerd processes seen: {})",
            if seen.is_empty() { "none".to_string() } else { seen.join("; ") }
        ),
    ))
}

/// Enters the cgroup and mount namespaces of process `pid`. Must be
/// called while the process has one thread (a mount namespace cannot be
/// changed by a thread sharing its filesystem attributes).
pub fn enter_namespaces_of(pid: i32) -> Result<(), Error> {
    enter(pid, "cgroup", libc::CLONE_NEWCGROUP)?;
    enter(pid, "mnt", libc::CLONE_NEWNS)
}

fn enter(pid: i32, kind: &str, flag: libc::c_int) -> Result<(), Error> {
    let ns = format!("/proc/{pid}/ns/{kind}");
    let f = File::open(&ns).map_err(|e| {
        Error::unsupported(&ns, format!("{e} (the installer pod must be privileged, with hostPID: true)"))
    })?;
    // SAFETY: setns on a file descriptor we own; no memory is shared.
    if unsafe { libc::setns(f.as_raw_fd(), flag) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::unsupported(
            ns,
            format!("entering containerd's {kind} namespace: {e} (the installer pod must be privileged, with hostPID: true)"),
        ));
    }
    Ok(())
}

/// The `cgroup.procs` files of process `pid`'s cgroups, one per
/// hierarchy: a command that restarts containerd moves into containerd's
/// first, so the new containerd is where the old one was, not in the
/// installer pod's cgroup (which is killed with the pod). Read after
/// entering containerd's mount and cgroup namespaces: the hierarchies are
/// found where they are mounted (v1, v2, or both: a hybrid host mounts v2
/// at /sys/fs/cgroup/unified).
pub fn cgroup_procs_of(pid: i32) -> Vec<CString> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    cgroup_dirs(&cgroups, &mounts)
        .into_iter()
        .map(|d| d.join("cgroup.procs"))
        .filter(|p| p.exists())
        .filter_map(|p| CString::new(p.into_os_string().into_encoded_bytes()).ok())
        .collect()
}

/// The directory of each of a process's cgroups (`/proc/PID/cgroup`),
/// by the cgroup mounts of `mountinfo`.
fn cgroup_dirs(cgroups: &str, mountinfo: &str) -> Vec<PathBuf> {
    // (controllers, or None for v2; mount point; the mount's root)
    let mut mounts: Vec<(Option<Vec<&str>>, &str, &str)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let fields: Vec<&str> = left.split(' ').collect();
        let rest: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (fields.get(3), fields.get(4), rest.first()) else { continue };
        match *fstype {
            "cgroup2" => mounts.push((None, point, root)),
            "cgroup" => {
                let opts = rest.get(2).copied().unwrap_or_default();
                mounts.push((Some(opts.split(',').collect()), point, root));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let found = mounts.iter().find(|(opts, _, _)| match opts {
            None => controllers.is_empty(),
            Some(opts) => !controllers.is_empty() && controllers.split(',').all(|c| opts.contains(&c)),
        });
        let Some((_, point, root)) = found else { continue };
        // A mount of a sub-tree holds the paths under its root.
        let Some(rel) = Path::new(path).strip_prefix(root).ok() else { continue };
        out.push(if rel.as_os_str().is_empty() { PathBuf::from(point) } else { Path::new(point).join(rel) });
    }
    out
}

/// The defaults `--host` gives install: the pod's containerd, its
/// configuration and the directory it was started from.
pub fn find_pod_containerd() -> Result<PodContainerd, Error> {
    let socket = shim_address(std::process::id() as i32)?;
    containerd_serving(&socket)
}

/// What `--host` and `--label-node` add around an install or uninstall:
/// set up before anything else, while the process has one thread.
pub struct InPod {
    /// The pod's containerd (with `--host`).
    pub containerd: Option<PodContainerd>,
    /// The API server and the Node to label (with `--label-node`).
    api: Option<(InCluster, String)>,
    /// containerd's cgroups, for the restart command.
    cgroups: Vec<CString>,
    /// Files of the pod's own kept open across the change of namespace.
    _held: Vec<File>,
}

impl InPod {
    /// Reads the service account (for `label_node`), opens each file of
    /// `keep` and points it at its open descriptor (so the shim in the
    /// image stays reachable), then, with `host`, finds the pod's
    /// containerd and enters its mount namespace.
    pub fn prepare(host: bool, label_node: Option<&str>, keep: &mut [&mut PathBuf]) -> Result<InPod, Error> {
        let api = label_node.map(|n| InCluster::from_pod().map(|c| (c, n.to_string()))).transpose()?;
        let mut held = Vec::new();
        if host {
            for p in keep.iter_mut() {
                let f = File::open(&**p).map_err(Error::io("opening", &**p))?;
                **p = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
                held.push(f);
            }
        }
        let containerd = if host { Some(find_pod_containerd()?) } else { None };
        let cgroups = match &containerd {
            Some(c) => {
                enter_namespaces_of(c.pid)?;
                // Read in containerd's namespace: its /sys/fs/cgroup.
                cgroup_procs_of(c.pid)
            }
            None => Vec::new(),
        };
        Ok(InPod { containerd, api, cgroups, _held: held })
    }

    /// Where a restart command runs: in containerd's cgroups, told which
    /// containerd (`WASMBOX_CONTAINERD_PID`, `_CONFIG`, `_SOCKET`, `_BIN`).
    pub fn restart_context(&self) -> RestartContext {
        let Some(c) = &self.containerd else { return RestartContext::default() };
        RestartContext {
            env: vec![
                ("WASMBOX_CONTAINERD_PID".into(), c.pid.to_string()),
                ("WASMBOX_CONTAINERD_CONFIG".into(), c.config.display().to_string()),
                ("WASMBOX_CONTAINERD_SOCKET".into(), c.socket.display().to_string()),
                ("WASMBOX_CONTAINERD_BIN".into(), c.exe.display().to_string()),
            ],
            cgroup_procs: self.cgroups.clone(),
        }
    }

    /// After an install: the Node labelled `wasmbox.io/runtime=wasmbox`
    /// and `wasmbox.io/installed=VERSION`, annotated with the shim's
    /// SHA-256; a line saying so.
    pub fn label_installed(&self, version: &str, shim: &Path) -> Result<Option<String>, Error> {
        let Some((api, node)) = &self.api else { return Ok(None) };
        let sha = crate::files::sha256_file(shim)?;
        api.patch_node(
            node,
            &[(RUNTIME_LABEL.0, Some(RUNTIME_LABEL.1)), (INSTALLED_LABEL, Some(version))],
            &[(SHIM_ANNOTATION, Some(&sha))],
        )?;
        Ok(Some(format!(
            "labelled node {node} {}={} and {INSTALLED_LABEL}={version} (shim sha256 {})",
            RUNTIME_LABEL.0,
            RUNTIME_LABEL.1,
            &sha[..12]
        )))
    }

    /// Before an uninstall: the labels and the annotation taken off the
    /// Node, so no new wasm pod is scheduled there; a line saying so.
    pub fn unlabel(&self) -> Result<Option<String>, Error> {
        let Some((api, node)) = &self.api else { return Ok(None) };
        api.patch_node(node, &[(RUNTIME_LABEL.0, None), (INSTALLED_LABEL, None)], &[(SHIM_ANNOTATION, None)])?;
        Ok(Some(format!("took {} and {INSTALLED_LABEL} off node {node}", RUNTIME_LABEL.0)))
    }
}

/// Waits for SIGTERM or SIGINT (`--stay`: the DaemonSet's pod stays, a
/// process asleep, until it is deleted or replaced).
pub fn stay() {
    // SAFETY: plain libc signal-mask calls on a set of our own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn options_in_every_form_go_takes() {
        let a = args("containerd-shim-runc-v2 -namespace k8s.io -id abc -address /run/k3s/containerd/containerd.sock");
        assert_eq!(option(&a, "address", None), Some("/run/k3s/containerd/containerd.sock"));
        let a = args("containerd -c /var/lib/rancher/k3s/agent/etc/containerd/config.toml -a /run/k3s/c.sock");
        assert_eq!(option(&a, "config", Some("c")), Some("/var/lib/rancher/k3s/agent/etc/containerd/config.toml"));
        assert_eq!(option(&a, "address", Some("a")), Some("/run/k3s/c.sock"));
        let a = args("/usr/bin/containerd --config=/etc/c.toml");
        assert_eq!(option(&a, "config", Some("c")), Some("/etc/c.toml"));
        assert_eq!(option(&a, "address", Some("a")), None);
    }

    #[test]
    fn the_socket_comes_from_the_flag_then_the_configuration() {
        let config = "version = 2\n[grpc]\n  address = \"/run/x/containerd.sock\"\n";
        assert_eq!(socket_in(&args("containerd"), config), PathBuf::from("/run/x/containerd.sock"));
        assert_eq!(socket_in(&args("containerd -a /run/y.sock"), config), PathBuf::from("/run/y.sock"));
        assert_eq!(socket_in(&args("containerd"), ""), PathBuf::from("/run/containerd/containerd.sock"));
    }

    #[test]
    fn cgroups_are_found_where_they_are_mounted() {
        // A hybrid host: v1 controllers, v2 at /sys/fs/cgroup/unified.
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
33 30 0:29 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 /kubepods /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory";
        let cgroups = "4:memory:/kubepods/pod1\n3:cpu,cpuacct:/\n1:name=systemd:/system.slice/containerd.service\n0::/system.slice/containerd.service\n";
        let dirs = cgroup_dirs(cgroups, mountinfo);
        let dirs: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/memory/pod1",
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/systemd/system.slice/containerd.service",
                "/sys/fs/cgroup/unified/system.slice/containerd.service",
            ]
        );
    }

    #[test]
    fn a_process_outside_any_container_is_told_what_the_pod_needs() {
        // The test runner's ancestors include no containerd shim.
        let err = shim_address(std::process::id() as i32).unwrap_err().to_string();
        assert!(err.contains("hostPID"), "{err}");
    }
}
