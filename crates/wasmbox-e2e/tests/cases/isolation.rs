//! Isolation and limits, end to end: each case drives `ctr` as a user
//! would and looks at what the kernel says (`/proc/PID/ns`, cgroup files,
//! `ctr task metrics`).

use super::{ok, show, text, Env, P1, WASM};
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use wasmbox_e2e::RUNTIME;

/// The pid `ctr task ls` shows for `id`.
pub fn task_pid(env: &Env, id: &str) -> Result<u32> {
    let out = env.c.ctr(&["task", "ls"])?;
    text(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no pid for {id} in {}", show(&out)))
}

/// `ctr run -d` of the test guest with `extra` flags; returns its pid once RUNNING.
pub fn run_detached(env: &Env, id: &str, extra: &[&str], args: &[&str]) -> Result<u32> {
    run_detached_image(env, id, extra, P1, args)
}

/// `ctr run -d` of `image` with `extra` flags; returns its pid once RUNNING.
pub fn run_detached_image(env: &Env, id: &str, extra: &[&str], image: &str, args: &[&str]) -> Result<u32> {
    let mut a = vec!["run", "-d", "--runtime", RUNTIME];
    a.extend_from_slice(extra);
    a.push(image);
    a.push(id);
    a.extend_from_slice(args);
    ok(&env.c.ctr(&a)?, 0)?;
    env.c.wait_status(id, "RUNNING")?;
    task_pid(env, id)
}

fn ns(pid: &str, kind: &str) -> Result<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).with_context(|| format!("/proc/{pid}/ns/{kind}"))
}

/// The container's cgroup directories (one per v1 hierarchy), from /proc/PID/cgroup.
fn cgroup_dirs(pid: u32) -> Result<Vec<std::path::PathBuf>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let name = if controllers.is_empty() {
            "unified".to_string()
        } else {
            controllers.trim_start_matches("name=").to_string()
        };
        let dir = std::path::Path::new("/sys/fs/cgroup").join(name).join(path.trim_start_matches('/'));
        // The root of a hierarchy (the unified one on a v1 host) is nobody's own.
        if path != "/" && dir.exists() {
            dirs.push(dir);
        }
    }
    Ok(dirs)
}

fn memory_dir(pid: u32) -> Result<std::path::PathBuf> {
    cgroup_dirs(pid)?
        .into_iter()
        .find(|d| d.join("memory.limit_in_bytes").exists() || d.join("memory.max").exists())
        .context("no memory cgroup")
}

fn cpu_usage_ns(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("cpuacct.usage")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// The container lives in namespaces of its own (and joins one by path),
/// in the cgroup its spec names, which is gone after delete; its rootfs
/// mount is not on the host.
pub fn namespaces_and_cgroup(env: &Env) -> Result<()> {
    let id = env.c.id("iso");
    let pid = run_detached(env, &id, &[], &[WASM, "sleep", "600"])?;
    for kind in ["mnt", "pid", "ipc", "uts", "net"] {
        ensure!(ns(&pid.to_string(), kind)? != ns("self", kind)?, "{kind} namespace is the host's");
    }
    ensure!(
        !env.c.mounts().iter().any(|m| m.contains(&format!("/{id}/"))),
        "the rootfs is mounted on the host: {:?}",
        env.c.mounts()
    );
    // ctr's default cgroupsPath is /<namespace>/<id>.
    let dirs = cgroup_dirs(pid)?;
    ensure!(dirs.iter().any(|d| d.ends_with(format!("default/{id}"))), "not in the spec's cgroup: {dirs:?}");
    // A second container joins the first one's network namespace by path.
    let joined = env.c.id("iso-join");
    let net = format!("network:/proc/{pid}/ns/net");
    let pid2 = run_detached(env, &joined, &["--with-ns", &net], &[WASM, "sleep", "600"])?;
    ensure!(ns(&pid2.to_string(), "net")? == ns(&pid.to_string(), "net")?, "joined netns differs");
    ensure!(ns(&pid2.to_string(), "mnt")? != ns(&pid.to_string(), "mnt")?, "mount namespace shared");
    env.kill_and_remove(&joined)?;
    env.kill_and_remove(&id)?;
    for d in &dirs {
        ensure!(!d.exists(), "cgroup {} left after delete", d.display());
    }
    Ok(())
}

/// A guest running as uid 1000 cannot read a root-only file on a bind
/// mount; as root it can (runc's behaviour).
pub fn user_is_applied_to_file_access(env: &Env) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let secret = env.shared.join("root-only.txt");
    std::fs::write(&secret, "for root\n")?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    let mnt = format!("type=bind,src={},dst=/mnt,options=rbind:ro", env.shared.display());
    // ctr 1.6 has no --user: a whole spec (ctr's default, as `ctr oci spec`
    // prints it) with process.user set, given with --config.
    let spec = env.c.ctr(&["oci", "spec"])?;
    ok(&spec, 0)?;
    let mut spec: serde_json::Value = serde_json::from_slice(&spec.stdout)?;
    spec["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    spec["process"]["args"] = serde_json::json!([WASM, "read", "/mnt/root-only.txt"]);
    spec["mounts"].as_array_mut().context("spec mounts")?.push(serde_json::json!(
        {"destination": "/mnt", "type": "bind", "source": env.shared, "options": ["rbind", "ro"]}
    ));
    // With --config ctr takes no image: the rootfs is a directory of ours.
    let rootfs = env.c.dir.join("uid-rootfs");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::copy(test_guests::P1, rootfs.join(WASM.trim_start_matches('/')))?;
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": false});
    let config = env.c.dir.join("spec-uid1000.json");
    std::fs::write(&config, serde_json::to_vec(&spec)?)?;
    let id = env.c.id("uid");
    let out = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", config.to_str().context("path")?, &id])?;
    ensure!(
        text(&out.stdout).contains("read /mnt/root-only.txt failed") && !text(&out.stdout).contains("for root"),
        "uid 1000 read a 0600 root file:\n{}",
        show(&out)
    );
    let out = env.run(P1, &["--mount", &mnt], &[WASM, "read", "/mnt/root-only.txt"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("for root"), "{}", show(&out));
    std::fs::remove_file(secret)?;
    Ok(())
}

/// A guest that keeps allocating under a 64 MiB limit ends with 137 (as
/// the OOM killer would end it) and the limit named, and a neighbour keeps
/// running.
pub fn memory_bomb_ends_at_the_limit(env: &Env) -> Result<()> {
    let neighbour = env.c.id("bomb-neighbour");
    run_detached(env, &neighbour, &[], &[WASM, "sleep", "600"])?;
    let out = env.run(P1, &["--memory-limit", "67108864"], &[WASM, "alloc", "1024"])?;
    ensure!(out.status.code() == Some(137), "expected 137 (as from the OOM killer):\n{}", show(&out));
    let err = text(&out.stderr);
    ensure!(err.contains("memory limit reached") && err.contains("64 MiB"), "{}", show(&out));
    ensure!(!text(&out.stdout).contains("allocated all"), "{}", show(&out));
    ensure!(env.c.task_status(&neighbour)?.as_deref() == Some("RUNNING"), "the neighbour stopped");
    env.kill_and_remove(&neighbour)
}

/// `ctr task metrics` reads the container's cgroup: the memory limit
/// given, CPU time of a busy guest, pids. `--cpus 0.5` sets a CFS quota
/// that throttles a busy guest; pause freezes it (no CPU used while
/// PAUSED) and resume lets it run again; a paused task can be killed.
pub fn metrics_cpu_quota_pause_resume(env: &Env) -> Result<()> {
    let id = env.c.id("busy");
    let pid = run_detached(env, &id, &["--memory-limit", "67108864", "--cpus", "0.5"], &[WASM, "loop"])?;
    let mem = memory_dir(pid)?;
    let cpu = cgroup_dirs(pid)?.into_iter().find(|d| d.join("cpuacct.usage").exists());
    let quota_dir = cgroup_dirs(pid)?.into_iter().find(|d| d.join("cpu.cfs_quota_us").exists());
    std::thread::sleep(Duration::from_millis(1500));
    let m = env.c.ctr(&["task", "metrics", &id])?;
    ok(&m, 0)?;
    let mt = text(&m.stdout);
    ensure!(mt.contains("67108864"), "metrics lack the memory limit:\n{mt}");
    if let Some(cpu) = &cpu {
        let usage = cpu_usage_ns(cpu);
        ensure!(usage > 100_000_000, "a busy guest used {usage} ns of CPU");
    }
    if let Some(q) = &quota_dir {
        let quota = std::fs::read_to_string(q.join("cpu.cfs_quota_us")).unwrap_or_default();
        ensure!(quota.trim() == "50000", "cpu.cfs_quota_us is {quota:?}");
        let stat = std::fs::read_to_string(q.join("cpu.stat")).unwrap_or_default();
        let throttled: u64 =
            stat.lines().find_map(|l| l.strip_prefix("nr_throttled ").and_then(|v| v.trim().parse().ok())).unwrap_or(0);
        ensure!(throttled > 0, "a busy guest under --cpus 0.5 was never throttled: {stat}");
    }
    ensure!(mem.join("memory.limit_in_bytes").exists() || mem.join("memory.max").exists());
    ok(&env.c.ctr(&["task", "pause", &id])?, 0)?;
    env.c.wait_status(&id, "PAUSED")?;
    if let Some(cpu) = &cpu {
        let before = cpu_usage_ns(cpu);
        std::thread::sleep(Duration::from_millis(500));
        let after = cpu_usage_ns(cpu);
        ensure!(after - before < 20_000_000, "a paused guest used {} ns of CPU", after - before);
        ok(&env.c.ctr(&["task", "resume", &id])?, 0)?;
        env.c.wait_status(&id, "RUNNING")?;
        let t = Instant::now();
        while cpu_usage_ns(cpu) == after && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        ensure!(cpu_usage_ns(cpu) > after, "the guest did not run again after resume");
        ok(&env.c.ctr(&["task", "pause", &id])?, 0)?;
        env.c.wait_status(&id, "PAUSED")?;
    }
    // Killing a paused task works.
    env.kill_and_remove(&id)?;
    ensure!(!mem.exists(), "cgroup {} left after delete", mem.display());
    Ok(())
}

/// An annotated CPU deadline ends a busy loop with a message naming it,
/// however short it is.
pub fn cpu_deadline_ends_a_loop(env: &Env) -> Result<()> {
    let out = env.run(P1, &["--annotation", "wasmbox.io/cpu-deadline=300ms"], &[WASM, "loop"])?;
    ensure!(out.status.code() == Some(134), "expected 134:\n{}", show(&out));
    ensure!(
        text(&out.stderr).contains("CPU deadline reached") && text(&out.stderr).contains("wasmbox.io/cpu-deadline"),
        "{}",
        show(&out)
    );
    // A deadline shorter than compiling the guest (the cache off): the
    // compile is not counted, and the loop still ends.
    let annotations = ["--annotation", "wasmbox.io/cpu-deadline=1ms", "--annotation", "wasmbox.io/compile-cache=off"];
    let out = env.run(P1, &annotations, &[WASM, "loop"])?;
    ensure!(out.status.code() == Some(134) && text(&out.stderr).contains("CPU deadline reached"), "{}", show(&out));
    let bad = env.run(P1, &["--annotation", "wasmbox.io/cpu-deadline=soon"], &[WASM, "loop"])?;
    ensure!(!bad.status.success() && text(&bad.stderr).contains("wasmbox.io/cpu-deadline"), "{}", show(&bad));
    Ok(())
}

/// containerd's default seccomp profile (`--seccomp`, what CRI's
/// RuntimeDefault gives) lets wasmtime run the guest.
pub fn default_seccomp_profile_runs(env: &Env) -> Result<()> {
    let out = env.run(P1, &["--seccomp"], &[WASM, "hello"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("hello from wasm"), "{}", show(&out));
    let out = env.run(P1, &["--seccomp"], &[WASM, "read", "/data/msg.txt"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("a file in the image"), "{}", show(&out));
    Ok(())
}

/// Hostile images and knobs fail Create promptly and leave nothing: an
/// entrypoint that is a FIFO or a directory, and preparing that takes
/// longer than its bound.
pub fn hostile_entrypoints_and_prepare_bound(env: &Env) -> Result<()> {
    env.expect_refused(P1, &[], &["/bad/fifo.wasm"], &["/bad/fifo.wasm", "a FIFO, not a regular file"])?;
    env.expect_refused(P1, &[], &["/data"], &["/data", "a directory"])?;
    env.expect_refused(
        P1,
        &["--annotation", "wasmbox.io/prepare-timeout=1ms"],
        &[WASM, "hello"],
        &["took longer than 1 ms", "wasmbox.io/prepare-timeout"],
    )?;
    Ok(())
}
