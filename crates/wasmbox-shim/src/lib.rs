#![doc = include_str!("../README.md")]

//! wasmbox's containerd shim (runtime v2, `io.containerd.wasmbox.v1`).
//!
//! containerd runs the binary three ways: `start` (spawn or reuse a shim
//! daemon and print its ttrpc address), `delete` (clean up after a dead
//! shim) and, with no action, as the daemon serving the Task service. The
//! same binary is also each container's instance process
//! (`wasmbox_instance::INSTANCE_ARG`).
//!
//! We bootstrap by hand rather than with `containerd_shim::run`, whose
//! start reply and service name are those of containerd 2.x only: we print
//! the bare address (understood by 1.6, 1.7 and 2.x) and serve the Task
//! service under both `containerd.task.v2.Task` and `containerd.task.v3.Task`.

pub mod backend;
pub mod console;
pub mod content;
pub mod error;
pub mod events;
pub mod linux;
pub mod options;
pub mod reaper;
pub mod rootfs;
pub mod service;
pub mod state;
pub mod stats;
pub mod stdio;
pub mod wasm;

use anyhow::{bail, Context as _, Result};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::ttrpc::Server;
use containerd_shim::{api, ExitSignal, Flags, StartOpts};
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

/// The runtime name containerd knows us by.
pub const RUNTIME_ID: &str = "io.containerd.wasmbox.v1";

/// CRI's annotation naming a container's pod: containers of one pod share a shim.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The whole of `containerd-shim-wasmbox-v1`'s main.
pub fn main() -> ! {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(wasmbox_instance::INSTANCE_ARG) {
        wasmbox_instance::instance_main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some(wasmbox_instance::COMPILE_ARG) {
        wasmbox_instance::compile_main(&args[2..]);
    }
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e:#}");
            let _ = writeln!(std::io::stderr(), "{RUNTIME_ID}: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

fn run(args: &[String]) -> Result<()> {
    let flags = containerd_shim::parse(&args[1..]).map_err(|e| anyhow::anyhow!("{e}"))?;
    if flags.version {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}:\n  Version: {}\n  Runtime: {RUNTIME_ID}", args[0], env!("CARGO_PKG_VERSION"))?;
        return Ok(());
    }
    if flags.namespace.is_empty() {
        bail!("-namespace is required");
    }
    match flags.action.as_str() {
        "start" => start(&flags),
        "delete" => delete(&flags),
        "" => serve(&flags),
        other => bail!("unknown action {other:?}"),
    }
}

/// The grouping key of a container: its pod's id under CRI, else its own id.
fn grouping(bundle: &Path, id: &str) -> String {
    let spec = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    spec.as_ref()
        .and_then(|s| s["annotations"][SANDBOX_ID].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| id.to_string())
}

/// The environment variable `start` hands the daemon the `ShimCgroup`
/// runtime option in (containerd's flag parser takes no extra flags).
const SHIM_CGROUP_ENV: &str = "WASMBOX_SHIM_CGROUP";

/// The last line a daemon writes to `start` before it closes its stdout.
const SERVING: &str = "serving";
const JOINED: &str = "joined";

fn start(flags: &Flags) -> Result<()> {
    // containerd reads the bundle's `log` fifo before it runs us: what
    // goes wrong here lands in its log as well as in the client's error.
    open_log(flags.debug);
    let mut input = Vec::new();
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        std::io::Read::read_to_end(&mut std::io::Read::take(std::io::stdin().lock(), 10 << 20), &mut input)?;
    }
    let options = options::parse(&input)?;
    let opts = StartOpts {
        id: flags.id.clone(),
        namespace: flags.namespace.clone(),
        address: flags.address.clone(),
        ..Default::default()
    };
    let bundle = std::env::current_dir()?;
    let address = opts.socket_address(&grouping(&bundle, &flags.id));
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id, "-address", &flags.address, "-socket", &address])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if flags.debug {
        cmd.arg("-debug");
    }
    if let Some(cg) = &options.shim_cgroup {
        cmd.env(SHIM_CGROUP_ENV, cg);
    }
    if let Some(path) = &options.config_path {
        cmd.env(wasmbox_spec::defaults::CONFIG_ENV, path);
    }
    let mut daemon = cmd.spawn().context("spawning the shim daemon")?;
    // The daemon writes to this pipe until it serves (or hands our
    // container to the daemon already serving its group), then closes it.
    let mut said = String::new();
    if let Some(mut out) = daemon.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut said)?;
    }
    match said.lines().last() {
        Some(SERVING) => adjust_oom_score(daemon.id()),
        Some(JOINED) => {
            daemon.wait()?;
        }
        _ => {
            let status = daemon.wait()?;
            bail!("the shim daemon stopped before serving ({status}): {}", said.trim());
        }
    }
    containerd_shim::util::write_address(&address).map_err(|e| anyhow::anyhow!("writing address file: {e}"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The daemon's last word to `start`, on the pipe that is its stdout.
fn tell_start(word: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{word}")?;
    out.flush()?;
    Ok(())
}

/// Logs to the bundle's `log` fifo, which containerd copies into its own
/// log. Opened without blocking: with nobody reading (the shim run by
/// hand) there is no log.
fn open_log(debug: bool) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open("log") else { return };
    let blocking = nix::fcntl::fcntl(&f, nix::fcntl::F_GETFL)
        .map(|fl| nix::fcntl::OFlag::from_bits_truncate(fl) & !nix::fcntl::OFlag::O_NONBLOCK);
    if blocking.and_then(|fl| nix::fcntl::fcntl(&f, nix::fcntl::F_SETFL(fl))).is_err() {
        return;
    }
    let level = std::env::var(containerd_shim::logger::LOG_ENV)
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info)
        .max(if debug { log::LevelFilter::Debug } else { log::LevelFilter::Error });
    if log::set_boxed_logger(Box::new(containerd_shim::logger::FifoLogger::with_file(f))).is_ok() {
        log::set_max_level(level);
    }
}

/// Puts the shim daemon's OOM score just above containerd's (`start` runs
/// as containerd's child), as containerd's runc shim does: under memory
/// pressure the kernel kills a shim, and with it containers, before
/// containerd. Lowering a score needs CAP_SYS_RESOURCE, so a score is only
/// ever raised.
fn adjust_oom_score(daemon: u32) {
    let read = |pid: String| -> Option<i32> {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).ok()?.trim().parse().ok()
    };
    let Some(containerd) = read(nix::unistd::getppid().to_string()) else { return };
    let Some(current) = read(daemon.to_string()) else { return };
    let target = (containerd + 1).min(1000);
    if target > current {
        if let Err(e) = std::fs::write(format!("/proc/{daemon}/oom_score_adj"), target.to_string()) {
            log::warn!("setting the shim's oom_score_adj to {target}: {e}");
        }
    }
}

/// containerd's clean-up after a shim died: end the instance process if it
/// is still there, unmount the rootfs, and report the task as killed.
fn delete(flags: &Flags) -> Result<()> {
    let bundle = if flags.bundle.is_empty() { std::env::current_dir()? } else { flags.bundle.clone().into() };
    let pid: i32 =
        std::fs::read_to_string(bundle.join(service::PID_FILE)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    // The pid may have been reused since the shim died: end it only if it
    // is still this bundle's instance process, and let it die before
    // touching the rootfs it could write to.
    if pid > 0 && is_instance_of(pid, &bundle) {
        kill_and_wait(pid);
    }
    // A Linux container goes through runc, which kills what is left of it.
    // containerd logs what `delete` writes on stderr as cleanup warnings.
    if let Err(e) = linux::force_delete(&bundle, &flags.id) {
        let _ = writeln!(std::io::stderr(), "{e}");
    }
    // File mounts and the instance's copy of the rootfs lived in its own
    // mount namespace, gone with it; the host's copy is only there if the
    // shim died while creating.
    rootfs::unmount(&bundle.join("rootfs"));
    let _ = std::fs::remove_file(bundle.join(service::PID_FILE));
    let resp = api::DeleteResponse {
        pid: pid.max(0) as u32,
        exit_status: 128 + 9,
        exited_at: MessageField::some(Timestamp::now()),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    resp.write_to_writer(&mut out)?;
    out.flush()?;
    Ok(())
}

/// SIGKILL to `pid`, then waits (2 s at most) until it is dead. A zombie
/// counts as dead: after a shim died, its reaper is not us.
pub(crate) fn kill_and_wait(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while is_live(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Whether `pid` exists and is not a zombie.
fn is_live(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Whether `pid` is a live instance process of `bundle`.
fn is_instance_of(pid: i32, bundle: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let same_bundle = |arg: &[u8]| {
        let arg = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(arg));
        arg == bundle || std::fs::canonicalize(arg).ok() == std::fs::canonicalize(bundle).ok()
    };
    is_live(pid)
        && args.get(1) == Some(&wasmbox_instance::INSTANCE_ARG.as_bytes())
        && args.get(2).is_some_and(|a| same_bundle(a))
}

fn serve(flags: &Flags) -> Result<()> {
    if flags.socket.is_empty() {
        bail!("-socket is required to serve");
    }
    let path = flags.socket.strip_prefix("unix://").unwrap_or(&flags.socket).to_string();
    // Until it serves, what the daemon writes goes to `start` (its stdout
    // is `start`'s pipe), and from there to containerd and the client.
    nix::unistd::dup2_stderr(std::io::stdout())?;
    open_log(flags.debug);
    if let Some(cg) = std::env::var_os(SHIM_CGROUP_ENV) {
        let cg = cg.to_string_lossy();
        wasmbox_sandbox::cgroup::Cgroup::join(&cg, std::process::id(), "runtime option ShimCgroup")?;
        log::info!("shim joined cgroup {cg} (runtime option ShimCgroup)");
    }
    let dir = Path::new(&path).parent().context("socket path has no directory")?.to_path_buf();
    std::fs::create_dir_all(&dir)?;
    // Daemons of one group race to serve it (several containers of a pod
    // start at once): check and bind under a lock on the socket directory.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let guard = loop {
        let guard = lock_dir(&dir)?;
        match announce(&flags.socket, &flags.id) {
            // A live daemon serves this group and expects our container:
            // containerd reuses it.
            Announce::Accepted => {
                tell_start(JOINED)?;
                return Ok(());
            }
            // It is shutting down: let it unlink its socket, then serve.
            Announce::Closing if std::time::Instant::now() < give_up => {
                drop(guard);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Announce::Closing => bail!("the shim at {} has been shutting down for 10 s", flags.socket),
            Announce::Unresponsive(e) => bail!("the shim at {} does not answer: {e}", flags.socket),
            Announce::Absent => break guard,
        }
    };
    let _ = std::fs::remove_file(&path);
    // containerd runs `start` in a process group of its own; the daemon
    // goes on to lead a session of its own, as daemons do: no controlling
    // terminal, so nothing that happens to the terminal or session
    // containerd was started from reaches the shim or its containers.
    let _ = nix::unistd::setsid();
    wasmbox_instance::one_malloc_arena();
    nix::sys::prctl::set_child_subreaper(true)?;
    reaper::start()?;
    let exits = containerd_shim::monitor::monitor_subscribe(containerd_shim::monitor::Topic::Pid)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    stdio::set_namespace(&flags.namespace);
    content::set_containerd(&flags.address, &flags.namespace);
    let events =
        events::RemoteEvents::new(&std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS")?, flags.namespace.clone())
            .context("connecting to containerd's event service")?;
    let exit = Arc::new(ExitSignal::default());
    // Instances run this very binary, even once a package upgrade has
    // replaced (or removed) the file this shim was started from.
    let exe = std::path::PathBuf::from("/proc/self/exe");
    let svc = service::Service::new(exe, events, exit.clone());
    svc.watch_exits(exits);
    let task: Arc<dyn containerd_shim::Task + Send + Sync> = svc;
    let mut methods = containerd_shim::protos::create_task(task.clone());
    let v2: Vec<_> = containerd_shim::protos::create_task(task)
        .into_iter()
        .map(|(k, v)| (k.replace("/containerd.task.v3.Task/", "/containerd.task.v2.Task/"), v))
        .collect();
    methods.extend(v2);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {path}"))?;
    drop(guard);
    // Few idle workers per connection: a request that blocks (Wait) makes
    // the pool grow, so this never starves, and an idle shim stays small.
    let mut server = Server::new()
        // ttrpc wants min < default < max.
        .set_thread_count_min(1)
        .set_thread_count_default(2)
        .set_thread_count_max(3)
        .add_listener(listener.into_raw_fd())?
        .register_service(methods);
    server.start()?;
    // `start` waits for our stdout to close before it answers containerd.
    tell_start(SERVING)?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    log::info!("serving {RUNTIME_ID} on {path}");
    exit.wait();
    // Unlink first, under the lock, so a container started from now on gets
    // a new daemon instead of this one, which is going away.
    if let Ok(_guard) = lock_dir(&dir) {
        let _ = std::fs::remove_file(&path);
    }
    server.shutdown();
    Ok(())
}

/// What the daemon of a group says when a newcomer announces a container.
enum Announce {
    /// Nobody listens at the socket: the newcomer serves.
    Absent,
    /// A live daemon took the container: containerd will reuse it.
    Accepted,
    /// The daemon is shutting down and unlinks its socket shortly.
    Closing,
    /// Something listens but does not answer as a shim would.
    Unresponsive(String),
}

/// Tells the daemon listening at `socket` (if any) that container `id` is
/// about to be created there.
fn announce(socket: &str, id: &str) -> Announce {
    let path = socket.strip_prefix("unix://").unwrap_or(socket);
    if UnixStream::connect(path).is_err() {
        return Announce::Absent;
    }
    let client = match containerd_shim::protos::ttrpc::Client::connect(socket) {
        Ok(c) => c,
        Err(e) => return Announce::Unresponsive(e.to_string()),
    };
    let task = containerd_shim::protos::shim::shim_ttrpc::TaskClient::new(client);
    let req = api::ConnectRequest { id: id.to_string(), ..Default::default() };
    let ctx = containerd_shim::protos::ttrpc::context::with_timeout(5_000_000_000);
    match task.connect(ctx, &req) {
        Ok(_) => Announce::Accepted,
        Err(containerd_shim::protos::ttrpc::Error::RpcStatus(s))
            if s.code() == containerd_shim::protos::ttrpc::Code::FAILED_PRECONDITION =>
        {
            Announce::Closing
        }
        Err(e) => Announce::Unresponsive(e.to_string()),
    }
}

/// An exclusive advisory lock on a directory, held until dropped.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", dir.display()))
}
