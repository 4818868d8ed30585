//! `--cluster`: wasm and runc pods side by side on the local two-node
//! Kubernetes of `scripts/cluster.sh`, driven by kubectl as a user would:
//! how long a Deployment takes from `kubectl apply` to all its replicas
//! Ready, how fast pods come up on one node and what each costs there
//! (PSS of the shims and their processes; CPU of the node's kubelet and
//! containerd), and how long the HPA takes to scale a wasm HTTP service
//! out once a client loads it. The cluster is brought up (or reused) at
//! the start and down at the end (`WASMBOX_CLUSTER_KEEP=1` leaves it up);
//! each workload lives in a namespace of its own, deleted (and waited
//! for) before the next.

use super::*;
use wasmbox_e2e::kube::{cluster_dir, cluster_sh, poll, repo_root, Kube};

/// Options of the cluster benchmark.
pub struct ClusterOptions {
    /// Replicas of the Deployment spread on both nodes.
    pub replicas: usize,
    /// wasm pods started on one node.
    pub node_pods: usize,
    /// runc pods started on one node (0: skip).
    pub runc_node_pods: usize,
}

/// The node the one-node figures are taken on (index 1 in cluster.sh).
const NODE: &str = "wasmbox-1";
const GUEST_IMAGE: &str = "wasmbox/guest:v1";
const HTTP_IMAGE: &str = "wasmbox/http:v1";
/// Pushed by `cluster.sh up`.
const BUSYBOX: &str = "wasmbox/busybox:1";
/// The longest a pod ramp or a namespace's deletion may take (a bound on a
/// stuck cluster, not a timing assertion).
const LIMIT: Duration = Duration::from_secs(1200);

/// The cluster: [`Kube`] and the benchmark's own steps.
struct Cluster {
    k: Kube,
    /// Holds [`Kube::dir`], removed when the benchmark ends.
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Cluster {
    type Target = Kube;
    fn deref(&self) -> &Kube {
        &self.k
    }
}

impl Cluster {
    /// A fresh namespace (pods are refused until its default
    /// ServiceAccount exists).
    fn namespace(&self, ns: &str) -> Result<()> {
        self.delete_namespace(ns)?;
        self.kubectl(&["create", "namespace", ns])?;
        poll("the default ServiceAccount", Duration::from_secs(60), Duration::from_millis(300), || {
            Ok(self.kubectl(&["get", "serviceaccount", "-n", ns, "default"]).is_ok().then_some(()))
        })
    }

    /// Deletes a namespace and waits until it is gone: how long that took.
    fn delete_namespace(&self, ns: &str) -> Result<Duration> {
        let t = Instant::now();
        let limit = format!("--timeout={}s", LIMIT.as_secs());
        self.kubectl(&["delete", "namespace", ns, "--ignore-not-found", "--wait=true", &limit])?;
        Ok(t.elapsed())
    }

    /// Applies a Deployment and waits (one watching kubectl) until `n` of
    /// its replicas are Ready: the time from the apply.
    fn deploy_ready(&self, ns: &str, name: &str, n: usize, yaml: &str) -> Result<Duration> {
        let t = Instant::now();
        self.apply_yaml(ns, yaml)?;
        let ready = format!("jsonpath={{.status.readyReplicas}}={n}");
        let limit = format!("--timeout={}s", LIMIT.as_secs());
        self.kubectl(&["wait", "-n", ns, "--for", &ready, &format!("deployment/{name}"), &limit])
            .with_context(|| self.describe(ns))?;
        Ok(t.elapsed())
    }

    /// What a failure should show: the namespace's pods by phase and its
    /// last events.
    fn describe(&self, ns: &str) -> String {
        let phases = self
            .json(&["get", "pods", "-n", ns])
            .map(|v| {
                let mut count: std::collections::BTreeMap<String, usize> = Default::default();
                for p in v["items"].as_array().into_iter().flatten() {
                    *count.entry(p["status"]["phase"].as_str().unwrap_or("?").to_string()).or_default() += 1;
                }
                format!("{count:?}")
            })
            .unwrap_or_default();
        let events = self.kubectl(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]).unwrap_or_default();
        let tail: Vec<&str> = events.lines().rev().take(15).collect();
        format!("pods by phase: {phases}\nlast events:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }
}

/// The two kinds of pod compared: a sleeping wasm guest under the
/// RuntimeClass `wasmbox`, and busybox `sleep` under runc.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Wasm,
    Runc,
}

/// A Deployment of `replicas` sleeping pods of `kind`: on `node`, or
/// spread evenly on both nodes; small requests.
fn deployment(name: &str, replicas: usize, kind: Kind, node: Option<&str>) -> String {
    let (class, image, command) = match kind {
        Kind::Wasm => (
            "\n      runtimeClassName: wasmbox",
            format!("${{WASMBOX_REGISTRY}}/{GUEST_IMAGE}"),
            r#"[/testguest.wasm, sleep, "86400"]"#,
        ),
        Kind::Runc => ("", format!("${{WASMBOX_REGISTRY}}/{BUSYBOX}"), r#"[sleep, "86400"]"#),
    };
    let placement = match node {
        Some(node) => format!("\n      nodeSelector: {{kubernetes.io/hostname: {node}}}"),
        None => format!(
            "\n      topologySpreadConstraints:\n      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, \
             whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: {name}}}}}}}"
        ),
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:{class}{placement}
      terminationGracePeriodSeconds: 1
      containers:
      - name: sleep
        image: {image}
        command: {command}
        resources:
          requests: {{cpu: 1m, memory: 4Mi}}
"#
    )
}

/// Pids of node 1's shim daemons of `kind` (and the instance processes,
/// for wasmbox: its own binary re-executed).
fn node_shims(kind: Kind) -> Vec<i32> {
    let node = cluster_dir().join("node1");
    match kind {
        Kind::Wasm => {
            let shim = node.join("bin").join(SHIM);
            wasmbox_e2e::processes()
                .into_iter()
                .map(|(p, _)| p)
                .filter(|p| {
                    std::fs::read_link(format!("/proc/{p}/exe"))
                        .is_ok_and(|exe| exe.to_string_lossy().starts_with(&*shim.to_string_lossy()))
                })
                .collect()
        }
        Kind::Runc => {
            let sock = format!("{} ", node.join("containerd.sock").display());
            wasmbox_e2e::processes()
                .into_iter()
                .filter(|(_, c)| c.contains(RUNC_SHIM) && format!("{c} ").contains(&sock))
                .map(|(p, _)| p)
                .collect()
        }
    }
}

/// Node 1's kubelet and containerd.
fn node_daemons() -> Result<Vec<i32>> {
    ["node1-kubelet", "node1-containerd"]
        .iter()
        .map(|name| {
            let path = cluster_dir().join("pids").join(name);
            let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
            text.trim().parse().with_context(|| format!("{}: not a pid", path.display()))
        })
        .collect()
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
}

/// What `n` pods of one kind on one node cost.
struct NodeFigures {
    /// From the apply to all Running and Ready.
    ramp: Duration,
    /// PSS of the shims and their processes, per pod, KiB (above what they
    /// used before the ramp).
    pss_kib: f64,
    /// Processes under the shims, per pod.
    procs: f64,
    /// CPU seconds of the node's kubelet and containerd over the ramp.
    daemons_cpu: f64,
    /// Deleting the namespace with all of them.
    delete: Duration,
}

fn node_pods(c: &Cluster, kind: Kind, n: usize) -> Result<NodeFigures> {
    let ns = match kind {
        Kind::Wasm => "wbb-node-wasm",
        Kind::Runc => "wbb-node-runc",
    };
    c.namespace(ns)?;
    let measured = (|| -> Result<NodeFigures> {
        let (pss0, procs0) = tree_pss(&node_shims(kind));
        let daemons = node_daemons()?;
        let ticks0: u64 = daemons.iter().map(|&p| ticks(p)).sum();
        let ramp = c.deploy_ready(ns, "sleepers", n, &deployment("sleepers", n, kind, Some(NODE)))?;
        let ticks1: u64 = daemons.iter().map(|&p| ticks(p)).sum();
        std::thread::sleep(Duration::from_secs(3));
        let (pss1, procs1) = tree_pss(&node_shims(kind));
        ensure!(procs1 >= procs0 + n, "{} processes under the shims for {n} pods", procs1 - procs0.min(procs1));
        Ok(NodeFigures {
            ramp,
            pss_kib: pss1.saturating_sub(pss0) as f64 / n as f64,
            procs: (procs1 - procs0) as f64 / n as f64,
            daemons_cpu: ticks1.saturating_sub(ticks0) as f64 / clock_ticks(),
            delete: Duration::ZERO,
        })
    })();
    let delete = c.delete_namespace(ns)?;
    Ok(NodeFigures { delete, ..measured? })
}

/// A Deployment of `replicas` pods spread on both nodes: from the apply to
/// all Ready, then deleted.
fn spread(c: &Cluster, kind: Kind, replicas: usize) -> Result<Duration> {
    let ns = match kind {
        Kind::Wasm => "wbb-spread-wasm",
        Kind::Runc => "wbb-spread-runc",
    };
    c.namespace(ns)?;
    let took = c.deploy_ready(ns, "sleepers", replicas, &deployment("sleepers", replicas, kind, None));
    c.delete_namespace(ns)?;
    took
}

/// The HPA of the manifest tier (hpa.yaml: a wasm HTTP service whose /spin
/// route burns CPU) under its client (hpa-load.yaml): from the load's
/// apply to the first change of the Deployment's replicas, and to all of
/// them Ready; (from, to) replicas.
fn hpa(c: &Cluster) -> Result<(Duration, Duration, u64)> {
    let ns = "wbb-hpa";
    c.namespace(ns)?;
    let manifest = |file: &str| -> Result<String> {
        let path = repo_root().join("crates/wasmbox-e2e/manifests").join(file);
        std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))
    };
    let measured = (|| -> Result<(Duration, Duration, u64)> {
        c.apply_yaml(ns, &manifest("hpa.yaml")?)?;
        c.kubectl(&["rollout", "status", "-n", ns, "deployment/busy", "--timeout=300s"])
            .with_context(|| c.describe(ns))?;
        // A steady start: the HPA has read the idle pod's CPU once.
        poll("the HPA's first metrics", Duration::from_secs(180), Duration::from_secs(1), || {
            let h = c.json(&["get", "hpa", "-n", ns, "busy"])?;
            Ok(h["status"]["currentMetrics"].as_array().is_some_and(|m| !m.is_empty()).then_some(()))
        })?;
        let deployment = || c.json(&["get", "deployment", "-n", ns, "busy"]);
        let t = Instant::now();
        c.apply_yaml(ns, &manifest("hpa-load.yaml")?)?;
        let replicas = poll("the HPA's scale-out", Duration::from_secs(300), Duration::from_millis(500), || {
            let r = deployment()?["spec"]["replicas"].as_u64().unwrap_or(0);
            Ok((r > 1).then_some(r))
        })
        .with_context(|| c.describe(ns))?;
        let scaled = t.elapsed();
        poll("the new replicas Ready", Duration::from_secs(300), Duration::from_millis(500), || {
            let d = deployment()?;
            Ok((d["status"]["readyReplicas"].as_u64().unwrap_or(0) >= replicas).then_some(()))
        })
        .with_context(|| c.describe(ns))?;
        Ok((scaled, t.elapsed(), replicas))
    })();
    c.delete_namespace(ns)?;
    measured
}

/// Pulls each kind's image on both nodes (and has the guest's code in
/// each node's cache) with a small spread Deployment, deleted after: the
/// measured pods then start as every later one does.
fn warm(c: &Cluster) -> Result<()> {
    for kind in [Kind::Wasm, Kind::Runc] {
        spread(c, kind, 2)?;
    }
    Ok(())
}

fn measure(c: &Cluster, opts: &ClusterOptions) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let ratio = |a: f64, b: f64| format!("{:.2}x", a / b);
    let secs = |d: Duration| format!("{:.1}", d.as_secs_f64());
    warm(c)?;
    let w = spread(c, Kind::Wasm, opts.replicas)?;
    let r = spread(c, Kind::Runc, opts.replicas)?;
    rows.push(Row {
        metric: format!("Deployment of {} replicas on both nodes: apply to all Ready (s)", opts.replicas),
        wasmbox: secs(w),
        runc: secs(r),
        ratio: ratio(w.as_secs_f64(), r.as_secs_f64()),
    });
    let wasm = node_pods(c, Kind::Wasm, opts.node_pods)?;
    let runc = if opts.runc_node_pods > 0 { Some(node_pods(c, Kind::Runc, opts.runc_node_pods)?) } else { None };
    let n_runc = opts.runc_node_pods;
    let mut node_row = |metric: String, f: &dyn Fn(&NodeFigures, usize) -> f64, fmt: &dyn Fn(f64) -> String| {
        let a = f(&wasm, opts.node_pods);
        let b = runc.as_ref().map(|r| f(r, n_runc));
        rows.push(Row {
            metric,
            wasmbox: fmt(a),
            runc: b.map(fmt).unwrap_or_else(|| "-".into()),
            ratio: b.map(|b| ratio(a, b)).unwrap_or_else(|| "-".into()),
        });
    };
    let pods = if n_runc > 0 && n_runc != opts.node_pods {
        format!("{} (runc {n_runc})", opts.node_pods)
    } else {
        opts.node_pods.to_string()
    };
    node_row(format!("{NODE}: {pods} pods, apply to all Running and Ready (s)"), &|f, _| f.ramp.as_secs_f64(), &|v| {
        format!("{v:.1}")
    });
    node_row(format!("{NODE}: pods per second over that ramp"), &|f, n| n as f64 / f.ramp.as_secs_f64(), &|v| {
        format!("{v:.1}")
    });
    node_row(format!("{NODE}: PSS per pod, the shims and their processes (MiB)"), &|f, _| f.pss_kib, &mib);
    node_row(format!("{NODE}: processes per pod under the shims"), &|f, _| f.procs, &|v| format!("{v:.1}"));
    node_row(format!("{NODE}: CPU of its kubelet + containerd over the ramp (s)"), &|f, _| f.daemons_cpu, &|v| {
        format!("{v:.1}")
    });
    node_row(
        format!("{NODE}: CPU of its kubelet + containerd per pod (ms)"),
        &|f, n| f.daemons_cpu * 1000.0 / n as f64,
        &|v| format!("{v:.0}"),
    );
    node_row(
        format!("{NODE}: deleting the namespace of those pods, waited (s)"),
        &|f, _| f.delete.as_secs_f64(),
        &|v| format!("{v:.1}"),
    );
    let (scaled, ready, replicas) = hpa(c)?;
    rows.push(Row {
        metric: format!("HPA (hpa.yaml): load applied to the first scale-out, 1 -> {replicas} replicas (s)"),
        wasmbox: secs(scaled),
        runc: "-".into(),
        ratio: "-".into(),
    });
    rows.push(Row {
        metric: "HPA: load applied to the new replicas Ready (s)".into(),
        wasmbox: secs(ready),
        runc: "-".into(),
        ratio: "-".into(),
    });
    Ok(rows)
}

pub fn run_cluster(opts: &ClusterOptions) -> Result<String> {
    cluster_sh(&["up"])?;
    let result = (|| -> Result<Vec<Row>> {
        let dir = tempfile::tempdir()?;
        let c = Cluster { k: Kube::from_env(dir.path().to_path_buf())?, _dir: dir };
        let probe = format!("{}:/probe.wasm", test_guests::P1);
        c.push_wasm_image(HTTP_IMAGE, &["--file", &probe, test_guests::HTTP])?;
        c.push_wasm_image(GUEST_IMAGE, &["--wasm-path", "/testguest.wasm", test_guests::P1, "hello"])?;
        measure(&c, opts)
    })();
    if std::env::var_os("WASMBOX_CLUSTER_KEEP").is_none() {
        cluster_sh(&["down"])?;
    }
    Ok(table(
        "wasmbox cluster benchmark",
        "the two-node cluster of scripts/cluster.sh; wasm: the P1 test guest `sleep` under runtimeClassName \
             wasmbox; runc: busybox `sleep`; requests 1m CPU, 4Mi; images pulled and code cached on both nodes \
             first; each workload's namespace deleted before the next; PSS per pod is above the shims' \
             before the ramp",
        &result?,
    ))
}
