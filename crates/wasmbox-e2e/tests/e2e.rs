//! End-to-end tier: a real containerd (Debian package) in a temporary root,
//! wasmbox's shim first on its PATH, images built by wasmbox's own image
//! builder, everything driven with `ctr` as a user would.
//!
//! A plain runner (harness = false): one containerd for all cases, started
//! once and torn down at the end, whatever happened in between.

// A test runner reports on stdout.
#![allow(clippy::print_stdout)]

use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};
use wasmbox_e2e::{bin_dir, Containerd, RUNTIME};
use wasmbox_image::ImageSpec;

#[path = "cases/cache.rs"]
mod cache;
#[path = "cases/clients.rs"]
mod clients;
#[path = "cases/engine.rs"]
mod engine;
#[path = "cases/hostile.rs"]
mod hostile;
#[path = "cases/isolation.rs"]
mod isolation;
#[path = "cases/layer.rs"]
mod layer;
#[path = "cases/linux.rs"]
mod linux;
#[path = "cases/logs.rs"]
mod logs;
#[path = "cases/node_install.rs"]
mod node_install;
#[path = "cases/push_wasm.rs"]
mod push_wasm;
#[path = "cases/registry.rs"]
mod registry;
#[path = "cases/serve.rs"]
mod serve;
#[path = "cases/shim.rs"]
mod shim;
#[path = "cases/spin.rs"]
mod spin;
#[path = "cases/tiers.rs"]
mod tiers;
#[path = "cases/wasi3.rs"]
mod wasi3;

const P1: &str = "docker.io/library/wasmbox-test-p1:latest";
const P2: &str = "docker.io/library/wasmbox-test-p2:latest";
const WASM: &str = "/testguest.wasm";

struct Env {
    c: Containerd,
    /// A host directory bind-mounted into containers.
    shared: std::path::PathBuf,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!("status {:?}\n--- stdout\n{}--- stderr\n{}", o.status.code(), text(&o.stdout), text(&o.stderr))
}

impl Env {
    /// `ctr run --rm --runtime wasmbox [extra...] IMAGE ID [args...]`
    fn run(&self, image: &str, extra: &[&str], args: &[&str]) -> Result<Output> {
        let id = self.c.id("run");
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
        a.extend_from_slice(extra);
        a.push(image);
        a.push(&id);
        a.extend_from_slice(args);
        self.c.ctr(&a)
    }

    /// Asserts a bad input fails in `ctr run` with every `needle` in its
    /// stderr, and that it left no task, instance process or mount behind.
    fn expect_refused(&self, image: &str, extra: &[&str], args: &[&str], needles: &[&str]) -> Result<()> {
        let (inst, mounts) = (self.c.instances().len(), self.c.mounts().len());
        let out = self.run(image, extra, args)?;
        ensure!(!out.status.success(), "expected a failure:\n{}", show(&out));
        let err = text(&out.stderr);
        for n in needles {
            ensure!(err.contains(n), "stderr lacks {n:?}:\n{}", show(&out));
        }
        ensure!(self.c.instances().len() == inst, "instance process leaked: {:?}", self.c.instances());
        ensure!(self.c.mounts().len() == mounts, "mount leaked: {:?}", self.c.mounts());
        Ok(())
    }
}

impl Env {
    /// SIGKILL, then `task rm` and `container rm`, each of which must succeed.
    fn kill_and_remove(&self, id: &str) -> Result<()> {
        ok(&self.c.ctr(&["task", "kill", "--signal", "SIGKILL", id])?, 0)?;
        self.c.wait_status(id, "STOPPED")?;
        ok(&self.c.ctr(&["task", "rm", id])?, 0)?;
        ok(&self.c.ctr(&["container", "rm", id])?, 0)
    }

    /// `task rm` and `container rm` of a container that may still run
    /// (SIGKILLed first, which may find it gone), each of which must succeed.
    fn remove_stopped_or_not(&self, id: &str) -> Result<()> {
        let _ = self.c.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
        let _ = self.c.wait_status(id, "STOPPED");
        ok(&self.c.ctr(&["task", "rm", id])?, 0)?;
        ok(&self.c.ctr(&["container", "rm", id])?, 0)
    }

    /// Waits (bounded) until only `n` shim daemons are left.
    fn shims_back_to(&self, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.c.shims().len() > n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        ensure!(self.c.shims().len() == n, "pod shim left behind: {:?}", self.c.shims());
        Ok(())
    }
}

fn ok(out: &Output, code: i32) -> Result<()> {
    ensure!(out.status.code() == Some(code), "expected exit {code}:\n{}", show(out));
    Ok(())
}

fn hello(env: &Env, image: &str) -> Result<()> {
    let out = env.run(image, &["--env", "GREETING=bonjour"], &[WASM, "hello", "a b", "c"])?;
    ok(&out, 0)?;
    let so = text(&out.stdout);
    ensure!(so.contains("hello from wasm"), "{}", show(&out));
    ensure!(so.contains(r#"args: ["hello", "a b", "c"]"#), "{}", show(&out));
    ensure!(so.contains("GREETING=bonjour"), "{}", show(&out));
    ensure!(text(&out.stderr).contains("hello on stderr"), "{}", show(&out));
    // The image's own Cmd when no args are given.
    let out = env.run(image, &[], &[])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("hello from wasm"), "{}", show(&out));
    Ok(())
}

fn hello_p1(env: &Env) -> Result<()> {
    hello(env, P1)
}

fn hello_p2_component(env: &Env) -> Result<()> {
    hello(env, P2)
}

fn exit_codes(env: &Env) -> Result<()> {
    ok(&env.run(P1, &[], &[WASM, "exit", "42"])?, 42)?;
    ok(&env.run(P1, &[], &[WASM, "exit", "0"])?, 0)?;
    // Codes WASI calls reserved (126 and up) still reach ctr as they are.
    ok(&env.run(P1, &[], &[WASM, "exit", "127"])?, 127)?;
    ok(&env.run(P1, &[], &[WASM, "exit", "255"])?, 255)?;
    // A wasip2 guest built by Rust's std reports only success or failure
    // (wasi:cli/exit `exit(result)`), so any non-zero code arrives as 1.
    ok(&env.run(P2, &[], &[WASM, "exit", "3"])?, 1)?;
    ok(&env.run(P2, &[], &[WASM, "exit", "0"])?, 0)
}

fn trap_is_134_with_backtrace(env: &Env) -> Result<()> {
    for image in [P1, P2] {
        let out = env.run(image, &[], &[WASM, "trap"])?;
        ok(&out, 134)?;
        let err = text(&out.stderr);
        ensure!(text(&out.stdout).contains("about to trap"), "{}", show(&out));
        ensure!(
            err.contains("wasmbox: /testguest.wasm: wasm trap: wasm `unreachable` instruction executed"),
            "{}",
            show(&out)
        );
        ensure!(err.contains("wasm backtrace") && err.contains("testguest::main"), "{}", show(&out));
    }
    Ok(())
}

fn export_by_name(env: &Env) -> Result<()> {
    let out = env.run(P1, &[], &["/testguest.wasm#greet"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("greet was called"), "{}", show(&out));
    Ok(())
}

fn reads_rootfs_file(env: &Env) -> Result<()> {
    let out = env.run(P1, &[], &[WASM, "read", "/data/msg.txt"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("a file in the image"), "{}", show(&out));
    Ok(())
}

fn bind_mounts_ro_and_rw(env: &Env) -> Result<()> {
    let src = env.shared.display().to_string();
    let ro = format!("type=bind,src={src},dst=/mnt,options=rbind:ro");
    let rw = format!("type=bind,src={src},dst=/mnt,options=rbind:rw");
    for image in [P1, P2] {
        let out = env.run(image, &["--mount", &ro], &[WASM, "read", "/mnt/hostfile.txt"])?;
        ok(&out, 0)?;
        ensure!(text(&out.stdout).contains("from the host"), "{}", show(&out));
        let out = env.run(image, &["--mount", &ro], &[WASM, "write", "/mnt/new.txt"])?;
        ok(&out, 1)?;
        ensure!(text(&out.stdout).contains("write /mnt/new.txt failed"), "{}", show(&out));
        ensure!(!env.shared.join("new.txt").exists(), "a read-only mount was written");
    }
    let out = env.run(P1, &["--mount", &rw], &[WASM, "write", "/mnt/new.txt"])?;
    ok(&out, 0)?;
    ensure!(std::fs::read_to_string(env.shared.join("new.txt"))? == "written by wasm\n");
    std::fs::remove_file(env.shared.join("new.txt"))?;
    Ok(())
}

fn paths_cannot_escape(env: &Env) -> Result<()> {
    let ro = format!("type=bind,src={},dst=/mnt,options=rbind:ro", env.shared.display());
    let secret = env.c.dir.join("secret.txt");
    for path in ["/../../../../../../etc/hostname", "/mnt/escape/secret.txt", "/mnt/../../secret.txt", "/mnt/abs-link"]
    {
        let out = env.run(P1, &["--mount", &ro], &[WASM, "read", path])?;
        ensure!(out.status.code() == Some(1), "reading {path} should fail:\n{}", show(&out));
        ensure!(!text(&out.stdout).contains("top secret"), "{path} escaped:\n{}", show(&out));
    }
    ensure!(std::fs::read_to_string(secret)?.contains("top secret"));
    Ok(())
}

fn stdin_is_piped(env: &Env) -> Result<()> {
    for image in [P1, P2] {
        let id = env.c.id("stdin");
        let out = env.c.ctr_input(&["run", "--rm", "--runtime", RUNTIME, image, &id, WASM, "cat"], b"piped in\n")?;
        ok(&out, 0)?;
        ensure!(text(&out.stdout).contains("stdin: piped in"), "{}", show(&out));
    }
    Ok(())
}

/// A guest that never reads its stdin while more input than the pipes hold
/// arrives, then CloseIO: the shim keeps answering (kill works at once).
fn unread_stdin_never_wedges_the_shim(env: &Env) -> Result<()> {
    let id = env.c.id("stdin-full");
    let input = vec![b'x'; 100 * 1024];
    let child = env.c.ctr_spawn_input(&["run", "--rm", "--runtime", RUNTIME, P1, &id, WASM, "sleep", "600"], input)?;
    env.c.wait_status(&id, "RUNNING")?;
    // Let ctr hand over all it can and send CloseIO.
    std::thread::sleep(Duration::from_millis(500));
    let limit = Duration::from_secs(20);
    ok(&env.c.ctr_bounded(&["task", "ls"], limit)?, 0)?;
    ok(&env.c.ctr_bounded(&["task", "kill", "--signal", "SIGKILL", &id], limit)?, 0)?;
    ok(&wasmbox_e2e::wait_ctr(child)?, 137)
}

/// A foreground `ctr run` of a busy loop, ended by `ctr task kill`.
fn kill_busy(env: &Env, image: &str, kill_args: &[&str], want: i32) -> Result<()> {
    let id = env.c.id("loop");
    let child = env.c.ctr_spawn(&["run", "--rm", "--runtime", RUNTIME, image, &id, WASM, "loop"])?;
    env.c.wait_status(&id, "RUNNING")?;
    let mut a = vec!["task", "kill"];
    a.extend_from_slice(kill_args);
    a.push(&id);
    let k = env.c.ctr(&a)?;
    ensure!(k.status.success(), "kill failed: {}", show(&k));
    let out = wasmbox_e2e::wait_ctr(child)?;
    ok(&out, want)
}

fn kill_busy_loop(env: &Env) -> Result<()> {
    kill_busy(env, P1, &[], 143)?;
    kill_busy(env, P2, &["--signal", "SIGKILL"], 137)?;
    kill_busy(env, P1, &["--all"], 143)?;
    // A real-time signal (SIGRTMIN+3, a common STOPSIGNAL) by number.
    kill_busy(env, P1, &["--signal", "37"], 128 + 37)
}

fn lifecycle_verbs(env: &Env) -> Result<()> {
    let id = env.c.id("life");
    let out = env.c.ctr(&["run", "-d", "--runtime", RUNTIME, P1, &id, WASM, "sleep", "600"])?;
    ok(&out, 0)?;
    env.c.wait_status(&id, "RUNNING")?;
    let ps = env.c.ctr(&["task", "ps", &id])?;
    let pid = env.c.ctr(&["task", "ls"])?;
    let pid = text(&pid.stdout)
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    ensure!(text(&ps.stdout).contains(&pid), "task ps lacks pid {pid}: {}", show(&ps));
    // containerd's environment for shims (TTRPC_ADDRESS, LD_LIBRARY_PATH
    // under /opt/containerd) stops at the shim.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).context("instance environ")?;
    let environ = text(&environ);
    ensure!(
        !environ.contains("TTRPC_ADDRESS=") && !environ.contains("LD_LIBRARY_PATH=") && !environ.contains("PATH="),
        "instance inherited the shim's environment: {environ:?}"
    );
    // The shim daemon leads a session (and group) of its own, apart from
    // containerd's.
    for shim in env.c.shims() {
        let (pgid, sid) = Containerd::pgid_sid(shim).context("shim's /proc stat")?;
        ensure!(pgid == shim && sid == shim, "shim {shim} is in group {pgid}, session {sid}");
    }
    let m = env.c.ctr(&["task", "metrics", &id])?;
    ok(&m, 0)?;
    ensure!(text(&m.stdout).to_lowercase().contains("memory"), "{}", show(&m));
    // Running tasks cannot be deleted, nor paused ones; an exec of a wasm
    // the rootfs lacks fails naming it, and the container carries on.
    let rm = env.c.ctr(&["task", "rm", &id])?;
    ensure!(!rm.status.success(), "deleting a running task succeeded");
    let ex = env.c.ctr(&["task", "exec", "--exec-id", "e1", &id, "/x"])?;
    ensure!(!ex.status.success() && text(&ex.stderr).contains("\"/x\" not found"), "{}", show(&ex));
    ok(&env.c.ctr(&["task", "pause", &id])?, 0)?;
    env.c.wait_status(&id, "PAUSED")?;
    let rm = env.c.ctr(&["task", "rm", &id])?;
    ensure!(!rm.status.success(), "deleting a paused task succeeded");
    ok(&env.c.ctr(&["task", "resume", &id])?, 0)?;
    env.c.wait_status(&id, "RUNNING")?;
    env.kill_and_remove(&id)?;
    ensure!(env.c.task_status(&id)?.is_none());
    Ok(())
}

/// Two containers of one pod share one shim; bad inputs in that shim fail
/// alone and the others keep running.
fn pod_shares_one_shim_and_survives_bad_input(env: &Env) -> Result<()> {
    let pod = format!("io.kubernetes.cri.sandbox-id={}", env.c.id("pod"));
    let before = env.c.shims().len();
    let (a, b) = (env.c.id("poda"), env.c.id("podb"));
    for (id, image) in [(&a, P1), (&b, P2)] {
        let out =
            env.c.ctr(&["run", "-d", "--runtime", RUNTIME, "--annotation", &pod, image, id, WASM, "sleep", "600"])?;
        ok(&out, 0)?;
        env.c.wait_status(id, "RUNNING")?;
    }
    ensure!(env.c.shims().len() == before + 1, "expected one shim for the pod, have {:?}", env.c.shims());
    let shim = *env.c.shims().iter().max().context("pod shim")?;
    // A first missing entrypoint makes the shim ask containerd's content
    // store for a wasm layer; its client's runtime keeps one socket pair
    // (tokio's signal pipe) for the life of the process. Counted from here,
    // refused creates leave nothing.
    env.expect_refused(P1, &["--annotation", &pod], &["/nope.wasm"], &["/nope.wasm", "not found"])?;
    let fds = Containerd::fd_count(shim);
    env.expect_refused(P1, &["--annotation", &pod], &["/bad/text.wasm"], &["/bad/text.wasm", "magic"])?;
    env.expect_refused(P1, &["--annotation", &pod], &["/nope.wasm"], &["/nope.wasm", "not found"])?;
    env.expect_refused(P1, &["--annotation", &pod], &["/nope2.wasm"], &["/nope2.wasm", "not found"])?;
    for id in [&a, &b] {
        ensure!(env.c.task_status(id)?.as_deref() == Some("RUNNING"), "{id} stopped after a bad neighbour");
    }
    ensure!(env.c.shims().len() == before + 1, "shim count changed: {:?}", env.c.shims());
    ensure!(
        Containerd::fd_count(shim) == fds,
        "shim fds went from {fds} to {} after refused creates",
        Containerd::fd_count(shim)
    );
    for id in [&a, &b] {
        env.kill_and_remove(id)?;
    }
    // The last delete lets the shared shim go.
    env.shims_back_to(before)
}

fn bad_inputs(env: &Env) -> Result<()> {
    env.expect_refused(P1, &[], &["/missing.wasm"], &["/missing.wasm", "not found"])?;
    env.expect_refused(P1, &[], &["/bad/text.wasm"], &["/bad/text.wasm", "not a WebAssembly file", "magic bytes"])?;
    env.expect_refused(P1, &[], &["/bad/empty.wasm"], &["/bad/empty.wasm", "empty (0 bytes)"])?;
    env.expect_refused(
        P1,
        &[],
        &["/bad/corrupt.wasm"],
        &["/bad/corrupt.wasm", "not a valid WebAssembly module", "unexpected end-of-file"],
    )?;
    env.expect_refused(
        P1,
        &[],
        &["/testguest.wasm#nope"],
        &["testguest.wasm", "no exported function \"nope\"", "greet"],
    )?;
    env.expect_refused(
        P1,
        &[],
        &["/bad/component.wasm"],
        &["/bad/component.wasm", "neither a command nor an HTTP handler", "wasi:cli/run"],
    )?;
    // A typo in one of our annotations, and a value its parser refuses.
    env.expect_refused(
        P1,
        &["--annotation", "wasmbox.io/compiler-cache=off"],
        &[WASM, "hello"],
        &["wasmbox.io/compiler-cache", "did you mean wasmbox.io/compile-cache"],
    )?;
    env.expect_refused(
        P1,
        &["--annotation", "wasmbox.io/compile-cache=bogus"],
        &[WASM, "hello"],
        &["wasmbox.io/compile-cache=\"bogus\"", "on or off"],
    )?;
    // A duration past Duration's range (it panicked the parser; found by
    // fuzzing): refused, and the shim answers the next Create.
    env.expect_refused(
        P1,
        &["--annotation", "wasmbox.io/cpu-deadline=18446744073709551615s"],
        &[WASM, "hello"],
        &["wasmbox.io/cpu-deadline", "a duration"],
    )?;
    let missing = format!("type=bind,src={}/does-not-exist,dst=/data2,options=rbind:ro", env.c.dir.display());
    env.expect_refused(P1, &["--mount", &missing], &[WASM, "hello"], &["does-not-exist", "/data2"])?;
    // No bundle of a refused container stays in containerd's state, and no
    // half-written entry in the compile cache.
    let tasks = env.c.dir.join("state/io.containerd.runtime.v2.task/default");
    let bundles: Vec<String> =
        std::fs::read_dir(&tasks)?.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    ensure!(!bundles.iter().any(|b| b.starts_with("run-")), "bundles left behind: {bundles:?}");
    let cache = env.c.dir.join("state/wasmbox/cache");
    // Background compiles of earlier cases write as they go: their end first.
    env.c.wait_background_compiles(Duration::from_secs(120));
    let entries: Vec<String> =
        std::fs::read_dir(&cache)?.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    ensure!(
        entries.iter().any(|e| e.ends_with(".cwasm"))
            && entries
                .iter()
                .all(|e| e == ".compile.lock" || [".cwasm", ".cwasm.sum", ".cwasm.lock"].iter().any(|x| e.ends_with(x))),
        "cache holds {entries:?}"
    );
    Ok(())
}

fn events_are_published(env: &Env) -> Result<()> {
    // ctr events has no "subscribed" signal: retry a run if the first one
    // raced the subscription.
    for _ in 0..3 {
        let events = env.c.ctr_spawn(&["events"])?;
        std::thread::sleep(Duration::from_millis(300));
        let id = env.c.id("ev");
        ok(&env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, P1, &id, WASM, "exit", "3"])?, 3)?;
        std::thread::sleep(Duration::from_millis(300));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(events.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        let out = text(&events.wait_with_output()?.stdout);
        let has = |topic: &str| out.lines().any(|l| l.contains(topic) && l.contains(&id));
        if !has("/tasks/create") {
            continue;
        }
        for topic in ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"] {
            ensure!(has(topic), "no {topic} event for {id}:\n{out}");
        }
        let exit = out.lines().find(|l| l.contains("/tasks/exit") && l.contains(&id)).unwrap_or("");
        ensure!(exit.contains("\"exit_status\":3"), "exit event lacks the status: {exit}");
        return Ok(());
    }
    anyhow::bail!("ctr events never saw our container's events")
}

/// Several containers of one pod started at once share one shim daemon,
/// and each gets its own exit status back.
fn pod_concurrent_runs(env: &Env) -> Result<()> {
    let pod = format!("io.kubernetes.cri.sandbox-id={}", env.c.id("cpod"));
    let before = env.c.shims().len();
    let ids: Vec<String> = (0..6).map(|_| env.c.id("cpod")).collect();
    let children = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let code = n.to_string();
            env.c.ctr_spawn(&["run", "--rm", "--runtime", RUNTIME, "--annotation", &pod, P1, id, WASM, "exit", &code])
        })
        .collect::<Result<Vec<_>>>()?;
    for (n, child) in children.into_iter().enumerate() {
        ok(&wasmbox_e2e::wait_ctr(child)?, n as i32)?;
    }
    env.shims_back_to(before)
}

fn shim_killed_is_cleaned_up(env: &Env) -> Result<()> {
    let id = env.c.id("shimkill");
    ok(&env.c.ctr(&["run", "-d", "--runtime", RUNTIME, P1, &id, WASM, "sleep", "600"])?, 0)?;
    env.c.wait_status(&id, "RUNNING")?;
    let needle = format!("-id {id} ");
    let shim = wasmbox_e2e::processes()
        .into_iter()
        .find(|(_, c)| c.contains(wasmbox_e2e::SHIM) && c.contains(&needle) && c.contains("-socket"))
        .map(|(p, _)| p)
        .context("shim of the container not found")?;
    let instance = wasmbox_e2e::processes()
        .into_iter()
        .find(|(_, c)| c.contains(wasmbox_instance::INSTANCE_ARG) && c.contains(&format!("/{id} ")))
        .map(|(p, _)| p)
        .context("instance process not found")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::Signal::SIGKILL)?;
    // containerd notices, runs `shim delete`, which ends the instance.
    let dead = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')).unwrap_or(true))
            .unwrap_or(true)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(dead(instance) && env.c.task_status(&id)?.is_none()) {
        ensure!(
            Instant::now() < deadline,
            "after the shim died: instance dead {}, task {:?}",
            dead(instance),
            env.c.task_status(&id)?
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&env.c.ctr(&["container", "rm", &id])?, 0)?;
    ensure!(
        !env.c.mounts().iter().any(|m| m.contains(&format!("/{id}/"))),
        "rootfs still mounted: {:?}",
        env.c.mounts()
    );
    // Nothing of the dead shim keeps the id from being used again.
    let out = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, P1, &id, WASM, "hello"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("hello from wasm"), "{}", show(&out));
    Ok(())
}

fn survives_containerd_restart(env: &Env) -> Result<()> {
    let id = env.c.id("restart");
    ok(&env.c.ctr(&["run", "-d", "--runtime", RUNTIME, P2, &id, WASM, "sleep", "600"])?, 0)?;
    env.c.wait_status(&id, "RUNNING")?;
    env.c.restart()?;
    ensure!(env.c.task_status(&id)?.as_deref() == Some("RUNNING"), "after restart: {:?}", env.c.task_status(&id)?);
    // The shim's events reach the new containerd.
    let events = env.c.ctr_spawn(&["events"])?;
    std::thread::sleep(Duration::from_millis(500));
    ok(&env.c.ctr(&["task", "kill", &id])?, 0)?;
    env.c.wait_status(&id, "STOPPED")?;
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(events.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
    let seen = text(&events.wait_with_output()?.stdout);
    ensure!(
        seen.lines().any(|l| l.contains("/tasks/exit") && l.contains(&id)),
        "no /tasks/exit event for {id} after containerd restarted:\n{seen}"
    );
    let rm = env.c.ctr(&["task", "rm", &id])?;
    ok(&rm, 0)?;
    ensure!(text(&rm.stderr).contains("143"), "exit status lost across the restart: {}", show(&rm));
    ok(&env.c.ctr(&["container", "rm", &id])?, 0)
}

/// Under CRI a pod starts with a sandbox ("pause") container through the
/// same runtime: it must run (nothing to execute) and share the pod's shim.
fn cri_pod_sandbox(env: &Env) -> Result<()> {
    let pod = env.c.id("sandbox");
    let sandbox_id = format!("io.kubernetes.cri.sandbox-id={pod}");
    let before = env.c.shims().len();
    let out = env.c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        "--annotation",
        &sandbox_id,
        P1,
        &pod,
        "/pause",
    ])?;
    ok(&out, 0)?;
    env.c.wait_status(&pod, "RUNNING")?;
    let out = env.run(
        P1,
        &["--annotation", "io.kubernetes.cri.container-type=container", "--annotation", &sandbox_id],
        &[WASM, "hello"],
    )?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("hello from wasm"), "{}", show(&out));
    ensure!(env.c.shims().len() == before + 1, "the pod should have one shim: {:?}", env.c.shims());
    ensure!(env.c.task_status(&pod)?.as_deref() == Some("RUNNING"));
    ok(&env.c.ctr(&["task", "kill", &pod])?, 0)?;
    env.c.wait_status(&pod, "STOPPED")?;
    let rm = env.c.ctr(&["task", "rm", &pod])?;
    ensure!(text(&rm.stderr).contains("143"), "{}", show(&rm));
    ok(&env.c.ctr(&["container", "rm", &pod])?, 0)
}

/// `ctr run -t` needs a terminal: `script` (util-linux, Essential in Debian)
/// gives it one.
impl Env {
    /// `ctr run --rm -t --runtime wasmbox IMAGE ID ARGS` (a shell line's
    /// words), under `script`, which gives ctr the terminal -t needs;
    /// `input` is typed at that terminal.
    pub fn run_tty_with(&self, image: &str, id: &str, args: &str, input: &[u8]) -> Result<Output> {
        use std::io::Write;
        let cmd = format!(
            "{} --address {} run --rm -t --runtime {RUNTIME} {image} {id} {args}",
            wasmbox_e2e::tool("ctr").display(),
            self.c.sock.display()
        );
        let mut child = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(input)?;
        // Kept open until the run ends: script ends the session at EOF.
        let out = std::thread::scope(|s| {
            let waited = s.spawn(|| child.wait_with_output());
            let out = waited.join().expect("wait thread");
            drop(stdin);
            out
        })?;
        Ok(out)
    }

    fn run_tty(&self, image: &str, id: &str, args: &str) -> Result<Output> {
        self.run_tty_with(image, id, args, b"")
    }
}

/// `ctr run -t` of a wasm container: the guest's stdin and stdout are a
/// terminal (the shim's pty), a line typed at ctr's terminal reaches it,
/// its output and exit status come back, and nothing is left.
fn wasm_container_tty(env: &Env) -> Result<()> {
    let id = env.c.id("tty");
    let out = env.run_tty_with(P1, &id, &format!("{WASM} tty"), b"typed-line\n")?;
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    ensure!(all.contains("stdin tty: true, stdout tty: true"), "stdio is not a terminal:\n{}", show(&out));
    ensure!(all.contains("line: typed-line"), "the typed line did not arrive:\n{}", show(&out));
    ensure!(out.status.code() == Some(7), "exit status through the TTY: {}", show(&out));
    ensure!(env.c.task_status(&id)?.is_none(), "a task was left behind");
    Ok(())
}

/// A single file bind-mounted (as CRI does for /etc/hosts): readable,
/// read-only where asked, writable where not, and unmounted afterwards.
fn file_bind_mounts(env: &Env) -> Result<()> {
    let host = env.shared.join("app.conf");
    std::fs::write(&host, "key = value\n")?;
    let ro = format!("type=bind,src={},dst=/etc/app.conf,options=rbind:ro", host.display());
    let rw = format!("type=bind,src={},dst=/etc/app.conf,options=rbind:rw", host.display());
    let mounts = env.c.mounts().len();
    for image in [P1, P2] {
        let out = env.run(image, &["--mount", &ro], &[WASM, "read", "/etc/app.conf"])?;
        ok(&out, 0)?;
        ensure!(text(&out.stdout) == "key = value\n", "{}", show(&out));
        let out = env.run(image, &["--mount", &ro], &[WASM, "write", "/etc/app.conf"])?;
        ok(&out, 1)?;
        ensure!(std::fs::read_to_string(&host)? == "key = value\n", "a read-only file mount was written");
    }
    ok(&env.run(P1, &["--mount", &rw], &[WASM, "write", "/etc/app.conf"])?, 0)?;
    ensure!(std::fs::read_to_string(&host)? == "written by wasm\n");
    ensure!(env.c.mounts().len() == mounts, "file mounts left behind: {:?}", env.c.mounts());
    std::fs::remove_file(&host)?;
    Ok(())
}

/// A guest that replaces the directory of a file mount with a symlink out
/// of its rootfs cannot make the shim's clean-up unmount what the link
/// points at on the host.
fn planted_symlink_cannot_unmount_host_files(env: &Env) -> Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    // A host file bind-mounted at victim/etc/app.conf, beside containerd's state.
    let victim = env.c.dir.join("victim/etc/app.conf");
    std::fs::create_dir_all(victim.parent().unwrap())?;
    std::fs::write(&victim, "")?;
    let src = env.shared.join("victim-src.conf");
    std::fs::write(&src, "host file\n")?;
    mount(Some(&src), &victim, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    let mounted = |p: &std::path::Path| env.c.mounts().iter().any(|m| Path::new(m) == p);
    let mounts = env.c.mounts().len();
    let fm = format!("type=bind,src={},dst=/etc/app.conf,options=rbind:ro", src.display());
    // From BUNDLE/rootfs, five levels up is containerd's directory.
    let out = env.run(P1, &["--mount", &fm], &[WASM, "plant", "../../../../../victim/etc"]);
    let still = mounted(&victim);
    let after = env.c.mounts().len();
    let _ = umount2(&victim, MntFlags::MNT_DETACH);
    let out = out?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("symlink: Ok"), "the guest could not plant its link: {}", show(&out));
    ensure!(still, "the shim unmounted a host file through the guest's symlink");
    ensure!(after == mounts, "mounts before {mounts}, after {after}: {:?}", env.c.mounts());
    Ok(())
}

fn fifo(path: &Path) -> Result<std::path::PathBuf> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644))?;
    Ok(path.to_path_buf())
}

/// cgroup directories under containerd's `default` namespace that this
/// run's containers (ids `<prefix>-<n>`) left behind.
fn leftover_cgroups() -> Vec<String> {
    let mut left = Vec::new();
    let Ok(hier) = std::fs::read_dir("/sys/fs/cgroup") else { return left };
    for h in hier.flatten() {
        let Ok(rd) = std::fs::read_dir(h.path().join("default")) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours =
                name.rsplit_once('-').is_some_and(|(_, n)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if ours && e.path().is_dir() {
                left.push(e.path().display().to_string());
            }
        }
    }
    left
}

fn setup(c: Containerd) -> Result<Env> {
    let files = c.dir.join("files");
    std::fs::create_dir_all(&files)?;
    let put = |name: &str, data: &[u8]| -> Result<std::path::PathBuf> {
        let p = files.join(name);
        std::fs::write(&p, data)?;
        Ok(p)
    };
    let p1 = std::fs::read(test_guests::P1)?;
    let extra = vec![
        (put("msg.txt", b"a file in the image\n")?, "/data/msg.txt".to_string()),
        (put("text.wasm", b"#!/bin/sh\necho not wasm\n")?, "/bad/text.wasm".to_string()),
        (put("empty.wasm", b"")?, "/bad/empty.wasm".to_string()),
        (put("corrupt.wasm", &p1[..p1.len() / 2])?, "/bad/corrupt.wasm".to_string()),
        // The smallest valid component: a header and no exports.
        (put("component.wasm", b"\0asm\x0d\0\x01\0")?, "/bad/component.wasm".to_string()),
        (fifo(&files.join("fifo.wasm"))?, "/bad/fifo.wasm".to_string()),
        (put("proxy.wasm", serve::BROKEN_PROXY)?, "/bad/proxy.wasm".to_string()),
    ];
    let mut extra = extra;
    // The test guest under other digests (a custom section apart): modules
    // no other case has compiled, for the compile-cache cases.
    for name in ["cache", "other", "concurrent", "nocache", "untrusted"] {
        extra.push((put(&format!("fresh-{name}.wasm"), &tagged(&p1, name))?, format!("/fresh/{name}.wasm")));
    }
    for (name, path) in test_guests::PROPOSALS {
        extra.push((std::path::PathBuf::from(path), format!("/proposals/{name}.wasm")));
        // Winch lacks exceptions: a copy no other case runs, for the tiers.
        if *name == "exceptions" {
            let tagged = tagged(&std::fs::read(path)?, "tiers");
            extra.push((put("fresh-exceptions.wasm", &tagged)?, "/fresh/exceptions.wasm".to_string()));
        }
    }
    for (name, guest) in [(P1, test_guests::P1), (P2, test_guests::P2)] {
        c.import(&ImageSpec {
            name: name.into(),
            wasm: guest.into(),
            files: extra.clone(),
            args: vec!["hello".into()],
            ..Default::default()
        })?;
    }
    c.import(&ImageSpec { name: serve::HTTP.into(), wasm: test_guests::HTTP.into(), ..Default::default() })?;
    c.import(&ImageSpec {
        name: wasi3::P3_CLI.into(),
        wasm: test_guests::P3_CLI.into(),
        files: extra[..1].to_vec(),
        args: vec!["hello".into()],
        ..Default::default()
    })?;
    c.import(&ImageSpec { name: wasi3::P3_HTTP.into(), wasm: test_guests::P3_HTTP.into(), ..Default::default() })?;
    let mut app = vec![
        (put("spin.toml", spin::MANIFEST.as_bytes())?, "/app/spin.toml".to_string()),
        (put("index.html", b"<h1>static</h1>\n")?, "/app/static/index.html".to_string()),
        (test_guests::SPIN_APP.into(), "/app/sdk.wasm".to_string()),
    ];
    for (name, rest, _) in spin::REFUSED {
        let file = put(&format!("spin-{name}.toml"), spin::refused_manifest(rest).as_bytes())?;
        app.push((file, format!("/bad/{name}/spin.toml")));
    }
    c.import(&ImageSpec {
        name: spin::APP.into(),
        wasm: test_guests::HTTP.into(),
        wasm_dest: Some("/app/hello.wasm".into()),
        files: app,
        ..Default::default()
    })?;
    let mut hostile = vec![("/testguest.wasm".to_string(), p1.clone(), 0o644)];
    hostile.extend(hostile::files(&c.dir.join("secret.txt").display().to_string(), test_guests::P1));
    let tar = c.dir.join("image-hostile.tar");
    wasmbox_image::build_raw(
        hostile::HOSTILE,
        &hostile,
        &["/testguest.wasm".into()],
        &[],
        &[],
        std::fs::File::create(&tar)?,
    )?;
    c.import_tar(&tar)?;
    let packaged = files.join("spin-packaged");
    std::fs::create_dir_all(&packaged)?;
    std::fs::copy(test_guests::SPIN_APP, packaged.join("sdk.wasm"))?;
    std::fs::write(packaged.join("spin.toml"), spin::PACKAGED_MANIFEST)?;
    let tar = c.dir.join("image-spin-packaged.tar");
    wasmbox_image::build_spin(spin::PACKAGED, &packaged.join("spin.toml"), &[], false, std::fs::File::create(&tar)?)?;
    c.import_tar(&tar)?;
    c.import_busybox(linux::BUSYBOX, &[])?;
    let shared = c.dir.join("shared");
    std::fs::create_dir_all(&shared)?;
    std::fs::write(shared.join("hostfile.txt"), "from the host\n")?;
    std::fs::write(c.dir.join("secret.txt"), "top secret\n")?;
    std::os::unix::fs::symlink("../secret.txt", shared.join("escape-file"))?;
    std::os::unix::fs::symlink(&c.dir, shared.join("escape"))?;
    std::os::unix::fs::symlink(c.dir.join("secret.txt"), shared.join("abs-link"))?;
    Ok(Env { c, shared })
}

type Case = (&'static str, fn(&Env) -> Result<()>);

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let cases: &[Case] = &[
        ("hello_p1", hello_p1),
        ("hello_p2_component", hello_p2_component),
        ("exit_codes", exit_codes),
        ("trap_is_134_with_backtrace", trap_is_134_with_backtrace),
        ("export_by_name", export_by_name),
        ("reads_rootfs_file", reads_rootfs_file),
        ("bind_mounts_ro_and_rw", bind_mounts_ro_and_rw),
        ("file_bind_mounts", file_bind_mounts),
        ("paths_cannot_escape", paths_cannot_escape),
        ("planted_symlink_cannot_unmount_host_files", planted_symlink_cannot_unmount_host_files),
        ("stdin_is_piped", stdin_is_piped),
        ("unread_stdin_never_wedges_the_shim", unread_stdin_never_wedges_the_shim),
        ("kill_busy_loop", kill_busy_loop),
        ("lifecycle_verbs", lifecycle_verbs),
        ("pod_shares_one_shim_and_survives_bad_input", pod_shares_one_shim_and_survives_bad_input),
        ("bad_inputs", bad_inputs),
        ("events_are_published", events_are_published),
        ("pod_concurrent_runs", pod_concurrent_runs),
        ("shim_killed_is_cleaned_up", shim_killed_is_cleaned_up),
        ("survives_containerd_restart", survives_containerd_restart),
        ("cri_pod_sandbox", cri_pod_sandbox),
        ("wasm_container_tty", wasm_container_tty),
        ("namespaces_and_cgroup", isolation::namespaces_and_cgroup),
        ("user_is_applied_to_file_access", isolation::user_is_applied_to_file_access),
        ("memory_bomb_ends_at_the_limit", isolation::memory_bomb_ends_at_the_limit),
        ("metrics_cpu_quota_pause_resume", isolation::metrics_cpu_quota_pause_resume),
        ("cpu_deadline_ends_a_loop", isolation::cpu_deadline_ends_a_loop),
        ("default_seccomp_profile_runs", isolation::default_seccomp_profile_runs),
        ("hostile_entrypoints_and_prepare_bound", isolation::hostile_entrypoints_and_prepare_bound),
        ("shim_cgroup_oom_score_and_start_errors", shim::shim_cgroup_oom_score_and_start_errors),
        ("idle_means_no_wakeups", shim::idle_means_no_wakeups),
        ("linux_container_runs", linux::linux_container_runs),
        ("linux_container_lifecycle", linux::linux_container_lifecycle),
        ("wasm_and_linux_in_one_pod", linux::wasm_and_linux_in_one_pod),
        ("linux_shim_killed_is_cleaned_up", linux::linux_shim_killed_is_cleaned_up),
        ("linux_container_tty", linux::linux_container_tty),
        ("serve_routes_traps_and_load", serve::serve_routes_traps_and_load),
        ("serve_sigterm_drains", serve::serve_sigterm_drains),
        ("serve_outbound_allow_list", serve::serve_outbound_allow_list),
        ("serve_errors_at_create", serve::serve_errors_at_create),
        ("serve_in_a_netns", serve::serve_in_a_netns),
        ("serve_http2", serve::serve_http2),
        ("wasm_proposals", wasm_proposals),
        ("compile_cache", cache::compile_cache),
        ("registry_push_pull_run", registry::registry_push_pull_run),
        ("push_wasm_file", push_wasm::push_wasm_file),
        ("log_uris", logs::log_uris),
        ("wasm_layer_image", layer::wasm_layer_image),
        ("untrusted_cache_dir_is_refused", cache::untrusted_cache_dir_is_refused),
        ("serve_limits", serve::serve_limits),
        ("serve_cpu_deadline_per_request", serve::serve_cpu_deadline_per_request),
        ("command_network_allow_list", serve::command_network_allow_list),
        ("tampered_blob_is_refused", registry::tampered_blob_is_refused),
        ("registry_tls_and_auth", registry::registry_tls_and_auth),
        ("nerdctl_run", clients::nerdctl_run),
        ("docker_run", clients::docker_run),
        ("tiered_start", tiers::tiered_start),
        ("compiler_annotations", tiers::compiler_annotations),
        ("prepare_timeout_compile_goes_on", tiers::prepare_timeout_compile_goes_on),
        ("engine_settings", engine::engine_settings),
        ("wasi_0_3_command", wasi3::wasi_0_3_command),
        ("wasi_0_3_serve", wasi3::wasi_0_3_serve),
        ("hostile_image", hostile::hostile_image),
        ("spin_app", spin::spin_app),
        ("spin_app_variables", spin::spin_app_variables),
        ("spin_app_refused", spin::spin_app_refused),
        ("serve_engine_settings", engine::serve_engine_settings),
        ("node_defaults", engine::node_defaults),
        ("serve_switches_tier", engine::serve_switches_tier),
        ("node_install", node_install::node_install),
        ("node_install_layouts", node_install::node_install_layouts),
    ];
    let selected: Vec<&Case> =
        cases.iter().filter(|(n, _)| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()))).collect();
    println!("e2e against {}", wasmbox_e2e::containerd_version());
    let env = match bin_dir().and_then(|d| Containerd::start(&d)).and_then(setup).context("setting up containerd") {
        Ok(e) => e,
        Err(e) => {
            println!("e2e setup failed: {e:#}");
            println!("0 passed, {} failed", selected.len());
            std::process::exit(1);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in selected {
        let t = Instant::now();
        match case(&env) {
            Ok(()) => {
                passed += 1;
                println!("test e2e::{name} ... ok ({} ms)", t.elapsed().as_millis());
            }
            Err(e) => {
                failed += 1;
                println!("test e2e::{name} ... FAILED\n{e:#}\n");
            }
        }
    }
    // Nothing may be left running once every task is gone. A shim leaves
    // on its own after its last task's Delete, so it gets a grace period.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let mut leftover = (env.c.instances(), env.c.shims(), leftover_cgroups());
    while (!leftover.0.is_empty() || !leftover.1.is_empty() || !leftover.2.is_empty()) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        leftover = (env.c.instances(), env.c.shims(), leftover_cgroups());
    }
    if !leftover.0.is_empty() || !leftover.1.is_empty() || !leftover.2.is_empty() {
        failed += 1;
        let describe = |pids: &[i32]| -> Vec<String> {
            pids.iter().map(|p| format!("{p}: {}", wasmbox_e2e::describe_process(*p))).collect()
        };
        println!(
            "test e2e::no_leftovers ... FAILED\ninstances {:?}\nshims {:?}\ncgroups {:?}\ntasks:\n{}",
            describe(&leftover.0),
            describe(&leftover.1),
            leftover.2,
            env.c.all_tasks()
        );
    } else {
        passed += 1;
        println!("test e2e::no_leftovers ... ok");
    }
    // Background compiles end on their own, within the time their compile takes.
    let compiles = env.c.wait_background_compiles(Duration::from_secs(300));
    if !compiles.is_empty() {
        failed += 1;
        println!("test e2e::no_background_compiles_left ... FAILED\n{compiles:?}");
    } else {
        passed += 1;
        println!("test e2e::no_background_compiles_left ... ok");
    }
    drop(env);
    println!("\ne2e: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Each proposal the engine enables runs a guest that uses it (exit 42),
/// and the same guest is refused at Create when the workload's annotation
/// turns that proposal off, with the wasm and the annotation named.
fn wasm_proposals(env: &Env) -> Result<()> {
    for (name, _) in test_guests::PROPOSALS {
        let wasm = format!("/proposals/{name}.wasm");
        let out = env.run(P1, &[], &[&wasm])?;
        ensure!(out.status.code() == Some(42), "{name}: {}", show(&out));
        let off = format!("wasmbox.io/disabled-wasm-proposals={name}");
        env.expect_refused(
            P1,
            &["--annotation", &off],
            &[&wasm],
            &[&wasm, "wasmbox.io/disabled-wasm-proposals", name],
        )?;
    }
    env.expect_refused(
        P1,
        &["--annotation", "wasmbox.io/disabled-wasm-proposals=gc,warp-drive"],
        &[WASM, "hello"],
        &["wasmbox.io/disabled-wasm-proposals", "unknown proposal \"warp-drive\""],
    )
}

use wasmbox_e2e::generated::tagged;
