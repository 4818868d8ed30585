//! The CRI tier: a real containerd with its CRI plugin, the runtime
//! handler `wasmbox` for every container of a pod (the pause container and
//! Linux sidecars too), a CNI bridge, all driven with crictl as the
//! kubelet drives CRI: pods, containers, logs, exit codes and reasons,
//! stop with a grace period, stats, resource updates, removal.
//!
//! Traffic stays inside the network namespaces the test makes; the bridge
//! is removed at the end.

// A test runner reports on stdout.
#![allow(clippy::print_stdout)]

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wasmbox_e2e::cri::Pod;
use wasmbox_e2e::{bin_dir, Containerd, PAUSE_IMAGE};
use wasmbox_image::ImageSpec;

const WASM_IMAGE: &str = "docker.io/library/wasmbox-test-p1:latest";
const BUSYBOX: &str = "docker.io/library/wasmbox-test-busybox:latest";
const WASM: &str = "/testguest.wasm";
/// The wasi:http/proxy test component (serves on 0.0.0.0:8080).
const HTTP_IMAGE: &str = "docker.io/library/wasmbox-test-http:latest";
/// WASI 0.3 guests: a command and an HTTP handler (see test-guests).
const P3_CLI_IMAGE: &str = "docker.io/library/wasmbox-test-p3cli:latest";
const P3_HTTP_IMAGE: &str = "docker.io/library/wasmbox-test-p3http:latest";
/// A Spin application (the spin-sdk test component) packaged by
/// `wasmbox image build --spin`: Entrypoint `/`.
const SPIN_IMAGE: &str = "docker.io/library/wasmbox-test-spin-pod:latest";
/// critest's web server: busybox httpd serving a page on port 80.
const WEB_SERVER: &str = "docker.io/library/wasmbox-test-httpd:latest";

/// critest's conformance groups that run offline.
const CRITEST_FOCUS: &str = "PodSandbox|Container|Streaming|Networking|Runtime info|Security Context";
/// Left out, with why: tests of image pulls and of what the test node
/// lacks (AppArmor, SELinux, NRI, seccomp profiles on disk, user
/// namespaces, iptables for host ports), and those that need the test
/// images of a registry (httpd, nginx's pid file, `pgrep`, non-root users,
/// `sh` for masked paths). The same list fails with runc as the handler.
const CRITEST_SKIP: &str = "Image|AppArmor|SELinux|NRI|seccomp|Seccomp|apparmor|Mount Propagation|httpd|\
user namespace|UserNamespace|supplemental|Supplemental|RunAsGroup|RunAsUser|privileged|Privileged|\
Multiple Containers|port mapping with host port|execSync with timeout|HostPID|HostIpc|ContainerPID|\
PodPID|MaskedPaths|NoNewPrivs|portforward in host network";

struct Env {
    c: Containerd,
}

impl Env {
    fn pod(&self, name: &str, host_network: bool) -> Result<Pod> {
        self.c.runp(name, "wasmbox", host_network, None)
    }

    fn pod_in(&self, name: &str, host_network: bool, cgroup_parent: Option<&str>) -> Result<Pod> {
        self.c.runp(name, "wasmbox", host_network, cgroup_parent)
    }

    fn create(&self, pod: &Pod, name: &str, attempt: u32, image: &str, command: &[&str]) -> Result<String> {
        self.c.create_in(pod, name, attempt, image, command, json!({}))
    }

    fn run(&self, pod: &Pod, name: &str, image: &str, command: &[&str]) -> Result<String> {
        self.c.run_in(pod, name, image, command)
    }

    /// `url`'s body as busybox `wget` in the container `side` gets it,
    /// retried (bounded) until the server answers.
    fn sidecar_get(&self, side: &str, url: &str) -> Result<String> {
        let t = Instant::now();
        loop {
            let out = self.c.crictl(&["exec", "--sync", side, "wget", "-qO-", url])?;
            if out.status.success() || t.elapsed() > Duration::from_secs(20) {
                ensure!(out.status.success(), "sidecar wget {url}: {}", String::from_utf8_lossy(&out.stderr));
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pod's CNI address, as CRI reports it ("" with none).
    fn pod_ip(&self, pod: &Pod) -> Result<String> {
        Ok(self.c.crictl_json(&["inspectp", &pod.id])?["status"]["network"]["ip"].as_str().unwrap_or("").to_string())
    }

    /// `crictl stop` of a server: it drains on SIGTERM and exits 0.
    fn stop_drains(&self, id: &str) -> Result<()> {
        self.c.crictl_ok(&["stop", "--timeout", "10", id])?;
        let s = self.status(id)?;
        ensure!(s["state"] == "CONTAINER_EXITED" && s["exitCode"] == 0, "{id} after SIGTERM: {s}");
        Ok(())
    }

    fn status(&self, id: &str) -> Result<Value> {
        Ok(self.c.crictl_json(&["inspect", id])?["status"].clone())
    }

    /// Waits (bounded; not a timing assertion) until the container exited.
    fn wait_exited(&self, id: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status(id)?;
            if s["state"] == "CONTAINER_EXITED" {
                return Ok(s);
            }
            ensure!(Instant::now() < deadline, "container {id} never exited: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self, id: &str) -> Result<u64> {
        self.c.crictl_json(&["inspect", id])?["info"]["pid"].as_u64().with_context(|| format!("no pid for {id}"))
    }

    fn sandbox_pid(&self, pod: &Pod) -> Result<u64> {
        self.c.crictl_json(&["inspectp", &pod.id])?["info"]["pid"].as_u64().context("no sandbox pid")
    }

    fn logs(&self, id: &str) -> Result<String> {
        let out = self.c.crictl(&["logs", id])?;
        Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    fn remove_pod(&self, pod: &Pod) -> Result<()> {
        self.c.remove_pod(pod)
    }
}

fn ns(pid: impl std::fmt::Display, kind: &str) -> Result<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).with_context(|| format!("/proc/{pid}/ns/{kind}"))
}

/// The figure of one container in `crictl stats -o json`.
fn stat_value(stats: &Value, id: &str, path: &[&str]) -> Option<u64> {
    let entry = stats["stats"].as_array()?.iter().find(|s| s["attributes"]["id"] == id)?;
    let mut v = entry;
    for p in path {
        v = &v[*p];
    }
    v["value"].as_str().and_then(|s| s.parse().ok()).or_else(|| v["value"].as_u64())
}

/// A pod whose app is wasm and whose sidecar is busybox: all three
/// containers (pause, app, sidecar) go through the wasmbox handler; they
/// share the pod's network namespace, which CNI gave the pod's address;
/// logs come back through crictl; stats have real figures; updates reach
/// the cgroup; stop honours the grace period; nothing is left after.
fn mixed_pod(env: &Env) -> Result<()> {
    let pod = env.pod("mixed", false)?;
    let result = (|| -> Result<()> {
        let ip = env.pod_ip(&pod)?;
        ensure!(ip.starts_with("10.231."), "the pod has no address from the test bridge: {ip:?}");
        let sandbox = env.sandbox_pid(&pod)?;
        ensure!(ns(sandbox, "net")? != ns("self", "net")?, "the pod is in the host's network namespace");
        let app = env.run(&pod, "app", WASM_IMAGE, &[WASM, "sleep", "600"])?;
        // A sidecar that ignores SIGTERM, to be stopped by SIGKILL.
        let side =
            env.run(&pod, "side", BUSYBOX, &["sh", "-c", "trap '' TERM; echo sidecar up; while :; do sleep 1; done"])?;
        let hello = env.run(&pod, "hello", WASM_IMAGE, &[WASM, "hello"])?;
        let (app_pid, side_pid) = (env.pid(&app)?, env.pid(&side)?);
        for (name, pid) in [("app", app_pid), ("side", side_pid)] {
            ensure!(ns(pid, "net")? == ns(sandbox, "net")?, "{name} is not in the pod's network namespace");
            ensure!(ns(pid, "ipc")? == ns(sandbox, "ipc")?, "{name} is not in the pod's ipc namespace");
            ensure!(ns(pid, "uts")? == ns(sandbox, "uts")?, "{name} is not in the pod's uts namespace");
            ensure!(ns(pid, "pid")? != ns("self", "pid")?, "{name} is in the host's pid namespace");
            ensure!(ns(pid, "mnt")? != ns(sandbox, "mnt")?, "{name} shares the sandbox's mount namespace");
        }
        // Exec, as probes and `kubectl exec` use it: ExecSync and streaming.
        let said = env.c.crictl_ok(&["exec", "--sync", &side, "hostname"])?;
        ensure!(said == "mixed", "exec --sync hostname: {said:?}");
        let out = env.c.crictl(&["exec", "--sync", &side, "sh", "-c", "exit 3"])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && err.contains("exited with 3"), "exec --sync exit 3: {err}");
        let streamed = env.c.crictl_ok(&["exec", &side, "echo", "streamed"])?;
        ensure!(streamed.contains("streamed"), "streaming exec: {streamed}");
        // Exec into the wasm container: a new instance in its namespaces.
        let said = env.c.crictl_ok(&["exec", "--sync", &app, WASM, "hello"])?;
        ensure!(said.contains("hello from wasm"), "exec into wasm: {said}");
        let fib = std::fs::read_to_string(format!("/proc/{side_pid}/net/fib_trie"))?;
        ensure!(fib.contains(&ip), "the sidecar's network has no {ip}");
        let done = env.wait_exited(&hello)?;
        ensure!(done["exitCode"] == 0 && done["reason"] == "Completed", "hello: {done}");
        let logs = env.logs(&hello)?;
        ensure!(logs.contains("hello from wasm"), "crictl logs of the wasm container: {logs}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !env.logs(&side)?.contains("sidecar up") {
            ensure!(Instant::now() < deadline, "crictl logs of the sidecar: {}", env.logs(&side)?);
            std::thread::sleep(Duration::from_millis(50));
        }
        // The CRI log file itself is in CRI's format.
        let file = env.c.dir.join("pods/mixed/hello-0.log");
        let raw = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
        ensure!(raw.lines().any(|l| l.contains(" stdout F ") && l.ends_with("hello from wasm")), "log file: {raw}");

        let stats = env.c.crictl_json(&["stats", "--pod", &pod.id])?;
        for (name, id) in [("app", &app), ("side", &side)] {
            let mem = stat_value(&stats, id, &["memory", "workingSetBytes"]);
            ensure!(mem.is_some_and(|m| m > 0), "no memory figure for {name}: {stats}");
            ensure!(stat_value(&stats, id, &["cpu", "usageCoreNanoSeconds"]).is_some(), "no CPU figure for {name}");
        }
        for (name, id) in [("app", &app), ("side", &side)] {
            env.c.crictl_ok(&["update", "--memory", "134217728", id])?;
            let limit = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/k8s.io/{id}/memory.limit_in_bytes"))
                .with_context(|| format!("{name}'s memory cgroup"))?;
            ensure!(limit.trim() == "134217728", "{name}: memory.limit_in_bytes {limit} after update");
        }
        // A wasm guest ends on SIGTERM; the sidecar ignores it and gets
        // SIGKILL once the grace period is over.
        env.c.crictl_ok(&["stop", "--timeout", "2", &app])?;
        let s = env.status(&app)?;
        ensure!(s["state"] == "CONTAINER_EXITED" && s["exitCode"] == 143, "app after stop: {s}");
        env.c.crictl_ok(&["stop", "--timeout", "1", &side])?;
        let s = env.status(&side)?;
        ensure!(s["state"] == "CONTAINER_EXITED" && s["exitCode"] == 137, "side after stop: {s}");
        Ok(())
    })();
    let removed = env.remove_pod(&pod);
    result?;
    removed
}

/// Images from a registry over HTTPS with token authentication, as a
/// node pulls them: `crictl pull --creds` (the kubelet passes an
/// imagePullSecret's credentials in the same PullImage call), the
/// registry's CA in the CRI plugin's hosts directory. A rootfs image
/// pushed by our CLI runs in a pod; on 1.7+, so does an OCI wasm artifact
/// made runnable by `wasmbox image pull` and pushed back (its wasm a
/// layer the shim reads from the content store).
fn registry_pod(env: &Env) -> Result<()> {
    use wasmbox_e2e::{RegistryAuth, REGISTRY_PASSWORD, REGISTRY_USER};
    let reg = wasmbox_e2e::Registry::start_secure(RegistryAuth::Token)?;
    reg.trust_in(&env.c)?;
    let ca = reg.ca.clone().context("no CA")?.display().to_string();
    let login = format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}");
    let dir = env.c.dir.join("registry-pod");
    std::fs::create_dir_all(&dir)?;
    let cli = |args: &[&str]| -> Result<String> {
        let o = std::process::Command::new(bin_dir()?.join("wasmbox")).args(args).output()?;
        let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        ensure!(o.status.success(), "wasmbox {}: {said}", args.join(" "));
        Ok(said)
    };
    let path = |name: &str| dir.join(name).display().to_string();
    let image = format!("{}/wasmbox/pod-hello:v1", reg.addr);
    // An env of its own: an image identical to WASM_IMAGE would share its
    // image id, and CRI's RemoveImage removes every name of an id.
    let build = ["image", "build", "-t", &image, "-o", &path("hello.tar"), "--env", "FROM=registry"];
    cli(&[&build[..], &["--wasm-path", WASM, test_guests::P1, "hello"]].concat())?;
    cli(&["image", "push", "--tls-ca", &ca, "--user", &login, &path("hello.tar")])?;
    let artifact = format!("{}/wasmbox/pod-artifact:v1", reg.addr);
    let runnable = format!("{}/wasmbox/pod-artifact-runnable:v1", reg.addr);
    cli(&["image", "build", "--artifact", "-t", &artifact, "-o", &path("artifact.tar"), test_guests::P1])?;
    cli(&["image", "push", "--tls-ca", &ca, "--user", &login, &path("artifact.tar")])?;
    cli(&["image", "pull", "--tls-ca", &ca, "--user", &login, &artifact, "-o", &path("runnable.tar")])?;
    cli(&["image", "push", "--tls-ca", &ca, "--user", &login, &path("runnable.tar"), &runnable])?;
    // containerd without the credentials is refused by the registry.
    let anonymous = env.c.crictl(&["pull", &image])?;
    ensure!(!anonymous.status.success(), "an anonymous pull succeeded: {}", String::from_utf8_lossy(&anonymous.stdout));
    env.c.crictl_ok(&["pull", "--creds", &login, &image])?;
    let layered = !wasmbox_e2e::containerd_version().contains(" 1.6.");
    if layered {
        env.c.crictl_ok(&["pull", "--creds", &login, &runnable])?;
    }
    let pod = env.pod("pulled", false)?;
    let result = (|| -> Result<()> {
        let mut runs = vec![("hello", image.as_str(), vec![])];
        if layered {
            runs.push(("artifact", runnable.as_str(), vec!["/app.wasm", "hello"]));
        }
        for (name, image, command) in runs {
            let id = env.run(&pod, name, image, &command)?;
            let done = env.wait_exited(&id)?;
            ensure!(done["exitCode"] == 0, "{name} ({image}): {done}");
            let logs = env.logs(&id)?;
            ensure!(logs.contains("hello from wasm"), "{name} ({image}) logged: {logs}");
        }
        Ok(())
    })();
    let removed = env.remove_pod(&pod);
    for i in [&image, &runnable] {
        let _ = env.c.crictl(&["rmi", i]);
    }
    result?;
    removed
}

/// Exit codes and reasons as the kubelet reads them, for wasm and Linux
/// containers, and a container restarted in its pod (a new attempt).
fn exit_codes_reasons_restart(env: &Env) -> Result<()> {
    let pod = env.pod("exits", false)?;
    let result = (|| -> Result<()> {
        for (name, image, cmd, code, reason) in [
            ("wasm-ok", WASM_IMAGE, vec![WASM, "hello"], 0, "Completed"),
            ("wasm-five", WASM_IMAGE, vec![WASM, "exit", "5"], 5, "Error"),
            ("linux-three", BUSYBOX, vec!["sh", "-c", "exit 3"], 3, "Error"),
            ("linux-ok", BUSYBOX, vec!["true"], 0, "Completed"),
        ] {
            let id = env.run(&pod, name, image, &cmd)?;
            let s = env.wait_exited(&id)?;
            ensure!(s["exitCode"] == code && s["reason"] == reason, "{name}: {s}");
        }
        // The kernel's OOM killer ends a Linux container over its limit:
        // the reason is OOMKilled (from the shim's TaskOOM event).
        let limit = json!({"resources": {"memory_limit_in_bytes": 33554432}});
        let hog = env.c.create_in(&pod, "hog", 0, BUSYBOX, &["tail", "/dev/zero"], limit)?;
        env.c.crictl_ok(&["start", &hog])?;
        let s = env.wait_exited(&hog)?;
        ensure!(s["exitCode"] == 137 && s["reason"] == "OOMKilled", "hog: {s}");
        // A wasm guest growing past its container's limit is ended by the
        // engine as the OOM killer would end it: 137, OOMKilled.
        let limit = json!({"resources": {"memory_limit_in_bytes": 33554432}});
        let bomb = env.c.create_in(&pod, "wasm-bomb", 0, WASM_IMAGE, &[WASM, "alloc", "1024"], limit)?;
        env.c.crictl_ok(&["start", &bomb])?;
        let s = env.wait_exited(&bomb)?;
        ensure!(s["exitCode"] == 137 && s["reason"] == "OOMKilled", "wasm-bomb: {s}");
        let logs = env.c.crictl(&["logs", &bomb])?;
        let said = String::from_utf8_lossy(&logs.stderr);
        ensure!(said.contains("memory limit reached"), "wasm-bomb's log: {said}");
        // The kubelet restarts a container as a new one, attempt + 1.
        let again = env.create(&pod, "wasm-five", 1, WASM_IMAGE, &[WASM, "hello"])?;
        env.c.crictl_ok(&["start", &again])?;
        let s = env.wait_exited(&again)?;
        ensure!(s["exitCode"] == 0, "restarted container: {s}");
        // A bad entrypoint is an error naming it; the pod carries on.
        let bad = env.create(&pod, "bad", 0, WASM_IMAGE, &["/missing.wasm"]);
        let bad = match bad {
            Ok(id) => env.c.crictl(&["start", &id])?,
            Err(e) => {
                ensure!(format!("{e:#}").contains("/missing.wasm"), "{e:#}");
                return Ok(());
            }
        };
        let text = String::from_utf8_lossy(&bad.stderr);
        ensure!(!bad.status.success() && text.contains("/missing.wasm"), "bad entrypoint: {text}");
        Ok(())
    })();
    let removed = env.remove_pod(&pod);
    result?;
    removed
}

/// A wasi:http/proxy component as a pod's service: a busybox sidecar of
/// the pod reaches it on the pod's loopback, the host at the pod's IP
/// (CNI bridge); StopContainer's SIGTERM drains it and it exits 0.
fn serving_pod(env: &Env) -> Result<()> {
    let pod = env.pod("serving", false)?;
    let result = (|| -> Result<()> {
        let app = env.run(&pod, "app", HTTP_IMAGE, &[])?;
        let side = env.run(&pod, "side", BUSYBOX, &["sleep", "600"])?;
        let body = env.sidecar_get(&side, "http://127.0.0.1:8080/hello")?;
        // crictl's exec --sync adds line ends of its own.
        ensure!(body.trim_end() == "hello from wasm", "the sidecar got {body:?}");
        let ip = env.pod_ip(&pod)?;
        ensure!(!ip.is_empty(), "the pod has no IP");
        let out = std::process::Command::new("busybox")
            .args(["wget", "-qO-", &format!("http://{ip}:8080/hello")])
            .output()?;
        let body = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && body == "hello from wasm\n",
            "the host at {ip}:8080 got {body:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env.stop_drains(&app)?;
        Ok(())
    })();
    let removed = env.remove_pod(&pod);
    result?;
    removed
}

/// WASI 0.3 guests as a pod's containers: a command's output in its log
/// and its exit code as the kubelet reads them, and an HTTP handler that
/// a busybox sidecar reaches on the pod's loopback, drained by StopContainer.
fn wasi_0_3_pod(env: &Env) -> Result<()> {
    let pod = env.pod("wasi3", false)?;
    let result = (|| -> Result<()> {
        let cli = env.run(&pod, "cli", P3_CLI_IMAGE, &["/p3cli.wasm", "hello", "from-cri"])?;
        let s = env.wait_exited(&cli)?;
        ensure!(s["exitCode"] == 0 && s["reason"] == "Completed", "cli: {s}");
        let logs = env.logs(&cli)?;
        ensure!(logs.contains(r#"hello from wasi:cli@0.3.0 ["hello", "from-cri"]"#), "cli's log: {logs}");
        let five = env.run(&pod, "five", P3_CLI_IMAGE, &["/p3cli.wasm", "exit", "5"])?;
        let s = env.wait_exited(&five)?;
        ensure!(s["exitCode"] == 5 && s["reason"] == "Error", "five: {s}");
        let app = env.run(&pod, "app", P3_HTTP_IMAGE, &[])?;
        let side = env.run(&pod, "side", BUSYBOX, &["sleep", "600"])?;
        let body = env.sidecar_get(&side, "http://127.0.0.1:8080/hello")?;
        ensure!(body.trim_end() == "hello from wasi:http@0.3.0 Method::Get /hello", "the sidecar got {body:?}");
        env.stop_drains(&app)?;
        Ok(())
    })();
    let removed = env.remove_pod(&pod);
    result?;
    removed
}

/// A Spin application in a pod, as SpinKube runs one (`command: ["/"]`),
/// on Spin's port 80 of the pod's network: a Linux sidecar reaches its
/// routes; a variable comes from the image's Env.
fn spin_app_pod(env: &Env) -> Result<()> {
    let pod = env.pod("spinapp", false)?;
    let result = (|| -> Result<()> {
        let app = env.run(&pod, "app", SPIN_IMAGE, &["/"])?;
        let side = env.run(&pod, "side", BUSYBOX, &["sleep", "600"])?;
        let body = env.sidecar_get(&side, "http://127.0.0.1:80/sdk/hello")?;
        ensure!(body.trim_end() == "hello from spin-sdk", "the sidecar got {body:?}");
        let body = env.sidecar_get(&side, "http://127.0.0.1/sdk/var?name=message")?;
        ensure!(body.trim_end() == "hallo, world", "the variable: {body:?}");
        env.stop_drains(&app)?;
        Ok(())
    })();
    let removed = env.remove_pod(&pod);
    result?;
    removed
}

/// Two wasm-only pods made at once: each has its own shim, network
/// namespace and address; PodSandboxStats has real figures for each.
fn two_pods_at_once(env: &Env) -> Result<()> {
    // Pod cgroups as the kubelet makes them (CRI reads pod stats there).
    let parent = format!("wasmbox-e2e-pods-{}", std::process::id());
    let (pa, pb) = (format!("/{parent}/twin-a"), format!("/{parent}/twin-b"));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| env.pod_in("twin-a", false, Some(&pa)));
        let b = s.spawn(|| env.pod_in("twin-b", false, Some(&pb)));
        (a.join().expect("pod a"), b.join().expect("pod b"))
    });
    let pods: Vec<Pod> = [a, b].into_iter().filter_map(|p| p.ok()).collect();
    let result = (|| -> Result<()> {
        ensure!(pods.len() == 2, "a pod failed to start");
        let mut seen = Vec::new();
        for pod in &pods {
            let id = env.run(pod, "app", WASM_IMAGE, &[WASM, "sleep", "600"])?;
            let pid = env.pid(&id)?;
            let ip = env.pod_ip(pod)?;
            seen.push((ns(pid, "net")?, ip));
        }
        ensure!(seen[0].0 != seen[1].0, "two pods share a network namespace");
        ensure!(seen[0].1 != seen[1].1 && !seen[0].1.is_empty(), "pod addresses: {seen:?}");
        ensure!(env.c.shims().len() == 2, "expected a shim per pod: {:?}", env.c.shims());
        if !wasmbox_e2e::containerd_version().contains(" 1.6.") {
            // PodSandboxStats (kubectl top's source); containerd 1.6 has none.
            let stats = env.c.crictl_json(&["statsp", "--id", &pods[0].id])?;
            let mem = &stats["stats"][0]["linux"]["memory"]["workingSetBytes"]["value"];
            let mem: u64 = mem.as_str().and_then(|v| v.parse().ok()).or(mem.as_u64()).unwrap_or(0);
            ensure!(mem > 0, "no pod memory figure: {stats}");
        }
        Ok(())
    })();
    let removed: Result<Vec<()>> = pods.iter().map(|pod| env.remove_pod(pod)).collect();
    for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        for dir in [&pa, &pb, &format!("/{parent}")] {
            let _ = std::fs::remove_dir(h.path().join(dir.trim_start_matches('/')));
        }
    }
    result?;
    removed.map(|_| ())
}

/// A host-network pod: its sandbox and wasm container are in the host's
/// network namespace.
fn host_network_pod(env: &Env) -> Result<()> {
    let pod = env.pod("hostnet", true)?;
    let result = (|| -> Result<()> {
        let sandbox = env.sandbox_pid(&pod)?;
        ensure!(ns(sandbox, "net")? == ns("self", "net")?, "a host-network pod got a network namespace");
        let app = env.run(&pod, "app", WASM_IMAGE, &[WASM, "sleep", "600"])?;
        ensure!(ns(env.pid(&app)?, "net")? == ns("self", "net")?, "the container left the host's network");
        env.c.crictl_ok(&["stop", "--timeout", "2", &app])?;
        Ok(())
    })();
    let removed = env.remove_pod(&pod);
    result?;
    removed
}

/// critest, cri-tools' validation suite, with `wasmbox` as the handler of
/// every pod it makes (its containers are busybox: the Linux backend), on
/// the groups that run offline (see [`CRITEST_SKIP`]). All must pass.
fn critest(env: &Env) -> Result<()> {
    // The same selection with runc as the handler, for the comparison.
    let (_, runc, _) = run_critest(env, "runc")?;
    let (ok, ours, report) = run_critest(env, "wasmbox")?;
    println!("critest, handler runc:    {}", runc.join("\n  "));
    println!("critest, handler wasmbox: {}", ours.join("\n  "));
    ensure!(ok, "critest with handler wasmbox failed (report in {}):\n{}", report.display(), ours.join("\n"));
    Ok(())
}

/// Runs critest's selection with `handler`: whether it succeeded, its
/// summary lines, and where its report is.
fn run_critest(env: &Env, handler: &str) -> Result<(bool, Vec<String>, std::path::PathBuf)> {
    let images = env.c.dir.join("critest-images.yaml");
    std::fs::write(&images, format!("defaultTestContainerImage: {BUSYBOX}\nwebServerTestImage: {WEB_SERVER}\n"))?;
    let endpoint = format!("unix://{}", env.c.sock.display());
    let bin = wasmbox_e2e::go_tool("critest");
    // containerd 1.6 answers StopPodSandbox/StopContainer of an unknown id
    // with NotFound (no shim involved); later versions as CRI asks.
    let mut skip = CRITEST_SKIP.to_string();
    if wasmbox_e2e::containerd_version().contains(" 1.6.") {
        skip.push_str("|should not return an error if not found");
    }
    let child = std::process::Command::new(&bin)
        .args(["--runtime-endpoint", &endpoint, "--image-endpoint", &endpoint, "--runtime-handler", handler])
        .arg("--test-images-file")
        .arg(&images)
        .arg(format!("--ginkgo.focus={CRITEST_FOCUS}"))
        .arg(format!("--ginkgo.skip={skip}"))
        .arg("--ginkgo.no-color")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (scripts/setup.sh builds it)", bin.display()))?;
    // A bound on a wedged run (not a timing assertion): killed after 20 min.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20 * 60);
            while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            if !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        })
    };
    // Both pipes are drained while it runs.
    let out = child.wait_with_output();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watchdog.join();
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Outside containerd's directory, which goes at the end of the run.
    let report = std::env::temp_dir().join(format!("wasmbox-critest-{handler}-{}.log", std::process::id()));
    std::fs::write(&report, &text)?;
    let summary: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("Ran ") || l.contains("Passed |") || l.contains("[FAIL]"))
        .map(|l| l.trim().to_string())
        .collect();
    Ok((out.status.success() && text.contains("SUCCESS!"), summary, report))
}

/// `wasmbox node check` on this node's CRI containerd: every item right
/// (handler, shim and runc on its PATH, CNI); on a configuration without
/// the handler, the handler item fails and so does the command.
fn node_check(env: &Env) -> Result<()> {
    let bin = bin_dir()?;
    let check = |config: &std::path::Path| -> Result<std::process::Output> {
        Ok(std::process::Command::new(bin.join("wasmbox"))
            .args(["node", "check", "--containerd"])
            .arg(wasmbox_e2e::tool("containerd"))
            .arg("--config")
            .arg(config)
            .args(["--path", &wasmbox_e2e::daemon_path(&bin)])
            .output()?)
    };
    let out = check(&env.c.dir.join("config.toml"))?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "node check of a good node failed:\n{said}{}", String::from_utf8_lossy(&out.stderr));
    for item in ["containerd", "handler", "shim", "runc", "cni plugins", "cni config", "cgroups"] {
        ensure!(
            said.lines().any(|l| l.starts_with("ok") && l[4..].trim_start().starts_with(item)),
            "no ok for {item}:\n{said}"
        );
    }
    let bare = env.c.dir.join("bare-config.toml");
    std::fs::write(
        &bare,
        format!("version = 2\nroot = \"{d}/bare-root\"\nstate = \"{d}/bare-state\"\n", d = env.c.dir.display()),
    )?;
    let out = check(&bare)?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.code() == Some(1), "node check without the handler: {out:?}");
    ensure!(said.lines().any(|l| l.starts_with("FAIL handler") && l.contains("io.containerd.wasmbox.v1")), "{said}");
    Ok(())
}

/// A standalone kubelet (no API server; `scripts/kubelet-build.sh` builds
/// it) runs a static pod of a wasm app and a busybox sidecar through this
/// containerd, whose default runtime is wasmbox: both run, the sidecar's
/// log is in the kubelet's pod log directory, `/stats/summary` has CPU and
/// memory of both, and removing the manifest stops the pod within its
/// grace period and removes it.
fn kubelet_static_pod(env: &Env) -> Result<()> {
    let kl = env.c.dir.join("kubelet");
    let (manifests, logs) = (kl.join("manifests"), kl.join("pods"));
    std::fs::create_dir_all(&manifests)?;
    let port = 20000 + std::process::id() % 10000;
    let config = format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         staticPodPath: {m}\ncontainerRuntimeEndpoint: unix://{sock}\ncgroupDriver: cgroupfs\n\
         failSwapOn: false\nfailCgroupV1: false\ncgroupsPerQOS: false\nenforceNodeAllocatable: []\n\
         localStorageCapacityIsolation: false\npodLogsDir: {l}\nfileCheckFrequency: 1s\n\
         authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}\n\
         authorization: {{mode: AlwaysAllow}}\naddress: 127.0.0.1\nport: {p}\nreadOnlyPort: {ro}\n\
         healthzBindAddress: 127.0.0.1\nhealthzPort: {hz}\nmakeIPTablesUtilChains: false\n",
        m = manifests.display(),
        sock = env.c.sock.display(),
        l = logs.display(),
        p = port,
        ro = port + 1,
        hz = port + 2,
    );
    std::fs::write(kl.join("kubelet.yaml"), config)?;
    let manifest = manifests.join("mixed.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: kmixed, namespace: default}}\nspec:\n\
             \x20 terminationGracePeriodSeconds: 3\n  containers:\n\
             \x20 - {{name: app, image: \"{WASM_IMAGE}\", imagePullPolicy: Never, command: [\"{WASM}\", \"sleep\", \"600\"]}}\n\
             \x20 - {{name: side, image: \"{BUSYBOX}\", imagePullPolicy: Never, command: [\"sh\", \"-c\", \"echo sidecar up; while :; do sleep 1; done\"]}}\n"
        ),
    )?;
    // The host's firewall is not the kubelet's to change.
    let ruleset = || std::process::Command::new("nft").args(["list", "ruleset"]).output().map(|o| o.stdout);
    let rules_before = ruleset()?;
    let log = std::fs::File::create(kl.join("kubelet.log"))?;
    let mut kubelet = std::process::Command::new(wasmbox_e2e::go_tool("kubelet"))
        .arg("--config")
        .arg(kl.join("kubelet.yaml"))
        .arg("--root-dir")
        .arg(kl.join("root"))
        .args(["--hostname-override", "wasmbox-test-node"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("running kubelet (scripts/kubelet-build.sh builds it)")?;
    let result = (|| -> Result<()> {
        let running = || -> Result<Vec<String>> {
            let out = env.c.crictl_ok(&["ps", "--state", "running", "-o", "json"])?;
            let v: Value = serde_json::from_str(&out)?;
            Ok(v["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_string))
                .collect())
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while running()?.len() < 2 {
            ensure!(
                Instant::now() < deadline,
                "the static pod never ran: {:?}; see {}",
                running()?,
                kl.join("kubelet.log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let side_log = std::fs::read_dir(&logs)?
            .flatten()
            .map(|d| d.path().join("side/0.log"))
            .find(|p| p.exists())
            .context("no sidecar log in the kubelet's pod log directory")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&side_log)?.contains("stdout F sidecar up") {
            ensure!(Instant::now() < deadline, "sidecar log: {}", std::fs::read_to_string(&side_log)?);
            std::thread::sleep(Duration::from_millis(100));
        }
        // What metrics-server (kubectl top) reads.
        let url = format!("http://127.0.0.1:{}/stats/summary?only_cpu_and_memory=true", port + 1);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = std::process::Command::new("curl").args(["-sf", &url]).output()?;
            let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let pod = summary["pods"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["podRef"]["name"] == "kmixed-wasmbox-test-node"));
            let figures = |name: &str| {
                pod.and_then(|p| p["containers"].as_array()?.iter().find(|c| c["name"] == name).cloned()).map(|c| {
                    (
                        c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0),
                        c["memory"]["workingSetBytes"].as_u64().unwrap_or(0),
                    )
                })
            };
            if let (Some(a), Some(s)) = (figures("app"), figures("side")) {
                if a.0 > 0 && a.1 > 0 && s.0 > 0 && s.1 > 0 {
                    break;
                }
            }
            ensure!(Instant::now() < deadline, "no CPU and memory for the pod in /stats/summary: {summary}");
            std::thread::sleep(Duration::from_millis(500));
        }
        // Removing the manifest ends the pod: SIGTERM, SIGKILL after 3 s.
        std::fs::remove_file(&manifest)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !running()?.is_empty() {
            ensure!(Instant::now() < deadline, "containers still running after the manifest went: {:?}", running()?);
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        while !env.c.crictl_ok(&["pods", "-q"])?.is_empty() {
            ensure!(Instant::now() < deadline, "the kubelet never removed the pod");
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })();
    let _ = kubelet.kill();
    let _ = kubelet.wait();
    // The kubelet makes its root directory a mount of its own; it is the
    // kubelet's, not a pod's: it goes with the kubelet.
    let root = kl.join("root").display().to_string();
    let mut theirs: Vec<String> = env.c.mounts().into_iter().filter(|m| m.starts_with(&root)).collect();
    theirs.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in theirs {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    result?;
    let rules_after = ruleset()?;
    ensure!(
        rules_after == rules_before,
        "the kubelet changed the host's firewall:\n{}",
        String::from_utf8_lossy(&rules_after)
    );
    Ok(())
}

/// What a removed pod must not leave: processes, mounts, cgroups, network
/// namespaces, runc state.
fn leftovers(env: &Env) -> Vec<String> {
    let mut left = Vec::new();
    left.extend(env.c.instances().iter().map(|p| format!("instance {p}")));
    left.extend(env.c.shims().iter().map(|p| format!("shim {p}")));
    left.extend(env.c.mounts().into_iter().map(|m| format!("mount {m}")));
    for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        for e in std::fs::read_dir(h.path().join("k8s.io")).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                left.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    let netns = env.c.dir.join("state/io.containerd.grpc.v1.cri/netns");
    left.extend(std::fs::read_dir(netns).into_iter().flatten().flatten().map(|e| format!("netns {:?}", e.path())));
    let runc = env.c.dir.join("state/wasmbox/runc/k8s.io");
    left.extend(std::fs::read_dir(runc).into_iter().flatten().flatten().map(|e| format!("runc state {:?}", e.path())));
    left
}

/// The shim's log lines about container `id`.
fn shim_lines(env: &Env, id: &str) -> Result<Vec<String>> {
    let log = std::fs::read_to_string(env.c.dir.join("containerd.log"))?;
    Ok(log.lines().filter(|l| l.contains(&format!("container {id}: "))).map(str::to_string).collect())
}

/// Compilers and tiers as a kubelet meets them. A fresh module's first
/// container starts on the baseline tier and asks for the optimized code,
/// which the restarted container (attempt 1) loads. A container whose
/// compile outlives its prepare timeout fails CreateContainer naming the
/// annotation; the compile goes on in the background, so the kubelet's
/// retry (the same create again) succeeds.
fn tiers_under_cri(env: &Env) -> Result<()> {
    let pod = env.pod("tiers", false)?;
    let result = (|| -> Result<()> {
        let auto = env.c.import_large("cri-auto", 4)?;
        let first = env.create(&pod, "auto", 0, &auto, &["/large.wasm#quick"])?;
        env.c.crictl_ok(&["start", &first])?;
        let s = env.wait_exited(&first)?;
        ensure!(s["exitCode"] == 0, "first start: {s}");
        let lines = shim_lines(env, &first)?;
        ensure!(
            lines.iter().any(|l| l.contains("(baseline (winch))") && l.contains("being compiled in the background")),
            "the first start was not on the baseline tier: {lines:#?}"
        );
        // The background compile caches the optimized code (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(300);
        while !shim_lines(env, &first)?.iter().any(|l| l.contains("code compiled in the background")) {
            ensure!(Instant::now() < deadline, "no background compile: {:#?}", shim_lines(env, &first)?);
            std::thread::sleep(Duration::from_millis(200));
        }
        let again = env.create(&pod, "auto", 1, &auto, &["/large.wasm#quick"])?;
        env.c.crictl_ok(&["start", &again])?;
        let s = env.wait_exited(&again)?;
        ensure!(s["exitCode"] == 0, "restarted: {s}");
        let lines = shim_lines(env, &again)?;
        ensure!(
            lines.iter().any(|l| l.contains("code from cache entry") && l.contains("(optimized (cranelift);")),
            "the restart did not load the optimized code: {lines:#?}"
        );

        // The prepare timeout, and the kubelet's retry: StartContainer
        // (where CRI creates the task) fails naming the annotation; the
        // kubelet makes the container again (the next attempt) and starts it.
        let big = env.c.import_large("cri-retry", 12)?;
        let annotations = json!({"wasmbox.io/compiler": "cranelift", "wasmbox.io/prepare-timeout": "1s"});
        let start = |attempt: u32| -> Result<String> {
            let id = env.c.create_annotated(
                &pod,
                "retry",
                attempt,
                &big,
                &["/large.wasm#quick"],
                json!({}),
                annotations.clone(),
            )?;
            let out = env.c.crictl(&["start", &id])?;
            if out.status.success() {
                return Ok(id);
            }
            let _ = env.c.crictl(&["rm", &id]);
            anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr))
        };
        let e = match start(0) {
            Ok(id) => anyhow::bail!("the first start did not time out: {:#?}", shim_lines(env, &id)?),
            Err(e) => e,
        };
        ensure!(format!("{e:#}").contains("wasmbox.io/prepare-timeout"), "{e:#}");
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut attempt = 1;
        let id = loop {
            match start(attempt) {
                Ok(id) => break id,
                Err(e) => ensure!(Instant::now() < deadline, "the retries never succeeded: {e:#}"),
            }
            attempt += 1;
            std::thread::sleep(Duration::from_secs(1));
        };
        let s = env.wait_exited(&id)?;
        ensure!(s["exitCode"] == 0, "the retried container: {s}");
        let lines = shim_lines(env, &id)?;
        ensure!(lines.iter().any(|l| l.contains("code from cache entry")), "the retry compiled again: {lines:#?}");
        Ok(())
    })();
    let removed = env.remove_pod(&pod);
    result?;
    removed
}

fn setup(c: Containerd) -> Result<Env> {
    c.import(&ImageSpec {
        name: WASM_IMAGE.into(),
        wasm: test_guests::P1.into(),
        wasm_dest: Some(WASM.into()),
        args: vec!["hello".into()],
        ..Default::default()
    })?;
    c.import(&ImageSpec { name: HTTP_IMAGE.into(), wasm: test_guests::HTTP.into(), ..Default::default() })?;
    c.import(&ImageSpec { name: P3_CLI_IMAGE.into(), wasm: test_guests::P3_CLI.into(), ..Default::default() })?;
    c.import(&ImageSpec { name: P3_HTTP_IMAGE.into(), wasm: test_guests::P3_HTTP.into(), ..Default::default() })?;
    let app = c.dir.join("spin-app");
    std::fs::create_dir_all(&app)?;
    std::fs::copy(test_guests::SPIN_APP, app.join("sdk.wasm"))?;
    std::fs::write(
        app.join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"pod\"\n[variables]\ngreeting = { default = \"hello\" }\n\
         [[trigger.http]]\nroute = \"/sdk/...\"\ncomponent = \"sdk\"\n[component.sdk]\nsource = \"sdk.wasm\"\n\
         [component.sdk.variables]\nmessage = \"{{ greeting }}, world\"\n",
    )?;
    let tar = c.dir.join("image-spin-pod.tar");
    let env = ["SPIN_VARIABLE_GREETING=hallo".to_string()];
    wasmbox_image::build_spin(SPIN_IMAGE, &app.join("spin.toml"), &env, false, std::fs::File::create(&tar)?)?;
    c.import_tar(&tar)?;
    c.import_busybox(BUSYBOX, &[])?;
    c.import_busybox(PAUSE_IMAGE, &["/bin/sleep", "2147483647"])?;
    let page = ("/www/index.html".to_string(), b"<html>wasmbox test page</html>\n".to_vec(), 0o644);
    c.import_busybox_with(WEB_SERVER, &["/bin/httpd", "-f", "-p", "80", "-h", "/www"], vec![page])?;
    Ok(Env { c })
}

type Case = (&'static str, fn(&Env) -> Result<()>);

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let cases: &[Case] = &[
        ("mixed_pod", mixed_pod),
        ("exit_codes_reasons_restart", exit_codes_reasons_restart),
        ("host_network_pod", host_network_pod),
        ("two_pods_at_once", two_pods_at_once),
        ("serving_pod", serving_pod),
        ("wasi_0_3_pod", wasi_0_3_pod),
        ("spin_app_pod", spin_app_pod),
        ("registry_pod", registry_pod),
        ("node_check", node_check),
        ("tiers_under_cri", tiers_under_cri),
        ("critest", critest),
        // Last: a kubelet removes pods it did not make.
        ("kubelet_static_pod", kubelet_static_pod),
    ];
    let selected: Vec<&Case> =
        cases.iter().filter(|(n, _)| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()))).collect();
    println!("cri against {}", wasmbox_e2e::containerd_version());
    let env = match bin_dir().and_then(|d| Containerd::start_cri(&d)).and_then(setup).context("setting up containerd") {
        Ok(e) => e,
        Err(e) => {
            println!("cri setup failed: {e:#}");
            println!("0 passed, {} failed", selected.len());
            std::process::exit(1);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in selected {
        let t = Instant::now();
        let result = case(&env).and_then(|()| {
            // Each pod is gone once its case is over.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = leftovers(&env);
                if left.is_empty() {
                    return Ok(());
                }
                ensure!(Instant::now() < deadline, "left after the pod was removed: {left:#?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        match result {
            Ok(()) => {
                passed += 1;
                println!("test cri::{name} ... ok ({} ms)", t.elapsed().as_millis());
            }
            Err(e) => {
                failed += 1;
                println!("test cri::{name} ... FAILED\n{e:#}\n");
            }
        }
    }
    drop(env);
    println!("\ncri: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
