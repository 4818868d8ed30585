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

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wasmbox_e2e::kube::{cluster_dir, cluster_sh, poll, repo_root, Kube};
use wasmbox_e2e::{bin_dir, go_tool, wait_bounded};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

/// The cluster under test: [`Kube`] and what the cases add.
struct Cluster {
    k: Kube,
}

impl std::ops::Deref for Cluster {
    type Target = Kube;
    fn deref(&self) -> &Kube {
        &self.k
    }
}

impl Cluster {
    /// `kubectl apply -n NS` of a manifest file, `${WASMBOX_REGISTRY}`
    /// replaced by the cluster's registry.
    fn apply(&self, ns: &str, file: &str) -> Result<()> {
        let path = manifests().join(file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        self.apply_yaml(ns, &text).with_context(|| format!("applying {file}"))
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
    fn wait<T>(&self, what: &str, limit: Duration, check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        poll(what, limit, Duration::from_millis(500), check)
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
const SPIN_IMAGE: &str = "wasmbox/spin:v1";

/// The images of the manifests: the HTTP guest (with the P1 guest beside
/// it as `/probe.wasm`, for exec probes) and the P1 guest.
fn push_images(c: &Cluster) -> Result<()> {
    let probe = format!("{}:/probe.wasm", test_guests::P1);
    c.push_wasm_image(HTTP_IMAGE, &["--file", &probe, test_guests::HTTP])?;
    c.push_wasm_image(GUEST_IMAGE, &["--wasm-path", "/testguest.wasm", test_guests::P1, "hello"])?;
    // A Spin app: the spin-sdk test component, its variable a template.
    let app = c.dir.join("spin-app");
    std::fs::create_dir_all(&app)?;
    std::fs::copy(test_guests::SPIN_APP, app.join("sdk.wasm"))?;
    let manifest = app.join("spin.toml");
    std::fs::write(
        &manifest,
        "spin_manifest_version = 2\n[application]\nname = \"cluster\"\n[variables]\ngreeting = { default = \"hello\" }\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"sdk\"\n[component.sdk]\nsource = \"sdk.wasm\"\n\
         [component.sdk.variables]\nmessage = \"{{ greeting }}, world\"\n",
    )?;
    c.push_wasm_image(SPIN_IMAGE, &["--spin", manifest.to_str().context("path")?])?;
    Ok(())
}

/// A Spin application's Deployment (`spin.yaml`): both replicas Ready on
/// Spin's health route; its Service answers a busybox pod on port 80,
/// with the variable the ConfigMap set.
fn spin_app_deployment(c: &Cluster) -> Result<()> {
    let ns = c.namespace("wbt-spin")?;
    let ns = ns.name.as_str();
    c.apply(ns, "spin.yaml")?;
    client(c, ns)?;
    c.rollout(ns, "spin-app")?;
    let pods = c.pods(ns, "app=spin-app")?;
    ensure!(pods.len() == 2, "{} pods: {}", pods.len(), c.describe(ns));
    let url = "http://spin-app/var?name=message";
    let said = c.wait("the Spin app's answer", Duration::from_secs(30), || {
        let said = c.exec(ns, "client", None, &["sh", "-c", &format!("timeout 10 wget -qO- {url} || true")])?;
        Ok((!said.is_empty()).then_some(said))
    })?;
    ensure!(said.trim_end() == "hej, world", "{url}: {said:?}");
    let hello = c.exec(ns, "client", None, &["timeout", "10", "wget", "-qO-", "http://spin-app/hello"])?;
    ensure!(hello.trim_end() == "hello from spin-sdk", "/hello: {hello:?}");
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

/// An HPA on a wasm HTTP Deployment scales it out under load (a client
/// keeps its CPU-hungry route busy; metrics from metrics-server, which
/// reads the kubelets' CRI stats of wasm pods) and back in once the load
/// is gone.
fn hpa(c: &Cluster) -> Result<()> {
    let ns = c.namespace("wbt-hpa")?;
    let ns = ns.name.as_str();
    c.apply(ns, "hpa.yaml")?;
    c.rollout(ns, "busy")?;
    c.apply(ns, "hpa-load.yaml")?;
    let replicas = |c: &Cluster| -> Result<u64> {
        let d = c.json(&["get", "deployment", "-n", ns, "busy"])?;
        Ok(d["spec"]["replicas"].as_u64().unwrap_or(0))
    };
    let why = |c: &Cluster| {
        format!("{}\n{}", c.kubectl(&["describe", "hpa", "-n", ns, "busy"]).unwrap_or_default(), c.describe(ns))
    };
    let top = c
        .wait("kubectl top of the busy pod under load", Duration::from_secs(120), || {
            let out = c.kubectl_raw(&["top", "pod", "-n", ns, "-l", "app=busy", "--no-headers"], None)?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let millicores: u64 =
                text.split_whitespace().nth(1).and_then(|m| m.strip_suffix('m')?.parse().ok()).unwrap_or(0);
            Ok((out.status.success() && millicores >= 50).then_some(text))
        })
        .with_context(|| why(c))?;
    c.wait("the HPA scaled out", Duration::from_secs(180), || Ok((replicas(c)? >= 2).then_some(())))
        .with_context(|| format!("top: {top}\n{}", why(c)))?;
    c.kubectl(&["delete", "pod", "-n", ns, "load", "--wait=true"])?;
    c.wait("the HPA scaled back in", Duration::from_secs(240), || Ok((replicas(c)? == 1).then_some(())))
        .with_context(|| why(c))?;
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
    let dir = cluster_dir().display().to_string();
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

const NODES: [&str; 2] = ["wasmbox-1", "wasmbox-2"];
const INSTALLER_NS: &str = "wasmbox-system";

fn sha256_file(path: &Path) -> Result<String> {
    let o = Command::new("sha256sum").arg(path).output()?;
    ensure!(o.status.success(), "sha256sum {}: {}", path.display(), String::from_utf8_lossy(&o.stderr));
    Ok(String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string())
}

/// The shim node N's containerd runs wasm pods with (where the installer
/// put it: beside the node's containerd).
fn node_shim(n: usize) -> PathBuf {
    cluster_dir().join(format!("node{n}/bin/containerd-shim-wasmbox-v1"))
}

/// Pids of processes running node N's shim file: the current one, or
/// (`replaced`) one replaced since they started.
fn shims_running(n: usize, replaced: bool) -> Vec<u32> {
    let path = node_shim(n);
    let want = if replaced { format!("{} (deleted)", path.display()) } else { path.display().to_string() };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            (exe.display().to_string() == want).then_some(pid)
        })
        .collect()
}

/// Waits until both nodes carry the installer's labels and the annotation
/// of the shim with SHA-256 `sha`.
fn wait_installed(c: &Cluster, sha: &str) -> Result<()> {
    for node in NODES {
        c.wait(&format!("{node} labelled by the installer with shim {}", &sha[..12]), Duration::from_secs(240), || {
            let n = c.json(&["get", "node", node])?;
            let m = &n["metadata"];
            Ok((m["labels"]["wasmbox.io/runtime"] == "wasmbox"
                && m["labels"]["wasmbox.io/installed"] == env!("CARGO_PKG_VERSION")
                && m["annotations"]["wasmbox.io/shim-sha256"] == sha)
                .then_some(()))
        })
        .with_context(|| {
            let logs = c
                .kubectl(&["logs", "-n", INSTALLER_NS, "-l", "app.kubernetes.io/name=wasmbox-installer", "--tail=20"])
                .unwrap_or_default();
            format!("installer logs:\n{logs}\n{}", c.describe(INSTALLER_NS))
        })?;
    }
    Ok(())
}

/// Nodes without the handler (`cluster.sh up --bare`) get it from the
/// installer DaemonSet (deploy/installer.yaml, its image built by
/// scripts/installer-image.sh): a wasm Deployment applied before it stays
/// Pending (deploy/runtimeclass.yaml selects the label the installer
/// sets), and becomes Ready on both nodes once it ran; a new installer
/// image rolls a new shim onto the nodes while the running wasm pods keep
/// theirs, and new pods start with it.
fn installer(c: &Cluster) -> Result<()> {
    let dir = cluster_dir();
    // The nodes' configurations as `up` wrote them: uninstall gives them back.
    for n in 1..=2 {
        std::fs::copy(dir.join(format!("node{n}/containerd.toml")), c.dir.join(format!("node{n}-containerd.toml")))?;
        ensure!(!node_shim(n).exists(), "node {n} has a shim before the installer ran");
    }
    let ns = c.namespace("wbt-installer")?;
    let ns = ns.name.as_str();
    c.apply(ns, "http.yaml")?;
    c.wait("the wasm pods unschedulable (no node has the handler)", Duration::from_secs(60), || {
        let pods = c.pods(ns, "app=wasm-http")?;
        let unschedulable = |p: &Value| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["type"] == "PodScheduled" && k["reason"] == "Unschedulable")
        };
        Ok((pods.len() == 4 && pods.iter().all(unschedulable)).then_some(()))
    })
    .with_context(|| c.describe(ns))?;

    let yaml = cluster_sh(&["installer-yaml"])?;
    let out = c.kubectl_raw(&["apply", "-f", "-"], Some(&yaml))?;
    ensure!(out.status.success(), "applying the installer: {}", String::from_utf8_lossy(&out.stderr));
    let v1 = sha256_file(&bin_dir()?.join("containerd-shim-wasmbox-v1"))?;
    wait_installed(c, &v1)?;
    // The restarted containerds are where the first ones were, not in the
    // installer pod's cgroups (killed with the pod).
    for n in 1..=2 {
        let pid = std::fs::read_to_string(cluster_dir().join(format!("pids/node{n}-containerd")))?;
        let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim()))?;
        ensure!(!cgroups.contains("kubepods"), "node {n}'s containerd is in a pod's cgroup:\n{cgroups}");
    }
    c.rollout(ns, "wasm-http")?;
    // The pending pods went to the first node labelled (the spread counts
    // only the nodes a pod may run on); restarted, they spread over both.
    c.kubectl(&["rollout", "restart", "-n", ns, "deployment/wasm-http"])?;
    c.rollout(ns, "wasm-http")?;
    let pods = c.wait("the wasm pods on both nodes", Duration::from_secs(60), || {
        let pods = c.pods(ns, "app=wasm-http")?;
        let live: Vec<Value> = pods.into_iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
        let nodes: std::collections::BTreeSet<&str> =
            live.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
        Ok((live.len() == 4 && nodes.len() == 2).then_some(live.clone()))
    })?;

    // An upgrade: another shim (the same program, other bytes) in a new
    // installer image.
    let shim2 = c.dir.join("containerd-shim-wasmbox-v1");
    let mut bytes = std::fs::read(bin_dir()?.join("containerd-shim-wasmbox-v1"))?;
    bytes.extend_from_slice(b"\0wasmbox installer upgrade test\0");
    std::fs::write(&shim2, &bytes)?;
    std::fs::set_permissions(&shim2, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let v2 = sha256_file(&shim2)?;
    let image2 = format!("{}/wasmbox/installer:upgrade", c.registry);
    let tar = c.dir.join("installer-upgrade.tar");
    let o = Command::new("bash")
        .arg(repo_root().join("scripts/installer-image.sh"))
        .args([image2.as_str(), tar.to_str().context("path")?, "--shim", shim2.to_str().context("path")?])
        .env("CARGO_TARGET_DIR", bin_dir()?.parent().context("target dir")?)
        .output()?;
    ensure!(o.status.success(), "installer-image.sh: {}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(bin_dir()?.join("wasmbox"))
        .args(["image", "push", "--plain-http", tar.to_str().context("path")?, &image2])
        .output()?;
    ensure!(o.status.success(), "pushing {image2}: {}", String::from_utf8_lossy(&o.stderr));
    let before: Vec<String> = pods.iter().filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string)).collect();
    c.kubectl(&["set", "image", "-n", INSTALLER_NS, "daemonset/wasmbox-installer", &format!("installer={image2}")])?;
    c.kubectl(&["rollout", "status", "-n", INSTALLER_NS, "daemonset/wasmbox-installer", "--timeout=240s"])
        .with_context(|| c.describe(INSTALLER_NS))?;
    wait_installed(c, &v2)?;
    for n in 1..=2 {
        ensure!(sha256_file(&node_shim(n))? == v2, "node {n}'s shim is not the new one");
        // The running wasm pods' shims run from the file they started with.
        ensure!(!shims_running(n, true).is_empty(), "node {n}: no shim runs from the replaced file");
    }
    let pods = c.pods(ns, "app=wasm-http")?;
    for p in &pods {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        let restarts = p["status"]["containerStatuses"][0]["restartCount"].as_u64();
        ensure!(before.iter().any(|b| b == name) && restarts == Some(0), "{name} did not run on: {}", p["status"]);
    }
    // New pods start with the new shim.
    c.kubectl(&["rollout", "restart", "-n", ns, "deployment/wasm-http"])?;
    c.rollout(ns, "wasm-http")?;
    for n in 1..=2 {
        ensure!(!shims_running(n, false).is_empty(), "node {n}: no shim runs from the new file");
    }
    Ok(())
}

/// The installer set to uninstall: the labels come off both nodes and
/// each node's configuration is byte for byte what it was, its shim gone,
/// its containerd restarted and answering. Runs last.
fn installer_uninstall(c: &Cluster) -> Result<()> {
    c.kubectl(&["set", "env", "-n", INSTALLER_NS, "daemonset/wasmbox-installer", "WASMBOX_ACTION=uninstall"])?;
    c.kubectl(&["rollout", "status", "-n", INSTALLER_NS, "daemonset/wasmbox-installer", "--timeout=240s"])
        .with_context(|| c.describe(INSTALLER_NS))?;
    let dir = cluster_dir();
    for (i, node) in NODES.iter().enumerate() {
        let n = i + 1;
        c.wait(&format!("{node} reverted"), Duration::from_secs(120), || {
            let m = c.json(&["get", "node", node])?["metadata"].clone();
            let labelled = !m["labels"]["wasmbox.io/runtime"].is_null()
                || !m["labels"]["wasmbox.io/installed"].is_null()
                || !m["annotations"]["wasmbox.io/shim-sha256"].is_null();
            let config = std::fs::read(dir.join(format!("node{n}/containerd.toml")))?;
            let original = std::fs::read(c.dir.join(format!("node{n}-containerd.toml")))?;
            Ok((!labelled && config == original && !node_shim(n).exists()).then_some(()))
        })
        .with_context(|| {
            let logs = c
                .kubectl(&["logs", "-n", INSTALLER_NS, "-l", "app.kubernetes.io/name=wasmbox-installer", "--tail=20"])
                .unwrap_or_default();
            format!("installer logs:\n{logs}")
        })?;
        ensure!(!dir.join(format!("node{n}/containerd.toml.wasmbox-backup")).exists(), "node {n}: the backup is left");
        let o = Command::new("ctr")
            .args(["--address", dir.join(format!("node{n}/containerd.sock")).to_str().context("path")?, "version"])
            .output()?;
        ensure!(o.status.success(), "node {n}'s containerd does not answer: {}", String::from_utf8_lossy(&o.stderr));
    }
    ensure!(!dir.join("install.json").exists(), "the install record is left");
    let yaml = cluster_sh(&["installer-yaml"])?;
    let out = c.kubectl_raw(&["delete", "-f", "-", "--wait=true"], Some(&yaml))?;
    ensure!(out.status.success(), "deleting the installer: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

type Case = (&'static str, fn(&Cluster) -> Result<()>);

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    // The installer first (the cluster comes up bare) and its uninstall
    // last; the other cases run on what it installed.
    let cases: &[Case] = &[
        ("installer", installer),
        ("deployment_service_probes", deployment_service_probes),
        ("spin_app_deployment", spin_app_deployment),
        ("config_and_volumes", config_and_volumes),
        ("jobs", jobs),
        ("logs_and_top", logs_and_top),
        ("hpa", hpa),
        ("drain", drain),
        ("delete_namespace", delete_namespace),
        ("refused", refused),
        ("runtimeclass_node_selector", runtimeclass_node_selector),
        ("installer_uninstall", installer_uninstall),
    ];
    let selected: Vec<&Case> =
        cases.iter().filter(|(n, _)| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()))).collect();
    let t = Instant::now();
    let setup = (|| -> Result<Cluster> {
        // Bare (no wasmbox on the nodes) for the installer case, which
        // installs it; installed by `up` itself for a selection without it.
        let bare = selected.iter().any(|(n, _)| *n == "installer");
        cluster_sh(if bare { &["up", "--bare"] } else { &["up"] })?;
        let dir = std::env::temp_dir().join(format!("wasmbox-cluster-tier-{}", std::process::id()));
        let c = Cluster { k: Kube::from_env(dir)? };
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
        match cluster_sh(&["down"]) {
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
