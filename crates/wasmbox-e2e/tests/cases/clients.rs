//! The clients people run containers with, beside ctr, against the tier's
//! containerd: nerdctl (v2.0.5, built by setup.sh from the Go module proxy)
//! and Docker (Debian 13's docker.io 26.1 with its containerd image store,
//! unpacked by setup.sh). Each runs a `wasi/wasm` image through `--runtime
//! io.containerd.wasmbox.v1`: in the foreground with the program's exit
//! code, detached (`-d`, with the client's own log driver: nerdctl's is a
//! `binary://` logger), `logs`, `ps`, `rm -f`, and a bad entrypoint's error.

use super::{show, text, Env, RUNTIME};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/library/wasmbox-clients:v1";
const LIMIT: Duration = Duration::from_secs(60);

/// A `wasi/wasm` rootfs image (as `docker buildx --platform wasi/wasm`
/// builds them): the test guest at /hello.wasm, Cmd `hello`.
fn image_tar(env: &Env) -> Result<PathBuf> {
    let tar = env.c.dir.join("clients-image.tar");
    if !tar.exists() {
        let spec = wasmbox_image::ImageSpec {
            name: IMAGE.into(),
            wasm: test_guests::P1.into(),
            wasm_dest: Some("/hello.wasm".into()),
            args: vec!["hello".into()],
            wasi_platform: true,
            ..Default::default()
        };
        wasmbox_image::build(&spec, std::io::BufWriter::new(std::fs::File::create(&tar)?))?;
    }
    Ok(tar)
}

fn tool(name: &str) -> Result<PathBuf> {
    let p = wasmbox_e2e::go_tool(name);
    ensure!(p.is_absolute(), "{name} is not in the tools cache (scripts/setup.sh provides it)");
    Ok(p)
}

fn bounded(mut cmd: Command) -> Result<Output> {
    let what = format!("{cmd:?}");
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    wasmbox_e2e::wait_bounded(child, LIMIT).with_context(|| what)
}

fn expect(out: &Output, code: i32, needles: &[&str]) -> Result<()> {
    ensure!(out.status.code() == Some(code), "expected exit {code}:\n{}", show(out));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for n in needles {
        ensure!(all.contains(n), "output lacks {n:?}:\n{}", show(out));
    }
    Ok(())
}

/// Polls `f` for ten seconds; the last output on failure.
fn until(what: &str, f: impl Fn() -> Result<(bool, String)>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (done, last) = f()?;
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: still {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the parent cgroup `name` a client put its containers under
/// (in each v1 hierarchy, or the v2 root), once it is empty.
fn remove_parent_cgroup(name: &str) {
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(name));
    for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(h.path().join(name));
    }
}

/// `rm -f` of every container the client still lists.
fn remove_all(cli: &dyn Fn(&[&str]) -> Result<Output>) {
    if let Ok(o) = cli(&["ps", "-aq"]) {
        for id in text(&o.stdout).split_whitespace() {
            let _ = cli(&["rm", "-f", id]);
        }
    }
}

/// The steps both clients share; `cli` runs the client with arguments.
fn run_steps(cli: &dyn Fn(&[&str]) -> Result<Output>, run_flags: &[&str], prefix: &str) -> Result<()> {
    let run = |extra: &[&str], args: &[&str]| {
        let mut a = vec!["run"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--runtime", RUNTIME, "--platform", "wasi/wasm"]);
        a.extend_from_slice(run_flags);
        a.push(IMAGE);
        a.extend_from_slice(args);
        cli(&a)
    };
    // Foreground: output and exit code.
    let out = run(&["--rm"], &[])?;
    expect(&out, 0, &["hello from wasm", "args: [\"hello\"]", "hello on stderr"])?;
    expect(&run(&["--rm"], &["exit", "42"])?, 42, &[])?;
    // Detached: ps, logs, rm -f of a running container.
    let sleeper = format!("{prefix}-sleeper");
    expect(&run(&["-d", "--name", &sleeper], &["sleep", "30"])?, 0, &[])?;
    expect(&cli(&["ps"])?, 0, &[&sleeper, "Up"])?;
    until("logs of the sleeper", || {
        let o = cli(&["logs", &sleeper])?;
        Ok((text(&o.stdout).contains("sleeping"), show(&o)))
    })?;
    expect(&cli(&["rm", "-f", &sleeper])?, 0, &[])?;
    let ps = cli(&["ps", "-a"])?;
    ensure!(!text(&ps.stdout).contains(&sleeper), "removed container still listed:\n{}", show(&ps));
    // A detached run that ends: its logs, stdout and stderr, afterwards.
    let done = format!("{prefix}-done");
    expect(&run(&["-d", "--name", &done], &[])?, 0, &[])?;
    until("the detached run to exit", || {
        let o = cli(&["ps", "-a", "--filter", &format!("name={done}")])?;
        Ok((text(&o.stdout).contains("Exited"), show(&o)))
    })?;
    until("logs of the finished run", || {
        let o = cli(&["logs", &done])?;
        let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
        Ok((all.contains("hello from wasm") && all.contains("hello on stderr"), show(&o)))
    })?;
    expect(&cli(&["rm", &done])?, 0, &[])?;
    // A bad entrypoint: the client shows the shim's reason.
    let out = run(&["--rm", "--entrypoint", "/nothere.wasm"], &[])?;
    ensure!(!out.status.success(), "a missing entrypoint ran:\n{}", show(&out));
    let err = text(&out.stderr);
    ensure!(err.contains("/nothere.wasm") && err.contains("not found"), "{}", show(&out));
    Ok(())
}

pub fn nerdctl_run(env: &Env) -> Result<()> {
    let bin = tool("nerdctl")?;
    let ns = "wasmbox-nerdctl";
    let root = env.c.dir.join("nerdctl");
    let cli = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.arg("--address").arg(&env.c.sock).args(["--namespace", ns]).arg("--data-root").arg(&root).args(args);
        bounded(c)
    };
    expect(&cli(&["load", "-i", image_tar(env)?.to_str().unwrap()])?, 0, &["Loaded image"])?;
    let result = run_steps(&cli, &["--net", "none"], "wb-nerdctl");
    remove_all(&cli);
    remove_parent_cgroup(ns);
    result
}

/// dockerd on the tier's containerd, stopped (and its cgroup parent
/// removed) when dropped.
struct Dockerd {
    child: std::process::Child,
    host: String,
    dir: PathBuf,
}

impl Dockerd {
    fn start(env: &Env) -> Result<Dockerd> {
        let dir = env.c.dir.join("docker");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("daemon.json"), r#"{"features":{"containerd-snapshotter":true}}"#)?;
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new(tool("dockerd")?)
            .arg("--containerd")
            .arg(&env.c.sock)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false", "--userland-proxy=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let d = Dockerd { child, host: format!("unix://{}", dir.join("docker.sock").display()), dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.cli(&["version"])?.status.success() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                bail!(
                    "dockerd did not come up; the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(d)
    }

    fn cli(&self, args: &[&str]) -> Result<Output> {
        let mut c = Command::new(tool("docker")?);
        c.args(["-H", &self.host]).args(args);
        bounded(c)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_parent_cgroup("docker");
    }
}

pub fn docker_run(env: &Env) -> Result<()> {
    let d = Dockerd::start(env)?;
    let cli = |args: &[&str]| d.cli(args);
    expect(&cli(&["load", "-i", image_tar(env)?.to_str().unwrap()])?, 0, &["Loaded image"])?;
    let result = run_steps(&cli, &[], "wb-docker");
    // Docker's own view of a wasm container's memory: its cgroup.
    let result = result.and_then(|()| {
        let name = "wb-docker-stats";
        let run = ["run", "-d", "--name", name, "--runtime", RUNTIME, "--platform", "wasi/wasm", IMAGE];
        expect(&cli(&[&run[..], &["sleep", "30"]].concat())?, 0, &[])?;
        let stats = cli(&["stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", name])?;
        expect(&stats, 0, &[name, "MiB"])?;
        expect(&cli(&["rm", "-f", name])?, 0, &[])
    });
    remove_all(&cli);
    drop(d);
    result
}
