//! The seam between the Task service and whatever runs a container. The
//! service keeps the task state machine, stdio, events and exit statuses;
//! a [`Backend`] creates a container's process and a [`Process`] answers
//! every verb on it. Today's backend is [`crate::wasm::WasmBackend`] (our
//! instance process); a Linux backend (an OCI runtime for containers whose
//! entrypoint is not wasm) plugs in here the same way.
//!
//! [`Dispatch`] picks the backend of each container: the Linux backend
//! ([`crate::linux::LinuxBackend`], runc) for an ELF or script entrypoint,
//! the wasm backend otherwise (see `wasmbox_spec::detect`).
//!
//! A verb a backend cannot do answers with [`ShimError::Unimplemented`],
//! which containerd shows as "not supported".

use crate::error::ShimError;
use crate::stdio::ChildFds;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::LinuxResources;
use std::path::{Path, PathBuf};

/// What a backend is given to create a container.
pub struct CreateRequest<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    /// containerd's rootfs mounts (empty: `BUNDLE/rootfs` is ready).
    pub rootfs: &'a [containerd_shim::protos::types::mount::Mount],
    /// Where those mounts are already mounted on the host (by [`Dispatch`]):
    /// the backend owns that mount from now on, and removes it when it no
    /// longer needs it, on failure too.
    pub mounted_rootfs: Option<PathBuf>,
    /// The container's stdio as its process gets it.
    pub stdio: ChildFds,
    /// A TTY was asked for (`process.terminal`): stdin and stdout go
    /// through a pty.
    pub terminal: bool,
    /// To be called with the pid of every process the backend starts whose
    /// exit the service must not miss, before that process could be reaped.
    pub watch: &'a (dyn Fn(u32) + Sync),
}

pub trait Backend: Send + Sync {
    /// Creates the container: its process exists, prepared, not yet
    /// running the workload. Leaves nothing behind on failure.
    fn create(&self, req: CreateRequest<'_>) -> Result<Box<dyn Process>, ShimError>;
}

/// One container's process, as a backend runs it.
pub trait Process: Send {
    /// The host pid containerd is told (whose exit is the container's).
    fn pid(&self) -> u32;
    /// Lets the workload run.
    fn start(&mut self) -> Result<(), ShimError>;
    /// Delivers `signal` to the process, or with `all` to every process
    /// of the container. A process already gone is not an error.
    fn kill(&mut self, signal: i32, all: bool) -> Result<(), ShimError>;
    fn pause(&mut self) -> Result<(), ShimError>;
    fn resume(&mut self) -> Result<(), ShimError>;
    /// Metrics in the form containerd decodes (cgroups v1 or v2 `Metrics`).
    fn stats(&self) -> Result<Any, ShimError>;
    /// Applies new resource limits to the running container.
    fn update(&mut self, resources: &LinuxResources) -> Result<(), ShimError>;
    /// Pids of the container's processes.
    fn pids(&self) -> Vec<u32>;
    /// Releases what the container held (cgroup, mounts) once its process
    /// has exited. Called once, at Delete.
    fn cleanup(&mut self);
    /// Sets the window size of the container's TTY.
    fn resize_pty(&mut self, width: u32, height: u32) -> Result<(), ShimError>;
    /// Calls `on_oom` whenever the kernel's OOM killer acts in the
    /// container, until the container is gone.
    fn watch_oom(&self, on_oom: Box<dyn Fn() + Send>);
    /// Asked once the process has exited: whether the runtime itself
    /// ended the workload at its memory limit (the kernel's OOM kills come
    /// through [`Process::watch_oom`]).
    fn ended_out_of_memory(&mut self) -> bool {
        false
    }
    /// Another process in the container (containerd's Exec), created but
    /// not started.
    fn exec(&mut self, req: ExecRequest<'_>) -> Result<Box<dyn ExecProcess>, ShimError>;
}

/// What a backend is given to add a process to a running container.
pub struct ExecRequest<'a> {
    pub exec_id: &'a str,
    /// The OCI `Process` (JSON) containerd sent: args, env, cwd, user, ...
    pub spec: &'a [u8],
    pub stdio: ChildFds,
    /// A TTY was asked for.
    pub terminal: bool,
}

/// A process added to a container by Exec.
pub trait ExecProcess: Send {
    /// Starts it; returns its host pid. The service holds its table while
    /// this runs, so an exit reaped meanwhile waits until the pid is known.
    fn start(&mut self) -> Result<u32, ShimError>;
    /// Delivers `signal`; a process already gone is not an error.
    fn kill(&mut self, signal: i32) -> Result<(), ShimError>;
    /// Sets the window size of its TTY.
    fn resize_pty(&mut self, width: u32, height: u32) -> Result<(), ShimError>;
    /// Removes what the exec left (its files), once it has exited.
    fn cleanup(&mut self);
}

/// The backend the service talks to: mounts the rootfs, looks at the
/// entrypoint (and the annotations that force a choice) and hands the
/// container to the wasm or the Linux backend.
pub struct Dispatch {
    pub wasm: Box<dyn Backend>,
    pub linux: Box<dyn Backend>,
}

impl Backend for Dispatch {
    fn create(&self, mut req: CreateRequest<'_>) -> Result<Box<dyn Process>, ShimError> {
        let id = req.id;
        let mounted = crate::rootfs::mount(id, req.bundle, req.rootfs)?;
        let kind = (|| {
            // The node's defaults in force now, kept in the bundle for the
            // container's life.
            let defaults = wasmbox_spec::defaults::load(&wasmbox_spec::defaults::path())?;
            wasmbox_spec::defaults::snapshot(req.bundle, &defaults)?;
            let (_, spec) = wasmbox_spec::plan::load_spec(req.bundle)?;
            let rootfs = wasmbox_spec::plan::rootfs_of(req.bundle, &spec);
            let kind = wasmbox_spec::detect::detect(&spec, &rootfs)?;
            Ok((kind, entrypoint_missing(&spec, &rootfs)))
        })();
        let kind = match kind {
            Ok((wasmbox_spec::detect::Kind::Wasm, true)) => match crate::content::wasm_layer(id) {
                Ok(None) => wasmbox_spec::detect::Kind::Wasm,
                Ok(Some((_, wasm))) => {
                    let path = req.bundle.join(wasmbox_spec::plan::LAYER_WASM);
                    let written = std::fs::write(&path, wasm);
                    if let Err(source) = written {
                        if let Some(r) = &mounted {
                            crate::rootfs::unmount(r);
                        }
                        return Err(ShimError::Io {
                            id: id.to_string(),
                            context: format!("writing {}", path.display()),
                            source,
                        });
                    }
                    wasmbox_spec::detect::Kind::Wasm
                }
                Err(e) => {
                    if let Some(r) = &mounted {
                        crate::rootfs::unmount(r);
                    }
                    return Err(e);
                }
            },
            Ok((k, _)) => k,
            Err(source) => {
                if let Some(r) = &mounted {
                    crate::rootfs::unmount(r);
                }
                return Err(ShimError::Core { id: id.to_string(), source });
            }
        };
        req.mounted_rootfs = mounted;
        match kind {
            wasmbox_spec::detect::Kind::Wasm => self.wasm.create(req),
            wasmbox_spec::detect::Kind::Linux => {
                log::info!("container {id}: not wasm, run by the Linux backend");
                self.linux.create(req)
            }
        }
    }
}

/// Whether the spec's entrypoint is missing from the rootfs (or there is
/// none): then the image may carry its wasm as a layer.
fn entrypoint_missing(spec: &oci_spec::runtime::Spec, rootfs: &Path) -> bool {
    let arg0 = spec.process().as_ref().and_then(|p| p.args().as_ref()).and_then(|a| a.first().cloned());
    let sandbox = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get("io.kubernetes.cri.container-type"))
        .is_some_and(|t| t == "sandbox");
    match arg0 {
        _ if sandbox => false,
        None => true,
        Some(a) => {
            let file = a.split('#').next().unwrap_or(&a).to_string();
            let cwd = spec.process().as_ref().map(|p| p.cwd().to_string_lossy().into_owned()).unwrap_or_default();
            let abs = if file.starts_with('/') { file } else { format!("{}/{file}", cwd.trim_end_matches('/')) };
            !wasmbox_spec::plan::resolve_in_root(rootfs, &abs).is_ok_and(|p| p.is_file())
        }
    }
}

/// `BUNDLE/exec-<exec id>.<ext>`, for an exec id made only of letters,
/// digits, `.`, `_` and `-` (anything else could leave the bundle).
pub fn exec_file(id: &str, bundle: &Path, exec_id: &str, ext: &str) -> Result<PathBuf, ShimError> {
    if exec_id.is_empty() || !exec_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(ShimError::InvalidArgument(format!(
            "container {id:?}: exec id {exec_id:?}: only letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(bundle.join(format!("exec-{exec_id}.{ext}")))
}
