//! Compilers and tiers under a real containerd: an uncached module starts
//! on the baseline tier while the optimized code is compiled in the
//! background, by a process that outlives the container and its shim, and
//! the next start loads it; each `wasmbox.io/compiler` runs the guest and
//! bad values are refused; a module Winch cannot compile falls back; a
//! compile killed by the prepare timeout goes on, so a retry starts.

use super::{ok, show, text, Env, P1};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The shim's log lines about how code of a wasm whose path ends in
/// `wasm` was had, in order.
fn code_lines(env: &Env, wasm: &str) -> Result<Vec<String>> {
    let log = std::fs::read_to_string(env.c.dir.join("containerd.log"))?;
    Ok(log
        .lines()
        .filter(|l| {
            l.contains(&format!("{wasm}: compiled in")) || l.contains(&format!("{wasm}: code from cache entry"))
        })
        .map(str::to_string)
        .collect())
}

/// Cache entries (with their records) of the wasm `entry` was made from.
fn entries_of_same_wasm(entry: &Path) -> Result<Vec<PathBuf>> {
    let name = entry.file_name().context("entry name")?.to_string_lossy().into_owned();
    let digest = name.split('-').next().unwrap_or_default().to_string();
    let dir = entry.parent().context("entry dir")?;
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with(&digest) && n.ends_with(".cwasm") && p.with_extension("cwasm.sum").exists()
        })
        .collect();
    v.sort();
    Ok(v)
}

fn entry_in(line: &str) -> Result<PathBuf> {
    let at = line.find(" cache entry ").map(|i| i + 13).or_else(|| line.find("cached as ").map(|i| i + 10));
    let rest = &line[at.context("no entry in the line")?..];
    Ok(PathBuf::from(
        rest.split(|c: char| c.is_whitespace() || matches!(c, ';' | ',' | '"' | '\\')).next().unwrap_or(""),
    ))
}

/// Waits (up to `limit`) until `done` holds; the last value otherwise.
fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Result<T>, done: impl Fn(&T) -> bool) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        let v = probe()?;
        if done(&v) || Instant::now() > deadline {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The cgroup directories of `pid` whose hierarchy has the cpu controller
/// (the one directory on v2), from /proc/PID/cgroup.
fn cpu_cgroup_dirs(pid: i32) -> Result<Vec<std::path::PathBuf>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (controllers, path) = (f.nth(1).unwrap_or(""), f.next().unwrap_or(""));
        let mount = match controllers {
            "" => "/sys/fs/cgroup/unified".to_string(),
            c if c.split(',').any(|c| c == "cpu") => format!("/sys/fs/cgroup/{c}"),
            _ => continue,
        };
        let mount = if controllers.is_empty() && !std::path::Path::new(&mount).is_dir() {
            "/sys/fs/cgroup".into()
        } else {
            mount
        };
        dirs.push(std::path::Path::new(&mount).join(path.trim_start_matches('/')));
    }
    Ok(dirs)
}

/// While the node's compile slot is held, a background compile waits in
/// the cgroup of its own, outside the container's and the shim's, with
/// the least CPU weight.
fn background_compile_cgroup(env: &Env) -> Result<()> {
    let pids = wait_for(Duration::from_secs(20), || Ok(env.c.background_compiles()), |p| !p.is_empty())?;
    let pid = pids[0];
    let dirs = cpu_cgroup_dirs(pid)?;
    let weighted: Vec<String> = dirs
        .iter()
        .filter(|d| d.ends_with("wasmbox-compile"))
        .filter_map(|d| {
            let shares = std::fs::read_to_string(d.join("cpu.shares")).ok();
            let weight = std::fs::read_to_string(d.join("cpu.weight")).ok();
            shares.or(weight).map(|v| format!("{}={}", d.display(), v.trim()))
        })
        .collect();
    ensure!(
        !weighted.is_empty() && weighted.iter().all(|w| w.ends_with("=2") || w.ends_with("=1")),
        "background compile {pid}: cpu cgroups {dirs:?}, weights {weighted:?}"
    );
    Ok(())
}

pub fn tiered_start(env: &Env) -> Result<()> {
    let image = env.c.import_large("tiers", 4)?;
    // The node's compile slot, held: the background compile waits for it.
    let cache = env.c.dir.join("state/wasmbox/cache");
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(&cache)?;
    let slot = std::fs::File::options().create(true).truncate(false).write(true).open(cache.join(".compile.lock"))?;
    // SAFETY: flock on a file this test owns.
    ensure!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&slot), libc::LOCK_EX) } == 0, "flock");
    // First start: the baseline tier, and the optimized code asked for.
    let out = env.run(&image, &[], &["/large.wasm#quick"]);
    let in_its_cgroup = out.is_ok().then(|| background_compile_cgroup(env));
    drop(slot);
    let out = out?;
    ok(&out, 0)?;
    in_its_cgroup.context("no run")??;
    let lines = code_lines(env, "/large.wasm")?;
    let first = lines.last().context("no code line for the first start")?;
    ensure!(
        first.contains("compiled in") && first.contains("baseline (winch)") && first.contains("cached as"),
        "first start: {first}"
    );
    ensure!(first.contains("being compiled in the background"), "first start: {first}");
    let log = std::fs::read_to_string(env.c.dir.join("containerd.log"))?;
    ensure!(
        log.lines().any(|l| l.contains("/large.wasm: compiling the optimized code in the background")),
        "the shim started no background compile"
    );
    // The container and its shim are gone (ctr run --rm); the compile
    // goes on and puts the optimized code beside the baseline's.
    let baseline = entry_in(first)?;
    let entries = wait_for(Duration::from_secs(300), || entries_of_same_wasm(&baseline), |v| v.len() >= 2)?;
    ensure!(entries.len() == 2, "expected the baseline and the optimized entry: {entries:?}");
    let running = env.c.wait_background_compiles(Duration::from_secs(30));
    ensure!(running.is_empty(), "background compiles left running: {running:?}");
    // Next start: the optimized code, from the cache.
    let out = env.run(&image, &[], &["/large.wasm#quick"])?;
    ok(&out, 0)?;
    let lines = code_lines(env, "/large.wasm")?;
    let second = lines.last().context("no code line for the second start")?;
    ensure!(
        second.contains("code from cache entry") && second.contains("optimized (cranelift)"),
        "second start: {second}"
    );
    let optimized = entry_in(second)?;
    ensure!(optimized != baseline && entries.contains(&optimized), "second start's entry {optimized:?}: {entries:?}");
    // No compile is asked for once the optimized code is cached.
    ensure!(!second.contains("background"), "second start: {second}");
    if std::env::var_os("WASMBOX_E2E_SHOW").is_some() {
        println!("{first}\n{second}");
        let log = std::fs::read_to_string(env.c.dir.join("containerd.log"))?;
        log.lines().filter(|l| l.contains("background compile")).for_each(|l| println!("{l}"));
    }
    Ok(())
}

pub fn compiler_annotations(env: &Env) -> Result<()> {
    let a = |v: &str| format!("wasmbox.io/compiler={v}");
    for (compiler, tier) in
        [("cranelift", "optimized (cranelift)"), ("winch", "baseline (winch)"), ("pulley", "interpreted (pulley)")]
    {
        let annotation = a(compiler);
        let out = env.run(P1, &["--annotation", &annotation], &["/fresh/nocache.wasm", "hello"])?;
        ok(&out, 0)?;
        ensure!(text(&out.stdout).contains("hello from wasm"), "{compiler}: {}", show(&out));
        let lines = code_lines(env, "/fresh/nocache.wasm")?;
        let line = lines.last().context("no code line")?;
        ensure!(line.contains(tier), "{compiler}: {line}");
    }
    // Cranelift without optimizations, by annotation.
    let out = env.run(
        P1,
        &["--annotation", &a("cranelift"), "--annotation", "wasmbox.io/cranelift-opt-level=none"],
        &["/fresh/nocache.wasm", "hello"],
    )?;
    ok(&out, 0)?;
    // A module Winch cannot compile (exceptions): the fallback runs it,
    // and the log says why; with compiler=winch it is refused at Create.
    let out = env.run(P1, &[], &["/fresh/exceptions.wasm"])?;
    ok(&out, 42)?;
    let lines = code_lines(env, "/fresh/exceptions.wasm")?;
    let line = lines.last().context("no code line for exceptions.wasm")?;
    ensure!(
        line.contains("unoptimized (cranelift, opt-level none)")
            && line.contains("the baseline (winch) compiler refused it"),
        "exceptions under auto: {line}"
    );
    env.expect_refused(
        P1,
        &["--annotation", &a("winch")],
        &["/fresh/exceptions.wasm"],
        &["wasmbox.io/compiler", "baseline (winch)", "exceptions"],
    )?;
    // Bad values, named.
    env.expect_refused(P1, &["--annotation", &a("v8")], &[], &["wasmbox.io/compiler", "v8"])?;
    env.expect_refused(
        P1,
        &["--annotation", "wasmbox.io/cranelift-opt-level=fast"],
        &[],
        &["wasmbox.io/cranelift-opt-level", "fast"],
    )?;
    env.expect_refused(
        P1,
        &["--annotation", &a("winch"), "--annotation", "wasmbox.io/cranelift-opt-level=none"],
        &[],
        &["wasmbox.io/cranelift-opt-level", "wasmbox.io/compiler"],
    )?;
    Ok(())
}

pub fn prepare_timeout_compile_goes_on(env: &Env) -> Result<()> {
    let image = env.c.import_large("timeout", 12)?;
    let extra = ["--annotation", "wasmbox.io/compiler=cranelift", "--annotation", "wasmbox.io/prepare-timeout=1s"];
    // Cranelift needs seconds for 12 MiB, even on all CPUs: the first Create is killed ...
    let out = env.run(&image, &extra, &["/large.wasm#quick"])?;
    ensure!(!out.status.success(), "expected the prepare timeout: {}", show(&out));
    ensure!(text(&out.stderr).contains("wasmbox.io/prepare-timeout"), "{}", show(&out));
    // ... and its compile goes on in the background, so a retry (as a
    // kubelet's) with the same spec finds the code cached and starts.
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
        let out = env.run(&image, &extra, &["/large.wasm#quick"])?;
        if out.status.success() {
            let lines = code_lines(env, "/large.wasm")?;
            let line = lines.last().context("no code line for the retry")?;
            ensure!(line.contains("code from cache entry") && line.contains("optimized (cranelift)"), "retry: {line}");
            let running = env.c.wait_background_compiles(Duration::from_secs(30));
            ensure!(running.is_empty(), "background compiles left running: {running:?}");
            return Ok(());
        }
        last = show(&out);
    }
    anyhow::bail!("no retry started within 300 s; the last: {last}")
}
