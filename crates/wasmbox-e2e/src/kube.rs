//! The local cluster of `scripts/cluster.sh` as the manifest tier
//! (tests/cluster.rs) and the cluster benchmark (`wasmbox-bench
//! --cluster`) drive it: the script's verbs, kubectl with the cluster's
//! kubeconfig, wasm images pushed to its registry.

use crate::{bin_dir, go_tool};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository's root (scripts/, deploy/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cluster's state directory (scripts/cluster.sh's DIR).
pub fn cluster_dir() -> PathBuf {
    PathBuf::from(std::env::var("WASMBOX_CLUSTER_DIR").unwrap_or_else(|_| "/var/lib/wasmbox-cluster".into()))
}

/// `scripts/cluster.sh VERB [ARGS]`: its stdout, or an error with its output.
pub fn cluster_sh(args: &[&str]) -> Result<String> {
    let verb = args.join(" ");
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/cluster.sh"))
        .args(args)
        .env("CARGO_TARGET_DIR", bin_dir()?.parent().context("target dir")?)
        .stdin(Stdio::null())
        .output()
        .context("running scripts/cluster.sh")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "cluster.sh {verb} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// The longest one kubectl command may take (a bound on a wedged call).
const KUBECTL_LIMIT: Duration = Duration::from_secs(240);

/// kubectl and the registry of the cluster `cluster.sh env` names.
pub struct Kube {
    pub kubeconfig: String,
    /// HOST:PORT, as both the host and the nodes reach it.
    pub registry: String,
    /// Scratch space for image tarballs.
    pub dir: PathBuf,
}

impl Kube {
    /// The cluster of `cluster.sh env`, with `dir` for scratch files.
    pub fn from_env(dir: PathBuf) -> Result<Kube> {
        let env = cluster_sh(&["env"])?;
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(str::to_string)
                .with_context(|| format!("cluster.sh env gave no {name}: {env}"))
        };
        std::fs::create_dir_all(&dir)?;
        Ok(Kube { kubeconfig: var("KUBECONFIG")?, registry: var("WASMBOX_REGISTRY")?, dir })
    }

    /// A kubectl command of this cluster, to run as the caller likes.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(go_tool("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd
    }

    /// kubectl ARGS (INPUT on its stdin), whatever its exit status; both
    /// pipes drained while it runs (JSON of many pods fills a pipe); killed
    /// past a limit.
    pub fn kubectl_raw(&self, args: &[&str], input: Option<&str>) -> Result<Output> {
        use std::io::Write;
        let mut child = self
            .kubectl_cmd(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl (scripts/kube-build.sh builds it)")?;
        if let Some(text) = input {
            let mut stdin = child.stdin.take().context("kubectl's stdin")?;
            let text = text.to_string();
            std::thread::spawn(move || {
                let _ = stdin.write_all(text.as_bytes());
            });
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(KUBECTL_LIMIT) {
            Ok(out) => Ok(out?),
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                bail!("kubectl {}: did not return within {} s", args.join(" "), KUBECTL_LIMIT.as_secs())
            }
        }
    }

    /// kubectl that must succeed (INPUT on its stdin): its stdout.
    pub fn kubectl_in(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let out = self.kubectl_raw(args, input)?;
        ensure!(
            out.status.success(),
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl that must succeed: its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_in(args, None)
    }

    /// kubectl ARGS -o json, parsed.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let text = self.kubectl(&[args, &["-o", "json"]].concat())?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {}: not JSON", args.join(" ")))
    }

    /// `kubectl apply -n NS` of YAML, `${WASMBOX_REGISTRY}` replaced by the
    /// cluster's registry.
    pub fn apply_yaml(&self, ns: &str, yaml: &str) -> Result<()> {
        let yaml = yaml.replace("${WASMBOX_REGISTRY}", &self.registry);
        self.kubectl_in(&["apply", "-n", ns, "-f", "-"], Some(&yaml)).map(drop)
    }

    /// Builds a wasm image with `wasmbox image build` and pushes it to the
    /// cluster's registry (`wasmbox image push --plain-http`): its name.
    pub fn push_wasm_image(&self, name: &str, build_args: &[&str]) -> Result<String> {
        let reference = format!("{}/{name}", self.registry);
        let tar = self.dir.join(format!("{}.tar", name.replace(['/', ':'], "-")));
        let tar = tar.to_str().context("path")?;
        let cli = bin_dir()?.join("wasmbox");
        for args in [
            [&["image", "build", "-t", &reference, "-o", tar][..], build_args].concat(),
            vec!["image", "push", "--plain-http", tar, &reference],
        ] {
            let o = Command::new(&cli).args(&args).output()?;
            ensure!(
                o.status.success(),
                "wasmbox {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(reference)
    }
}

/// Polls `check` every `every` until it gives `Some` (bounded: a limit on
/// a stuck cluster, not a timing assertion).
pub fn poll<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not so after {} s {last}", limit.as_secs());
        }
        std::thread::sleep(every);
    }
}
