//! The shim daemon itself, as containerd expects of a shim: its runtime
//! options (`ShimCgroup`), its OOM score, errors that reach the client and
//! containerd's log even before the daemon serves, and no wake-ups while
//! its containers sleep.

use super::{show, text, Env, P1, WASM};
use anyhow::{ensure, Context, Result};
use std::time::Duration;
use wasmbox_e2e::{OOM_SCORE, RUNTIME};

fn read_i64(path: &str) -> Result<i64> {
    std::fs::read_to_string(path)?.trim().parse().with_context(|| format!("parsing {path}"))
}

/// The parent of `pid` (the shim daemon, for a container's pid).
fn ppid(pid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok()).context("no PPid")
}

/// Removes `rel` from every cgroup hierarchy (deepest first).
fn remove_cgroup(rel: &str) {
    let Ok(hier) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    for h in hier.flatten() {
        let _ = std::fs::remove_dir(h.path().join(rel));
    }
}

/// `ShimCgroup` from the runtime options (`--runtime-config-path`, as CRI's
/// `options` table arrives) moves the shim into that cgroup; the shim's OOM
/// score sits just above containerd's; a bad option, or one that fails in
/// the daemon before it serves, is an error naming it in ctr's output and
/// in containerd's log, and leaves no shim.
pub fn shim_cgroup_oom_score_and_start_errors(env: &Env) -> Result<()> {
    let cg = format!("wasmbox-e2e-shims-{}", std::process::id());
    let opts = env.c.dir.join("shim-options.toml");
    std::fs::write(&opts, format!("ShimCgroup = \"/{cg}\"\nSystemdCgroup = false\n"))?;
    let id = env.c.id("shimcg");
    let opts_arg = opts.to_str().context("path")?;
    let base = env.c.shims().len();
    let mut a = vec!["run", "-d", "--runtime", RUNTIME, "--runtime-config-path", opts_arg, P1, &id];
    a.extend_from_slice(&[WASM, "sleep", "600"]);
    let out = env.c.ctr(&a)?;
    let started = super::ok(&out, 0).and_then(|()| env.c.wait_status(&id, "RUNNING"));
    let result = started.and_then(|()| {
        let pid = super::isolation::task_pid(env, &id)?;
        let shim = ppid(pid)?;
        ensure!(env.c.shims().contains(&(shim as i32)), "the parent of {pid} is {shim}, not a shim");
        let cgroups = std::fs::read_to_string(format!("/proc/{shim}/cgroup"))?;
        let memory = cgroups.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "memory")));
        ensure!(
            memory.is_some_and(|l| l.ends_with(&format!(":/{cg}"))),
            "the shim is not in its ShimCgroup /{cg}:\n{cgroups}"
        );
        let containerd = read_i64(&format!("/proc/{}/oom_score_adj", env.c.pid()))?;
        ensure!(containerd == i64::from(OOM_SCORE), "containerd's own score is {containerd}");
        let score = read_i64(&format!("/proc/{shim}/oom_score_adj"))?;
        ensure!(score == containerd + 1, "shim oom_score_adj {score}, containerd's {containerd}");
        Ok(())
    });
    let removed = env.kill_and_remove(&id);
    // The daemon leaves with its last container; only then can its cgroup go.
    let back = env.shims_back_to(base);
    remove_cgroup(&cg);
    result?;
    removed?;
    back?;

    let log = env.c.dir.join("containerd.log");
    for (body, needles) in [
        // Refused by `start` as it reads the options.
        ("BinaryName = \"crun\"\n", vec!["\"BinaryName\" is not supported", opts_arg]),
        // Refused by the daemon before it serves.
        ("ShimCgroup = \"/../etc\"\n", vec!["runtime option ShimCgroup", "is not a cgroup path"]),
    ] {
        std::fs::write(&opts, body)?;
        let logged_before = std::fs::read_to_string(&log)?.len();
        let out = env.run(P1, &["--runtime-config-path", opts_arg], &[WASM, "hello"])?;
        ensure!(!out.status.success(), "expected a failure:\n{}", show(&out));
        let logged = std::fs::read_to_string(&log)?;
        for n in &needles {
            ensure!(text(&out.stderr).contains(n), "ctr's error lacks {n:?}:\n{}", show(&out));
            // containerd quotes the shim's lines (logfmt).
            let quoted = n.replace('"', "\\\"");
            ensure!(
                logged[logged_before..].contains(&quoted),
                "containerd's log lacks {quoted:?}:\n{}",
                &logged[logged_before..]
            );
        }
        env.shims_back_to(base)?;
    }
    Ok(())
}

/// Context switches of every thread of `pid`.
pub fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// A sleeping container and its shim are not woken while nobody talks to
/// them: over three seconds no thread of either is scheduled (a poll with
/// a 10 ms timeout would be ~300 wake-ups).
pub fn idle_means_no_wakeups(env: &Env) -> Result<()> {
    let id = env.c.id("idle");
    let pid = super::isolation::run_detached(env, &id, &[], &[WASM, "sleep", "600"])?;
    let result = (|| -> Result<()> {
        let shim = ppid(pid)?;
        // Let the start settle (the reply, the exit of ctr's connection).
        std::thread::sleep(Duration::from_millis(500));
        let before = (switches(shim), switches(pid));
        std::thread::sleep(Duration::from_secs(3));
        let after = (switches(shim), switches(pid));
        let woke = (after.0 - before.0, after.1 - before.1);
        if std::env::var_os("WASMBOX_E2E_SHOW").is_some() {
            for (who, p) in [("shim", shim), ("instance", pid)] {
                let names: Vec<String> = std::fs::read_dir(format!("/proc/{p}/task"))?
                    .flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|n| n.trim().to_string())
                    .collect();
                println!("{who} {p}: {} threads: {names:?}", names.len());
            }
        }
        ensure!(woke.0 <= 2 && woke.1 == 0, "idle wake-ups in 3 s: shim {}, instance {}", woke.0, woke.1);
        Ok(())
    })();
    env.kill_and_remove(&id)?;
    result
}
