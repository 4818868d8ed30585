//! The instance process: puts a plan ([`wasmbox_spec`]), a sandbox
//! ([`wasmbox_sandbox`]) and an engine ([`wasmbox_engine`]) together.
//! Must not depend on containerd: the shim and `wasmbox run` both spawn it.
//!
//! Each container's wasm runs in a process of its own, a child of whoever
//! spawned it (the shim), so kill, wait, exit status and pids keep their
//! ordinary Linux meaning and a crashing guest cannot take its parent down.
//!
//! The protocol between parent and child is a socket and a pipe:
//! - status (a socket pair): the child first writes `pid N\n`, the host pid
//!   of the process that will run the guest (another one when the guest
//!   gets a pid namespace of its own), and waits for one byte back, so the
//!   parent knows whose exit to watch before that process can exit. After
//!   preparing (isolation, compiling or loading cached code, linking), the
//!   child writes `ok`, or `err\t<kind>\t<message>` and exits. The
//!   parent's `spawn` returns then, so a bad image fails at create time,
//!   with the reason. Before those, the child may write
//!   `compile <json>\n` with the wasm's open file attached (SCM_RIGHTS):
//!   a request to compile the optimized code in the background
//!   ([`wasmbox_engine::engine::Background`]), which the parent hands to
//!   its caller at once (`Now`) or only if it kills the child for its
//!   prepare timeout (`IfKilled`); see [`spawn_compile`]. The child keeps the socket while the guest runs and
//!   writes `oom` on it when the guest is ended at its memory limit, which
//!   [`Instance::out_of_memory`] reads once the process has exited.
//! - start (parent -> child): the child blocks on it until [`Instance::start`]
//!   writes one byte; if the parent closes it instead, the child exits 0
//!   without running the guest.

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wasmbox_engine::cache::Cache;
use wasmbox_engine::engine::{Background, Prepared, When};
use wasmbox_sandbox::isolation::{self, Isolation};
use wasmbox_spec::plan::Workload;
use wasmbox_spec::{Error, ErrorKind, Result};

/// argv[1] that makes a wasmbox binary act as an instance process.
pub const INSTANCE_ARG: &str = "__wasmbox_instance";

/// Where an instance process keeps compiled code (see [`default_cache_dir`]).
pub const CACHE_DIR_ENV: &str = "WASMBOX_CACHE_DIR";

/// The only variables an instance process inherits from its parent.
pub const INHERITED_ENV: [&str; 4] = [CACHE_DIR_ENV, wasmbox_engine::cache::MAX_MB_ENV, "RUST_LOG", "RUST_BACKTRACE"];

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
    /// `cgroup.procs` files of the container's cgroup, opened for writing:
    /// the child enters them between fork and exec, so everything it does
    /// (compiling included) is charged to the container.
    pub cgroup_procs: Vec<OwnedFd>,
    /// Exec mode: the exec's OCI `Process` (a JSON file) and the pid of the
    /// container's process, whose namespaces the new instance joins.
    pub exec: Option<(&'a Path, u32)>,
}

/// A prepared instance process, waiting to be started.
#[derive(Debug)]
pub struct Instance {
    /// The host pid of the process that runs the guest.
    pub pid: u32,
    start: Option<File>,
    /// The status socket, on which the child may still say `oom`.
    status: UnixStream,
    /// How the guest's code was had (compiled, or from which cache entry),
    /// for the shim's log; empty for a pod sandbox.
    pub code_report: String,
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

impl InstanceError {
    fn internal(message: impl Into<String>) -> InstanceError {
        InstanceError { kind: ErrorKind::Internal, message: message.into() }
    }
}

fn pipe() -> Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("creating a pipe", std::io::Error::from(e)))?;
    Ok((File::from(r), File::from(w)))
}

fn stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

/// Spawns an instance process for `opts.bundle` and waits (up to
/// [`DEFAULT_PREPARE_TIMEOUT`]) until it has prepared its guest. Errors
/// found while preparing come back with the kind and message the child
/// reported. Background compiles the child asks for are not started (see
/// [`Spawning::wait_ready`] for a caller that starts them).
pub fn spawn(opts: SpawnOptions<'_>) -> std::result::Result<Instance, InstanceError> {
    spawn_process(opts)?.wait_ready(DEFAULT_PREPARE_TIMEOUT, |_| {}, &mut |_| {})
}

/// How long an instance may take to prepare (compile, link, set up its
/// isolation) when nothing else is said.
pub const DEFAULT_PREPARE_TIMEOUT: Duration = Duration::from_secs(60);

/// An instance process that is preparing its guest.
#[derive(Debug)]
pub struct Spawning {
    /// The pid of the process spawned. In a pid namespace of its own the
    /// guest runs in a child of it, whose pid [`Spawning::wait_ready`] learns.
    pub pid: u32,
    status: UnixStream,
    start: File,
    bundle: PathBuf,
}

/// Reads from `sock` until EOF, `done` says so, or `deadline`; Err(()) on
/// timeout. One poll per read, no periodic wake-up. Files passed along
/// (SCM_RIGHTS) are added to `fds`.
fn read_until(
    sock: &mut UnixStream,
    out: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    done: impl Fn(&[u8]) -> bool,
    deadline: Instant,
) -> std::result::Result<(), ()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = [0u8; 4096];
    loop {
        if done(out) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(());
        }
        let ms = PollTimeout::try_from(left.as_millis().clamp(1, i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
        let mut ready = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut ready, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Ok(()),
        }
        // Byte by byte: what follows the end is not ours yet.
        match recv_byte(sock, &mut buf[..1], fds) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(()),
        }
    }
}

/// One read from `sock`, keeping the files passed with it.
fn recv_byte(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let n = msg.bytes;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(n)
}

/// A background compile an instance asked for: the request and the wasm's
/// open file (see [`spawn_compile`]).
#[derive(Debug)]
pub struct CompileJob {
    pub request: Background,
    pub wasm: OwnedFd,
    /// A served component's status socket: where the compiled code is
    /// handed over (see [`hand_over`]) so the server switches to it.
    pub notify: Option<UnixStream>,
}

/// The line a background compile writes once the code is in the cache:
/// this, then the entry's path.
pub const ENTRY_LINE: &str = "entry ";

/// The message that carries the optimized code to a served component
/// (with the entry's open file).
const UPGRADE: &[u8] = b"upgrade\n";

/// Hands the optimized code, the verified cache entry `entry` in the
/// cache at `cache`, to the served component whose status socket is
/// `notify`; it serves new requests with it (see [`Upgrades`]).
pub fn hand_over(notify: &UnixStream, cache: &Path, entry: &Path) -> std::result::Result<(), String> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let cache = Cache::new(cache).map_err(|e| e.to_string())?;
    let file = match cache.open_verified(entry) {
        Ok(Some(f)) => f,
        Ok(None) => return Err(format!("{} is not in the cache", entry.display())),
        Err(why) => return Err(format!("{}: {why}", entry.display())),
    };
    let fds = [file.as_raw_fd()];
    let sent = sendmsg::<()>(
        notify.as_raw_fd(),
        &[std::io::IoSlice::new(UPGRADE)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| format!("the instance is gone ({e})"))?;
    if sent < UPGRADE.len() {
        (&*notify).write_all(&UPGRADE[sent..]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// In a served component's instance: waits on the status socket for the
/// optimized code (see [`hand_over`]) and serves new requests with it;
/// says so on stderr (the container's log).
fn receive_upgrade(status: &UnixStream, upgrader: wasmbox_engine::engine::Upgrader) {
    let Ok(mut sock) = status.try_clone() else { return };
    let _ = std::thread::Builder::new().name("upgrade".into()).spawn(move || {
        let (mut line, mut fds) = (Vec::new(), Vec::new());
        let forever = Instant::now() + Duration::from_secs(100 * 365 * 86400);
        let read = read_until(&mut sock, &mut line, &mut fds, |b| b.ends_with(b"\n"), forever);
        let (true, Some(fd)) = (read.is_ok() && line == UPGRADE, fds.pop()) else { return };
        let report = upgrader.upgrade(File::from(fd));
        let _ = match report {
            Ok(r) => writeln!(std::io::stderr(), "wasmbox: {r}"),
            Err(e) => {
                writeln!(std::io::stderr(), "wasmbox: the optimized code could not replace the running code: {e}")
            }
        };
    });
}

impl Spawning {
    /// Waits for the child's report: ready, or why not (it then exits).
    /// `register` is called with the host pid of the process that will run
    /// the guest as soon as it is known and before that process can be
    /// reaped by anyone but its parent, so an exit is never missed.
    /// Past `timeout` the instance is killed and the error says so.
    /// `background` gets the background compiles the instance asks for.
    pub fn wait_ready(
        mut self,
        timeout: Duration,
        register: impl FnOnce(u32),
        background: &mut dyn FnMut(CompileJob),
    ) -> std::result::Result<Instance, InstanceError> {
        let deadline = Instant::now() + timeout;
        let mut line = Vec::new();
        let timed_out = |pids: &[u32]| {
            for &p in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), nix::sys::signal::Signal::SIGKILL);
            }
            InstanceError {
                kind: ErrorKind::Internal,
                message: format!(
                    "preparing the instance for {} took longer than {} ms (annotation {PREPARE_TIMEOUT_ANNOTATION}); it was killed",
                    self.bundle.display(),
                    timeout.as_millis()
                ),
            }
        };
        let mut fds = Vec::new();
        if read_until(&mut self.status, &mut line, &mut fds, |b| b.ends_with(b"\n"), deadline).is_err() {
            return Err(timed_out(&[self.pid]));
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let guest_pid = match text.trim_end().strip_prefix("pid ").and_then(|p| p.parse::<u32>().ok()) {
            Some(p) => p,
            None => return Err(report_error(&text, self.pid, &self.bundle)),
        };
        register(guest_pid);
        // The ack lets the spawned process go on (and, in a pid namespace, exit).
        let _ = self.status.write_all(b"k");
        let mut report = Vec::new();
        // Line by line: `ok` after a `code ...` line (the child keeps the
        // socket), or an error and EOF; `compile` requests meanwhile.
        let mut if_killed = None;
        loop {
            let mut line = Vec::new();
            // An error's message may span lines: it ends at EOF.
            let done = |b: &[u8]| !b.starts_with(b"err\t") && (b == b"ok" || b.ends_with(b"\n"));
            if read_until(&mut self.status, &mut line, &mut fds, done, deadline).is_err() {
                let err = timed_out(&[guest_pid, self.pid]);
                if let Some(job) = if_killed.take() {
                    background(job);
                }
                return Err(err);
            }
            if let Some(json) = line.strip_prefix(b"compile ") {
                match (serde_json::from_slice::<Background>(json), fds.pop()) {
                    (Ok(request), Some(wasm)) if request.when == When::Now => {
                        // A served component switches to the code once it is compiled.
                        let served = request.recipe.serve_concurrency.is_some();
                        let notify = served.then(|| self.status.try_clone().ok()).flatten();
                        background(CompileJob { request, wasm, notify })
                    }
                    (Ok(request), Some(wasm)) => if_killed = Some(CompileJob { request, wasm, notify: None }),
                    (r, _) => {
                        log::warn!("instance {guest_pid}: a compile request without its file, or unreadable: {r:?}")
                    }
                }
                continue;
            }
            let end = !line.ends_with(b"\n");
            report.extend_from_slice(&line);
            if end {
                break;
            }
        }
        let report = String::from_utf8_lossy(&report).into_owned();
        if let Some(lines) = report.strip_suffix("ok").filter(|l| l.is_empty() || l.ends_with('\n')) {
            let code_report = lines.lines().filter_map(|l| l.strip_prefix("code ")).collect::<Vec<_>>().join("; ");
            Ok(Instance { pid: guest_pid, start: Some(self.start), status: self.status, code_report })
        } else {
            Err(report_error(&report, guest_pid, &self.bundle))
        }
    }
}

fn report_error(report: &str, pid: u32, bundle: &Path) -> InstanceError {
    match report.split_once('\t') {
        Some(("err", rest)) => {
            let (kind, message) = rest.split_once('\t').unwrap_or(("internal", rest));
            let kind = match kind {
                "invalid-argument" => ErrorKind::InvalidArgument,
                "not-found" => ErrorKind::NotFound,
                "unsupported" => ErrorKind::Unsupported,
                _ => ErrorKind::Internal,
            };
            InstanceError { kind, message: message.to_string() }
        }
        _ => InstanceError::internal(format!("instance process {pid} for {} exited while preparing", bundle.display())),
    }
}

/// The annotation bounding how long preparing an instance may take.
pub use wasmbox_spec::annotations::PREPARE_TIMEOUT as PREPARE_TIMEOUT_ANNOTATION;

/// Starts an instance process; [`Spawning::wait_ready`] waits until it has
/// prepared. Split in two so a caller can note the pid before the child may
/// exit.
pub fn spawn_process(opts: SpawnOptions<'_>) -> std::result::Result<Spawning, InstanceError> {
    let internal = |e: Error| InstanceError::internal(e.to_string());
    let (status_parent, status_child) =
        UnixStream::pair().map_err(|e| internal(Error::io("creating the instance's status socket", e)))?;
    let (start_r, start_w) = pipe().map_err(internal)?;
    let (status_fd, start_fd) = (status_child.as_raw_fd(), start_r.as_raw_fd());
    let procs: Vec<i32> = opts.cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(opts.exe);
    if opts.exe == Path::new("/proc/self/exe") {
        // Show the binary's name in ps, not the magic link it was run through.
        if let Ok(me) = std::env::current_exe() {
            cmd.arg0(me);
        }
    }
    cmd.arg(INSTANCE_ARG).arg(opts.bundle).arg(status_fd.to_string()).arg(start_fd.to_string());
    if let Some((process, pid)) = opts.exec {
        cmd.arg(process).arg(pid.to_string());
    }
    cmd.stdin(stdio(opts.stdin))
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
    // SAFETY: only async-signal-safe calls (fcntl, write) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [status_fd, start_fd] {
                // SAFETY: both fds are open in the child until exec.
                let fd = BorrowedFd::borrow_raw(fd);
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            // "0" names the writer: the child enters the container's cgroup.
            for &fd in &procs {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        internal(Error::io(format!("starting instance process {} (entering its cgroup)", opts.exe.display()), e))
    })?;
    drop(cmd);
    drop(status_child);
    drop(start_r);
    drop(opts.cgroup_procs);
    Ok(Spawning { pid: child.id(), status: status_parent, start: start_w, bundle: opts.bundle.to_path_buf() })
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

    /// Whether the guest was ended at its memory limit; asked once the
    /// process has exited (it never blocks).
    pub fn out_of_memory(&mut self) -> bool {
        let _ = self.status.set_nonblocking(true);
        let mut buf = [0u8; 3];
        matches!(self.status.read(&mut buf), Ok(3) if &buf == b"oom")
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

pub use wasmbox_engine::guest::own_rss;

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

/// Signals whose default action ends a process. In a pid namespace of its
/// own the guest's process is the namespace's init, which the kernel
/// shields from every signal it has no handler for (SIGKILL aside): a
/// handler for each makes SIGTERM end the container as it ends any other
/// process, with status 128+N.
fn terminating_signals() -> Vec<libc::c_int> {
    let mut s = vec![
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGPWR,
        libc::SIGSYS,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGSTKFLT,
        libc::SIGIO,
    ];
    s.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    s
}

extern "C" fn exit_on_signal(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) }
}

fn exit_on_terminating_signals() {
    for sig in terminating_signals() {
        // SAFETY: installs an async-signal-safe handler.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = exit_on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Makes stdin (a TTY's slave) this process's controlling terminal, in a
/// session of its own.
fn controlling_terminal() -> Result<()> {
    nix::unistd::setsid().map_err(|e| Error::io("starting a session for the TTY", e.into()))?;
    // SAFETY: TIOCSCTTY takes an int argument; no memory is passed.
    nix::errno::Errno::result(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })
        .map(drop)
        .map_err(|e| Error::io("making the TTY (stdin) the controlling terminal", e.into()))
}

/// What the instance reports on its status socket when it cannot go on.
fn fail(status: &mut UnixStream, e: &Error) -> ! {
    let _ = write!(status, "err\t{}\t{e}", kind_name(e.kind()));
    std::process::exit(PREPARE_FAILED_EXIT);
}

/// Tells the parent which pid runs the guest, and waits for its ack.
fn announce(status: &mut UnixStream, pid: u32) -> std::io::Result<()> {
    status.write_all(format!("pid {pid}\n").as_bytes())?;
    let mut ack = [0u8; 1];
    status.read_exact(&mut ack)
}

/// The body of an instance process: `args` are what follows [`INSTANCE_ARG`]
/// (bundle, status fd, start fd). Never returns.
///
/// In order, while the process has one thread (a compile's threads are
/// joined before it returns: see `wasmbox_engine::threads`): read the spec; join
/// and create the container's namespaces; in a pid namespace, fork, so the
/// guest's process is its init (the parent reports the child's pid and
/// exits); seal the rootfs and mounts in the new mount namespace; hostname
/// and sysctls; compile or load the code and open what the guest is granted;
/// rlimits and OOM score; drop to the spec's user, capabilities,
/// no_new_privs and seccomp. Then report `ok`, wait for start, run.
pub fn instance_main(args: &[String]) -> ! {
    let (bundle, status_fd, start_fd, exec) = match args {
        [b, s, t, rest @ ..] if rest.is_empty() || rest.len() == 2 => (
            PathBuf::from(b),
            s.parse::<i32>().unwrap_or(-1),
            t.parse::<i32>().unwrap_or(-1),
            match rest {
                [p, pid] => Some((PathBuf::from(p), pid.parse::<u32>().unwrap_or(0))),
                _ => None,
            },
        ),
        _ => {
            let _ = writeln!(std::io::stderr(), "usage: {INSTANCE_ARG} BUNDLE STATUS_FD START_FD [EXEC_PROCESS PID]");
            std::process::exit(2);
        }
    };
    if status_fd < 3 || start_fd < 3 {
        std::process::exit(2);
    }
    one_malloc_arena();
    // SAFETY: the parent passed us these two fds and nothing else owns them.
    let (mut status, mut start) = unsafe { (UnixStream::from_raw_fd(status_fd), File::from_raw_fd(start_fd)) };
    let cache = std::env::var_os(CACHE_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| default_cache_dir(&bundle));
    let setup = match &exec {
        None => Setup::read(&bundle),
        Some((process, pid)) => Setup::read_exec(&bundle, process, *pid),
    };
    let mut setup = match setup {
        Ok(s) => s,
        Err(e) => fail(&mut status, &e),
    };
    if let Err(e) = setup.isolation.enter_namespaces().and_then(|()| setup.resolve_exec(&bundle)) {
        fail(&mut status, &e);
    }
    let pid_ns = setup.isolation.pid_namespace();
    if pid_ns {
        let (sync_r, sync_w) = match pipe() {
            Ok(p) => p,
            Err(e) => fail(&mut status, &e),
        };
        // SAFETY: the process is single-threaded here.
        match unsafe { nix::unistd::fork() } {
            Err(e) => fail(&mut status, &Error::io("forking into the pid namespace", e.into())),
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                drop(sync_r);
                let ok = announce(&mut status, child.as_raw() as u32).is_ok();
                drop(sync_w);
                std::process::exit(if ok { 0 } else { PREPARE_FAILED_EXIT });
            }
            Ok(nix::unistd::ForkResult::Child) => {
                drop(sync_w);
                // Wait until the parent has reported our pid (EOF).
                let mut b = [0u8; 1];
                let _ = (&sync_r).read(&mut b);
                drop(sync_r);
                exit_on_terminating_signals();
            }
        }
    } else if announce(&mut status, std::process::id()).is_err() {
        std::process::exit(PREPARE_FAILED_EXIT);
    }
    // The process that runs the guest leads a session whose controlling
    // terminal is the container's TTY (its stdin), so ^C there signals
    // the guest; done after the pid namespace's fork, since a session
    // leader's exit hangs up its terminal.
    if setup.terminal {
        if let Err(e) = controlling_terminal() {
            fail(&mut status, &e);
        }
    }
    let prepared = match setup.prepare(&cache, &status) {
        Ok(p) => p,
        Err(e) => fail(&mut status, &e),
    };
    if let Some(p) = &prepared {
        let _ = status.write_all(format!("code {}\n", p.code_report.replace('\n', " ")).as_bytes());
    }
    let _ = status.write_all(b"ok");
    let mut byte = [0u8; 1];
    if !matches!(start.read(&mut byte), Ok(1)) {
        std::process::exit(0);
    }
    drop(start);
    let Some(mut prepared) = prepared else {
        // A pod sandbox: live until a signal ends the process.
        loop {
            nix::unistd::pause();
        }
    };
    if let Some(upgrader) = prepared.take_upgrader() {
        receive_upgrade(&status, upgrader);
    }
    let code = match prepared.run_to_outcome() {
        Ok(outcome) => {
            if outcome.out_of_memory {
                let _ = status.write_all(b"oom");
            }
            outcome.code
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "wasmbox: {e}");
            PREPARE_FAILED_EXIT
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// argv[1] that makes a wasmbox binary a background compile (see [`compile_main`]).
pub const COMPILE_ARG: &str = "__wasmbox_compile";

/// Starts the background compile `job` asks for: a process of `exe`'s
/// (whose main dispatches [`COMPILE_ARG`] to [`compile_main`]) in a
/// session of its own, so it outlives the container and its caller, with
/// the wasm's file as its stdin; what it has to say comes out of its
/// stdout (returned, for the caller's log).
/// `cgroup_procs`: the `cgroup.procs` files of the cgroup it runs in
/// (opened for writing; see `wasmbox_sandbox::cgroup::background`), which
/// it enters before it runs; none leaves it in the caller's.
pub fn spawn_compile(exe: &Path, job: CompileJob, cgroup_procs: &[OwnedFd]) -> Result<std::process::ChildStdout> {
    let json = serde_json::to_string(&job.request)
        .map_err(|e| Error::io("encoding a compile request", std::io::Error::other(e)))?;
    let mut cmd = Command::new(exe);
    if exe == Path::new("/proc/self/exe") {
        if let Ok(me) = std::env::current_exe() {
            cmd.arg0(me);
        }
    }
    cmd.arg(COMPILE_ARG)
        .arg(json)
        .stdin(Stdio::from(job.wasm))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| INHERITED_ENV.iter().any(|i| k == i)));
    let procs: Vec<i32> = cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: setsid and write(2) of a constant to fds the parent keeps
    // open are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            for &fd in &procs {
                // Best effort: a compile left in the caller's cgroup still
                // runs at the lowest priority there.
                libc::write(fd, b"0".as_ptr().cast(), 1);
            }
            Ok(())
        });
    }
    let mut child =
        cmd.spawn().map_err(|e| Error::io(format!("starting a background compile ({})", exe.display()), e))?;
    child.stdout.take().ok_or_else(|| Error::io("a background compile's stdout", std::io::Error::other("missing")))
}

/// The body of a background compile (`args`: the request's JSON; stdin:
/// the wasm). It runs at the lowest CPU and I/O priority, with no
/// capabilities, outside any container: it reads the wasm, then waits for
/// the node's compile slot and compiles into the cache (see
/// [`wasmbox_engine::engine::compile_background`]). One line on stdout
/// says how it went. Never returns.
pub fn compile_main(args: &[String]) -> ! {
    let out = |line: &str| {
        let _ = writeln!(std::io::stdout(), "{line}");
        let _ = std::io::stdout().flush();
    };
    let request: Background = match args.first().map(|a| serde_json::from_str(a)) {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            out(&format!("background compile: the request does not parse: {e}"));
            std::process::exit(2);
        }
        None => {
            out(&format!("usage: {COMPILE_ARG} REQUEST_JSON < WASM"));
            std::process::exit(2);
        }
    };
    lowest_priority();
    if let Err(e) = wasmbox_sandbox::isolation::drop_all_capabilities() {
        out(&format!("background compile of {}: {e}", request.name));
        std::process::exit(1);
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        out(&format!("background compile of {}: reading the wasm: {e}", request.name));
        std::process::exit(1);
    }
    // The file (and so the container's rootfs) is let go before the wait.
    // SAFETY: closing stdin, which nothing else uses.
    unsafe { libc::close(0) };
    match wasmbox_engine::engine::compile_background(&request, &bytes) {
        Ok((report, entry)) => {
            out(&report);
            if let Some(entry) = entry {
                out(&format!("{ENTRY_LINE}{}", entry.display()));
            }
            std::process::exit(0)
        }
        Err(e) => {
            out(&format!("background compile of {} failed: {e}", request.name));
            std::process::exit(1)
        }
    }
}

/// Idle CPU scheduling, nice 19 and idle I/O: a background compile takes
/// only what no container wants.
fn lowest_priority() {
    // SAFETY: plain syscalls on this process with integer arguments.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
        // ioprio_set(IOPRIO_WHO_PROCESS, self, IOPRIO_CLASS_IDLE << 13).
        libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13);
    }
}

/// Asks the parent for a background compile: the request, with the wasm's
/// file open (it is read from this process's mount namespace, which the
/// compile cannot enter). Best effort: the guest starts either way.
fn ask_background(status: &UnixStream, request: &Background) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let Ok(file) = File::open(&request.wasm) else { return };
    let Ok(json) = serde_json::to_string(request) else { return };
    let line = format!("compile {json}\n");
    let fds = [file.as_raw_fd()];
    let sent = sendmsg::<()>(
        status.as_raw_fd(),
        &[std::io::IoSlice::new(line.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    );
    // A short write of a stream socket: the rest goes as it is.
    if let Ok(n) = sent {
        if n < line.len() {
            let _ = (&*status).write_all(&line.as_bytes()[n..]);
        }
    }
}

/// What an instance process read from its bundle before it set anything up.
struct Setup {
    workload: Workload,
    isolation: Isolation,
    rootfs: PathBuf,
    root_readonly: bool,
    limits: wasmbox_spec::plan::Limits,
    /// An exec: the container's mounts, hostname and sysctls are in place.
    exec: bool,
    /// `process.terminal`: stdin, stdout and stderr are a TTY.
    terminal: bool,
    /// An exec's spec, whose workload is resolved once the container's
    /// mount namespace is joined (its rootfs is only there).
    exec_spec: Option<(PathBuf, oci_spec::runtime::Spec)>,
}

impl Setup {
    fn read(bundle: &Path) -> Result<Setup> {
        let (config, spec) = wasmbox_spec::plan::load_spec(bundle)?;
        let isolation = Isolation::from_spec(&spec)?;
        let workload = Workload::from_spec(bundle, &config, &spec)?;
        let limits = wasmbox_spec::plan::Limits::from_spec(&spec)?;
        Ok(Setup {
            workload,
            isolation,
            rootfs: wasmbox_spec::plan::rootfs_of(bundle, &spec),
            root_readonly: spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false),
            limits,
            exec: false,
            terminal: spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false),
            exec_spec: None,
        })
    }

    /// An exec into a running wasm container: its spec with the exec's
    /// `process` (args, env, cwd, user, capabilities, rlimits), in every
    /// namespace of the container's process `pid`.
    fn read_exec(bundle: &Path, process: &Path, pid: u32) -> Result<Setup> {
        let (config, mut spec) = wasmbox_spec::plan::load_spec(bundle)?;
        let bytes = std::fs::read(process).map_err(|e| Error::io(format!("reading {}", process.display()), e))?;
        let p: oci_spec::runtime::Process = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Spec { path: process.to_path_buf(), reason: e.to_string() })?;
        if p.terminal().unwrap_or(false) {
            return Err(Error::Unsupported("exec with a TTY into a wasm container".into()));
        }
        spec.set_process(Some(p));
        let isolation = Isolation::from_spec(&spec)?.for_exec(pid);
        if spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(wasmbox_spec::plan::CONTAINER_TYPE))
            .is_some_and(|t| t == "sandbox")
        {
            return Err(Error::Unsupported("exec into a pod's sandbox container".into()));
        }
        let limits = wasmbox_spec::plan::Limits::from_spec(&spec)?;
        Ok(Setup {
            workload: Workload::Sandbox,
            isolation,
            rootfs: wasmbox_spec::plan::rootfs_of(bundle, &spec),
            root_readonly: false,
            limits,
            exec: true,
            terminal: false,
            exec_spec: Some((config, spec)),
        })
    }

    /// An exec's workload, from inside the container's mount namespace.
    fn resolve_exec(&mut self, bundle: &Path) -> Result<()> {
        if let Some((config, spec)) = self.exec_spec.take() {
            self.workload = Workload::from_spec(bundle, &config, &spec)?;
        }
        Ok(())
    }

    /// Everything after the namespaces: mounts, code, limits, privileges.
    /// None for a pod sandbox, which runs nothing.
    fn prepare(self, cache: &Path, status: &UnixStream) -> Result<Option<Prepared>> {
        let iso = &self.isolation;
        let (dirs, files) = match &self.workload {
            // The first preopen is the rootfs itself, sealed on its own.
            Workload::Wasm(plan) => (
                plan.preopens.iter().skip(1).map(|p| (p.host.clone(), p.readonly)).collect::<Vec<_>>(),
                plan.file_mounts.clone(),
            ),
            Workload::Sandbox => (Vec::new(), Vec::new()),
        };
        if !self.exec {
            isolation::setup_mounts(iso.propagation, &self.rootfs, self.root_readonly, &dirs, &files)?;
            iso.apply_uts_and_sysctl()?;
        }
        let prepared = match self.workload {
            Workload::Wasm(plan) => {
                // An untrusted cache directory is not used: the code is
                // compiled, and the report says why.
                let (c, refused) = match Cache::new(cache) {
                    Ok(c) => (Some(c), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                let mut ask = |b: &Background| ask_background(status, b);
                let mut p = Prepared::new_isolated(plan, c.as_ref(), self.limits, Some(&mut ask))?;
                if let Some(why) = refused {
                    p.code_report = format!("compile cache refused: {why}; {}", p.code_report);
                }
                Some(p)
            }
            Workload::Sandbox => None,
        };
        // Give back what compiling took, before the guest's limit is measured.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free heap memory to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        iso.apply_limits()?;
        iso.drop_privileges()?;
        Ok(prepared)
    }
}
