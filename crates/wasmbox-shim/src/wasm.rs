//! The wasm backend: each container is an instance process (see
//! `wasmbox_instance`) in the container's own cgroup and namespaces.
//!
//! Create: the cgroup is made and its resources applied first; the rootfs
//! is mounted on the host; the instance enters the cgroup between fork and
//! exec, sets itself up from the spec (namespaces, its own copy of the
//! rootfs and mounts, user, capabilities, seccomp) and prepares the guest;
//! then the host's rootfs mount goes, so the container's mounts exist only
//! in its mount namespace. Delete removes the cgroup.

use crate::backend::{Backend, CreateRequest, ExecProcess, ExecRequest, Process};
use crate::error::ShimError;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::{LinuxResources, Spec};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmbox_instance::{self as instance, Instance, SpawnOptions, PREPARE_TIMEOUT_ANNOTATION};
use wasmbox_sandbox::cgroup::Cgroup;

pub struct WasmBackend {
    /// The binary run as each container's instance process.
    exe: PathBuf,
}

impl WasmBackend {
    pub fn new(exe: PathBuf) -> WasmBackend {
        WasmBackend { exe }
    }
}

struct WasmProcess {
    id: String,
    instance: Instance,
    cgroup: Cgroup,
    exe: PathBuf,
    bundle: PathBuf,
    /// The container's TTY, when it has one.
    console: Option<crate::console::Console>,
}

fn core_err(id: &str) -> impl FnOnce(wasmbox_spec::Error) -> ShimError + '_ {
    move |source| ShimError::Core { id: id.to_string(), source }
}

pub(crate) fn read_spec(id: &str, bundle: &Path) -> Result<Spec, ShimError> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| ShimError::Io {
        id: id.to_string(),
        context: format!("reading {}", path.display()),
        source: e,
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| core_err(id)(wasmbox_spec::Error::Spec { path: path.clone(), reason: e.to_string() }))
}

fn prepare_timeout(id: &str, spec: &Spec) -> Result<Duration, ShimError> {
    match spec.annotations().as_ref().and_then(|a| a.get(PREPARE_TIMEOUT_ANNOTATION)) {
        None => Ok(instance::DEFAULT_PREPARE_TIMEOUT),
        Some(v) => wasmbox_spec::annotations::parse_duration(v).ok_or_else(|| {
            core_err(id)(wasmbox_spec::Error::InvalidArgument {
                what: format!("annotation {PREPARE_TIMEOUT_ANNOTATION}={v:?}"),
                reason: "expected a duration such as 500ms, 30s or 2m".into(),
            })
        }),
    }
}

impl Backend for WasmBackend {
    fn create(&self, req: CreateRequest<'_>) -> Result<Box<dyn Process>, ShimError> {
        let id = req.id;
        let bundle = req.bundle;
        let spec = read_spec(id, bundle)?;
        let timeout = prepare_timeout(id, &spec)?;
        let cgroup = container_cgroup(id, &spec)?;
        let launched = (|| {
            if let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
                cgroup.apply(r).map_err(core_err(id))?;
            }
            self.launch(req, &cgroup, timeout)
        })();
        match launched {
            Ok((instance, console)) => Ok(Box::new(WasmProcess {
                id: id.to_string(),
                instance,
                cgroup,
                exe: self.exe.clone(),
                bundle: bundle.to_path_buf(),
                console,
            })),
            Err(e) => {
                // Whatever is left of the instance dies before its cgroup goes.
                for pid in cgroup.pids() {
                    let _ = signal(id, pid, libc::SIGKILL);
                }
                if let Err(e) = cgroup.remove() {
                    log::warn!("container {id}: {e}");
                }
                Err(e)
            }
        }
    }
}

/// The container's cgroup, created (or found empty) at the spec's path.
fn container_cgroup(id: &str, spec: &Spec) -> Result<Cgroup, ShimError> {
    let rel =
        wasmbox_sandbox::cgroup::relative_path(&wasmbox_sandbox::cgroup::spec_path(spec), id).map_err(core_err(id))?;
    let cgroup = Cgroup::create(&rel).map_err(core_err(id))?;
    // A cgroup that still holds processes belongs to someone else (or to a
    // container that was never cleaned up): never join it, nor remove it.
    let held = cgroup.pids();
    if !held.is_empty() {
        return Err(ShimError::FailedPrecondition {
            id: id.to_string(),
            reason: format!("cgroup {rel} (linux.cgroupsPath) already holds processes {held:?}"),
        });
    }
    // An empty cgroup left frozen would freeze the new container.
    if cgroup.frozen() {
        let _ = cgroup.thaw();
    }
    Ok(cgroup)
}

impl WasmBackend {
    /// Mounts the rootfs on the host, spawns the instance into `cgroup` and
    /// waits until it is ready; the host's rootfs mount goes either way
    /// (a ready instance has its own copy in its mount namespace). With a
    /// TTY, the instance's stdio is a new pty's slave, and the master is
    /// copied to and from containerd's fifos.
    fn launch(
        &self,
        mut req: CreateRequest<'_>,
        cgroup: &Cgroup,
        timeout: Duration,
    ) -> Result<(Instance, Option<crate::console::Console>), ShimError> {
        let id = req.id;
        let pty = if req.terminal { Some(crate::console::open_pty(id)?) } else { None };
        let (fifo_in, fifo_out) = match &pty {
            None => (None, None),
            Some((_, slave)) => {
                let dup = || {
                    slave.try_clone().map_err(|e| ShimError::Io {
                        id: id.to_string(),
                        context: "duplicating the pty slave".into(),
                        source: e,
                    })
                };
                let fifos = (req.stdio.stdin.take(), req.stdio.stdout.take());
                req.stdio.stdin = Some(dup()?);
                req.stdio.stdout = Some(dup()?);
                req.stdio.stderr = Some(dup()?);
                fifos
            }
        };
        let procs = cgroup.procs_files().map_err(core_err(id))?;
        let rootfs = match req.mounted_rootfs.clone() {
            Some(r) => Some(r),
            None => crate::rootfs::mount(id, req.bundle, req.rootfs)?,
        };
        let spawned = {
            let _guard = crate::reaper::spawning();
            instance::spawn_process(SpawnOptions {
                exe: &self.exe,
                bundle: req.bundle,
                cache_dir: None,
                stdin: req.stdio.stdin,
                stdout: req.stdio.stdout,
                stderr: req.stdio.stderr,
                cgroup_procs: procs,
                exec: None,
            })
            .inspect(|s| (req.watch)(s.pid))
        };
        let mut background = |job| compile_in_background(&self.exe, id, job);
        let ready = spawned.and_then(|s| s.wait_ready(timeout, |pid| (req.watch)(pid), &mut background));
        if let Some(r) = &rootfs {
            crate::rootfs::unmount(r);
        }
        let instance = ready.map_err(|source| ShimError::Instance { id: id.to_string(), source })?;
        if !instance.code_report.is_empty() {
            log::info!("container {id}: {}", instance.code_report);
        }
        let console = match pty {
            None => None,
            // The slave's last copy in the shim goes here: the master sees
            // the end once the guest's side is closed.
            Some((master, _slave)) => Some(crate::console::Console::start(id, master, fifo_in, fifo_out)?),
        };
        Ok((instance, console))
    }
}

/// Starts a background compile an instance asked for (see
/// `wasmbox_instance::spawn_compile`); what it reports goes to the shim's
/// log, under the container's id.
fn compile_in_background(exe: &Path, id: &str, mut job: instance::CompileJob) {
    let name = job.request.name.clone();
    // A served component gets the code as soon as it is cached.
    let notify = job.notify.take();
    let cache = job.request.cache.clone();
    // Its own cgroup, of the least CPU weight, outside the container's
    // and the shim's.
    let procs = match wasmbox_sandbox::cgroup::background().and_then(|cg| cg.procs_files()) {
        Ok(procs) => procs,
        Err(e) => {
            log::warn!("container {id}: {name}: the background compile stays in the shim's cgroup: {e}");
            Vec::new()
        }
    };
    let spawned = {
        let _guard = crate::reaper::spawning();
        instance::spawn_compile(exe, job, &procs)
    };
    match spawned {
        Ok(out) => {
            log::info!("container {id}: {name}: compiling the optimized code in the background");
            let id = id.to_string();
            let _ = std::thread::Builder::new().name("compile-log".into()).spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let Some(entry) = line.strip_prefix(instance::ENTRY_LINE) else {
                        log::info!("container {id}: background compile: {line}");
                        continue;
                    };
                    if let Some(notify) = &notify {
                        match instance::hand_over(notify, &cache, Path::new(entry)) {
                            Ok(()) => log::info!("container {id}: {name}: the optimized code was handed to the server"),
                            Err(e) => log::info!("container {id}: {name}: the server keeps its code: {e}"),
                        }
                    }
                }
            });
        }
        Err(e) => log::warn!("container {id}: {name}: no background compile: {e}"),
    }
}

fn signal(id: &str, pid: u32, signal: i32) -> Result<(), ShimError> {
    // SAFETY: kill(2) with a pid and a signal number; no memory involved.
    match nix::errno::Errno::result(unsafe { libc::kill(pid as i32, signal) }) {
        Ok(_) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(ShimError::Io {
            id: id.to_string(),
            context: format!("sending signal {signal} to pid {pid}"),
            source: e.into(),
        }),
    }
}

impl Process for WasmProcess {
    fn pid(&self) -> u32 {
        self.instance.pid
    }

    fn start(&mut self) -> Result<(), ShimError> {
        self.instance.start().map_err(|e| ShimError::FailedPrecondition { id: self.id.clone(), reason: e.to_string() })
    }

    fn kill(&mut self, sig: i32, all: bool) -> Result<(), ShimError> {
        let mut pids = if all { self.cgroup.pids() } else { Vec::new() };
        if !pids.contains(&self.instance.pid) {
            pids.push(self.instance.pid);
        }
        for pid in pids {
            signal(&self.id, pid, sig)?;
        }
        // A frozen process acts on no signal: SIGKILL of a paused task
        // thaws it, so it dies (as runc does).
        if sig == libc::SIGKILL && self.cgroup.frozen() {
            let _ = self.cgroup.thaw();
        }
        Ok(())
    }

    fn pause(&mut self) -> Result<(), ShimError> {
        self.cgroup.freeze().map_err(core_err(&self.id))
    }

    fn resume(&mut self) -> Result<(), ShimError> {
        self.cgroup.thaw().map_err(core_err(&self.id))
    }

    fn stats(&self) -> Result<Any, ShimError> {
        crate::stats::container_metrics(&self.id, &self.cgroup)
    }

    fn update(&mut self, resources: &LinuxResources) -> Result<(), ShimError> {
        self.cgroup.apply(resources).map_err(core_err(&self.id))
    }

    fn pids(&self) -> Vec<u32> {
        crate::stats::container_pids(&self.cgroup, self.instance.pid)
    }

    fn resize_pty(&mut self, width: u32, height: u32) -> Result<(), ShimError> {
        match &self.console {
            Some(c) => c.resize(width, height),
            None => Err(ShimError::FailedPrecondition {
                id: self.id.clone(),
                reason: "resize-pty: the container has no TTY".into(),
            }),
        }
    }

    fn ended_out_of_memory(&mut self) -> bool {
        self.instance.out_of_memory()
    }

    fn watch_oom(&self, on_oom: Box<dyn Fn() + Send>) {
        crate::stats::watch_oom(&self.cgroup, &self.id, on_oom);
    }

    fn exec(&mut self, req: ExecRequest<'_>) -> Result<Box<dyn ExecProcess>, ShimError> {
        let id = &self.id;
        if req.terminal {
            return Err(ShimError::Unimplemented(format!(
                "container {id:?}: exec {:?} with a TTY into a wasm container; run without -t",
                req.exec_id
            )));
        }
        let spec_path = crate::backend::exec_file(id, &self.bundle, req.exec_id, "json")?;
        std::fs::write(&spec_path, req.spec).map_err(|e| ShimError::Io {
            id: id.clone(),
            context: format!("writing {}", spec_path.display()),
            source: e,
        })?;
        Ok(Box::new(WasmExec {
            id: id.clone(),
            exe: self.exe.clone(),
            bundle: self.bundle.clone(),
            spec_path,
            cgroup: Cgroup::load(&self.cgroup.path),
            target: self.instance.pid,
            stdio: Some(req.stdio),
            instance: None,
        }))
    }

    fn cleanup(&mut self) {
        if let Err(e) = self.cgroup.remove() {
            log::warn!("container {}: {e}", self.id);
        }
    }
}

/// A process added to a wasm container: a new instance process that joins
/// the container's namespaces (its mounts included) and cgroup, and runs
/// the `.wasm` the exec names from the container's rootfs with the exec's
/// args, env, user and stdio.
struct WasmExec {
    id: String,
    exe: PathBuf,
    bundle: PathBuf,
    spec_path: PathBuf,
    cgroup: Cgroup,
    /// The container's process, whose namespaces the exec joins.
    target: u32,
    stdio: Option<crate::stdio::ChildFds>,
    instance: Option<Instance>,
}

impl ExecProcess for WasmExec {
    fn start(&mut self) -> Result<u32, ShimError> {
        let id = self.id.clone();
        let stdio = self
            .stdio
            .take()
            .ok_or_else(|| ShimError::FailedPrecondition { id: id.clone(), reason: "exec already started".into() })?;
        let procs = self.cgroup.procs_files().map_err(core_err(&id))?;
        let spawned = {
            let _guard = crate::reaper::spawning();
            instance::spawn_process(SpawnOptions {
                exe: &self.exe,
                bundle: &self.bundle,
                cache_dir: None,
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                cgroup_procs: procs,
                exec: Some((&self.spec_path, self.target)),
            })
        };
        // The service's table is locked meanwhile: an exit waits for the pid.
        let mut ready = spawned
            .and_then(|s| {
                s.wait_ready(instance::DEFAULT_PREPARE_TIMEOUT, |_| {}, &mut |job| {
                    compile_in_background(&self.exe, &id, job)
                })
            })
            .map_err(|source| ShimError::Instance { id: id.clone(), source })?;
        ready.start().map_err(|e| ShimError::FailedPrecondition { id: id.clone(), reason: e.to_string() })?;
        let pid = ready.pid;
        self.instance = Some(ready);
        Ok(pid)
    }

    fn kill(&mut self, sig: i32) -> Result<(), ShimError> {
        match &self.instance {
            Some(i) => signal(&self.id, i.pid, sig),
            None => Ok(()),
        }
    }

    fn resize_pty(&mut self, _width: u32, _height: u32) -> Result<(), ShimError> {
        Err(ShimError::Unimplemented("resize-pty: wasm containers have no TTY".into()))
    }

    fn cleanup(&mut self) {
        let _ = std::fs::remove_file(&self.spec_path);
    }
}
