//! `wasmbox-bench`: measures wasmbox against runc on one private
//! containerd, in one run, and prints a table. Timings are reported, never
//! asserted.

use crate::{Containerd, RUNTIME, SHIM};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use wasmbox_core::image::{self, ImageSpec};

const WASM_IMAGE: &str = "docker.io/library/hello-wasm:bench";
const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:bench";
const RUNC_SHIM: &str = "containerd-shim-runc-v2";

pub struct Options {
    /// `ctr run --rm` repetitions per runtime (after one first run).
    pub runs: usize,
    /// Sleeping containers per runtime for the memory figure.
    pub containers: usize,
    /// Millions of rounds of the CPU kernel.
    pub cpu_rounds: u64,
}

struct Row {
    metric: String,
    wasmbox: String,
    runc: String,
    ratio: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// PSS in KiB of `pid` (from smaps_rollup).
fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn parents() -> HashMap<i32, i32> {
    let mut m = HashMap::new();
    for (pid, _) in crate::processes() {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(ppid) = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok()) {
                m.insert(pid, ppid);
            }
        }
    }
    m
}

/// PSS of the given roots and all their descendants, KiB.
fn tree_pss(roots: &[i32]) -> (u64, usize) {
    let parents = parents();
    let mut total = 0;
    let mut count = 0;
    for (&pid, _) in parents.iter() {
        let mut p = pid;
        let mut inside = false;
        for _ in 0..64 {
            if roots.contains(&p) {
                inside = true;
                break;
            }
            match parents.get(&p) {
                Some(&pp) if pp > 1 => p = pp,
                _ => break,
            }
        }
        if inside {
            total += pss_kib(pid);
            count += 1;
        }
    }
    (total, count)
}

/// `ctr run MODE [--runtime R] EXTRA... IMAGE ID ARGS...`
fn run_args<'a>(
    mode: &'a str,
    runtime: Option<&'a str>,
    extra: &[&'a str],
    image: &'a str,
    id: &'a str,
    args: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec!["run", mode];
    if let Some(r) = runtime {
        a.extend(["--runtime", r]);
    }
    a.extend_from_slice(extra);
    a.extend([image, id]);
    a.extend_from_slice(args);
    a
}

impl Containerd {
    /// Starts a detached container and waits until it runs; returns its id.
    fn run_detached(&self, runtime: Option<&str>, extra: &[&str], image: &str, args: &[&str]) -> Result<String> {
        let id = self.id("bench");
        let out = self.ctr(&run_args("-d", runtime, extra, image, &id, args))?;
        ensure!(out.status.success(), "ctr run -d failed: {}", String::from_utf8_lossy(&out.stderr));
        self.wait_status(&id, "RUNNING")?;
        Ok(id)
    }

    fn run_timed(&self, runtime: Option<&str>, image: &str, args: &[&str]) -> Result<Duration> {
        let id = self.id("bench");
        let a = run_args("--rm", runtime, &[], image, &id, args);
        let t = Instant::now();
        let out = self.ctr(&a)?;
        let d = t.elapsed();
        ensure!(out.status.success(), "ctr run {image} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(d)
    }

    /// Kills (SIGKILL), deletes and removes a container.
    pub fn remove(&self, id: &str) -> Result<()> {
        let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id])?;
        let _ = self.wait_status(id, "STOPPED");
        let _ = self.ctr(&["task", "rm", id])?;
        let _ = self.ctr(&["container", "rm", id])?;
        Ok(())
    }

    /// Pids of shim daemons of `binary` belonging to this containerd.
    fn shims_of(&self, binary: &str) -> Vec<i32> {
        let sock = self.sock.display().to_string();
        crate::processes()
            .into_iter()
            .filter(|(_, c)| c.contains(binary) && c.contains(&sock))
            .map(|(p, _)| p)
            .collect()
    }
}

/// Starts `n` sleeping containers, returns PSS KiB per container.
fn sleeping_pss(
    c: &Containerd,
    n: usize,
    runtime: Option<&str>,
    image: &str,
    args: &[&str],
    extra: &[&str],
    shim: &str,
) -> Result<f64> {
    let mut ids = Vec::new();
    let result = (|| -> Result<f64> {
        for _ in 0..n {
            ids.push(c.run_detached(runtime, extra, image, args)?);
        }
        std::thread::sleep(Duration::from_millis(1500));
        let shims = c.shims_of(shim);
        let (kib, procs) = tree_pss(&shims);
        ensure!(procs >= n, "found {procs} processes under {} shims for {n} containers", shims.len());
        Ok(kib as f64 / n as f64)
    })();
    for id in &ids {
        c.remove(id)?;
    }
    result
}

/// SIGTERM to a busy guest: from the signal to the process being gone, ms
/// (None when it did not exit within `limit`: SIGKILL ends it then).
fn sigterm_ms(
    c: &Containerd,
    runtime: Option<&str>,
    image: &str,
    args: &[&str],
    limit: Duration,
) -> Result<Option<f64>> {
    let id = c.run_detached(runtime, &[], image, args)?;
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let k = c.ctr(&["task", "kill", "--signal", "SIGTERM", &id])?;
    ensure!(k.status.success(), "kill failed");
    let mut result = None;
    while t.elapsed() < limit {
        if c.task_status(&id)?.as_deref() == Some("STOPPED") {
            result = Some(ms(t.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    c.remove(&id)?;
    Ok(result)
}

fn native_cpu_binary(bin_dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let target = bin_dir.join("guests-native");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "--release", "--manifest-path"])
        .arg(format!("{}/Cargo.toml", test_guests::SOURCE_DIR))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .context("building the native guest")?;
    ensure!(status.success(), "building the native guest failed");
    Ok(target.join("release").join("testguest"))
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default()
}

pub fn run(opts: &Options) -> Result<String> {
    let bin_dir = crate::bin_dir()?;
    let c = Containerd::start(&bin_dir)?;
    c.import(&ImageSpec {
        name: WASM_IMAGE.into(),
        wasm: test_guests::P1.into(),
        wasm_dest: Some("/hello.wasm".into()),
        args: vec!["hello".into()],
        ..Default::default()
    })?;
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (Debian package busybox-static)")?;
    let tar = c.dir.join("busybox.tar");
    image::build_raw(
        BUSYBOX_IMAGE,
        &[("/bin/busybox".into(), busybox, 0o755)],
        &["/bin/busybox".into()],
        &[],
        &[],
        std::io::BufWriter::new(std::fs::File::create(&tar)?),
    )?;
    c.import_tar(&tar)?;
    let wasm = (Some(RUNTIME), WASM_IMAGE);
    let runc = (None, BUSYBOX_IMAGE);
    let mut rows = Vec::new();
    let mut row = |metric: &str, w: String, r: String, ratio: String| {
        rows.push(Row { metric: metric.into(), wasmbox: w, runc: r, ratio })
    };

    // 1. Cold start through ctr.
    let first_w = c.run_timed(wasm.0, wasm.1, &["/hello.wasm", "hello"])?;
    let first_r = c.run_timed(runc.0, runc.1, &["/bin/busybox", "echo", "hi"])?;
    row(
        "ctr run --rm, first run (ms)",
        format!("{:.1}", ms(first_w)),
        format!("{:.1}", ms(first_r)),
        format!("{:.2}x", ms(first_w) / ms(first_r)),
    );
    let (mut tw, mut tr) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        tw.push(ms(c.run_timed(wasm.0, wasm.1, &["/hello.wasm", "hello"])?));
        tr.push(ms(c.run_timed(runc.0, runc.1, &["/bin/busybox", "echo", "hi"])?));
    }
    let (mw, mr) = (median(&mut tw), median(&mut tr));
    row(
        &format!("ctr run --rm, median of {} (ms)", opts.runs),
        format!("{mw:.1}"),
        format!("{mr:.1}"),
        format!("{:.2}x", mw / mr),
    );
    row(
        &format!("ctr run --rm, min of {} (ms)", opts.runs),
        format!("{:.1}", tw[0]),
        format!("{:.1}", tr[0]),
        format!("{:.2}x", tw[0] / tr[0]),
    );

    // What every runtime pays in `ctr run --rm` around its shim: one ctr
    // process, plus creating and removing a container.
    let (mut ctr_alone, mut container) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let t = Instant::now();
        ensure!(c.ctr(&["version"])?.status.success(), "ctr version failed");
        ctr_alone.push(ms(t.elapsed()));
        let id = c.id("floor");
        let t = Instant::now();
        ensure!(c.ctr(&["container", "create", WASM_IMAGE, &id])?.status.success(), "ctr container create failed");
        ensure!(c.ctr(&["container", "rm", &id])?.status.success(), "ctr container rm failed");
        container.push(ms(t.elapsed()));
    }
    let ctr_alone = median(&mut ctr_alone);
    // Two ctr processes were timed for create + rm; ctr run is one.
    let floor = median(&mut container) - ctr_alone;
    row("  floor: ctr + container create/rm (ms)", format!("{floor:.1}"), format!("{floor:.1}"), "-".into());
    row(
        "  runtime's own share: median - floor (ms)",
        format!("{:.1}", mw - floor),
        format!("{:.1}", mr - floor),
        format!("{:.2}x", (mw - floor) / (mr - floor)),
    );

    // 2. Memory of sleeping containers.
    let n = opts.containers;
    let pw = sleeping_pss(&c, n, wasm.0, wasm.1, &["/hello.wasm", "sleep", "3600"], &[], SHIM)?;
    let pr = sleeping_pss(&c, n, runc.0, runc.1, &["/bin/busybox", "sleep", "3600"], &[], RUNC_SHIM)?;
    let pod = format!("io.kubernetes.cri.sandbox-id={}", c.id("benchpod"));
    let pp = sleeping_pss(&c, n, wasm.0, wasm.1, &["/hello.wasm", "sleep", "3600"], &["--annotation", &pod], SHIM)?;
    let mib = |k: f64| format!("{:.2}", k / 1024.0);
    row(&format!("PSS per sleeping container, {n} (MiB)"), mib(pw), mib(pr), format!("{:.2}x", pw / pr));
    row(&format!("  same, {n} in one pod shim (MiB)"), mib(pp), mib(pr), format!("{:.2}x", pp / pr));

    // 3. CPU-bound guest vs native.
    let native = native_cpu_binary(&bin_dir)?;
    let rounds = opts.cpu_rounds.to_string();
    let mut tn = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = Command::new(&native).args(["cpu", &rounds]).output()?;
        tn.push(ms(t.elapsed()));
        ensure!(out.status.success(), "native cpu run failed");
        tg.push(ms(c.run_timed(wasm.0, wasm.1, &["/hello.wasm", "cpu", &rounds])?));
    }
    let (gn, gg) = (median(&mut tn), median(&mut tg));
    row(
        &format!("CPU-bound guest, {} M rounds (ms)", opts.cpu_rounds),
        format!("{gg:.0}"),
        format!("{gn:.0} native"),
        format!("{:.2}x native", gg / gn),
    );

    // 4. SIGTERM to a busy loop.
    let limit = Duration::from_secs(3);
    let sw = sigterm_ms(&c, wasm.0, wasm.1, &["/hello.wasm", "loop"], limit)?;
    let sr = sigterm_ms(&c, runc.0, runc.1, &["/bin/busybox", "sh", "-c", "while :; do :; done"], limit)?;
    let show = |v: Option<f64>| v.map(|m| format!("{m:.1}")).unwrap_or_else(|| format!("not in {}s", limit.as_secs()));
    let ratio = match (sw, sr) {
        (Some(a), Some(b)) => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    row("SIGTERM busy loop -> STOPPED (ms)", show(sw), show(sr), ratio);

    let mut s = format!(
        "wasmbox benchmark: {} | {} | {} CPUs\n(ms figures include ctr's own start-up; medians of repeated runs; 'runc' = busybox via containerd-shim-runc-v2)\n\n",
        crate::containerd_version(),
        version("runc", "--version"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    s.push_str(&format!("| {:<44} | {:>12} | {:>14} | {:>14} |\n", "metric", "wasmbox", "runc", "wasmbox/runc"));
    s.push_str(&format!("|{}|{}|{}|{}|\n", "-".repeat(46), "-".repeat(14), "-".repeat(16), "-".repeat(16)));
    for r in &rows {
        s.push_str(&format!("| {:<44} | {:>12} | {:>14} | {:>14} |\n", r.metric, r.wasmbox, r.runc, r.ratio));
    }
    if c.shims().len() + c.instances().len() > 0 {
        bail!("benchmark left processes behind: shims {:?} instances {:?}", c.shims(), c.instances());
    }
    Ok(s)
}
