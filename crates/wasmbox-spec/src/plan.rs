//! From an OCI bundle (or `wasmbox run`'s flags) to an execution [`Plan`]:
//! which wasm to run, with which arguments, environment and preopens.
//!
//! Deny by default: the plan grants the guest exactly what the spec names
//! (its args, its env, the rootfs at `/`, each bind mount at its
//! destination, read-only where the mount or the root says so) and nothing
//! else: no network, no host environment, no other directories.

use crate::annotations::{
    self, parse_bytes, parse_duration, CPU_DEADLINE as CPU_DEADLINE_ANNOTATION, MEMORY_LIMIT as MEMORY_LIMIT_ANNOTATION,
};
use crate::error::{Error, Result};
use crate::wasm::split_entrypoint;
use oci_spec::runtime::Spec;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// A host directory the guest sees at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub readonly: bool,
}

/// A bind mount of a single file. A WASI preopen is a directory, so such a
/// file is bind-mounted by the instance process (in the container's mount
/// namespace) onto `target` inside the rootfs, where the guest sees it
/// through the rootfs preopen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    pub source: PathBuf,
    /// Where it lands: `destination` resolved inside the rootfs.
    pub target: PathBuf,
    /// The path the guest sees.
    pub destination: String,
    pub readonly: bool,
}

/// Everything needed to run one wasm instance, independent of containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Host path of the `.wasm` file.
    pub wasm: PathBuf,
    /// The function to call instead of the command entry (`path.wasm#name`).
    pub export: Option<String>,
    /// The guest's argv; argv[0] is the wasm's path as the guest names it.
    pub args: Vec<String>,
    /// The guest's environment, in order.
    pub env: Vec<(String, String)>,
    /// The working directory the spec asks for.
    pub cwd: String,
    /// Directories granted to the guest.
    pub preopens: Vec<Preopen>,
    /// Single files granted to the guest (see [`FileMount`]).
    pub file_mounts: Vec<FileMount>,
    /// The spec's `wasmbox.io/` annotations (serving knobs among them).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// A Spin application: its manifest, whose components are the wasm to
    /// run (`wasm` is then the manifest's path).
    pub app: Option<Box<AppManifest>>,
}

/// Where a Spin application's `spin.toml` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppManifest {
    /// Host path of the manifest.
    pub manifest: PathBuf,
    /// Its path in the image (errors name it).
    pub guest: String,
    /// Host path of the image's root, where the manifest's paths resolve.
    pub rootfs: PathBuf,
}

/// The manifest file name of a Spin application.
pub const SPIN_MANIFEST: &str = "spin.toml";

/// The Spin application an entrypoint names, if it names one: a
/// `spin.toml` (any `*.toml`), a directory holding `spin.toml` (the Spin
/// shim's images run `/`), or, with no entrypoint, `/spin.toml`.
fn spin_app(rootfs: &Path, guest_abs: Option<&str>) -> Option<AppManifest> {
    let guest = guest_abs.unwrap_or("/");
    let host = resolve_in_root(rootfs, guest).ok()?;
    let (host, guest) = if host.is_dir() {
        (host.join(SPIN_MANIFEST), format!("{}/{SPIN_MANIFEST}", guest.trim_end_matches('/')))
    } else if guest.ends_with(".toml") {
        (host, guest.to_string())
    } else {
        return None;
    };
    host.is_file().then(|| AppManifest { manifest: host, guest, rootfs: rootfs.to_path_buf() })
}

/// Mount types that carry a host directory the guest may be granted.
fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = m.options().as_deref().unwrap_or(&[]);
    typ == "bind" || typ == "rbind" || opts.iter().any(|o| o == "bind" || o == "rbind")
}

/// CRI's annotation telling a pod's sandbox container from its workloads.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// What an instance process does for a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// Run a wasm guest.
    Wasm(Plan),
    /// A pod's sandbox ("pause") container under CRI: it only has to live
    /// until the pod ends, so nothing is run; the process waits for a signal.
    Sandbox,
}

impl Workload {
    pub fn from_bundle(bundle: &Path) -> Result<Workload> {
        let (config, spec) = load_spec(bundle)?;
        Workload::from_spec(bundle, &config, &spec)
    }

    /// The workload of a spec already read from `config` in `bundle`.
    pub fn from_spec(bundle: &Path, config: &Path, spec: &Spec) -> Result<Workload> {
        let sandbox = spec.annotations().as_ref().and_then(|a| a.get(CONTAINER_TYPE)).is_some_and(|t| t == "sandbox");
        if sandbox {
            Ok(Workload::Sandbox)
        } else {
            Plan::from_spec(bundle, config, spec).map(Workload::Wasm)
        }
    }
}

/// Limits the engine enforces inside the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// The container's memory limit (`linux.resources.memory.limit`): the
    /// guest's memories may use it less what the instance itself holds.
    pub container_memory: Option<u64>,
    /// An explicit cap on the guest's linear memories and tables.
    pub guest_memory: Option<u64>,
    /// CPU time after which the guest is stopped.
    pub cpu_deadline: Option<std::time::Duration>,
    /// The process may bind ports below 1024 (CAP_NET_BIND_SERVICE is in
    /// its effective set), as a runc container's could.
    pub bind_privileged: bool,
}

/// `250ms`, `30s`, `2m`, `1h` -> a duration.
/// The file in a bundle holding the image's wasm layer, which the shim
/// writes for an image whose wasm is a layer, not a file of its rootfs (an
/// OCI wasm artifact); the plan runs it, with the spec's args (argv[0]
/// `/app.wasm` when there are none).
pub const LAYER_WASM: &str = "wasmbox-layer.wasm";

impl Limits {
    /// What the annotations alone set (`wasmbox.io/memory-limit`,
    /// `wasmbox.io/cpu-deadline`): `wasmbox run --annotation`'s limits,
    /// where there is no container.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Limits> {
        let (guest_memory, cpu_deadline) = Limits::annotated(|k| annotations.get(k).cloned())?;
        Ok(Limits { guest_memory, cpu_deadline, ..Limits::default() })
    }

    fn annotated(ann: impl Fn(&str) -> Option<String>) -> Result<(Option<u64>, Option<std::time::Duration>)> {
        let guest_memory = match ann(MEMORY_LIMIT_ANNOTATION) {
            None => None,
            Some(v) => Some(parse_bytes(&v).filter(|&b| b > 0).ok_or_else(|| {
                annotations::bad_value(MEMORY_LIMIT_ANNOTATION, &v, "a size in bytes such as 67108864, 64Mi or 1G")
            })?),
        };
        let cpu_deadline = match ann(CPU_DEADLINE_ANNOTATION) {
            None => None,
            Some(v) => Some(parse_duration(&v).ok_or_else(|| {
                annotations::bad_value(CPU_DEADLINE_ANNOTATION, &v, "a duration such as 500ms, 30s or 2m")
            })?),
        };
        Ok((guest_memory, cpu_deadline))
    }

    pub fn from_spec(spec: &Spec) -> Result<Limits> {
        let ann = |k: &str| spec.annotations().as_ref().and_then(|a| a.get(k)).cloned();
        let container_memory = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|&l| l > 0)
            .map(|l| l as u64);
        let (guest_memory, cpu_deadline) = Limits::annotated(ann)?;
        let bind_privileged = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.effective().as_ref())
            .is_some_and(|e| e.contains(&oci_spec::runtime::Capability::NetBindService))
            || spec
                .linux()
                .as_ref()
                .and_then(|l| l.sysctl().as_ref())
                .and_then(|s| s.get("net.ipv4.ip_unprivileged_port_start"))
                .is_some_and(|v| v.trim() == "0");
        Ok(Limits { container_memory, guest_memory, cpu_deadline, bind_privileged })
    }
}

/// Reads `BUNDLE/config.json`, with the node defaults the shim wrote into
/// the bundle at Create added to its annotations (see [`crate::defaults`]).
pub fn load_spec(bundle: &Path) -> Result<(PathBuf, Spec)> {
    let config = bundle.join("config.json");
    let bytes = std::fs::read(&config).map_err(|e| Error::Spec { path: config.clone(), reason: e.to_string() })?;
    let mut spec =
        serde_json::from_slice(&bytes).map_err(|e| Error::Spec { path: config.clone(), reason: e.to_string() })?;
    crate::defaults::merge(bundle, &mut spec)?;
    Ok((config, spec))
}

impl Plan {
    /// Reads `BUNDLE/config.json` and resolves the wasm inside the rootfs
    /// (or takes [`LAYER_WASM`] from the bundle, where the shim put one).
    pub fn from_bundle(bundle: &Path) -> Result<Plan> {
        let (config, spec) = load_spec(bundle)?;
        Plan::from_spec(bundle, &config, &spec)
    }

    fn from_spec(bundle: &Path, config: &Path, spec: &Spec) -> Result<Plan> {
        let config = config.to_path_buf();
        // The image's wasm layer, when the shim found one (an OCI wasm
        // artifact: the rootfs holds no wasm).
        let layer = bundle.join(LAYER_WASM);
        let from_layer = layer.is_file();
        let root = spec.root().as_ref();
        let rootfs = rootfs_of(bundle, spec);
        let root_readonly = root.and_then(|r| r.readonly()).unwrap_or(false);
        let process = spec.process().as_ref();
        let args: Vec<String> = process.and_then(|p| p.args().clone()).unwrap_or_default();
        let cwd = process.map(|p| p.cwd().to_string_lossy().into_owned()).unwrap_or_else(|| "/".into());
        let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
        let env = process.and_then(|p| p.env().clone()).unwrap_or_default();
        let args = if args.is_empty() && from_layer { vec!["/app.wasm".to_string()] } else { args };
        let Some(arg0) = args.first() else {
            return match spin_app(&rootfs, None) {
                Some(app) => Ok(Plan::of_app(Box::new(app), bundle, spec, &rootfs, root_readonly, cwd, env)?),
                None => Err(Error::NoEntrypoint { path: config }),
            };
        };
        let (guest_path, export) = split_entrypoint(arg0)?;
        let guest_abs = if guest_path.starts_with('/') {
            guest_path.to_string()
        } else {
            format!("{}/{}", cwd.trim_end_matches('/'), guest_path)
        };
        let wasm = if from_layer {
            layer
        } else {
            if let Some(app) = spin_app(&rootfs, Some(&guest_abs)) {
                return Plan::of_app(Box::new(app), bundle, spec, &rootfs, root_readonly, cwd, env);
            }
            let wasm = resolve_in_root(&rootfs, &guest_abs)?;
            check_entrypoint(guest_path, &wasm)?;
            wasm
        };
        let mut preopens = vec![Preopen { host: rootfs.clone(), guest: "/".into(), readonly: root_readonly }];
        let (dirs, file_mounts) = bind_mounts(bundle, spec, &rootfs)?;
        preopens.extend(dirs);
        let mut guest_args = args.clone();
        guest_args[0] = guest_path.to_string();
        Ok(Plan {
            wasm,
            export: export.map(str::to_string),
            args: guest_args,
            env: env.iter().map(|kv| split_env(kv)).collect(),
            cwd,
            preopens,
            file_mounts,
            annotations: annotations::ours(spec.annotations().as_ref())?,
            app: None,
        })
    }

    /// The plan of a Spin application's container: the manifest stands for
    /// the wasm; its components get plans of their own from this one (the
    /// rootfs, the container's environment, volumes and annotations).
    fn of_app(
        app: Box<AppManifest>,
        bundle: &Path,
        spec: &Spec,
        rootfs: &Path,
        root_readonly: bool,
        cwd: String,
        env: Vec<String>,
    ) -> Result<Plan> {
        let mut preopens = vec![Preopen { host: rootfs.to_path_buf(), guest: "/".into(), readonly: root_readonly }];
        let (dirs, file_mounts) = bind_mounts(bundle, spec, rootfs)?;
        preopens.extend(dirs);
        Ok(Plan {
            wasm: app.manifest.clone(),
            export: None,
            args: vec![app.guest.clone()],
            env: env.iter().map(|kv| split_env(kv)).collect(),
            cwd,
            preopens,
            file_mounts,
            annotations: annotations::ours(spec.annotations().as_ref())?,
            app: Some(app),
        })
    }

    /// The plan for `wasmbox run FILE ARGS...`: the file is a host path and
    /// only the directories named with `--dir` are granted.
    pub fn for_file(file: &str, args: &[String], env: &[String], dirs: &[String]) -> Result<Plan> {
        let (path, export) = split_entrypoint(file)?;
        let wasm = PathBuf::from(path);
        check_entrypoint(path, &wasm)?;
        let mut preopens = Vec::new();
        for d in dirs {
            let (spec, readonly) = match d.strip_suffix(":ro") {
                Some(s) => (s, true),
                None => (d.as_str(), false),
            };
            let (host, guest) = spec.split_once("::").unwrap_or((spec, spec));
            if !Path::new(host).is_dir() {
                return Err(Error::MountSourceMissing { destination: guest.to_string(), source_path: host.into() });
            }
            preopens.push(Preopen { host: host.into(), guest: guest.to_string(), readonly });
        }
        let mut argv = vec![path.to_string()];
        argv.extend(args.iter().cloned());
        Ok(Plan {
            wasm,
            export: export.map(str::to_string),
            args: argv,
            env: env.iter().map(|kv| split_env(kv)).collect(),
            cwd: "/".into(),
            preopens,
            file_mounts: Vec::new(),
            annotations: Default::default(),
            app: None,
        })
    }
}

/// The spec's bind mounts: directories become preopens, single files
/// [`FileMount`]s. A missing source is an error that names it.
/// The spec's bind mounts: directories (preopens) and single files. A
/// relative source is relative to the bundle, as the OCI runtime spec says.
fn bind_mounts(bundle: &Path, spec: &Spec, rootfs: &Path) -> Result<(Vec<Preopen>, Vec<FileMount>)> {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        if !is_bind(m) {
            continue;
        }
        let destination = m.destination().to_string_lossy().into_owned();
        let Some(source) = m.source().clone() else {
            return Err(Error::InvalidArgument {
                what: format!("mount {destination}"),
                reason: "bind mount has no source".into(),
            });
        };
        let source = if source.is_relative() { bundle.join(source) } else { source };
        if !destination.starts_with('/') || Path::new(&destination).components().any(|c| c == Component::ParentDir) {
            return Err(Error::InvalidArgument {
                what: format!("mount {destination}"),
                reason: "destination must be an absolute path without '..'".into(),
            });
        }
        let readonly = m.options().as_deref().unwrap_or(&[]).iter().any(|o| o == "ro");
        match std::fs::metadata(&source) {
            Err(_) => return Err(Error::MountSourceMissing { destination, source_path: source }),
            Ok(md) if md.is_dir() => dirs.push(Preopen { host: source, guest: destination, readonly }),
            Ok(_) => {
                let target = resolve_in_root(rootfs, &destination)?;
                files.push(FileMount { source, target, destination, readonly });
            }
        }
    }
    Ok((dirs, files))
}

pub fn rootfs_of(bundle: &Path, spec: &Spec) -> PathBuf {
    match spec.root().as_ref().map(|r| r.path().clone()) {
        Some(p) if p.is_absolute() => p,
        Some(p) => bundle.join(p),
        None => bundle.join("rootfs"),
    }
}

/// The entrypoint must exist and be a regular file: reading a FIFO or a
/// device as wasm would block or touch the host.
fn check_entrypoint(guest_path: &str, wasm: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let ft = match std::fs::metadata(wasm) {
        Ok(md) => md.file_type(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::WasmNotFound { guest_path: guest_path.to_string(), host_path: wasm.to_path_buf() })
        }
        Err(e) => return Err(Error::io(format!("reading {}", wasm.display()), e)),
    };
    let what = if ft.is_file() {
        return Ok(());
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(Error::NotWasm { path: wasm.to_path_buf(), reason: format!("it is {what}, not a regular file") })
}

fn split_env(kv: &str) -> (String, String) {
    match kv.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (kv.to_string(), String::new()),
    }
}

/// Resolves `guest` (an absolute path inside the container) against `root`
/// the way a chroot would: symlinks are followed, absolute link targets
/// restart at `root`, and a `..` that would climb above `root` is refused.
pub fn resolve_in_root(root: &Path, guest: &str) -> Result<PathBuf> {
    let hostile = |reason: &str| Error::HostilePath { guest_path: guest.to_string(), reason: reason.to_string() };
    let mut pending: VecDeque<OsString> = Path::new(guest)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            if !resolved.pop() {
                return Err(hostile("'..' climbs above the root"));
            }
            continue;
        }
        let candidate = root.join(&resolved).join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(hostile("too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&candidate)
                    .map_err(|e| Error::io(format!("reading link {}", candidate.display()), e))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push_front(n.to_os_string()),
                        Component::ParentDir => pending.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(&part),
        }
    }
    Ok(root.join(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch bundle directory, removed when dropped.
    fn tmp() -> tempfile::TempDir {
        let d = tempfile::Builder::new().prefix("wasmbox-plan-").tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("rootfs/app")).unwrap();
        d
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("67108864"), Some(64 << 20));
        assert_eq!(parse_bytes("64Mi"), Some(64 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("12 apples"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_duration("250ms"), Some(std::time::Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(std::time::Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(std::time::Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("10"), None);
        let spec: Spec = serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"wasmbox.io/cpu-deadline": "soon"}}))
        .unwrap();
        let e = Limits::from_spec(&spec).unwrap_err().to_string();
        assert!(e.contains("wasmbox.io/cpu-deadline") && e.contains("soon"), "{e}");
        let spec: Spec = serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"wasmbox.io/memory-limit": "32Mi"},
            "linux": {"resources": {"memory": {"limit": 67108864}}}}))
        .unwrap();
        let l = Limits::from_spec(&spec).unwrap();
        assert_eq!((l.container_memory, l.guest_memory, l.cpu_deadline), (Some(64 << 20), Some(32 << 20), None));
    }

    #[test]
    fn resolves_symlinks_inside_root_only() {
        let scratch = tmp();
        let d = scratch.path();
        let root = d.join("rootfs");
        std::fs::write(root.join("app/a.wasm"), b"x").unwrap();
        symlink("/app/a.wasm", root.join("abs")).unwrap();
        symlink("app/a.wasm", root.join("rel")).unwrap();
        symlink("/etc/passwd", root.join("app/passwd")).unwrap();
        symlink("../../../../etc", root.join("app/up")).unwrap();
        assert_eq!(resolve_in_root(&root, "/abs").unwrap(), root.join("app/a.wasm"));
        assert_eq!(resolve_in_root(&root, "/rel").unwrap(), root.join("app/a.wasm"));
        // An absolute link restarts at the container's root, not the host's.
        assert_eq!(resolve_in_root(&root, "/app/passwd").unwrap(), root.join("etc/passwd"));
        assert!(matches!(resolve_in_root(&root, "/app/up/passwd"), Err(Error::HostilePath { .. })));
        assert!(matches!(resolve_in_root(&root, "/../etc/passwd"), Err(Error::HostilePath { .. })));
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert!(resolve_in_root(&root, "/loop1").unwrap_err().to_string().contains("too many levels"));
    }

    fn write_config(d: &Path, json: serde_json::Value) {
        std::fs::write(d.join("config.json"), json.to_string()).unwrap();
    }

    #[test]
    fn plan_from_bundle() {
        let scratch = tmp();
        let d = scratch.path();
        std::fs::write(d.join("rootfs/app/a.wasm"), b"x").unwrap();
        let src = d.join("data");
        std::fs::create_dir(&src).unwrap();
        write_config(
            d,
            serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "rootfs"},
                "process": {"user": {"uid": 0, "gid": 0}, "args": ["/app/a.wasm#greet", "x"], "env": ["A=1", "B=x=y"], "cwd": "/app"},
                "mounts": [
                    {"destination": "/proc", "type": "proc", "source": "proc"},
                    {"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "ro"]},
                    {"destination": "/rel", "type": "bind", "source": "data", "options": ["rbind"]}
                ]
            }),
        );
        let plan = Plan::from_bundle(d).unwrap();
        assert_eq!(plan.wasm, d.join("rootfs/app/a.wasm"));
        assert_eq!(plan.export.as_deref(), Some("greet"));
        assert_eq!(plan.args, vec!["/app/a.wasm", "x"]);
        assert_eq!(plan.env, vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]);
        assert_eq!(plan.cwd, "/app");
        assert_eq!(plan.preopens.len(), 3);
        assert_eq!(plan.preopens[1], Preopen { host: src.clone(), guest: "/data".into(), readonly: true });
        // A relative source is relative to the bundle (not to the process's cwd).
        assert_eq!(plan.preopens[2], Preopen { host: src, guest: "/rel".into(), readonly: false });
    }

    #[test]
    fn sandbox_containers_run_nothing() {
        let scratch = tmp();
        let d = scratch.path();
        write_config(
            d,
            serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/pause"], "cwd": "/"}}),
        );
        assert_eq!(Workload::from_bundle(d).unwrap(), Workload::Sandbox);
        write_config(
            d,
            serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"io.kubernetes.cri.container-type": "container"},
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/pause"], "cwd": "/"}}),
        );
        assert!(matches!(Workload::from_bundle(d), Err(Error::WasmNotFound { .. })));
    }

    #[test]
    fn file_bind_mounts_land_inside_the_rootfs() {
        let scratch = tmp();
        let d = scratch.path();
        std::fs::write(d.join("rootfs/app/a.wasm"), b"x").unwrap();
        let src = d.join("hosts");
        std::fs::write(&src, "127.0.0.1 localhost\n").unwrap();
        // A symlink in the image may not send the mount outside the rootfs.
        symlink("/", d.join("rootfs/etc")).unwrap();
        write_config(
            d,
            serde_json::json!({
                "ociVersion": "1.0.2",
                "process": {"user": {"uid": 0, "gid": 0}, "args": ["/app/a.wasm"], "cwd": "/"},
                "mounts": [
                    {"destination": "/etc/hosts", "type": "bind", "source": src, "options": ["rbind", "ro"]},
                    {"destination": "/data", "type": "bind", "source": d.join("rootfs/app"), "options": ["rbind"]}
                ]
            }),
        );
        let plan = Plan::from_bundle(d).unwrap();
        assert_eq!(plan.preopens.len(), 2, "the directory mount is a preopen");
        let files = &plan.file_mounts;
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].target, d.join("rootfs/hosts"), "resolved as a chroot would");
        assert!(files[0].readonly);
        assert_eq!(files[0].destination, "/etc/hosts");
    }

    #[test]
    fn bundle_errors_name_the_file() {
        let scratch = tmp();
        let d = scratch.path();
        write_config(
            d,
            serde_json::json!({"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "args": ["/missing.wasm"], "cwd": "/"}}),
        );
        let e = Plan::from_bundle(d).unwrap_err();
        assert!(matches!(e, Error::WasmNotFound { .. }) && e.to_string().contains("/missing.wasm"), "{e}");
        write_config(
            d,
            serde_json::json!({"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "args": [], "cwd": "/"}}),
        );
        assert!(matches!(Plan::from_bundle(d).unwrap_err(), Error::NoEntrypoint { .. }));
        std::fs::write(d.join("rootfs/a.wasm"), b"x").unwrap();
        write_config(
            d,
            serde_json::json!({"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "args": ["a.wasm"], "cwd": "/"},
            "mounts": [{"destination": "/data", "type": "bind", "source": "/nonexistent/wasmbox", "options": ["rbind"]}]}),
        );
        let e = Plan::from_bundle(d).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/wasmbox") && e.contains("/data"), "{e}");
        // An entrypoint that is not a regular file is refused before anyone reads it.
        nix::unistd::mkfifo(&d.join("rootfs/pipe.wasm"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        write_config(
            d,
            serde_json::json!({"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "args": ["/pipe.wasm"], "cwd": "/"}}),
        );
        let e = Plan::from_bundle(d).unwrap_err().to_string();
        assert!(e.contains("pipe.wasm") && e.contains("a FIFO, not a regular file"), "{e}");
        let e = Plan::for_file(d.join("rootfs").to_str().unwrap(), &[], &[], &[]).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        std::fs::write(d.join("config.json"), "{not json").unwrap();
        assert!(Plan::from_bundle(d).unwrap_err().to_string().contains("config.json"));
    }
}
