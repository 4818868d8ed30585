//! A private, real containerd for tests and benchmarks: started in a
//! temporary root with wasmbox's shim first on its PATH, driven with `ctr`,
//! and torn down with everything it left (shims, instances, mounts).

pub mod cri;
pub mod generated;
pub mod kube;

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wasmbox_image::{self as image, ImageSpec};

pub const RUNTIME: &str = "io.containerd.wasmbox.v1";
pub const SHIM: &str = "containerd-shim-wasmbox-v1";

/// The directory holding the built binaries (the shim, `wasmbox`): the
/// cargo profile directory this program was built into.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe has no parent")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    if !dir.join(SHIM).exists() {
        bail!("{} not found in {}: build it first (cargo build --release --workspace)", SHIM, dir.display());
    }
    Ok(dir)
}

/// Names a directory holding the `containerd` and `ctr` (and runc shim) to
/// test against instead of those on PATH, e.g. another version unpacked
/// from Debian's packages by `scripts/containerd-versions.sh`.
pub const CONTAINERD_DIR_ENV: &str = "WASMBOX_E2E_CONTAINERD";

/// The directory of the containerd binaries under test, if not PATH's.
fn tools_dir() -> Option<PathBuf> {
    std::env::var_os(CONTAINERD_DIR_ENV).filter(|d| !d.is_empty()).map(PathBuf::from)
}

/// `name` (containerd, ctr) from the directory under test, else from PATH.
pub fn tool(name: &str) -> PathBuf {
    tools_dir().map(|d| d.join(name)).unwrap_or_else(|| PathBuf::from(name))
}

/// The first line `containerd --version` prints for the containerd under test.
pub fn containerd_version() -> String {
    Command::new(tool("containerd"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|e| format!("containerd --version failed: {e}"))
}

/// The longest any single `ctr` command of the tests may take.
pub const CTR_LIMIT: Duration = Duration::from_secs(120);

/// Waits for `child` and collects its output; an error once `limit` has
/// passed (the child is killed). For small outputs: the pipes are read
/// once the child has exited.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Result<Output> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not return within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child.wait_with_output()?)
}

/// Waits for a `ctr` started in the background, bounded by [`CTR_LIMIT`].
pub fn wait_ctr(child: Child) -> Result<Output> {
    wait_bounded(child, CTR_LIMIT)
}

pub struct Containerd {
    pub dir: PathBuf,
    pub sock: PathBuf,
    bin_dir: PathBuf,
    child: std::sync::Mutex<Child>,
    ids: AtomicUsize,
    /// The containerd namespace `ctr` works in (`k8s.io` under CRI).
    pub namespace: &'static str,
    /// The CNI bridge of a CRI-enabled containerd, removed at the end.
    bridge: Option<String>,
}

/// The OOM score containerd gives itself in the tests (its `oom_score`
/// setting, raised: lowering a score takes CAP_SYS_RESOURCE, which a
/// test machine may not grant): shims must end up just above it.
pub const OOM_SCORE: i32 = 500;

impl Containerd {
    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).id()
    }

    /// Starts containerd in a fresh directory under the system temp dir,
    /// CRI disabled.
    pub fn start(bin_dir: &Path) -> Result<Containerd> {
        Self::start_with(bin_dir, false)
    }

    /// Starts containerd with its CRI plugin: the runtime handler
    /// `wasmbox` (and `runc`), a CNI bridge of its own (Debian's
    /// containernetworking-plugins, no masquerading), netns under its
    /// state, the pause image [`PAUSE_IMAGE`] to be imported by the caller.
    pub fn start_cri(bin_dir: &Path) -> Result<Containerd> {
        Self::start_with(bin_dir, true)
    }

    fn start_with(bin_dir: &Path, cri: bool) -> Result<Containerd> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wasmbox-ctrd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("containerd.sock");
        let bridge = cri.then(|| format!("wbcri{}", std::process::id() % 100_000));
        let mut config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\noom_score = {OOM_SCORE}\n{disabled}\
             [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n[debug]\n  level = \"info\"\n\
             [plugins.\"io.containerd.nri.v1.nri\"]\n  socket_path = \"{d}/nri.sock\"\n",
            d = dir.display(),
            s = sock.display(),
            disabled = if cri { "" } else { "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n" },
        );
        if let Some(bridge) = &bridge {
            config.push_str(&cri_config(&dir, bridge)?);
        }
        std::fs::write(dir.join("config.toml"), config)?;
        let child = Self::spawn(&dir, bin_dir)?;
        let c = Containerd {
            dir,
            sock,
            bin_dir: bin_dir.to_path_buf(),
            child: std::sync::Mutex::new(child),
            ids: AtomicUsize::new(0),
            namespace: if cri { "k8s.io" } else { "default" },
            bridge,
        };
        c.wait_ready()?;
        Ok(c)
    }

    fn spawn(dir: &Path, bin_dir: &Path) -> Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("containerd.log"))?;
        let path = daemon_path(bin_dir);
        Command::new(tool("containerd"))
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (is the Debian package `containerd` installed?)")
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctr(&["version"])?.status.success() {
            if Instant::now() > deadline {
                bail!("containerd did not come up: see {}", self.dir.join("containerd.log").display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops containerd (SIGTERM) and starts it again on the same root and
    /// state; running shims and their containers are left alone.
    pub fn restart(&self) -> Result<()> {
        let mut child = self.child.lock().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        child.wait()?;
        *child = Self::spawn(&self.dir, &self.bin_dir)?;
        drop(child);
        self.wait_ready()
    }

    /// A fresh container id.
    pub fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.ids.fetch_add(1, Ordering::SeqCst))
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool("ctr"));
        cmd.arg("--address").arg(&self.sock).args(["--namespace", self.namespace]).args(args);
        cmd
    }

    /// `ctr` with the given arguments; a ctr that has not returned after
    /// two minutes (a wedged shim) is an error, not a hung test run.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.ctr_bounded(args, CTR_LIMIT)
    }

    /// `ctr` with `input` on its standard input (bounded like [`Self::ctr`]).
    pub fn ctr_input(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        wait_ctr(self.ctr_spawn_input(args, input.to_vec())?).with_context(|| format!("ctr {}", args.join(" ")))
    }

    /// `ctr` started in the background with `input` fed to its stdin (then EOF).
    pub fn ctr_spawn_input(&self, args: &[&str], input: Vec<u8>) -> Result<Child> {
        use std::io::Write;
        let mut child =
            self.ctr_cmd(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let mut stdin = child.stdin.take().context("ctr's stdin")?;
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        Ok(child)
    }

    /// `ctr`, but an error rather than a hang when it has not returned
    /// within `limit` (a bound on a wedged shim, not a timing assertion).
    pub fn ctr_bounded(&self, args: &[&str], limit: Duration) -> Result<Output> {
        wait_bounded(self.ctr_spawn(args)?, limit).with_context(|| format!("ctr {}", args.join(" ")))
    }

    /// `crictl ARGS...` against this containerd's CRI (bounded like `ctr`).
    pub fn crictl(&self, args: &[&str]) -> Result<Output> {
        let endpoint = format!("unix://{}", self.sock.display());
        let child = Command::new(crictl_bin())
            .args(["--runtime-endpoint", &endpoint, "--image-endpoint", &endpoint, "--timeout", "60s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} (scripts/setup.sh builds it)", crictl_bin().display()))?;
        wait_bounded(child, CTR_LIMIT).with_context(|| format!("crictl {}", args.join(" ")))
    }

    /// `crictl ARGS...` that must succeed; its stdout, trimmed.
    pub fn crictl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.crictl(args)?;
        if !out.status.success() {
            bail!(
                "crictl {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `crictl VERB -o json ARGS...`, parsed.
    pub fn crictl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.splice(1.min(a.len())..1.min(a.len()), ["-o", "json"]);
        let text = self.crictl_ok(&a)?;
        serde_json::from_str(&text).with_context(|| format!("crictl {}: not JSON: {text}", args.join(" ")))
    }

    /// `ctr` started in the background (a foreground `ctr run` to kill).
    pub fn ctr_spawn(&self, args: &[&str]) -> Result<Child> {
        Ok(self.ctr_cmd(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?)
    }

    /// Imports an image whose `/large.wasm` is a generated module of `mb`
    /// MiB that nothing has compiled before (a seed from the clock); its name.
    pub fn import_large(&self, tag: &str, mb: usize) -> Result<String> {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
        let path = self.dir.join(format!("large-{tag}.wasm"));
        std::fs::write(&path, generated::large_module(mb, seed))?;
        let name = format!("docker.io/library/wasmbox-large-{tag}:e2e");
        self.import(&ImageSpec {
            name: name.clone(),
            wasm: path,
            wasm_dest: Some("/large.wasm".into()),
            ..Default::default()
        })?;
        Ok(name)
    }

    /// Imports an image built by wasmbox's own image builder.
    pub fn import(&self, spec: &ImageSpec) -> Result<()> {
        let tar = self.dir.join(format!("image-{}.tar", self.ids.fetch_add(1, Ordering::SeqCst)));
        image::build(spec, std::io::BufWriter::new(std::fs::File::create(&tar)?))?;
        self.import_tar(&tar)
    }

    /// Imports a busybox image named `name`: Debian's static busybox at
    /// `/bin/busybox`, each applet a link to it, `PATH=/bin`, and
    /// `entrypoint` (e.g. `["/bin/busybox"]`, or nothing).
    pub fn import_busybox(&self, name: &str, entrypoint: &[&str]) -> Result<()> {
        self.import_busybox_with(name, entrypoint, Vec::new())
    }

    /// [`Self::import_busybox`] with `extra` files (path, data, mode).
    pub fn import_busybox_with(
        &self,
        name: &str,
        entrypoint: &[&str],
        extra: Vec<(String, Vec<u8>, u32)>,
    ) -> Result<()> {
        let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (Debian package busybox-static)")?;
        let list = Command::new("/bin/busybox").arg("--list").output().context("busybox --list")?;
        let mut files = vec![("/bin/busybox".to_string(), busybox, 0o755)];
        for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
            files.push((format!("/bin/{applet}"), b"busybox".to_vec(), image::S_IFLNK | 0o777));
        }
        // What a base image has: writable /tmp, a root's home.
        for dir in ["/tmp", "/root", "/etc"] {
            files.push((dir.to_string(), Vec::new(), image::S_IFDIR | if dir == "/tmp" { 0o1777 } else { 0o755 }));
        }
        files.extend(extra);
        let tar = self.dir.join(format!("image-{}.tar", self.ids.fetch_add(1, Ordering::SeqCst)));
        let entrypoint: Vec<String> = entrypoint.iter().map(|s| s.to_string()).collect();
        // Like busybox's own image: `sh` when nothing else is said.
        let cmd: Vec<String> = if entrypoint.is_empty() { vec!["sh".into()] } else { Vec::new() };
        image::build_raw(
            name,
            &files,
            &entrypoint,
            &cmd,
            &["PATH=/bin".to_string()],
            std::io::BufWriter::new(std::fs::File::create(&tar)?),
        )?;
        self.import_tar(&tar)
    }

    pub fn import_tar(&self, tar: &Path) -> Result<()> {
        let out = self.ctr(&["image", "import", tar.to_str().unwrap()])?;
        if !out.status.success() {
            bail!("ctr image import failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The status column of `ctr task ls` for `id` (RUNNING, STOPPED, ...).
    pub fn task_status(&self, id: &str) -> Result<Option<String>> {
        let out = self.ctr(&["task", "ls"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id)).then(|| f.get(2).unwrap_or(&"").to_string())
            })
            .next())
    }

    /// Polls until `id`'s task has `status` (bounded; not a timing assertion).
    pub fn wait_status(&self, id: &str, status: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.task_status(id)?.as_deref() == Some(status) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("task {id} never became {status} (now {:?})", self.task_status(id)?);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Number of open fds of process `pid`.
    pub fn fd_count(pid: i32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
    }

    /// Pids of this containerd's shim daemons.
    pub fn shims(&self) -> Vec<i32> {
        let sock = self.sock.display().to_string();
        processes().into_iter().filter(|(_, cmd)| cmd.contains(SHIM) && cmd.contains(&sock)).map(|(p, _)| p).collect()
    }

    /// The process group and session of `pid`, from /proc.
    pub fn pgid_sid(pid: i32) -> Option<(i32, i32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(2);
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    }

    /// Background compiles (see `wasmbox_instance::spawn_compile`) still
    /// running for this containerd's cache.
    pub fn background_compiles(&self) -> Vec<i32> {
        let dir = self.dir.display().to_string();
        processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(wasmbox_instance::COMPILE_ARG) && cmd.contains(&dir))
            .map(|(p, _)| p)
            .collect()
    }

    /// Waits (up to `limit`) until no background compile runs; those left.
    pub fn wait_background_compiles(&self, limit: Duration) -> Vec<i32> {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.background_compiles();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every task in every namespace, as `ctr tasks ls` prints them (for
    /// a failure's message).
    pub fn all_tasks(&self) -> String {
        let run = |args: &[&str]| {
            Command::new(tool("ctr"))
                .arg("--address")
                .arg(&self.sock)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let mut out = String::new();
        for ns in run(&["namespaces", "ls", "-q"]).lines() {
            out += &format!("[{ns}]\n{}", run(&["--namespace", ns, "tasks", "ls"]));
        }
        out
    }

    /// Pids of instance processes whose bundle lies under this containerd's state.
    pub fn instances(&self) -> Vec<i32> {
        let state = self.dir.join("state").display().to_string();
        processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(wasmbox_instance::INSTANCE_ARG) && cmd.contains(&state))
            .map(|(p, _)| p)
            .collect()
    }

    /// Mount points under this containerd's directories.
    pub fn mounts(&self) -> Vec<String> {
        let dir = self.dir.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect()
    }
}

/// The PATH the tests' containerd runs with: our shim first, then the runc
/// shim of the containerd under test, then ours.
pub fn daemon_path(bin_dir: &Path) -> String {
    let tools = tools_dir().map(|d| format!("{}:", d.display())).unwrap_or_default();
    format!("{}:{tools}{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default())
}

/// Where `scripts/setup.sh` keeps the Go test tools it builds (crictl),
/// outside the clone, so they are built once per machine.
pub const TOOLS_DIR_ENV: &str = "WASMBOX_TOOLS_DIR";

/// A Go tool `scripts/setup.sh` builds: `$WASMBOX_TOOLS_DIR/bin/NAME` if
/// there, else PATH's.
pub fn go_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os(TOOLS_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| "/var/cache/wasmbox-tools".into());
    let built = dir.join("bin").join(name);
    if built.exists() {
        built
    } else {
        PathBuf::from(name)
    }
}

/// crictl (see [`go_tool`]).
pub fn crictl_bin() -> PathBuf {
    go_tool("crictl")
}

/// The sandbox image of a CRI-enabled containerd (tests import it: with
/// the `wasmbox` handler the shim runs the pause container itself).
pub const PAUSE_IMAGE: &str = "docker.io/library/wasmbox-test-pause:latest";

/// The CRI part of containerd's config (version 2, which 2.x migrates):
/// handlers `runc` and `wasmbox` (the default, as a node without an API
/// server's RuntimeClasses needs; passing our and crun's annotations), a
/// bridge network with a /24 of 10.231.0.0/16 per test process.
fn cri_config(dir: &Path, bridge: &str) -> Result<String> {
    let cni_bin = ["/usr/lib/cni", "/opt/cni/bin"]
        .into_iter()
        .find(|d| Path::new(d).join("bridge").exists())
        .context("no CNI bridge plugin in /usr/lib/cni (Debian package containernetworking-plugins)")?;
    let net_d = dir.join("net.d");
    std::fs::create_dir_all(&net_d)?;
    let subnet = format!("10.231.{}.0/24", std::process::id() % 250);
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "wasmbox-test",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": dir.join("ipam")},
        }],
    });
    std::fs::write(net_d.join("10-wasmbox-test.conflist"), serde_json::to_vec_pretty(&conflist)?)?;
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    let passed = "[\"wasmbox.io/*\", \"module.wasm.image/*\", \"run.oci.handler\"]";
    Ok(format!(
        "[{cri}]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  netns_mounts_under_state_dir = true\n\
         # Lowering an OOM score needs CAP_SYS_RESOURCE, which test machines may lack.\n\
         restrict_oom_score_adj = true\n\
         [{cri}.registry]\n  config_path = \"{certs}\"\n\
         [{cri}.cni]\n  bin_dir = \"{cni_bin}\"\n  conf_dir = \"{net}\"\n\
         [{cri}.containerd]\n  default_runtime_name = \"wasmbox\"\n\
         [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [{cri}.containerd.runtimes.wasmbox]\n  runtime_type = \"{RUNTIME}\"\n\
         pod_annotations = {passed}\n  container_annotations = {passed}\n",
        net = net_d.display(),
        certs = dir.join("certs.d").display(),
    ))
}

/// A process's state letter, parent and command line, from /proc.
pub fn describe_process(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let mut f = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace();
    let (state, ppid) = (f.next().unwrap_or("?"), f.next().unwrap_or("?"));
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    format!("state {state} ppid {ppid}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
}

/// (pid, command line with spaces) of every process.
pub fn processes() -> Vec<(i32, String)> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec![] };
    rd.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
    })
    .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let _ = child.wait();
        // A frozen (paused) process cannot die: thaw what this run paused.
        let frozen = std::fs::read_dir(format!("/sys/fs/cgroup/freezer/{}", self.namespace));
        for d in frozen.into_iter().flatten().flatten() {
            let _ = std::fs::write(d.path().join("freezer.state"), "THAWED");
        }
        // Shims outlive containerd by design; end ours and their instances.
        let sock = self.sock.display().to_string();
        let dir = self.dir.display().to_string();
        for (pid, cmd) in processes() {
            if (cmd.contains(SHIM) && cmd.contains(&sock)) || cmd.contains(&dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                if let Some(s) = cmd.split_whitespace().skip_while(|a| *a != "-socket").nth(1) {
                    let _ = std::fs::remove_file(s.trim_start_matches("unix://"));
                }
            }
        }
        // A container whose shim is gone keeps running (as under runc's
        // shim): after a failed case, end the processes of this
        // containerd's containers (its task bundles name them) and remove
        // their cgroups.
        let bundles = self.dir.join(format!("state/io.containerd.runtime.v2.task/{}", self.namespace));
        let ids: Vec<std::ffi::OsString> =
            std::fs::read_dir(bundles).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
        let hierarchies: Vec<PathBuf> =
            std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().map(|e| e.path()).collect();
        let namespace = self.namespace;
        let cgroups: Vec<PathBuf> = ids
            .iter()
            .flat_map(|id| hierarchies.iter().map(move |h| h.join(namespace).join(id)))
            .filter(|c| c.is_dir())
            .collect();
        for c in &cgroups {
            let procs = std::fs::read_to_string(c.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for c in &cgroups {
            for _ in 0..50 {
                if std::fs::remove_dir(c).is_ok() || !c.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(bridge) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", bridge]).stderr(Stdio::null()).status();
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private registry (Debian's `docker-registry`, the distribution
/// project's) on a free loopback port, storing under a temporary
/// directory; stopped when dropped.
pub struct Registry {
    child: Child,
    pub addr: String,
    dir: PathBuf,
    /// The CA that signed its certificate, when it serves HTTPS.
    pub ca: Option<PathBuf>,
    token: Option<TokenServer>,
}

/// How a secure test registry asks who is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryAuth {
    /// Basic authentication against an htpasswd file (bcrypt).
    Basic,
    /// The distribution spec's token flow: a challenge naming a token
    /// service ([`TokenServer`]), whose signed tokens the registry checks.
    Token,
}

/// The user and password the secure registries accept.
pub const REGISTRY_USER: &str = "wasmbox-tester";
pub const REGISTRY_PASSWORD: &str = "pa55:word";

fn openssl(args: &[&str], dir: &Path) -> Result<Vec<u8>> {
    let o = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
    ensure!(o.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
    Ok(o.stdout)
}

impl Registry {
    /// An open registry over plain HTTP.
    pub fn start() -> Result<Registry> {
        Self::launch(None)
    }

    /// A registry over HTTPS (its certificate signed by a CA of the
    /// test's, [`Registry::ca`]) that wants `auth`.
    pub fn start_secure(auth: RegistryAuth) -> Result<Registry> {
        Self::launch(Some(auth))
    }

    fn launch(secure: Option<RegistryAuth>) -> Result<Registry> {
        let bin = ["/usr/bin/docker-registry", "/usr/bin/registry"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("docker-registry not installed (scripts/setup.sh installs it)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("wasmbox-registry-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        let (mut ca, mut token) = (None, None);
        if let Some(auth) = secure {
            // A CA (RSA: it signs the tokens too) and a server certificate
            // for 127.0.0.1 it signed.
            openssl(
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=wasmbox test CA",
                ],
                &dir,
            )?;
            openssl(
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
                &dir,
            )?;
            std::fs::write(
                dir.join("server.ext"),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            )?;
            openssl(
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    "server.pem",
                    "-days",
                    "2",
                    "-extfile",
                    "server.ext",
                ],
                &dir,
            )?;
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            );
            match auth {
                RegistryAuth::Basic => {
                    let o = Command::new("htpasswd")
                        .args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD])
                        .output()
                        .context("htpasswd (apache2-utils; scripts/setup.sh installs it)")?;
                    ensure!(o.status.success(), "htpasswd: {}", String::from_utf8_lossy(&o.stderr));
                    std::fs::write(dir.join("htpasswd"), o.stdout)?;
                    config += &format!(
                        "auth:\n  htpasswd:\n    realm: wasmbox-test\n    path: {}\n",
                        dir.join("htpasswd").display()
                    );
                }
                RegistryAuth::Token => {
                    let server = TokenServer::start(&dir)?;
                    config += &format!(
                        "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                        server.addr,
                        dir.join("ca.pem").display()
                    );
                    token = Some(server);
                }
            }
            ca = Some(dir.join("ca.pem"));
        }
        let config_file = dir.join("config.yml");
        std::fs::write(&config_file, config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let addr = format!("127.0.0.1:{port}");
        let reg = Registry { child, addr, dir, ca, token };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("the registry never listened: see {}", reg.dir.join("registry.log").display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }

    /// Tells `c` (containerd with CRI) to trust the registry's CA: a
    /// `hosts.toml` for its address under the `config_path` the CRI
    /// plugin was given.
    pub fn trust_in(&self, c: &Containerd) -> Result<()> {
        let ca = self.ca.as_ref().context("the registry serves plain HTTP")?;
        let hosts = c.dir.join("certs.d").join(&self.addr);
        std::fs::create_dir_all(&hosts)?;
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"https://{a}\"\n[host.\"https://{a}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n",
                a = self.addr,
                ca = ca.display()
            ),
        )?;
        Ok(())
    }

    /// How many tokens the registry's token service has issued.
    pub fn tokens_issued(&self) -> usize {
        self.token.as_ref().map_or(0, |t| t.issued.load(std::sync::atomic::Ordering::SeqCst))
    }
}

const TOKEN_SERVICE: &str = "wasmbox-test-registry";
const TOKEN_ISSUER: &str = "wasmbox-test-token-service";

/// A token service as the distribution spec describes one: GET
/// `/token?service=S&scope=repository:NAME:ACTIONS` with Basic
/// credentials earns a JWT (RS256, signed with the test CA's key, the CA
/// in `x5c`) granting those scopes; anything else gets 401. It stops with
/// the test process.
struct TokenServer {
    addr: String,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenServer {
    fn start(dir: &Path) -> Result<TokenServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (dir, count) = (dir.to_path_buf(), issued.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = Self::answer(conn, &dir, &count);
            }
        });
        Ok(TokenServer { addr, issued })
    }

    fn answer(mut conn: std::net::TcpStream, dir: &Path, issued: &std::sync::atomic::AtomicUsize) -> Result<()> {
        use base64::Engine;
        use std::io::{Read, Write};
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte)? == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let mut lines = head.lines();
        let request: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let authorization = header("authorization");
        // The body is read (and ignored): closing on unread data would
        // reset the connection before the client reads the reply.
        let length: u64 = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        std::io::copy(&mut (&mut conn).take(length), &mut std::io::sink())?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let wanted = format!("Basic {}", b64.encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")));
        let reply = |conn: &mut std::net::TcpStream, status: &str, body: &str| {
            write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        // POST (OAuth2's password grant) is not offered: clients fall back to GET.
        if request.first() != Some(&"GET") {
            return Ok(reply(&mut conn, "404 Not Found", "{}")?);
        }
        if authorization.as_deref() != Some(wanted.as_str()) {
            return Ok(reply(&mut conn, "401 Unauthorized", r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#)?);
        }
        let query = request.get(1).and_then(|t| t.split_once('?')).map_or("", |(_, q)| q);
        let mut access = Vec::new();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            let v = percent_decode(v);
            if k == "scope" {
                if let (Some((kind, rest)), Some((_, actions))) = (v.split_once(':'), v.rsplit_once(':')) {
                    let name = rest.rsplit_once(':').map_or(rest, |(n, _)| n);
                    let actions: Vec<&str> = actions.split(',').collect();
                    access.push(serde_json::json!({"type": kind, "name": name, "actions": actions}));
                }
            }
        }
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let pem = std::fs::read_to_string(dir.join("ca.pem"))?;
        let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let jose = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [der]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": REGISTRY_USER, "aud": TOKEN_SERVICE,
            "exp": now + 600, "nbf": now - 10, "iat": now, "jti": format!("wasmbox-{now}-{}", access.len()),
            "access": access,
        });
        let signed = format!("{}.{}", url.encode(jose.to_string()), url.encode(claims.to_string()));
        let input = dir.join(format!("token-{}.txt", std::process::id()));
        std::fs::write(&input, &signed)?;
        let signature = openssl(&["dgst", "-sha256", "-sign", "ca.key", input.to_str().context("path")?], dir)?;
        let token = format!("{signed}.{}", url.encode(signature));
        issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(reply(&mut conn, "200 OK", &serde_json::json!({"token": token, "expires_in": 600}).to_string())?)
    }
}

fn percent_decode(text: &str) -> String {
    let mut out = Vec::new();
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        let hex = tail.get(..2).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                rest = &tail[2..];
                continue;
            }
            (b'+', _) => out.push(b' '),
            _ => out.push(b),
        }
        rest = tail;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Appends `n` in unsigned LEB128, as wasm encodes sizes and indices.
pub fn uleb(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n == 0 { b } else { b | 0x80 });
        if n == 0 {
            break;
        }
    }
}
