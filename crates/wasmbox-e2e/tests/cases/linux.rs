//! Linux containers through wasmbox's runtime: an ELF or script
//! entrypoint (busybox here) runs through runc behind the same shim, with
//! a wasm container of the same pod beside it.

use super::isolation::{run_detached_image, task_pid};
use super::{ok, show, text, Env, P1, WASM};
use anyhow::{ensure, Context, Result};
use wasmbox_e2e::RUNTIME;

pub const BUSYBOX: &str = "docker.io/library/wasmbox-test-busybox:latest";

/// runc's state directory of this containerd's `default` namespace.
fn runc_state(env: &Env) -> std::path::PathBuf {
    env.c.dir.join("state/wasmbox/runc/default")
}

/// Output, exit status and stdin of a busybox container run in the
/// foreground, as with runc.
pub fn linux_container_runs(env: &Env) -> Result<()> {
    let out = env.run(BUSYBOX, &[], &["sh", "-c", "echo hi from linux; echo to stderr >&2; exit 3"])?;
    ok(&out, 3)?;
    ensure!(text(&out.stdout).contains("hi from linux"), "{}", show(&out));
    ensure!(text(&out.stderr).contains("to stderr"), "{}", show(&out));
    let id = env.c.id("linux-cat");
    let out = env.c.ctr_input(&["run", "--rm", "--runtime", RUNTIME, BUSYBOX, &id, "cat"], b"piped in\n")?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("piped in"), "{}", show(&out));
    // A script entrypoint goes the same way.
    let out = env.run(BUSYBOX, &[], &["/bin/sh", "-c", "exec /bin/busybox true"])?;
    ok(&out, 0)?;
    ensure!(
        std::fs::read_dir(runc_state(env)).map(|d| d.count()).unwrap_or(0) == 0,
        "runc state left: {:?}",
        std::fs::read_dir(runc_state(env)).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    Ok(())
}

/// A detached Linux container: its own namespaces and the spec's cgroup
/// with its memory limit (`ctr task metrics`), pause/resume, SIGKILL of a
/// paused container, and nothing left after delete.
pub fn linux_container_lifecycle(env: &Env) -> Result<()> {
    let id = env.c.id("linux");
    let pid = run_detached_image(env, &id, &["--memory-limit", "67108864"], BUSYBOX, &["sleep", "600"])?;
    let checks = (|| -> Result<()> {
        for kind in ["mnt", "pid", "ipc", "uts", "net"] {
            let (theirs, ours) = (
                std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))?,
                std::fs::read_link(format!("/proc/self/ns/{kind}"))?,
            );
            ensure!(theirs != ours, "{kind} namespace is the host's");
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
        ensure!(comm.trim() == "sleep", "pid {pid} is {comm:?}, not the container's sleep");
        // Exec: a process in the container's namespaces, its own output and status.
        let out = env.c.ctr_input(
            &["task", "exec", "--exec-id", "probe", &id, "sh", "-c", "cat; echo in exec; readlink /proc/1/exe; exit 4"],
            b"exec stdin\n",
        )?;
        ok(&out, 4)?;
        let said = text(&out.stdout);
        ensure!(said.contains("exec stdin") && said.contains("in exec"), "{}", show(&out));
        ensure!(said.contains("/bin/busybox"), "the exec does not see the container's pid 1: {}", show(&out));
        // The exec id is free again once that exec is gone.
        let out = env.c.ctr(&["task", "exec", "--exec-id", "probe", &id, "true"])?;
        ok(&out, 0)?;
        let metrics = env.c.ctr(&["task", "metrics", &id])?;
        ok(&metrics, 0)?;
        ensure!(text(&metrics.stdout).contains("67108864"), "no memory limit in metrics:\n{}", show(&metrics));
        ok(&env.c.ctr(&["task", "pause", &id])?, 0)?;
        env.c.wait_status(&id, "PAUSED")?;
        ok(&env.c.ctr(&["task", "resume", &id])?, 0)?;
        env.c.wait_status(&id, "RUNNING")?;
        ok(&env.c.ctr(&["task", "pause", &id])?, 0)?;
        env.c.wait_status(&id, "PAUSED")?;
        Ok(())
    })();
    env.kill_and_remove(&id)?;
    checks?;
    let state = runc_state(env).join(&id);
    ensure!(!state.exists(), "runc state {} left after delete", state.display());
    ensure!(std::fs::metadata(format!("/proc/{pid}")).is_err(), "process {pid} outlived its container");
    Ok(())
}

/// A wasm container and a Linux sidecar in one pod share the pod's shim
/// and can share a network namespace; a wrong annotation or entrypoint is
/// an error naming it, and the pod's containers keep running.
pub fn wasm_and_linux_in_one_pod(env: &Env) -> Result<()> {
    let pod = format!("io.kubernetes.cri.sandbox-id={}", env.c.id("mixed"));
    let before = env.c.shims().len();
    let (w, l) = (env.c.id("mixed-wasm"), env.c.id("mixed-linux"));
    let wpid = run_detached_image(env, &w, &["--annotation", &pod], P1, &[WASM, "sleep", "600"])?;
    let net = format!("network:/proc/{wpid}/ns/net");
    let result = (|| -> Result<()> {
        let lpid = run_detached_image(env, &l, &["--annotation", &pod, "--with-ns", &net], BUSYBOX, &["sleep", "600"])?;
        ensure!(env.c.shims().len() == before + 1, "expected one shim for the pod: {:?}", env.c.shims());
        ensure!(
            std::fs::read_link(format!("/proc/{lpid}/ns/net"))? == std::fs::read_link(format!("/proc/{wpid}/ns/net"))?,
            "the sidecar is not in the wasm container's network namespace"
        );
        env.expect_refused(
            BUSYBOX,
            &["--annotation", &pod, "--annotation", "wasmbox.io/handler=wasm"],
            &["/bin/busybox", "true"],
            &["/bin/busybox", "not a WebAssembly file"],
        )?;
        env.expect_refused(
            BUSYBOX,
            &["--annotation", &pod, "--annotation", "run.oci.handler=krun"],
            &["sleep", "1"],
            &["run.oci.handler", "krun"],
        )?;
        env.expect_refused(
            BUSYBOX,
            &["--annotation", &pod, "--annotation", "wasmbox.io/handler=linux"],
            &["/no/such/binary"],
            &["runc create", "/no/such/binary"],
        )?;
        wasm_exec(env, &w, wpid)?;
        for id in [&w, &l] {
            ensure!(env.c.task_status(id)?.as_deref() == Some("RUNNING"), "{id} stopped after a bad neighbour");
        }
        let pid = task_pid(env, &l)?;
        ensure!(pid == lpid, "the sidecar's pid changed");
        Ok(())
    })();
    let _ = env.kill_and_remove(&l);
    env.kill_and_remove(&w)?;
    result?;
    env.shims_back_to(before).context("after the pod")
}

/// The shim of a Linux container is killed: containerd runs the shim's
/// `delete`, which deletes the runc container (its process dies), and
/// nothing of it is left (runc state, rootfs mount).
pub fn linux_shim_killed_is_cleaned_up(env: &Env) -> Result<()> {
    let id = env.c.id("linux-shimkill");
    let pid = run_detached_image(env, &id, &[], BUSYBOX, &["sleep", "600"])?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let shim: i32 =
        status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok()).context("no PPid")?;
    ensure!(env.c.shims().contains(&shim), "the parent of {pid} is {shim}, not a shim");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::Signal::SIGKILL)?;
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')).unwrap_or(true))
            .unwrap_or(true)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !(gone(pid) && env.c.task_status(&id)?.is_none()) {
        ensure!(
            std::time::Instant::now() < deadline,
            "after the shim died: process gone {}, task {:?}",
            gone(pid),
            env.c.task_status(&id)?
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ok(&env.c.ctr(&["container", "rm", &id])?, 0)?;
    let state = runc_state(env).join(&id);
    let log = std::fs::read_to_string(env.c.dir.join("containerd.log"))?;
    let about: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    ensure!(!state.exists(), "runc state {} left; containerd's log:\n{}", state.display(), about.join("\n"));
    ensure!(
        !env.c.mounts().iter().any(|m| m.contains(&format!("/{id}/"))),
        "rootfs still mounted: {:?}",
        env.c.mounts()
    );
    Ok(())
}

/// `ctr run -t` of a Linux container: its stdio is a pty (runc's console
/// socket), output comes back through it, and the exit status too.
pub fn linux_container_tty(env: &Env) -> Result<()> {
    let id = env.c.id("linux-tty");
    let out = env.run_tty(BUSYBOX, &id, "sh -c 'tty; echo tty-ok; exit 5'")?;
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    ensure!(all.contains("/dev/pts/") && all.contains("tty-ok"), "{}", show(&out));
    ensure!(out.status.code() == Some(5), "exit status through the TTY: {}", show(&out));
    ensure!(env.c.task_status(&id)?.is_none(), "a task was left behind");
    Ok(())
}

/// Exec into a wasm container: a new instance runs a `.wasm` of the
/// container's rootfs with its own args, stdio and exit status, in the
/// container's namespaces and cgroup.
fn wasm_exec(env: &Env, id: &str, pid: u32) -> Result<()> {
    let out = env.c.ctr(&["task", "exec", "--exec-id", "hi", id, WASM, "read", "/data/msg.txt"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("a file in the image"), "exec read the rootfs: {}", show(&out));
    let out = env.c.ctr(&["task", "exec", "--exec-id", "seven", id, WASM, "exit", "7"])?;
    ok(&out, 7)?;
    let child = env.c.ctr_spawn(&["task", "exec", "--exec-id", "nap", id, WASM, "sleep", "60"])?;
    let found = (|| -> Result<u32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let ps = env.c.ctr(&["task", "ps", id])?;
            let pids: Vec<u32> =
                text(&ps.stdout).lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
            if let Some(&p) = pids.iter().find(|&&p| p != pid) {
                return Ok(p);
            }
            ensure!(std::time::Instant::now() < deadline, "the exec never showed in the container's cgroup: {pids:?}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })();
    let checked = found.and_then(|p| {
        for kind in ["mnt", "pid", "net", "ipc", "uts"] {
            let (theirs, ours) = (
                std::fs::read_link(format!("/proc/{p}/ns/{kind}"))?,
                std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))?,
            );
            ensure!(theirs == ours, "the exec is not in the container's {kind} namespace");
        }
        Ok(())
    });
    let _ = env.c.ctr(&["task", "kill", "--exec-id", "nap", "--signal", "SIGKILL", id]);
    let out = wasmbox_e2e::wait_ctr(child)?;
    checked?;
    ensure!(out.status.code() == Some(137), "killed exec: {}", show(&out));
    Ok(())
}
