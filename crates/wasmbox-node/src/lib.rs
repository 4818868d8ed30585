//! The node: wasmbox in a containerd node's configuration.
//!
//! - `wasmbox node check` ([`check`]): is this node set up to run wasmbox
//!   under Kubernetes? Reads containerd's version and its effective
//!   configuration (`containerd config dump`, as containerd itself resolves
//!   it, imports included) and says, item by item, what is right and what
//!   is missing: the handler, the shim and runc on containerd's PATH, CNI,
//!   the cgroup driver.
//! - `wasmbox node install` / `uninstall` ([`install()`], [`uninstall()`]):
//!   copies the shim beside containerd and registers the `wasmbox` runtime
//!   in the configuration layout it finds (containerd 1.6/1.7 and 2.x,
//!   drop-ins, k3s, RKE2, MicroK8s, k0s), recording what it did so that
//!   uninstall reverts exactly that.
//!
//! - From a pod ([`host`], [`kube`]): the installer DaemonSet's pod enters
//!   the host's mount namespace, finds the containerd that runs it, installs
//!   there and labels its Node.
//!
//! Must not depend on wasmtime, on Linux containment or on a containerd
//! crate: it reads and edits containerd's configuration and runs its
//! commands.

use std::path::{Path, PathBuf};
use std::process::Command;

mod diff;
mod error;
mod files;
pub mod handler;
pub mod host;
mod install;
pub mod kube;
pub mod layout;
mod restart;
pub mod state;

pub use error::Error;
pub use install::{install, uninstall, InstallOptions, Report, UninstallOptions};
pub use restart::{Context as RestartContext, Restart};

pub const SHIM_BINARY: &str = "containerd-shim-wasmbox-v1";
/// The runtime type containerd maps to [`SHIM_BINARY`].
pub const RUNTIME_TYPE: &str = "io.containerd.wasmbox.v1";

/// How an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub item: &'static str,
    pub detail: String,
}

fn found(level: Level, item: &'static str, detail: impl Into<String>) -> Finding {
    Finding { level, item, detail: detail.into() }
}

/// What to look at.
pub struct Input {
    /// The containerd binary (the one on PATH by default).
    pub containerd: PathBuf,
    /// Its configuration file (containerd's default when None).
    pub config: Option<PathBuf>,
    /// The PATH containerd runs with (the running daemon's when None and
    /// one is found, else ours).
    pub path: Option<String>,
}

/// `1.6.20~ds1` -> (1, 6).
pub(crate) fn major_minor(version: &str) -> Option<(u32, u32)> {
    let v = version.trim_start_matches('v');
    let mut it = v.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn get<'a>(v: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// The PATH of a running containerd, from /proc.
fn running_containerd_path() -> Option<String> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != "containerd" {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).ok()?;
        return env
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"PATH="))
            .map(|p| String::from_utf8_lossy(p).into_owned());
    }
    None
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn lookup(name: &str, path: &str, extra: Option<&Path>) -> Option<PathBuf> {
    path.split(':').map(PathBuf::from).chain(extra.map(Path::to_path_buf)).map(|d| d.join(name)).find(|p| executable(p))
}

/// Every check, in order.
pub fn check(input: &Input) -> Vec<Finding> {
    let mut out = Vec::new();
    let version = Command::new(&input.containerd).arg("--version").output();
    let version = match version {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            out.push(found(
                Level::Fail,
                "containerd",
                format!("{} --version: {}", input.containerd.display(), o.status),
            ));
            return out;
        }
        Err(e) => {
            out.push(found(Level::Fail, "containerd", format!("{}: {e}", input.containerd.display())));
            return out;
        }
    };
    let number = version.split_whitespace().nth(2).unwrap_or_default().to_string();
    match major_minor(&number) {
        Some(mm) if mm >= (1, 6) => {
            out.push(found(Level::Ok, "containerd", format!("{number} (1.6, 1.7 and 2.x are tested)")))
        }
        _ => out.push(found(Level::Fail, "containerd", format!("{version:?}: containerd 1.6 or newer is needed"))),
    }
    let mut dump = Command::new(&input.containerd);
    if let Some(c) = &input.config {
        dump.arg("--config").arg(c);
    }
    let dumped = dump.args(["config", "dump"]).output();
    let config: toml::Value = match dumped {
        Ok(o) if o.status.success() => match String::from_utf8_lossy(&o.stdout).parse::<toml::Table>() {
            Ok(t) => toml::Value::Table(t),
            Err(e) => {
                out.push(found(Level::Fail, "config", format!("containerd config dump is not TOML: {e}")));
                return out;
            }
        },
        Ok(o) => {
            out.push(found(
                Level::Fail,
                "config",
                format!("containerd config dump: {}", String::from_utf8_lossy(&o.stderr).trim()),
            ));
            return out;
        }
        Err(e) => {
            out.push(found(Level::Fail, "config", format!("containerd config dump: {e}")));
            return out;
        }
    };
    let v3 = get(&config, &["version"]).and_then(|v| v.as_integer()) == Some(3);
    let (cri_plugin, runtime_plugin) = if v3 {
        ("io.containerd.cri.v1.runtime", "io.containerd.cri.v1.runtime")
    } else {
        ("io.containerd.grpc.v1.cri", "io.containerd.grpc.v1.cri")
    };
    let disabled = get(&config, &["disabled_plugins"]).and_then(|v| v.as_array()).cloned().unwrap_or_default();
    if disabled.iter().any(|p| p.as_str().is_some_and(|p| p == "io.containerd.grpc.v1.cri" || p == cri_plugin)) {
        out.push(found(
            Level::Fail,
            "cri",
            "containerd's CRI plugin is disabled (disabled_plugins): the kubelet cannot use any handler",
        ));
    } else {
        out.push(found(Level::Ok, "cri", format!("plugin {cri_plugin} (config version {})", if v3 { 3 } else { 2 })));
    }
    let runtimes = get(&config, &["plugins", runtime_plugin, "containerd", "runtimes"]).and_then(|v| v.as_table());
    let ours: Vec<(&String, &toml::Value)> = runtimes
        .into_iter()
        .flatten()
        .filter(|(_, r)| r.get("runtime_type").and_then(|t| t.as_str()) == Some(RUNTIME_TYPE))
        .collect();
    if ours.is_empty() {
        out.push(found(
            Level::Fail,
            "handler",
            format!("no runtime with runtime_type = \"{RUNTIME_TYPE}\": add [plugins.\"{runtime_plugin}\".containerd.runtimes.wasmbox]"),
        ));
    } else {
        for (name, r) in &ours {
            out.push(found(Level::Ok, "handler", format!("{name} -> {RUNTIME_TYPE} (RuntimeClass handler: {name})")));
            let passed = r.get("pod_annotations").and_then(|a| a.as_array()).cloned().unwrap_or_default();
            if !passed.iter().any(|a| a.as_str().is_some_and(|a| a == "wasmbox.io/*" || a == "*")) {
                out.push(found(
                    Level::Warn,
                    "annotations",
                    format!("runtime {name}: pod_annotations does not pass \"wasmbox.io/*\" (pods cannot choose wasm or Linux per container)"),
                ));
            }
        }
    }
    let default =
        get(&config, &["plugins", runtime_plugin, "containerd", "default_runtime_name"]).and_then(|v| v.as_str());
    if let Some(d) = default {
        if !runtimes.is_some_and(|r| r.contains_key(d)) {
            out.push(found(
                Level::Fail,
                "default runtime",
                format!("default_runtime_name = {d:?} names no runtime: list [..runtimes.{d}] too (1.6 and 1.7 drop the built-in one once runtimes are listed)"),
            ));
        }
    }

    let path = input
        .path
        .clone()
        .or_else(running_containerd_path)
        .unwrap_or_else(|| std::env::var("PATH").unwrap_or_default());
    let beside = input.containerd.canonicalize().ok().and_then(|p| p.parent().map(Path::to_path_buf));
    match lookup(SHIM_BINARY, &path, beside.as_deref()) {
        Some(p) => out.push(found(Level::Ok, "shim", p.display().to_string())),
        None => out.push(found(Level::Fail, "shim", format!("{SHIM_BINARY} is not on containerd's PATH ({path})"))),
    }
    match lookup("runc", &path, None) {
        Some(p) => {
            out.push(found(Level::Ok, "runc", format!("{} (runs the Linux containers of wasmbox pods)", p.display())))
        }
        None => out.push(found(
            Level::Warn,
            "runc",
            format!("runc is not on containerd's PATH ({path}): Linux sidecars cannot run"),
        )),
    }

    let cni = get(&config, &["plugins", cri_plugin, "cni"]);
    let mut bin_dirs: Vec<String> = cni
        .and_then(|c| c.get("bin_dirs"))
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if let Some(d) = cni.and_then(|c| c.get("bin_dir")).and_then(|v| v.as_str()) {
        bin_dirs.push(d.to_string());
    }
    match bin_dirs.iter().find(|d| Path::new(d).join("loopback").exists()) {
        Some(d) => out.push(found(Level::Ok, "cni plugins", d.clone())),
        None => out.push(found(
            Level::Fail,
            "cni plugins",
            format!("no CNI plugins (loopback) in {bin_dirs:?}: install containernetworking-plugins"),
        )),
    }
    let conf_dir = cni.and_then(|c| c.get("conf_dir")).and_then(|v| v.as_str()).unwrap_or("/etc/cni/net.d");
    let confs = std::fs::read_dir(conf_dir).map(|d| d.flatten().count()).unwrap_or(0);
    if confs == 0 {
        out.push(found(
            Level::Warn,
            "cni config",
            format!("{conf_dir} is empty: pods get no network until a CNI config is there"),
        ));
    } else {
        out.push(found(Level::Ok, "cni config", format!("{conf_dir} ({confs} files)")));
    }

    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let systemd_runs = Path::new("/run/systemd/system").is_dir();
    let runc_systemd = runtimes
        .and_then(|r| r.get("runc"))
        .and_then(|r| get(r, &["options", "SystemdCgroup"]))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let driver = if runc_systemd { "systemd" } else { "cgroupfs" };
    if runc_systemd && !systemd_runs {
        out.push(found(Level::Fail, "cgroups", "runc's SystemdCgroup = true, but systemd does not run this host"));
    } else {
        out.push(found(
            Level::Ok,
            "cgroups",
            format!(
                "cgroup {}, runc's driver {driver}: the kubelet's cgroupDriver must be {driver}; wasmbox follows each container's cgroupsPath in either form",
                if v2 { "v2" } else { "v1" }
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions() {
        assert_eq!(super::major_minor("1.6.20~ds1"), Some((1, 6)));
        assert_eq!(super::major_minor("v2.1.9"), Some((2, 1)));
        assert_eq!(super::major_minor("2.1.9+unknown"), Some((2, 1)));
        assert_eq!(super::major_minor("x"), None);
    }
}
