//! Each container's wasm runs in a process of its own, a child of whoever
//! spawned it (the shim), so kill, wait, exit status and pids keep their
//! ordinary Linux meaning and a crashing guest cannot take its parent down.
//!
//! The protocol between parent and child is two pipes:
//! - status (child -> parent): after preparing (reading the spec, compiling
//!   or loading cached code, linking), the child writes `ok`, or
//!   `err\t<kind>\t<message>` and exits. The parent's `spawn` returns then,
//!   so a bad image fails at create time, with the reason.
//! - start (parent -> child): the child blocks on it until [`Instance::start`]
//!   writes one byte; if the parent closes it instead, the child exits 0
//!   without running the guest.

use crate::cache::Cache;
use crate::engine::Prepared;
use crate::error::{Error, ErrorKind, Result};
use crate::plan::Workload;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// argv[1] that makes a wasmbox binary act as an instance process.
pub const INSTANCE_ARG: &str = "__wasmbox_instance";

/// Where an instance process keeps compiled code (see [`default_cache_dir`]).
pub const CACHE_DIR_ENV: &str = "WASMBOX_CACHE_DIR";

/// The only variables an instance process inherits from its parent.
pub const INHERITED_ENV: [&str; 4] = [CACHE_DIR_ENV, crate::cache::MAX_MB_ENV, "RUST_LOG", "RUST_BACKTRACE"];

/// The exit status of an instance that failed before running its guest.
pub const PREPARE_FAILED_EXIT: i32 = 125;

/// How to start an instance process.
pub struct SpawnOptions<'a> {
    /// The binary to run (one whose main dispatches [`INSTANCE_ARG`] to [`instance_main`]).
    pub exe: &'a Path,
    pub bundle: &'a Path,
    pub cache_dir: Option<&'a Path>,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A prepared instance process, waiting to be started.
#[derive(Debug)]
pub struct Instance {
    pub pid: u32,
    start: Option<File>,
}

fn kind_name(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::InvalidArgument => "invalid-argument",
        ErrorKind::NotFound => "not-found",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Internal => "internal",
    }
}

/// An error reported by an instance process, rebuilt in the parent.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InstanceError {
    pub kind: ErrorKind,
    pub message: String,
}

fn pipe() -> Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("creating a pipe", std::io::Error::from(e)))?;
    Ok((File::from(r), File::from(w)))
}

fn stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

/// Spawns an instance process for `opts.bundle` and waits until it has
/// prepared its guest. Errors found while preparing come back as
/// [`Error`]s with the kind and message the child reported.
pub fn spawn(opts: SpawnOptions<'_>) -> std::result::Result<Instance, InstanceError> {
    spawn_process(opts)?.wait_ready()
}

/// An instance process that is preparing its guest.
#[derive(Debug)]
pub struct Spawning {
    pub pid: u32,
    status: File,
    start: File,
    bundle: PathBuf,
}

impl Spawning {
    /// Waits for the child's report: ready, or why not (it then exits).
    pub fn wait_ready(mut self) -> std::result::Result<Instance, InstanceError> {
        let mut report = String::new();
        let _ = self.status.read_to_string(&mut report);
        let pid = self.pid;
        match report.split_once('\t') {
            None if report == "ok" => Ok(Instance { pid, start: Some(self.start) }),
            Some(("err", rest)) => {
                let (kind, message) = rest.split_once('\t').unwrap_or(("internal", rest));
                let kind = match kind {
                    "invalid-argument" => ErrorKind::InvalidArgument,
                    "not-found" => ErrorKind::NotFound,
                    "unsupported" => ErrorKind::Unsupported,
                    _ => ErrorKind::Internal,
                };
                Err(InstanceError { kind, message: message.to_string() })
            }
            _ => Err(InstanceError {
                kind: ErrorKind::Internal,
                message: format!("instance process {pid} for {} exited while preparing", self.bundle.display()),
            }),
        }
    }
}

/// Starts an instance process; [`Spawning::wait_ready`] waits until it has
/// prepared. Split in two so a caller can note the pid before the child may
/// exit.
pub fn spawn_process(opts: SpawnOptions<'_>) -> std::result::Result<Spawning, InstanceError> {
    let internal = |e: Error| InstanceError { kind: ErrorKind::Internal, message: e.to_string() };
    let (status_r, status_w) = pipe().map_err(internal)?;
    let (start_r, start_w) = pipe().map_err(internal)?;
    let (status_fd, start_fd) = (status_w.as_raw_fd(), start_r.as_raw_fd());
    let mut cmd = Command::new(opts.exe);
    if opts.exe == Path::new("/proc/self/exe") {
        // Show the binary's name in ps, not the magic link it was run through.
        if let Ok(me) = std::env::current_exe() {
            cmd.arg0(me);
        }
    }
    cmd.arg(INSTANCE_ARG)
        .arg(opts.bundle)
        .arg(status_fd.to_string())
        .arg(start_fd.to_string())
        .stdin(stdio(opts.stdin))
        .stdout(stdio(opts.stdout))
        .stderr(stdio(opts.stderr))
        // Nothing of the parent's environment but what the instance reads:
        // containerd hands shims its own (TTRPC_ADDRESS, a PATH and an
        // LD_LIBRARY_PATH under /opt/containerd, ...), none of it the guest's
        // business, and a stray LD_LIBRARY_PATH costs every exec a search.
        .env_clear()
        // wasmtime-wasi's sync mode runs a tokio runtime; one worker is plenty.
        .env("TOKIO_WORKER_THREADS", "1");
    for (k, v) in std::env::vars_os().filter(|(k, _)| INHERITED_ENV.iter().any(|i| k == i)) {
        cmd.env(k, v);
    }
    if let Some(dir) = opts.cache_dir {
        cmd.env(CACHE_DIR_ENV, dir);
    }
    // SAFETY: only async-signal-safe calls (fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [status_fd, start_fd] {
                // SAFETY: both fds are open in the child until exec.
                let fd = BorrowedFd::borrow_raw(fd);
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            Ok(())
        });
    }
    let child =
        cmd.spawn().map_err(|e| internal(Error::io(format!("starting instance process {}", opts.exe.display()), e)))?;
    drop(cmd);
    drop(status_w);
    drop(start_r);
    Ok(Spawning { pid: child.id(), status: status_r, start: start_w, bundle: opts.bundle.to_path_buf() })
}

impl Instance {
    /// Lets the guest run.
    pub fn start(&mut self) -> Result<()> {
        let mut f = self.start.take().ok_or_else(|| Error::InvalidArgument {
            what: "start".into(),
            reason: "instance already started".into(),
        })?;
        f.write_all(b"s").map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::BrokenPipe {
                format!("starting instance process {}: it has already exited", self.pid)
            } else {
                format!("starting instance process {}", self.pid)
            };
            Error::io(what, e)
        })
    }
}

/// Where compiled code is cached for a bundle when nothing else is said:
/// beside containerd's runtime state (`<state>/wasmbox/cache` for a bundle at
/// `<state>/io.containerd.runtime.v2.task/<ns>/<id>`), else in the bundle.
pub fn default_cache_dir(bundle: &Path) -> PathBuf {
    let runtime_dir = bundle.parent().and_then(Path::parent);
    match runtime_dir {
        Some(d) if d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("io.containerd.runtime.v2")) => {
            d.parent().unwrap_or(d).join("wasmbox").join("cache")
        }
        _ => bundle.join(".wasmbox-cache"),
    }
}

/// Makes glibc keep one malloc arena instead of one per thread: the shim and
/// instance processes are long-lived and mostly idle, and each extra arena
/// costs hundreds of KiB of private memory per process. Call before
/// spawning threads.
pub fn one_malloc_arena() {
    // SAFETY: mallopt only adjusts allocator parameters.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The body of an instance process: `args` are what follows [`INSTANCE_ARG`]
/// (bundle, status fd, start fd). Never returns.
pub fn instance_main(args: &[String]) -> ! {
    let (bundle, status_fd, start_fd) = match args {
        [b, s, t] => (PathBuf::from(b), s.parse::<i32>().unwrap_or(-1), t.parse::<i32>().unwrap_or(-1)),
        _ => {
            let _ = writeln!(std::io::stderr(), "usage: {INSTANCE_ARG} BUNDLE STATUS_FD START_FD");
            std::process::exit(2);
        }
    };
    if status_fd < 3 || start_fd < 3 {
        std::process::exit(2);
    }
    one_malloc_arena();
    // SAFETY: the parent passed us these two fds and nothing else owns them.
    let (mut status, mut start) = unsafe { (File::from_raw_fd(status_fd), File::from_raw_fd(start_fd)) };
    let cache = std::env::var_os(CACHE_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| default_cache_dir(&bundle));
    let prepared = match Workload::from_bundle(&bundle) {
        Ok(Workload::Wasm(plan)) => Cache::new(cache).and_then(|c| Prepared::new(plan, Some(&c))).map(Some),
        Ok(Workload::Sandbox) => Ok(None),
        Err(e) => Err(e),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = write!(status, "err\t{}\t{e}", kind_name(e.kind()));
            std::process::exit(PREPARE_FAILED_EXIT);
        }
    };
    let _ = status.write_all(b"ok");
    drop(status);
    let mut byte = [0u8; 1];
    if !matches!(start.read(&mut byte), Ok(1)) {
        std::process::exit(0);
    }
    drop(start);
    let Some(prepared) = prepared else {
        // A pod sandbox: live until a signal ends the process.
        loop {
            nix::unistd::pause();
        }
    };
    let code = prepared.run().unwrap_or_else(|e| {
        let _ = writeln!(std::io::stderr(), "wasmbox: {e}");
        PREPARE_FAILED_EXIT
    });
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}
