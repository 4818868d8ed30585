//! The manifest tier: ordinary YAML (`manifests/`) applied with kubectl to
//! the local two-node cluster of `scripts/cluster.sh`, with
//! `runtimeClassName: wasmbox`; each case asserts what a user would see
//! (pods Ready on both nodes, Service answers, Jobs complete, logs, exec,
//! metrics, autoscaling, drains). The cluster is brought up (or reused)
//! at the start and down at the end, whatever happened
//! (`WASMBOX_CLUSTER_KEEP=1` leaves it up). Each case works in a namespace
//! of its own, deleted at its end.
//!
//! `cargo test --release -p wasmbox-e2e --test cluster [CASE...]`

// A test runner reports on stdout.
#![allow(clippy::print_stdout)]

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use wasmbox_e2e::{bin_dir, go_tool, wait_bounded};

/// The repository's root (scripts/, the manifests).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

/// `scripts/cluster.sh VERB`: its stdout, or an error with its output.
fn cluster_sh(verb: &str) -> Result<String> {
    let out = Command::new("bash")
        .arg(root().join("scripts/cluster.sh"))
        .arg(verb)
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

struct Cluster {
    kubeconfig: String,
    registry: String,
    /// Scratch space for image tarballs.
    dir: PathBuf,
}

/// The longest one kubectl command may take (a bound on a wedged call).
const KUBECTL_LIMIT: Duration = Duration::from_secs(240);

impl Cluster {
    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(go_tool("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd
    }

    fn kubectl_raw(&self, args: &[&str], input: Option<&str>) -> Result<Output> {
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
        // Both pipes are drained while it runs (JSON of many pods fills a
        // pipe); killed past the limit.
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

    /// kubectl that must succeed: its stdout.
    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_raw(args, None)?;
        ensure!(
            out.status.success(),
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let text = self.kubectl(&[args, &["-o", "json"]].concat())?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {}: not JSON", args.join(" ")))
    }

    /// `kubectl apply -n NS` of a manifest file, `${WASMBOX_REGISTRY}`
    /// replaced by the cluster's registry.
    fn apply(&self, ns: &str, file: &str) -> Result<()> {
        let path = manifests().join(file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let text = text.replace("${WASMBOX_REGISTRY}", &self.registry);
        let out = self.kubectl_raw(&["apply", "-n", ns, "-f", "-"], Some(&text))?;
        ensure!(
            out.status.success(),
            "kubectl apply {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The pods of `ns` matching `selector` (`app=x`), as JSON items.
    fn pods(&self, ns: &str, selector: &str) -> Result<Vec<Value>> {
        let v = self.json(&["get", "pods", "-n", ns, "-l", selector])?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// `kubectl exec -n NS POD [-c C] -- COMMAND`: its stdout (must succeed).
    fn exec(&self, ns: &str, pod: &str, container: Option<&str>, command: &[&str]) -> Result<String> {
        let mut args = vec!["exec", "-n", ns, pod];
        if let Some(c) = container {
            args.extend(["-c", c]);
        }
        args.push("--");
        args.extend(command);
        self.kubectl(&args)
    }

    /// Builds a wasm image with `wasmbox image build` and pushes it to the
    /// cluster's registry (`wasmbox image push --plain-http`).
    fn push_wasm_image(&self, name: &str, build_args: &[&str]) -> Result<String> {
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

    /// A namespace for one case; deleted (and waited for) when dropped.
    fn namespace(&self, name: &str) -> Result<Namespace<'_>> {
        let _ = self.kubectl(&["delete", "namespace", name, "--ignore-not-found", "--wait=true"]);
        self.kubectl(&["create", "namespace", name])?;
        // Pods are refused until the namespace's default ServiceAccount exists.
        self.wait("the default ServiceAccount", Duration::from_secs(30), || {
            let out = self.kubectl_raw(&["get", "serviceaccount", "-n", name, "default"], None)?;
            Ok(out.status.success().then_some(()))
        })?;
        Ok(Namespace { cluster: self, name: name.to_string() })
    }

    /// Polls `check` every half second until it gives `Some` (bounded: a
    /// limit on a stuck cluster, not a timing assertion).
    fn wait<T>(&self, what: &str, limit: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
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
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until the Deployment has rolled out.
    fn rollout(&self, ns: &str, deployment: &str) -> Result<()> {
        self.kubectl(&["rollout", "status", "-n", ns, &format!("deployment/{deployment}"), "--timeout=180s"])
            .map(drop)
            .with_context(|| self.describe(ns))
    }

    /// What a failed case should show: the namespace's pods and events.
    fn describe(&self, ns: &str) -> String {
        let pods = self.kubectl(&["get", "pods", "-n", ns, "-o", "wide"]).unwrap_or_default();
        let events = self.kubectl(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]).unwrap_or_default();
        let tail: Vec<&str> = events.lines().rev().take(25).collect();
        format!("pods:\n{pods}\nlast events:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }
}

struct Namespace<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl(&["delete", "namespace", &self.name, "--wait=true", "--timeout=120s"]);
    }
}

const HTTP_IMAGE: &str = "wasmbox/http:v1";
const GUEST_IMAGE: &str = "wasmbox/guest:v1";

/// The images of the manifests: the HTTP guest (with the P1 guest beside
/// it as `/probe.wasm`, for exec probes) and the P1 guest.
fn push_images(c: &Cluster) -> Result<()> {
    let probe = format!("{}:/probe.wasm", test_guests::P1);
    c.push_wasm_image(HTTP_IMAGE, &["--file", &probe, test_guests::HTTP])?;
    c.push_wasm_image(GUEST_IMAGE, &["--wasm-path", "/testguest.wasm", test_guests::P1, "hello"])?;
    Ok(())
}

/// Waits for the busybox client pod (from `client.yaml`) to run.
fn client(c: &Cluster, ns: &str) -> Result<()> {
    c.apply(ns, "client.yaml")?;
    c.kubectl(&["wait", "-n", ns, "--for=condition=Ready", "pod/client", "--timeout=120s"])
        .map(drop)
        .with_context(|| c.describe(ns))
}

/// The Deployment of a wasm HTTP service: 4 replicas spread over both
/// nodes, Ready through its probes (exec startup probe running a `.wasm`,
/// httpGet readiness, tcpSocket liveness); its ClusterIP Service answers a
/// busybox pod by address and, with CoreDNS, by name, from pods on both
/// nodes; a rolling update (new env) loses no request.
fn deployment_service_probes(c: &Cluster) -> Result<()> {
    let ns = c.namespace("wbt-http")?;
    let ns = ns.name.as_str();
    c.apply(ns, "http.yaml")?;
    client(c, ns)?;
    c.rollout(ns, "wasm-http")?;
    let pods = c.pods(ns, "app=wasm-http")?;
    ensure!(pods.len() == 4, "{} pods: {}", pods.len(), c.describe(ns));
    let mut nodes: Vec<&str> = pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    nodes.sort();
    nodes.dedup();
    ensure!(nodes.len() == 2, "the pods are not spread over both nodes: {nodes:?}");
    for p in &pods {
        let statuses = p["status"]["containerStatuses"].as_array().context("no container statuses")?;
        ensure!(
            statuses.iter().all(|s| s["ready"] == true && s["started"] == true && s["restartCount"] == 0),
            "a pod is not ready, or restarted: {}",
            p["status"]
        );
    }
    let ip = c.kubectl(&["get", "service", "-n", ns, "wasm-http", "-o", "jsonpath={.spec.clusterIP}"])?;
    ensure!(ip.starts_with("10.96."), "ClusterIP {ip:?}");
    // Requests by ClusterIP, 20 at a time: every one answered; the
    // answers come from both nodes (once kube-proxy has all 4 endpoints).
    let script = format!(
        "for i in $(seq 20); do timeout 10 wget -qO- http://{ip}/env?name=NODE_NAME || echo FAILED; echo; done"
    );
    let (mut from, mut failed): (Vec<String>, Option<String>) = (Vec::new(), None);
    let _ = c.wait("answers from both nodes", Duration::from_secs(30), || {
        let said = c.exec(ns, "client", None, &["sh", "-c", &script])?;
        let answers: Vec<&str> = said.lines().filter(|l| !l.is_empty()).collect();
        if answers.len() != 20 || said.contains("FAILED") {
            failed = Some(said.clone());
            return Ok(Some(()));
        }
        from.extend(answers.iter().map(|a| a.to_string()));
        from.sort();
        from.dedup();
        Ok((from == ["wasmbox-1", "wasmbox-2"]).then_some(()))
    });
    ensure!(failed.is_none(), "a request by ClusterIP failed: {failed:?}");
    ensure!(from == ["wasmbox-1", "wasmbox-2"], "answers came from {from:?}, not from both nodes");
    // By name (CoreDNS), when the cluster has it.
    if go_tool("coredns").exists() {
        let said = c.exec(ns, "client", None, &["timeout", "10", "wget", "-qO-", "http://wasm-http/"])?;
        ensure!(said.contains("hello from wasm"), "by name: {said}");
        let said = c.exec(
            ns,
            "client",
            None,
            &["timeout", "10", "wget", "-qO-", &format!("http://wasm-http.{ns}.svc.cluster.local/")],
        )?;
        ensure!(said.contains("hello from wasm"), "by full name: {said}");
    }
    // The pod's own name through the downward API.
    let pod = pods[0]["metadata"]["name"].as_str().context("pod name")?;
    let pod_ip = pods[0]["status"]["podIP"].as_str().context("pod IP")?;
    let said = c.exec(
        ns,
        "client",
        None,
        &["timeout", "10", "wget", "-qO-", &format!("http://{pod_ip}:8080/env?name=POD_NAME")],
    )?;
    ensure!(said == pod, "POD_NAME of {pod}: {said:?}");

    // A rolling update under load: a loop in the client counts answers
    // until told to stop; none may fail.
    let _ = c.exec(ns, "client", None, &["rm", "-f", "/tmp/stop"]);
    let load = c
        .kubectl_cmd(&[
            "exec",
            "-n",
            ns,
            "client",
            "--",
            "sh",
            "-c",
            &format!(
                "ok=0; bad=0; v2=0; while [ ! -f /tmp/stop ]; do \
                 if v=$(timeout 10 wget -qO- http://{ip}/env?name=VERSION); then ok=$((ok+1)); [ \"$v\" = 2 ] && v2=$((v2+1)); \
                 else bad=$((bad+1)); fi; done; echo ok=$ok bad=$bad v2=$v2"
            ),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let result = (|| -> Result<()> {
        std::thread::sleep(Duration::from_secs(2));
        c.kubectl(&["set", "env", "-n", ns, "deployment/wasm-http", "VERSION=2"])?;
        c.rollout(ns, "wasm-http")?;
        // The old pods end after their preStop sleep; the loop goes on
        // through their removal.
        c.wait("old pods gone", Duration::from_secs(60), || {
            Ok((c.pods(ns, "app=wasm-http")?.len() == 4).then_some(()))
        })?;
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    })();
    let _ = c.exec(ns, "client", None, &["touch", "/tmp/stop"]);
    let out = wait_bounded(load, Duration::from_secs(60))?;
    result?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let count = |key: &str| -> Option<u64> {
        said.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}="))?.parse().ok())
    };
    let (ok, bad, v2) = (count("ok"), count("bad"), count("v2"));
    ensure!(bad == Some(0), "requests failed during the rolling update: {said}");
    ensure!(ok.unwrap_or(0) >= 20 && v2.unwrap_or(0) > 0, "too few answers, or none from the new pods: {said}");
    Ok(())
}

/// The events of one object, as text (reason: message per line).
fn events_of(c: &Cluster, ns: &str, name: &str) -> Result<String> {
    let v = c.json(&["get", "events", "-n", ns, "--field-selector", &format!("involvedObject.name={name}")])?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{}: {}", e["reason"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// A pod of wasm and Linux containers: ConfigMap and Secret as env and
/// volumes, downward-API env, an emptyDir written by a wasm init container
/// and read by a Linux sidecar (and back), `kubectl exec` into both kinds.
fn config_and_volumes(c: &Cluster) -> Result<()> {
    let ns = c.namespace("wbt-config")?;
    let ns = ns.name.as_str();
    c.apply(ns, "config.yaml")?;
    c.kubectl(&["wait", "-n", ns, "--for=condition=Ready", "pod/configured", "--timeout=120s"])
        .with_context(|| c.describe(ns))?;
    let logs = c.kubectl(&["logs", "-n", ns, "configured", "-c", "init-secret"])?;
    ensure!(logs.contains("GREETING=s3cret-from-a-Secret"), "the init container's Secret env: {logs}");
    let logs = c.kubectl(&["logs", "-n", ns, "configured", "-c", "init-write"])?;
    ensure!(logs.contains("write /shared/from-init.txt ok"), "the init container's write: {logs}");
    // exec into the wasm container: a new instance with the container's env and mounts.
    let said = c.exec(ns, "configured", Some("app"), &["/testguest.wasm", "hello"])?;
    ensure!(said.contains("GREETING=hello from a ConfigMap"), "ConfigMap env in wasm: {said}");
    let said = c.exec(ns, "configured", Some("app"), &["/testguest.wasm", "read", "/config/settings.txt"])?;
    ensure!(said.trim() == "mode=wasm", "ConfigMap volume in wasm: {said}");
    let said = c.exec(ns, "configured", Some("app"), &["/testguest.wasm", "read", "/secret/password"])?;
    ensure!(said.trim() == "s3cret-from-a-Secret", "Secret volume in wasm: {said}");
    let said = c.exec(ns, "configured", Some("app"), &["/testguest.wasm", "read", "/shared/from-sidecar.txt"])?;
    ensure!(said.trim() == "from the sidecar", "emptyDir, sidecar to wasm: {said}");
    let out = c.kubectl_raw(
        &["exec", "-n", ns, "configured", "-c", "app", "--", "/testguest.wasm", "write", "/config/x"],
        None,
    )?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success() && said.contains("write /config/x failed"),
        "a read-only ConfigMap volume was written by wasm: {said}"
    );
    // The Linux sidecar: the init container's file, downward-API env.
    let logs = c.kubectl(&["logs", "-n", ns, "configured", "-c", "sidecar"])?;
    ensure!(logs.contains("written by wasm"), "emptyDir, wasm init to sidecar: {logs}");
    let pod = c.json(&["get", "pod", "-n", ns, "configured"])?;
    let env = c.exec(ns, "configured", Some("sidecar"), &["env"])?;
    let want = [
        format!("POD_IP={}", pod["status"]["podIP"].as_str().unwrap_or("?")),
        format!("NODE_NAME={}", pod["spec"]["nodeName"].as_str().unwrap_or("?")),
        "MEMORY_LIMIT=9223372036854775807".to_string(),
        "CFG_greeting=hello from a ConfigMap".to_string(),
    ];
    for w in &want[..2] {
        ensure!(env.lines().any(|l| l == w), "the sidecar's env has no {w}: {env}");
    }
    ensure!(env.lines().any(|l| l == want[3]), "envFrom with a prefix: {env}");
    ensure!(env.lines().any(|l| l.starts_with("MEMORY_LIMIT=")), "resourceFieldRef env: {env}");
    Ok(())
}

/// A Job of 3 completions, 2 at a time; a failing Job retried to its
/// backoffLimit; a CronJob's run.
fn jobs(c: &Cluster) -> Result<()> {
    let ns = c.namespace("wbt-jobs")?;
    let ns = ns.name.as_str();
    c.apply(ns, "jobs.yaml")?;
    c.kubectl(&["wait", "-n", ns, "--for=condition=Complete", "job/hello-job", "--timeout=180s"])
        .with_context(|| c.describe(ns))?;
    let job = c.json(&["get", "job", "-n", ns, "hello-job"])?;
    ensure!(job["status"]["succeeded"] == 3, "hello-job: {}", job["status"]);
    let pods = c.pods(ns, "job-name=hello-job")?;
    ensure!(pods.len() == 3, "hello-job ran {} pods", pods.len());
    for p in &pods {
        let name = p["metadata"]["name"].as_str().unwrap_or("");
        let logs = c.kubectl(&["logs", "-n", ns, name])?;
        ensure!(logs.contains("hello from wasm") && logs.contains("\"job\""), "{name}: {logs}");
    }
    c.kubectl(&["wait", "-n", ns, "--for=condition=Failed", "job/failing-job", "--timeout=240s"])
        .with_context(|| c.describe(ns))?;
    let job = c.json(&["get", "job", "-n", ns, "failing-job"])?;
    ensure!(job["status"]["failed"] == 3, "failing-job: 1 try and 2 retries expected: {}", job["status"]);
    let reason = job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Failed")
        .and_then(|c| c["reason"].as_str())
        .unwrap_or("");
    ensure!(reason == "BackoffLimitExceeded", "failing-job's reason: {}", job["status"]);
    for p in c.pods(ns, "job-name=failing-job")? {
        let code = &p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"];
        ensure!(*code == 3, "a failing-job pod's exit code: {}", p["status"]);
    }
    // The CronJob runs within its minute.
    let job = c.wait("a CronJob's Job complete", Duration::from_secs(150), || {
        let jobs = c.json(&["get", "jobs", "-n", ns])?;
        Ok(jobs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j["metadata"]["ownerReferences"][0]["name"] == "every-minute" && j["status"]["succeeded"] == 1)
            .and_then(|j| j["metadata"]["name"].as_str().map(str::to_string)))
    })?;
    let logs = c.kubectl(&["logs", "-n", ns, &format!("job/{job}")])?;
    ensure!(logs.contains("\"cron\""), "the CronJob's run: {logs}");
    Ok(())
}

/// `kubectl logs -f` follows a wasm container to its end, `--previous`
/// shows a restarted container's last run; `kubectl top pod` has figures.
fn logs_and_top(c: &Cluster) -> Result<()> {
    let ns = c.namespace("wbt-logs")?;
    let ns = ns.name.as_str();
    c.apply(ns, "logs.yaml")?;
    // Asked at once: the kubelet removes the older instance (and its
    // log) when it starts the next one, with runc as well.
    c.wait("a restart of the restarting pod", Duration::from_secs(120), || {
        let p = c.json(&["get", "pod", "-n", ns, "restarting"])?;
        Ok((p["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap_or(0) == 1).then_some(()))
    })?;
    let previous = c.kubectl(&["logs", "--previous", "-n", ns, "restarting"])?;
    ensure!(previous.contains("sleeping"), "logs --previous: {previous}");
    c.wait("the sleeper running", Duration::from_secs(120), || {
        let p = c.json(&["get", "pod", "-n", ns, "sleeper"])?;
        Ok((p["status"]["phase"] == "Running").then_some(()))
    })
    .with_context(|| c.describe(ns))?;
    let t = Instant::now();
    let followed = c.kubectl(&["logs", "-f", "-n", ns, "sleeper"])?;
    ensure!(followed.contains("sleeping"), "logs -f: {followed}");
    // It followed the 15 s sleep to the end, and the container did end.
    ensure!(t.elapsed() > Duration::from_secs(3), "logs -f returned after {} ms", t.elapsed().as_millis());
    c.wait("the sleeper ended", Duration::from_secs(30), || {
        let p = c.json(&["get", "pod", "-n", ns, "sleeper"])?;
        Ok((p["status"]["phase"] == "Succeeded").then_some(()))
    })?;
    // kubectl top pod of a Linux pod (metrics-server scrapes every 15 s;
    // the hpa case reads a wasm pod's).
    c.apply(ns, "client.yaml")?;
    let top = c.wait("kubectl top pod", Duration::from_secs(120), || {
        let out = c.kubectl_raw(&["top", "pod", "-n", ns, "client", "--no-headers"], None)?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })?;
    ensure!(top.contains("client") && top.contains("Mi"), "kubectl top pod: {top}");
    Ok(())
}

/// An HPA on a CPU-hungry wasm Deployment scales it out (metrics from
/// metrics-server, which reads the kubelets' CRI stats of wasm pods).
fn hpa(c: &Cluster) -> Result<()> {
    let ns = c.namespace("wbt-hpa")?;
    let ns = ns.name.as_str();
    c.apply(ns, "hpa.yaml")?;
    c.rollout(ns, "busy")?;
    let top = c.wait("kubectl top of the busy pod", Duration::from_secs(120), || {
        let out = c.kubectl_raw(&["top", "pod", "-n", ns, "-l", "app=busy", "--no-headers"], None)?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })?;
    let millicores: u64 = top.split_whitespace().nth(1).and_then(|m| m.strip_suffix('m')?.parse().ok()).unwrap_or(0);
    ensure!(millicores >= 50, "the busy wasm pod uses {millicores}m: {top}");
    c.wait("the HPA scaled out", Duration::from_secs(180), || {
        let d = c.json(&["get", "deployment", "-n", ns, "busy"])?;
        Ok((d["spec"]["replicas"].as_u64().unwrap_or(0) >= 2).then_some(()))
    })
    .with_context(|| {
        format!("{}\n{}", c.kubectl(&["describe", "hpa", "-n", ns, "busy"]).unwrap_or_default(), c.describe(ns))
    })?;
    Ok(())
}

/// `kubectl drain` of a node moves the wasm pods to the other one; the
/// node is uncordoned after.
fn drain(c: &Cluster) -> Result<()> {
    let ns = c.namespace("wbt-drain")?;
    let ns = ns.name.as_str();
    c.apply(ns, "http.yaml")?;
    c.rollout(ns, "wasm-http")?;
    let result = (|| -> Result<()> {
        c.kubectl(&["drain", "wasmbox-2", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s"])?;
        // The spread constraint cannot be met on one node: the moved pods
        // wait (DoNotSchedule) and nothing runs on the drained node.
        let pods = c.pods(ns, "app=wasm-http")?;
        ensure!(pods.iter().all(|p| p["spec"]["nodeName"] != "wasmbox-2"), "a pod is still on wasmbox-2");
        Ok(())
    })();
    c.kubectl(&["uncordon", "wasmbox-2"])?;
    result?;
    c.rollout(ns, "wasm-http")?;
    let pods = c.pods(ns, "app=wasm-http")?;
    ensure!(pods.iter().any(|p| p["spec"]["nodeName"] == "wasmbox-2"), "nothing went back to wasmbox-2");
    Ok(())
}

/// Pods asking for what this node cannot give (a user namespace, an
/// AppArmor profile, a missing seccomp profile) never run, and an event
/// names what they asked for.
fn refused(c: &Cluster) -> Result<()> {
    let ns = c.namespace("wbt-refused")?;
    let ns = ns.name.as_str();
    c.apply(ns, "refused.yaml")?;
    for (pod, word) in [("user-namespace", "user namespace"), ("apparmor", "apparmor"), ("seccomp", "seccomp")] {
        let events = c.wait(&format!("an event naming {word} for {pod}"), Duration::from_secs(90), || {
            let e = events_of(c, ns, pod)?;
            Ok(e.to_lowercase().contains(word).then_some(e))
        })?;
        let p = c.json(&["get", "pod", "-n", ns, pod])?;
        let running = p["status"]["containerStatuses"][0]["state"]["running"].is_object();
        ensure!(!running, "{pod} runs: {}\nevents: {events}", p["status"]);
    }
    Ok(())
}

/// Deleting a namespace removes its pods' containers and sandboxes from
/// both nodes' containerds.
fn delete_namespace(c: &Cluster) -> Result<()> {
    let name = "wbt-delete";
    let uids: Vec<String> = {
        let ns = c.namespace(name)?;
        c.apply(&ns.name, "http.yaml")?;
        c.apply(&ns.name, "client.yaml")?;
        c.rollout(&ns.name, "wasm-http")?;
        c.kubectl(&["wait", "-n", name, "--for=condition=Ready", "pod/client", "--timeout=120s"])?;
        let pods = c.json(&["get", "pods", "-n", name])?;
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["metadata"]["uid"].as_str())
            .map(str::to_string)
            .collect()
    };
    ensure!(uids.len() == 5, "{} pods", uids.len());
    // Dropped: deleted and waited for. Each node's CRI must have nothing
    // of it left.
    let dir = std::env::var("WASMBOX_CLUSTER_DIR").unwrap_or_else(|_| "/var/lib/wasmbox-cluster".into());
    for node in ["node1", "node2"] {
        let endpoint = format!("unix://{dir}/{node}/containerd.sock");
        let label = format!("io.kubernetes.pod.namespace={name}");
        let crictl = |what: &str| -> Result<String> {
            let all: &[&str] = if what == "ps" { &["-a"] } else { &[] };
            let o = Command::new(go_tool("crictl"))
                .args(["--runtime-endpoint", &endpoint, what, "-q", "--label", &label])
                .args(all)
                .output()?;
            ensure!(o.status.success(), "crictl {what}: {}", String::from_utf8_lossy(&o.stderr));
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let left = c.wait(&format!("{node} without the namespace's pods"), Duration::from_secs(60), || {
            let (pods, ctrs) = (crictl("pods")?, crictl("ps")?);
            Ok((pods.is_empty() && ctrs.is_empty()).then_some(()))
        });
        left?;
    }
    // Nor their pod cgroups (under the nodes' cgroup roots) or volume
    // mounts (under the kubelets' root directories).
    let mut cgroups = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        for node in ["node1", "node2"] {
            for qos in ["", "burstable", "besteffort"] {
                let dir = h.path().join("wasmbox-cluster").join(node).join("kubepods").join(qos);
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if uids.iter().any(|u| n == format!("pod{u}") || n == format!("pod{}", u.replace('-', "_"))) {
                        cgroups.push(e.path().display().to_string());
                    }
                }
            }
        }
    }
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| uids.iter().any(|u| m.contains(u.as_str())))
        .map(str::to_string)
        .collect();
    ensure!(cgroups.is_empty() && mounts.is_empty(), "left of the namespace: {cgroups:?} {mounts:?}");
    Ok(())
}

/// A RuntimeClass with `scheduling` (deploy/runtimeclass.yaml's, under
/// another name): its nodeSelector and tolerations are added to the pods
/// that name it, which run on the labelled nodes; a pod whose own
/// nodeSelector conflicts is refused at admission.
fn runtimeclass_node_selector(c: &Cluster) -> Result<()> {
    let ns = c.namespace("wbt-runtimeclass")?;
    let ns = ns.name.as_str();
    let path = manifests().join("runtimeclass-selected.yaml");
    let text = std::fs::read_to_string(&path)?.replace("${WASMBOX_REGISTRY}", &c.registry);
    let out = c.kubectl_raw(&["apply", "-n", ns, "-f", "-"], Some(&text))?;
    let result = (|| -> Result<()> {
        let said = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && said.contains("conflicting"), "the conflicting pod was admitted: {said}");
        let pod = c.json(&["get", "pod", "-n", ns, "selected"])?;
        ensure!(
            pod["spec"]["nodeSelector"]["wasmbox.io/runtime"] == "wasmbox",
            "no nodeSelector added: {}",
            pod["spec"]
        );
        let tolerated =
            pod["spec"]["tolerations"].as_array().into_iter().flatten().any(|t| t["key"] == "wasmbox.io/runtime");
        ensure!(tolerated, "no toleration added: {}", pod["spec"]["tolerations"]);
        c.wait("the selected pod succeeded", Duration::from_secs(90), || {
            let p = c.json(&["get", "pod", "-n", ns, "selected"])?;
            Ok((p["status"]["phase"] == "Succeeded").then_some(()))
        })
        .with_context(|| c.describe(ns))?;
        let logs = c.kubectl(&["logs", "-n", ns, "selected"])?;
        ensure!(logs.contains("\"selected\""), "selected: {logs}");
        Ok(())
    })();
    let _ = c.kubectl(&["delete", "runtimeclass", "wasmbox-selected", "--ignore-not-found"]);
    result
}

type Case = (&'static str, fn(&Cluster) -> Result<()>);

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let cases: &[Case] = &[
        ("deployment_service_probes", deployment_service_probes),
        ("config_and_volumes", config_and_volumes),
        ("jobs", jobs),
        ("logs_and_top", logs_and_top),
        ("hpa", hpa),
        ("drain", drain),
        ("delete_namespace", delete_namespace),
        ("refused", refused),
        ("runtimeclass_node_selector", runtimeclass_node_selector),
    ];
    let selected: Vec<&Case> =
        cases.iter().filter(|(n, _)| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()))).collect();
    let t = Instant::now();
    let setup = (|| -> Result<Cluster> {
        cluster_sh("up")?;
        let env = cluster_sh("env")?;
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(str::to_string)
                .with_context(|| format!("cluster.sh env gave no {name}: {env}"))
        };
        let dir = std::env::temp_dir().join(format!("wasmbox-cluster-tier-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let c = Cluster { kubeconfig: var("KUBECONFIG")?, registry: var("WASMBOX_REGISTRY")?, dir };
        push_images(&c)?;
        Ok(c)
    })();
    println!("cluster up and images pushed in {} ms", t.elapsed().as_millis());
    let (mut passed, mut failed) = (0, 0);
    match &setup {
        Err(e) => {
            println!("cluster setup failed: {e:#}");
            failed = selected.len();
        }
        Ok(c) => {
            for (name, case) in selected {
                let t = Instant::now();
                match case(c) {
                    Ok(()) => {
                        passed += 1;
                        println!("test cluster::{name} ... ok ({} ms)", t.elapsed().as_millis());
                    }
                    Err(e) => {
                        failed += 1;
                        println!("test cluster::{name} ... FAILED ({} ms)\n{e:#}\n", t.elapsed().as_millis());
                    }
                }
            }
        }
    }
    if let Ok(c) = &setup {
        let _ = std::fs::remove_dir_all(&c.dir);
    }
    if std::env::var_os("WASMBOX_CLUSTER_KEEP").is_none() {
        let t = Instant::now();
        match cluster_sh("down") {
            Ok(_) => println!("cluster down in {} ms", t.elapsed().as_millis()),
            Err(e) => {
                failed += 1;
                println!("cluster down failed: {e:#}");
            }
        }
    }
    println!("\ncluster: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
