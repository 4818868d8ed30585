//! The Linux backend: a container whose entrypoint is not wasm (an ELF or
//! a script: the busybox or nginx sidecar of a pod) runs as an ordinary
//! Linux container through runc, the OCI runtime containerd's own shim
//! drives, verb for verb as that shim drives it:
//! `runc --root R --log B/runc-log.json --log-format json` with
//! `create --bundle B --pid-file B/init.pid ID`, `start`, `kill [--all]`,
//! `pause`, `resume`, `update --resources -` and `delete --force`.
//!
//! The container's stdio fds are runc's own, so its init inherits them.
//! `runc create` leaves the container's init waiting for `start`; runc
//! exits, and the init becomes our child (the shim is a subreaper), so the
//! reaper reports its exit like an instance's. Each runc run holds
//! [`crate::reaper::spawning`] until runc has been waited for (and, for
//! create, until the init's pid is watched), so the reaper never takes
//! runc's exit status, nor the init's exit before the service knows it.
//!
//! runc's state lives under containerd's state directory
//! (`<state>/wasmbox/runc/<namespace>`), next to the bundles.

use crate::backend::{Backend, CreateRequest, ExecProcess, ExecRequest, Process};
use crate::error::ShimError;
use crate::wasm::read_spec;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::LinuxResources;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use wasmbox_sandbox::cgroup::Cgroup;

/// runc's log in the bundle: JSON lines, the last error is quoted in ours.
const RUNC_LOG: &str = "runc-log.json";
const INIT_PID: &str = "init.pid";

pub struct LinuxBackend {
    /// The OCI runtime binary (`runc`, looked up on containerd's PATH).
    binary: PathBuf,
}

impl LinuxBackend {
    pub fn new(binary: PathBuf) -> LinuxBackend {
        LinuxBackend { binary }
    }
}

/// One runc container.
#[derive(Clone)]
struct Runc {
    binary: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
    id: String,
    systemd: bool,
}

impl Runc {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).arg("--log").arg(self.bundle.join(RUNC_LOG)).args(["--log-format", "json"]);
        if self.systemd {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args).env_remove("NOTIFY_SOCKET").current_dir(&self.bundle);
        cmd
    }

    fn err(&self, verb: &str, detail: String) -> ShimError {
        ShimError::FailedPrecondition { id: self.id.clone(), reason: format!("runc {verb}: {detail}") }
    }

    fn not_started(&self, verb: &str, e: std::io::Error) -> ShimError {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (Linux containers need an OCI runtime on containerd's PATH: the Debian package runc)"
        } else {
            ""
        };
        self.err(verb, format!("starting {}: {e}{hint}", self.binary.display()))
    }

    /// The last error runc logged (its stderr may be the container's).
    fn last_error(&self) -> Option<String> {
        let log = std::fs::read_to_string(self.bundle.join(RUNC_LOG)).ok()?;
        log.lines().rev().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["level"] == "error" || v["level"] == "fatal").then(|| v["msg"].as_str().map(str::to_string)).flatten()
        })
    }

    /// Runs `runc ARGS...` to its end, stdin from `input`, under the spawn
    /// lock (see the module's doc).
    fn output(&self, args: &[&str], input: Option<&[u8]>) -> Result<std::process::Output, ShimError> {
        let verb = args.first().copied().unwrap_or_default();
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let _spawning = crate::reaper::spawning();
        let mut child = cmd.spawn().map_err(|e| self.not_started(verb, e))?;
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            let _ = stdin.write_all(data);
        }
        child.wait_with_output().map_err(|e| self.err(verb, e.to_string()))
    }

    /// `runc VERB ARGS... ID`; an error quotes runc.
    fn run(&self, verb: &str, args: &[&str], input: Option<&[u8]>) -> Result<(), ShimError> {
        let mut all = vec![verb];
        all.extend_from_slice(args);
        all.push(&self.id);
        let out = self.output(&all, input)?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(self
            .err(verb, if stderr.is_empty() { self.last_error().unwrap_or(out.status.to_string()) } else { stderr }))
    }
}

struct LinuxProcess {
    runc: Runc,
    pid: u32,
    cgroup: Cgroup,
    /// The rootfs mount on the host, ours to remove at cleanup.
    rootfs: Option<PathBuf>,
    /// Its TTY, when it has one.
    console: Option<crate::console::Console>,
}

fn no_tty(id: &str) -> ShimError {
    ShimError::FailedPrecondition { id: id.to_string(), reason: "resize-pty: the process has no TTY".into() }
}

/// `<state>/wasmbox/runc/<namespace>` for a bundle at
/// `<state>/io.containerd.runtime.v2.task/<namespace>/<id>`, else beside
/// the bundle.
fn runc_root(bundle: &Path) -> PathBuf {
    let ns = bundle.parent().and_then(Path::file_name).map(|n| n.to_os_string()).unwrap_or_default();
    match bundle.parent().and_then(Path::parent) {
        Some(tasks)
            if tasks.file_name().is_some_and(|n| n.to_string_lossy().starts_with("io.containerd.runtime.v2")) =>
        {
            tasks.parent().unwrap_or(tasks).join("wasmbox").join("runc").join(ns)
        }
        _ => bundle.join(".runc"),
    }
}

/// Whether a `linux.cgroupsPath` is in systemd's `slice:prefix:name` form
/// (runc then needs `--systemd-cgroup`).
fn systemd_form(cg_path: &str) -> bool {
    cg_path.split(':').count() == 3 && !cg_path.starts_with('/')
}

/// Rewrites `linux.cgroupsPath` in the bundle's config.json (all else as
/// containerd wrote it).
fn set_cgroups_path(id: &str, bundle: &Path, path: &str) -> Result<(), ShimError> {
    let file = bundle.join("config.json");
    let io = |context: String| move |e: std::io::Error| ShimError::Io { id: id.to_string(), context, source: e };
    let bytes = std::fs::read(&file).map_err(io(format!("reading {}", file.display())))?;
    let mut spec: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| io(format!("parsing {}", file.display()))(std::io::Error::other(e)))?;
    spec["linux"]["cgroupsPath"] = serde_json::Value::String(path.to_string());
    let tmp = bundle.join("config.json.wasmbox");
    std::fs::write(&tmp, serde_json::to_vec(&spec).unwrap_or_default())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &file).map_err(io(format!("replacing {}", file.display())))
}

/// The shim's `delete` action, when containerd cleans up after a shim that
/// died: a runc container of this bundle is deleted with `--force`, which
/// kills what is left of it. Returns whether there was one; an error
/// says what runc said.
pub fn force_delete(bundle: &Path, id: &str) -> Result<bool, String> {
    let root = runc_root(bundle);
    if !root.join(id).exists() {
        return Ok(false);
    }
    let systemd = read_spec(id, bundle).map(|s| systemd_form(&wasmbox_sandbox::cgroup::spec_path(&s))).unwrap_or(false);
    let runc = Runc { binary: "runc".into(), root, bundle: bundle.to_path_buf(), id: id.to_string(), systemd };
    // The container's init outlived its shim: it is no child of ours, and
    // runc's --force waits for it to disappear. End it first and wait until
    // it is dead (a zombie counts: its reaper is not us).
    if let Some(pid) = init_pid(&runc.root, id) {
        crate::kill_and_wait(pid as i32);
    }
    let out = runc.command(&["delete", "--force", id]).stdin(Stdio::null()).output();
    let _ = std::fs::remove_file(bundle.join(INIT_PID));
    match out {
        Ok(o) if o.status.success() => Ok(true),
        Ok(o) => Err(format!("container {id}: runc delete --force: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("container {id}: runc delete --force: {e}")),
    }
}

/// The pid of a runc container's init, from runc's state, if that process
/// is still the one runc started (same start time).
fn init_pid(root: &Path, id: &str) -> Option<u32> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join(id).join("state.json")).ok()?).ok()?;
    let pid = state["init_process_pid"].as_u64()? as u32;
    let start = state["init_process_start"].as_u64()?;
    (start_time(pid)? == start).then_some(pid)
}

/// The start time (field 22 of /proc/PID/stat) of `pid`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

impl Backend for LinuxBackend {
    fn create(&self, req: CreateRequest<'_>) -> Result<Box<dyn Process>, ShimError> {
        let id = req.id;
        let rootfs = req.mounted_rootfs.clone();
        let created = self.create_runc(&req);
        match created {
            Ok((runc, pid, cgroup, console)) => Ok(Box::new(LinuxProcess { runc, pid, cgroup, rootfs, console })),
            Err(e) => {
                if let Some(r) = &rootfs {
                    crate::rootfs::unmount(r);
                }
                log::warn!("container {id}: {e}");
                Err(e)
            }
        }
    }
}

impl LinuxBackend {
    fn create_runc(
        &self,
        req: &CreateRequest<'_>,
    ) -> Result<(Runc, u32, Cgroup, Option<crate::console::Console>), ShimError> {
        let id = req.id;
        let spec = read_spec(id, req.bundle)?;
        let cg_path = wasmbox_sandbox::cgroup::spec_path(&spec);
        // runc's own default for a spec without one is `/<id>`.
        let rel = if cg_path.is_empty() { id.to_string() } else { cg_path.clone() };
        let rel = wasmbox_sandbox::cgroup::relative_path(&rel, id)
            .map_err(|source| ShimError::Core { id: id.to_string(), source })?;
        // The systemd form needs runc's systemd driver, which needs systemd.
        // Without it the cgroup goes where systemd would put that scope, by
        // path, as the wasm backend places its containers.
        let systemd = systemd_form(&cg_path) && Path::new("/run/systemd/system").is_dir();
        if systemd_form(&cg_path) && !systemd {
            set_cgroups_path(id, req.bundle, &format!("/{rel}"))?;
            log::info!("container {id}: no systemd: cgroup {cg_path} placed at /{rel}");
        }
        let root = runc_root(req.bundle);
        std::fs::create_dir_all(&root).map_err(|e| ShimError::Io {
            id: id.to_string(),
            context: format!("creating runc's state directory {}", root.display()),
            source: e,
        })?;
        let runc =
            Runc { binary: self.binary.clone(), root, bundle: req.bundle.to_path_buf(), id: id.to_string(), systemd };
        let pid_file = req.bundle.join(INIT_PID);
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(req.bundle.join(RUNC_LOG));
        let bundle = req.bundle.to_string_lossy();
        let pid_arg = pid_file.to_string_lossy();
        let console = if req.terminal { Some(crate::console::ConsoleSocket::new(id)?) } else { None };
        let console_arg = console.as_ref().map(|c| c.path.to_string_lossy().into_owned());
        let mut args = vec!["create", "--bundle", &bundle, "--pid-file", &pid_arg];
        if let Some(path) = &console_arg {
            args.extend(["--console-socket", path]);
        }
        args.push(id);
        let mut cmd = runc.command(&args);
        let fd = |f: &Option<std::os::fd::OwnedFd>| -> Result<Stdio, ShimError> {
            match f {
                Some(f) => f.try_clone().map(Stdio::from).map_err(|e| ShimError::Io {
                    id: id.to_string(),
                    context: "duplicating stdio".into(),
                    source: e,
                }),
                None => Ok(Stdio::null()),
            }
        };
        if console.is_none() {
            cmd.stdin(fd(&req.stdio.stdin)?).stdout(fd(&req.stdio.stdout)?).stderr(fd(&req.stdio.stderr)?);
        } else {
            // The pty is the container's stdio; runc's own output is logged.
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        }
        let pid = {
            let _spawning = crate::reaper::spawning();
            let status = cmd.spawn().and_then(|mut c| c.wait()).map_err(|e| runc.not_started("create", e))?;
            if !status.success() {
                let why = runc.last_error().unwrap_or_else(|| status.to_string());
                // Whatever runc left in its state goes.
                drop(_spawning);
                let _ = runc.run("delete", &["--force"], None);
                return Err(runc.err("create", why));
            }
            let pid: u32 = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| runc.err("create", format!("no pid in {}", pid_file.display())))?;
            (req.watch)(pid);
            pid
        };
        let tty = match &console {
            None => None,
            Some(sock) => {
                let started = sock.receive(id).and_then(|master| {
                    let dup = |f: &Option<std::os::fd::OwnedFd>| f.as_ref().and_then(|f| f.try_clone().ok());
                    crate::console::Console::start(id, master, dup(&req.stdio.stdin), dup(&req.stdio.stdout))
                });
                match started {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let _ = runc.run("delete", &["--force"], None);
                        return Err(e);
                    }
                }
            }
        };
        Ok((runc, pid, Cgroup::load(&rel), tty))
    }
}

impl Process for LinuxProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn start(&mut self) -> Result<(), ShimError> {
        self.runc.run("start", &[], None)
    }

    fn kill(&mut self, signal: i32, all: bool) -> Result<(), ShimError> {
        let sig = signal.to_string();
        // runc takes the signal after the id.
        let args: Vec<&str> =
            if all { vec!["kill", "--all", &self.runc.id, &sig] } else { vec!["kill", &self.runc.id, &sig] };
        let out = self.runc.output(&args, None)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A container whose process is gone is not an error.
        if !out.status.success() && !stderr.contains("not running") && !stderr.contains("does not exist") {
            return Err(self.runc.err("kill", stderr.trim().to_string()));
        }
        // A frozen process acts on no signal: SIGKILL of a paused container
        // thaws it, so it dies.
        if signal == libc::SIGKILL && self.cgroup.frozen() {
            let _ = self.runc.run("resume", &[], None);
        }
        Ok(())
    }

    fn pause(&mut self) -> Result<(), ShimError> {
        self.runc.run("pause", &[], None)
    }

    fn resume(&mut self) -> Result<(), ShimError> {
        self.runc.run("resume", &[], None)
    }

    fn stats(&self) -> Result<Any, ShimError> {
        crate::stats::container_metrics(&self.runc.id, &self.cgroup)
    }

    fn update(&mut self, resources: &LinuxResources) -> Result<(), ShimError> {
        let json = serde_json::to_vec(resources).map_err(|e| self.runc.err("update", e.to_string()))?;
        self.runc.run("update", &["--resources", "-"], Some(&json))
    }

    fn pids(&self) -> Vec<u32> {
        crate::stats::container_pids(&self.cgroup, self.pid)
    }

    fn resize_pty(&mut self, width: u32, height: u32) -> Result<(), ShimError> {
        self.console.as_ref().ok_or_else(|| no_tty(&self.runc.id))?.resize(width, height)
    }

    fn watch_oom(&self, on_oom: Box<dyn Fn() + Send>) {
        crate::stats::watch_oom(&self.cgroup, &self.runc.id, on_oom);
    }

    fn exec(&mut self, req: ExecRequest<'_>) -> Result<Box<dyn ExecProcess>, ShimError> {
        let exec_id = req.exec_id;
        let spec_path = crate::backend::exec_file(&self.runc.id, &self.runc.bundle, exec_id, "json")?;
        std::fs::write(&spec_path, req.spec).map_err(|e| ShimError::Io {
            id: self.runc.id.clone(),
            context: format!("writing {}", spec_path.display()),
            source: e,
        })?;
        Ok(Box::new(RuncExec {
            runc: self.runc.clone(),
            pid_path: crate::backend::exec_file(&self.runc.id, &self.runc.bundle, exec_id, "pid")?,
            spec_path,
            stdio: Some(req.stdio),
            terminal: req.terminal,
            console: None,
            pid: 0,
        }))
    }

    fn cleanup(&mut self) {
        if let Err(e) = self.runc.run("delete", &["--force"], None) {
            log::warn!("container {}: {e}", self.runc.id);
        }
        if let Some(r) = &self.rootfs {
            crate::rootfs::unmount(r);
        }
        let _ = std::fs::remove_file(self.runc.bundle.join(INIT_PID));
    }
}

/// A process added to a runc container: `runc exec --process SPEC
/// --detach --pid-file F ID` at start, as containerd's runc shim does; the
/// process becomes our child (subreaper) and is signalled directly.
struct RuncExec {
    runc: Runc,
    spec_path: PathBuf,
    pid_path: PathBuf,
    stdio: Option<crate::stdio::ChildFds>,
    terminal: bool,
    console: Option<crate::console::Console>,
    pid: u32,
}

impl ExecProcess for RuncExec {
    fn start(&mut self) -> Result<u32, ShimError> {
        let stdio = self.stdio.take().ok_or_else(|| self.runc.err("exec", "already started".into()))?;
        let (spec, pid_file) = (self.spec_path.to_string_lossy(), self.pid_path.to_string_lossy());
        let sock = if self.terminal { Some(crate::console::ConsoleSocket::new(&self.runc.id)?) } else { None };
        let sock_arg = sock.as_ref().map(|c| c.path.to_string_lossy().into_owned());
        let mut args = vec!["exec", "--process", &spec, "--detach", "--pid-file", &pid_file];
        if let Some(path) = &sock_arg {
            args.extend(["--console-socket", path]);
        }
        args.push(&self.runc.id);
        let mut cmd = self.runc.command(&args);
        let io = |f: Option<std::os::fd::OwnedFd>| f.map(Stdio::from).unwrap_or_else(Stdio::null);
        let (tty_in, tty_out) = if sock.is_some() {
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            (stdio.stdin, stdio.stdout)
        } else {
            cmd.stdin(io(stdio.stdin)).stdout(io(stdio.stdout)).stderr(io(stdio.stderr));
            (None, None)
        };
        let _spawning = crate::reaper::spawning();
        let status = cmd.spawn().and_then(|mut c| c.wait()).map_err(|e| self.runc.not_started("exec", e))?;
        // runc's copies of the stdio fds are the process's own now.
        drop(cmd);
        if !status.success() {
            return Err(self.runc.err("exec", self.runc.last_error().unwrap_or_else(|| status.to_string())));
        }
        let pid: u32 = std::fs::read_to_string(&self.pid_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| self.runc.err("exec", format!("no pid in {}", self.pid_path.display())))?;
        if let Some(sock) = &sock {
            let master = sock.receive(&self.runc.id)?;
            self.console = Some(crate::console::Console::start(&self.runc.id, master, tty_in, tty_out)?);
        }
        self.pid = pid;
        Ok(pid)
    }

    fn kill(&mut self, signal: i32) -> Result<(), ShimError> {
        if self.pid == 0 {
            return Ok(());
        }
        // SAFETY: kill(2) on our own, not yet reaped, child.
        match nix::errno::Errno::result(unsafe { libc::kill(self.pid as i32, signal) }) {
            Ok(_) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(self.runc.err("exec kill", e.to_string())),
        }
    }

    fn resize_pty(&mut self, width: u32, height: u32) -> Result<(), ShimError> {
        self.console.as_ref().ok_or_else(|| no_tty(&self.runc.id))?.resize(width, height)
    }

    fn cleanup(&mut self) {
        let _ = std::fs::remove_file(&self.spec_path);
        let _ = std::fs::remove_file(&self.pid_path);
    }
}
