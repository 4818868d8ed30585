//! `wasmbox node install` on a node whose containerd has never heard of
//! wasmbox: a containerd of the version under test with CRI on, in a
//! temporary root, started (and restarted, by `--restart-cmd`) by a small
//! script, with no wasmbox shim on its PATH. After the install, `ctr run`
//! of a wasm image and a CRI pod with handler `wasmbox` run, a container
//! started before the restart still runs, `wasmbox node check` passes;
//! uninstall refuses while a wasm container runs from the shim, then
//! restores the configuration byte for byte. And every fixture
//! of wasmbox-node, installed, is read by this containerd as it should be.

use super::{show, text, Env};
use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use wasmbox_e2e::{tool, RUNTIME};

const WASM_IMAGE: &str = "docker.io/library/wasmbox-test-node-wasm:latest";
/// busybox sleeping: the sandbox image, and the Linux container that must
/// outlive the restarts.
const SLEEPER: &str = "docker.io/library/wasmbox-test-node-sleeper:latest";
const RUNC: &str = "io.containerd.runc.v2";

/// The containerd binary under test, as a path.
fn containerd_bin() -> Result<PathBuf> {
    let t = tool("containerd");
    if t.components().count() > 1 {
        return Ok(t);
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("containerd"))
        .find(|p| p.is_file())
        .context("no containerd on PATH")
}

fn major() -> u32 {
    let v = wasmbox_e2e::containerd_version();
    v.split_whitespace().nth(2).and_then(|n| n.split('.').next()).and_then(|m| m.parse().ok()).unwrap_or(1)
}

/// `wasmbox ARGS...` (the one built beside this test).
fn wasmbox(args: &[&str]) -> Result<Output> {
    let bin = wasmbox_e2e::bin_dir()?.join("wasmbox");
    let child =
        Command::new(bin).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    wasmbox_e2e::wait_bounded(child, Duration::from_secs(180)).with_context(|| format!("wasmbox {}", args.join(" ")))
}

fn succeeded(out: Output, what: &str) -> Result<String> {
    ensure!(out.status.success(), "{what}:\n{}", show(&out));
    Ok(text(&out.stdout))
}

/// The test node: its directory, configuration, bin dir on containerd's
/// PATH, record and restart script.
struct Node {
    dir: PathBuf,
    sock: PathBuf,
    config: PathBuf,
    bin: PathBuf,
    state: PathBuf,
    restart: PathBuf,
    /// containerd's PATH: the node's bin dir, the runc shim of the
    /// containerd under test, and the test's PATH without any directory
    /// holding a wasmbox shim.
    path: String,
}

impl Node {
    fn new(env: &Env) -> Result<Node> {
        let dir = env.c.dir.join("node-install");
        let _ = std::fs::remove_dir_all(&dir);
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(dir.join("net.d"))?;
        let sock = dir.join("containerd.sock");
        let d = dir.display();
        let s = sock.display();
        let oom = wasmbox_e2e::OOM_SCORE;
        // What the CRI tier gives its containerd, in the form this
        // containerd writes itself; no runtimes listed, no wasmbox.
        let cri = if major() >= 2 {
            format!(
                "[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = '{SLEEPER}'\n\n\
                 [plugins.'io.containerd.cri.v1.runtime']\n  \
                 # Lowering an OOM score needs CAP_SYS_RESOURCE, which this machine lacks.\n  \
                 restrict_oom_score_adj = true\n  \
                 [plugins.'io.containerd.cri.v1.runtime'.cni]\n    bin_dirs = ['/usr/lib/cni']\n    conf_dir = '{d}/net.d'\n"
            )
        } else {
            format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{SLEEPER}\"\n  \
                 # Lowering an OOM score needs CAP_SYS_RESOURCE, which this machine lacks.\n  \
                 restrict_oom_score_adj = true\n  \
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"/usr/lib/cni\"\n    conf_dir = \"{d}/net.d\"\n"
            )
        };
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "# A test node's containerd: CRI on, and no wasmbox yet.\nversion = {v}\nroot = \"{d}/root\"\n\
                 state = \"{d}/state\"\noom_score = {oom}\n\n[grpc]\n  address = \"{s}\"\n\n[ttrpc]\n  address = \"{s}.ttrpc\"\n\n\
                 [debug]\n  level = \"info\"\n\n\
                 # containerd 2.x serves NRI on a fixed host path unless told otherwise.\n\
                 [plugins.\"io.containerd.nri.v1.nri\"]\n  socket_path = \"{d}/nri.sock\"\n\n{cri}",
                v = if major() >= 2 { 3 } else { 2 },
            ),
        )?;
        let tools = std::env::var_os(wasmbox_e2e::CONTAINERD_DIR_ENV).map(PathBuf::from);
        let path: Vec<String> = std::iter::once(bin.display().to_string())
            .chain(tools.map(|t| t.display().to_string()))
            .chain(
                std::env::var("PATH")
                    .unwrap_or_default()
                    .split(':')
                    .filter(|p| !p.is_empty() && !Path::new(p).join(wasmbox_e2e::SHIM).exists())
                    .map(str::to_string),
            )
            .collect();
        let path = path.join(":");
        let restart = dir.join("restart.sh");
        std::fs::write(
            &restart,
            format!(
                "#!/bin/sh\n# Stops this test node's containerd, if it runs, and starts it again with the same configuration.\n\
                 d='{d}'\n\
                 if [ -f \"$d/containerd.pid\" ]; then\n  pid=$(cat \"$d/containerd.pid\")\n  kill -TERM \"$pid\" 2>/dev/null\n  n=0\n  \
                 while [ -d \"/proc/$pid\" ] && ! grep -q '^State:.*Z' \"/proc/$pid/status\" 2>/dev/null; do\n    \
                 n=$((n+1)); [ $n -lt 600 ] || {{ echo \"containerd $pid did not stop\" >&2; exit 1; }}\n    sleep 0.05\n  done\nfi\n\
                 PATH='{path}' setsid '{containerd}' --config \"$d/config.toml\" </dev/null >>\"$d/containerd.log\" 2>&1 &\n\
                 echo $! >\"$d/containerd.pid\"\n",
                containerd = containerd_bin()?.display(),
            ),
        )?;
        let node = Node { state: dir.join("install.json"), dir, sock, config, bin, restart, path };
        succeeded(Command::new("sh").arg(&node.restart).output()?, "starting containerd")?;
        node.wait_answers()?;
        Ok(node)
    }

    fn wait_answers(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctr(&["version"])?.status.success() {
            ensure!(
                Instant::now() < deadline,
                "containerd did not come up: see {}",
                self.dir.join("containerd.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn ctr(&self, args: &[&str]) -> Result<Output> {
        let child = Command::new(tool("ctr"))
            .arg("--address")
            .arg(&self.sock)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        wasmbox_e2e::wait_ctr(child).with_context(|| format!("ctr {}", args.join(" ")))
    }

    fn crictl(&self, args: &[&str]) -> Result<String> {
        let endpoint = format!("unix://{}", self.sock.display());
        let child = Command::new(wasmbox_e2e::crictl_bin())
            .args(["--runtime-endpoint", &endpoint, "--image-endpoint", &endpoint, "--timeout", "60s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("crictl (scripts/setup-tests.sh builds it)")?;
        let out = wasmbox_e2e::wait_ctr(child)?;
        Ok(succeeded(out, &format!("crictl {}", args.join(" ")))?.trim().to_string())
    }

    fn status(&self, id: &str) -> Result<Option<String>> {
        let out = self.ctr(&["task", "ls"])?;
        Ok(text(&out.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(2).unwrap_or(&"").to_string())
        }))
    }

    fn wait_status(&self, id: &str, want: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.status(id)?.as_deref() != Some(want) {
            ensure!(Instant::now() < deadline, "task {id} never became {want} (now {:?})", self.status(id)?);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn import(&self, tar: &Path) -> Result<()> {
        succeeded(self.ctr(&["image", "import", &tar.display().to_string()])?, "ctr image import").map(|_| ())
    }

    /// `wasmbox node install|uninstall` for this node, restarting its
    /// containerd with the script.
    fn node_cmd(&self, verb: &str, extra: &[&str]) -> Result<Output> {
        let restart = format!("sh {}", self.restart.display());
        let mut args =
            vec!["node", verb, "--config", self.config.to_str().unwrap(), "--state", self.state.to_str().unwrap()];
        let containerd = containerd_bin()?.display().to_string();
        args.extend(["--containerd", &containerd, "--restart-cmd", &restart]);
        let bin = self.bin.display().to_string();
        if verb == "install" {
            args.extend(["--bin-dir", &bin]);
        }
        args.extend_from_slice(extra);
        wasmbox(&args)
    }

    /// Ends a task (any state) and its container.
    fn remove(&self, id: &str) {
        if self.status(id).ok().flatten().is_some() {
            let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
            let _ = self.wait_status(id, "STOPPED");
            let _ = self.ctr(&["task", "rm", "-f", id]);
        }
        let _ = self.ctr(&["container", "rm", id]);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for id in ["before", "during", "wasm-after"] {
            self.remove(id);
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("containerd.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(10);
                while Path::new(&format!("/proc/{pid}")).exists()
                    && !std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default().contains("(zombie)")
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        // Whatever a failed run left: shims and containers of this node.
        let (dir, sock) = (self.dir.display().to_string(), self.sock.display().to_string());
        for (pid, cmd) in wasmbox_e2e::processes() {
            if cmd.contains(&dir) || cmd.contains(&sock) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn images(node: &Node) -> Result<()> {
    let wasm = node.dir.join("wasm.tar");
    wasmbox_image::build(
        &wasmbox_image::ImageSpec {
            name: WASM_IMAGE.into(),
            wasm: test_guests::P1.into(),
            wasm_dest: Some("/app.wasm".into()),
            args: vec!["hello".into()],
            ..Default::default()
        },
        std::io::BufWriter::new(std::fs::File::create(&wasm)?),
    )?;
    node.import(&wasm)?;
    let sleeper = node.dir.join("sleeper.tar");
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (Debian package busybox-static)")?;
    wasmbox_image::build_raw(
        SLEEPER,
        &[("/bin/busybox".to_string(), busybox, 0o755)],
        &["/bin/busybox".to_string(), "sleep".to_string(), "2147483647".to_string()],
        &[],
        &["PATH=/bin".to_string()],
        std::io::BufWriter::new(std::fs::File::create(&sleeper)?),
    )?;
    node.import(&sleeper)
}

/// A host-network pod with handler `handler`, and in it (when `image` is
/// given) a container run to its end: its log.
fn pod(node: &Node, name: &str, handler: &str, app: Option<&[&str]>) -> Result<String> {
    let logs = node.dir.join("pods").join(name);
    std::fs::create_dir_all(&logs)?;
    let config = node.dir.join(format!("pod-{name}.json"));
    std::fs::write(
        &config,
        serde_json::to_vec(&json!({
            "metadata": {"name": name, "namespace": "wasmbox-test", "uid": format!("uid-{name}"), "attempt": 0},
            "log_directory": logs,
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
        }))?,
    )?;
    let config = config.display().to_string();
    let id = node.crictl(&["runp", "--runtime", handler, &config])?;
    let result = (|| -> Result<String> {
        let Some(command) = app else { return Ok(String::new()) };
        let ctr = node.dir.join(format!("ctr-{name}.json"));
        std::fs::write(
            &ctr,
            serde_json::to_vec(&json!({
                "metadata": {"name": "app", "attempt": 0},
                "image": {"image": WASM_IMAGE},
                "command": command,
                "log_path": "app-0.log",
                "linux": {},
            }))?,
        )?;
        let cid = node.crictl(&["create", &id, &ctr.display().to_string(), &config])?;
        node.crictl(&["start", &cid])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s: serde_json::Value = serde_json::from_str(&node.crictl(&["inspect", "-o", "json", &cid])?)?;
            if s["status"]["state"] == "CONTAINER_EXITED" {
                ensure!(s["status"]["exitCode"] == 0, "the pod's wasm container failed: {}", s["status"]);
                break;
            }
            ensure!(Instant::now() < deadline, "the pod's wasm container never exited: {}", s["status"]);
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(std::fs::read_to_string(logs.join("app-0.log")).unwrap_or_default())
    })();
    let _ = node.crictl(&["stopp", &id]);
    let _ = node.crictl(&["rmp", &id]);
    result
}

fn running(node: &Node, id: &str, when: &str) -> Result<()> {
    let log = std::fs::read_to_string(node.dir.join("containerd.log")).unwrap_or_default();
    let about: Vec<&str> = log.lines().filter(|l| l.contains(id) || l.contains("level=error")).collect();
    ensure!(
        node.status(id)?.as_deref() == Some("RUNNING"),
        "{id} is {:?} {when}; containerd's log of it:\n{}",
        node.status(id)?,
        about.join("\n")
    );
    Ok(())
}

pub fn node_install(env: &Env) -> Result<()> {
    let node = Node::new(env)?;
    images(&node)?;
    let original = std::fs::read(&node.config)?;
    let wasm_run = |id: &str| node.ctr(&["run", "--rm", "--runtime", RUNTIME, WASM_IMAGE, id, "/app.wasm", "hello"]);

    // No shim on containerd's PATH: no wasm.
    let out = wasm_run("wasm-before")?;
    ensure!(!out.status.success(), "a wasm container ran before the install:\n{}", show(&out));
    let _ = node.ctr(&["container", "rm", "wasm-before"]);
    succeeded(node.ctr(&["run", "-d", "--runtime", RUNC, SLEEPER, "before"])?, "ctr run (runc)")?;
    node.wait_status("before", "RUNNING")?;

    // The dry run changes nothing.
    let said = succeeded(node.node_cmd("install", &["--dry-run"])?, "install --dry-run")?;
    ensure!(
        said.contains("would write") && said.contains("runtimes.wasmbox]") && said.contains("would copy"),
        "{said}"
    );
    ensure!(std::fs::read(&node.config)? == original && !node.state.exists(), "the dry run changed something");
    ensure!(!node.bin.join(wasmbox_e2e::SHIM).exists(), "the dry run copied the shim");

    let said = succeeded(node.node_cmd("install", &[])?, "install")?;
    ensure!(said.contains("restarted containerd") && said.contains("answers on"), "{said}");
    let installed = std::fs::read_to_string(&node.config)?;
    ensure!(installed.starts_with("# A test node's containerd"), "comment lost:\n{installed}");
    let shim = std::fs::read(node.bin.join(wasmbox_e2e::SHIM))?;
    ensure!(shim == std::fs::read(wasmbox_e2e::bin_dir()?.join(wasmbox_e2e::SHIM))?, "the installed shim differs");
    running(&node, "before", "after containerd restarted")?;

    let out = wasm_run("wasm-after")?;
    ensure!(
        out.status.success() && text(&out.stdout).contains("hello from wasm"),
        "ctr run after the install:\n{}",
        show(&out)
    );
    let log = pod(&node, "wasm-pod", "wasmbox", Some(&["/app.wasm", "hello"]))?;
    ensure!(log.contains("hello from wasm"), "the pod's log: {log}");
    // runc is still a handler (1.x drops its built-in one once runtimes are listed).
    pod(&node, "runc-pod", "runc", None)?;
    let check = wasmbox(&[
        "node",
        "check",
        "--containerd",
        &containerd_bin()?.display().to_string(),
        "--config",
        node.config.to_str().unwrap(),
        "--path",
        &node.path,
    ])?;
    let said = succeeded(check, "wasmbox node check after the install")?;
    ensure!(
        said.lines().any(|l| l.starts_with("ok   handler") && l.contains("wasmbox -> io.containerd.wasmbox.v1")),
        "{said}"
    );

    // Again: nothing changes, nothing restarts.
    let said = succeeded(node.node_cmd("install", &[])?, "install again")?;
    ensure!(said.contains("already") && said.contains("not restarted"), "{said}");
    ensure!(std::fs::read_to_string(&node.config)? == installed, "installing again changed the configuration");

    // While a wasm container runs, its shim program stays: containerd
    // needs it to take the container back when it restarts.
    succeeded(
        node.ctr(&["run", "-d", "--runtime", RUNTIME, WASM_IMAGE, "during", "/app.wasm", "sleep", "600"])?,
        "ctr run -d",
    )?;
    node.wait_status("during", "RUNNING")?;
    let out = node.node_cmd("uninstall", &[])?;
    let err = text(&out.stderr);
    ensure!(!out.status.success() && err.contains("--force") && err.contains("nothing was changed"), "{}", show(&out));
    ensure!(std::fs::read_to_string(&node.config)? == installed, "a refused uninstall changed the configuration");
    running(&node, "during", "after a refused uninstall")?;
    succeeded(node.ctr(&["task", "kill", "--signal", "SIGKILL", "during"])?, "task kill")?;
    node.wait_status("during", "STOPPED")?;
    succeeded(node.ctr(&["task", "rm", "during"])?, "task rm")?;
    succeeded(node.ctr(&["container", "rm", "during"])?, "container rm")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = node.node_cmd("uninstall", &[])?;
        if out.status.success() {
            let said = text(&out.stdout);
            ensure!(said.contains("byte for byte") && said.contains("restarted containerd"), "{said}");
            break;
        }
        // The pod's shim may take a moment to go.
        ensure!(Instant::now() < deadline && text(&out.stderr).contains("--force"), "uninstall:\n{}", show(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        std::fs::read(&node.config)? == original,
        "the configuration is not the original:\n{}",
        std::fs::read_to_string(&node.config)?
    );
    ensure!(
        !node.bin.join(wasmbox_e2e::SHIM).exists() && !node.state.exists(),
        "uninstall left the shim or the record"
    );
    let backups: Vec<_> = std::fs::read_dir(&node.dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("wasmbox-backup"))
        .collect();
    ensure!(backups.is_empty(), "backups left: {backups:?}");
    running(&node, "before", "after uninstall's restart")?;
    let out = wasm_run("wasm-gone")?;
    ensure!(!out.status.success(), "a wasm container ran after the uninstall:\n{}", show(&out));
    let _ = node.ctr(&["container", "rm", "wasm-gone"]);
    succeeded(node.ctr(&["task", "kill", "--signal", "SIGKILL", "before"])?, "task kill")?;
    node.wait_status("before", "STOPPED")?;
    succeeded(node.ctr(&["task", "rm", "before"])?, "task rm")?;
    succeeded(node.ctr(&["container", "rm", "before"])?, "container rm")?;
    Ok(())
}

/// Values MicroK8s puts in its template's placeholders.
fn microk8s_render(text: &str) -> String {
    text.replace("${SNAPSHOTTER}", "overlayfs")
        .replace("${RUNTIME_TYPE}", RUNC)
        .replace("${RUNTIME}", "runc")
        .replace("${SNAP_DATA}", "/var/snap/microk8s/current")
}

/// Every fixture of wasmbox-node this containerd reads (version-2 forms
/// everywhere, version 3 on 2.x), installed: the configuration containerd
/// resolves (`config dump`; k3s/RKE2 templates rendered on their base,
/// MicroK8s's placeholders filled) has the handler with our annotations,
/// a runc, and what the user had (the CRI section of an imports layout).
/// k0s merges its drop-ins itself, so its fixture is not among them.
pub fn node_install_layouts(env: &Env) -> Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasmbox-node/tests/fixtures");
    let v2 = [
        ("containerd-1.6.20", "config.toml"),
        ("containerd-1.7.24", "config.toml"),
        ("debian-12-package", "config.toml"),
        ("commented-v2", "config.toml"),
        ("imports-v2", "config.toml"),
        ("imports-v2-cri", "config.toml"),
        ("k3s-containerd-1.7", "agent/etc/containerd/config.toml"),
        ("microk8s", "containerd-template.toml"),
    ];
    let v3 = [
        ("containerd-2.1.9", "config.toml"),
        ("imports-v3", "config.toml"),
        ("k3s-containerd-2.0", "agent/etc/containerd/config.toml"),
        ("rke2", "agent/etc/containerd/config.toml"),
    ];
    let cases: Vec<(&str, &str)> = v2.into_iter().chain(if major() >= 2 { v3.to_vec() } else { Vec::new() }).collect();
    let containerd = containerd_bin()?.display().to_string();
    let root = env.c.dir.join("node-layouts");
    let mut failures = Vec::new();
    for (fixture, config) in cases {
        let dir = root.join(fixture);
        let _ = std::fs::remove_dir_all(&dir);
        copy_tree(&fixtures.join(fixture), &dir, &dir.display().to_string())?;
        let result = (|| -> Result<()> {
            let bin = root.join("bin");
            std::fs::create_dir_all(&bin)?;
            let cfg = dir.join(config);
            let state = root.join(format!("{fixture}.json"));
            let args = ["node", "install", "--config", cfg.to_str().unwrap(), "--bin-dir", bin.to_str().unwrap()];
            succeeded(
                wasmbox(&[&args[..], &["--state", state.to_str().unwrap(), "--containerd", &containerd]].concat())?,
                "install",
            )?;
            // What containerd itself reads.
            let read = if fixture.starts_with("k3s") || fixture == "rke2" {
                let d = cfg.parent().unwrap();
                let template = ["config-v3.toml.tmpl", "config.toml.tmpl"]
                    .map(|t| d.join(t))
                    .into_iter()
                    .find(|t| t.exists())
                    .context("no template written")?;
                let body = std::fs::read_to_string(&template)?;
                let (first, rest) = body.split_once('\n').unwrap_or((&body, ""));
                ensure!(first.trim() == "{{ template \"base\" . }}", "{}: first line {first:?}", template.display());
                let rendered = d.join("rendered.toml");
                std::fs::write(&rendered, format!("{}\n{rest}", std::fs::read_to_string(&cfg)?))?;
                rendered
            } else if fixture == "microk8s" {
                let rendered = dir.join("containerd.toml");
                std::fs::write(&rendered, microk8s_render(&std::fs::read_to_string(&cfg)?))?;
                rendered
            } else {
                cfg.clone()
            };
            let dump = Command::new(&containerd).arg("--config").arg(&read).args(["config", "dump"]).output()?;
            let dumped = succeeded(dump, "containerd config dump")?;
            let check = wasmbox(&["node", "check", "--containerd", &containerd, "--config", read.to_str().unwrap()])?;
            let said = text(&check.stdout);
            ensure!(
                said.lines()
                    .any(|l| l.starts_with("ok   handler") && l.contains("wasmbox -> io.containerd.wasmbox.v1")),
                "no handler:\n{said}"
            );
            ensure!(
                !said.lines().any(|l| l.starts_with("WARN annotations") || l.starts_with("FAIL default runtime")),
                "{said}"
            );
            ensure!(dumped.contains(".containerd.runtimes.runc]"), "runc is gone:\n{dumped}");
            if fixture.starts_with("imports-v2-cri") {
                ensure!(
                    dumped.contains("registry.example.com/infra/pause:3.9"),
                    "the main file's CRI settings are gone:\n{dumped}"
                );
            }
            succeeded(
                wasmbox(&["node", "uninstall", "--state", state.to_str().unwrap(), "--containerd", &containerd])?,
                "uninstall",
            )?;
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(format!("{fixture}: {e:#}"));
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    if !failures.is_empty() {
        bail!("{}", failures.join("\n\n"));
    }
    Ok(())
}

/// Copies a fixture, `/etc/containerd` in its files naming `to`.
fn copy_tree(from: &Path, to: &Path, etc: &str) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)?.flatten() {
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dest, etc)?;
        } else {
            std::fs::write(&dest, std::fs::read_to_string(e.path())?.replace("/etc/containerd", etc))?;
        }
    }
    Ok(())
}
