//! A private, real containerd for tests and benchmarks: started in a
//! temporary root with wasmbox's shim first on its PATH, driven with `ctr`,
//! and torn down with everything it left (shims, instances, mounts).

pub mod bench;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wasmbox_core::image::{self, ImageSpec};

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

    /// Starts containerd in a fresh directory under the system temp dir.
    pub fn start(bin_dir: &Path) -> Result<Containerd> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wasmbox-ctrd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\noom_score = {OOM_SCORE}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n[debug]\n  level = \"info\"\n",
            d = dir.display(),
            s = sock.display()
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let child = Self::spawn(&dir, bin_dir)?;
        let c = Containerd {
            dir,
            sock,
            bin_dir: bin_dir.to_path_buf(),
            child: std::sync::Mutex::new(child),
            ids: AtomicUsize::new(0),
        };
        c.wait_ready()?;
        Ok(c)
    }

    fn spawn(dir: &Path, bin_dir: &Path) -> Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("containerd.log"))?;
        // Our shim first, then the runc shim of the containerd under test.
        let tools = tools_dir().map(|d| format!("{}:", d.display())).unwrap_or_default();
        let path = format!("{}:{tools}{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
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
        cmd.arg("--address").arg(&self.sock).args(args);
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

    /// `ctr` started in the background (a foreground `ctr run` to kill).
    pub fn ctr_spawn(&self, args: &[&str]) -> Result<Child> {
        Ok(self.ctr_cmd(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?)
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
        let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (Debian package busybox-static)")?;
        let list = Command::new("/bin/busybox").arg("--list").output().context("busybox --list")?;
        let mut files = vec![("/bin/busybox".to_string(), busybox, 0o755)];
        for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
            files.push((format!("/bin/{applet}"), b"busybox".to_vec(), image::S_IFLNK | 0o777));
        }
        let tar = self.dir.join(format!("image-{}.tar", self.ids.fetch_add(1, Ordering::SeqCst)));
        let entrypoint: Vec<String> = entrypoint.iter().map(|s| s.to_string()).collect();
        image::build_raw(
            name,
            &files,
            &entrypoint,
            &[],
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

    /// Pids of instance processes whose bundle lies under this containerd's state.
    pub fn instances(&self) -> Vec<i32> {
        let state = self.dir.join("state").display().to_string();
        processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(wasmbox_core::instance::INSTANCE_ARG) && cmd.contains(&state))
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
        for d in std::fs::read_dir("/sys/fs/cgroup/freezer/default").into_iter().flatten().flatten() {
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
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
