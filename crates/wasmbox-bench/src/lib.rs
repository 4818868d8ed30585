//! `wasmbox-bench`: measures wasmbox against runc on one private
//! containerd, in one run, and prints a table. Timings are reported, never
//! asserted.

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use wasmbox_e2e::{Containerd, RUNTIME, SHIM};
use wasmbox_image::ImageSpec;

pub mod cluster;
pub mod tiers;

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
    /// Seconds over which idle CPU of the sleeping containers is counted.
    pub idle_secs: u64,
    /// Sleeping wasm containers started in a row for the density figures
    /// (0: skip); runc gets a tenth of it.
    pub density: usize,
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

/// The printed table: a title line with the versions measured, a note,
/// then the rows, each column as wide as its widest cell.
fn table(title: &str, note: &str, rows: &[Row]) -> String {
    table_with(title, note, "runc", rows)
}

fn table_with(title: &str, note: &str, peer: &str, rows: &[Row]) -> String {
    let mut s = format!(
        "{title}: {} | {} | {} CPUs\n({note})\n\n",
        wasmbox_e2e::containerd_version(),
        version("runc", "--version"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let head =
        Row { metric: "metric".into(), wasmbox: "wasmbox".into(), runc: peer.into(), ratio: format!("wasmbox/{peer}") };
    let cells = |r: &Row| [r.metric.clone(), r.wasmbox.clone(), r.runc.clone(), r.ratio.clone()];
    let mut width = [0usize; 4];
    for r in std::iter::once(&head).chain(rows) {
        for (w, c) in width.iter_mut().zip(cells(r)) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |r: &Row| {
        let c = cells(r);
        format!(
            "| {:<w0$} | {:>w1$} | {:>w2$} | {:>w3$} |\n",
            c[0],
            c[1],
            c[2],
            c[3],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3]
        )
    };
    s.push_str(&line(&head));
    s.push_str(&format!("|{}|\n", width.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|")));
    for r in rows {
        s.push_str(&line(r));
    }
    s
}

/// KiB as MiB, two decimals.
fn mib(k: f64) -> String {
    format!("{:.2}", k / 1024.0)
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
    smaps_kib(pid, "Pss:")
}

/// One field of /proc/PID/smaps_rollup, in KiB (0 when unreadable).
fn smaps_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn parents() -> HashMap<i32, i32> {
    let mut m = HashMap::new();
    for (pid, _) in wasmbox_e2e::processes() {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(ppid) = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok()) {
                m.insert(pid, ppid);
            }
        }
    }
    m
}

/// The given roots and all their descendants.
fn tree(roots: &[i32]) -> Vec<i32> {
    let parents = parents();
    let inside = |pid: i32| {
        let mut p = pid;
        for _ in 0..64 {
            if roots.contains(&p) {
                return true;
            }
            match parents.get(&p) {
                Some(&pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    };
    parents.keys().copied().filter(|&p| inside(p)).collect()
}

/// PSS of the given roots and all their descendants, KiB, and how many processes.
fn tree_pss(roots: &[i32]) -> (u64, usize) {
    let pids = tree(roots);
    (pids.iter().map(|&p| pss_kib(p)).sum(), pids.len())
}

/// CPU ticks (user + system) of one process (0 when it is gone).
fn ticks(pid: i32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// CPU ticks (user + system) of the given roots and all their descendants.
fn tree_ticks(roots: &[i32]) -> u64 {
    tree(roots).into_iter().map(ticks).sum()
}

/// Starts `n` sleeping containers one after another, hands their start
/// times to `measure`, then removes them all whatever it returned.
#[allow(clippy::too_many_arguments)]
fn with_sleepers<T>(
    c: &Containerd,
    n: usize,
    runtime: Option<&str>,
    extra: &[&str],
    image: &str,
    args: &[&str],
    measure: impl FnOnce(&[Instant]) -> Result<T>,
) -> Result<T> {
    let mut ids = Vec::new();
    let mut starts = Vec::new();
    let result = (|| -> Result<T> {
        for _ in 0..n {
            ids.push(c.run_detached(runtime, extra, image, args)?);
            starts.push(Instant::now());
        }
        measure(&starts)
    })();
    for id in &ids {
        c.remove(id)?;
    }
    result
}

/// `n` sleeping containers: CPU ticks their shims and processes used over `secs`.
fn idle_ticks(
    c: &Containerd,
    n: usize,
    runtime: Option<&str>,
    image: &str,
    args: &[&str],
    shim: &str,
    secs: u64,
) -> Result<u64> {
    with_sleepers(c, n, runtime, &[], image, args, |_| {
        std::thread::sleep(Duration::from_secs(2));
        let shims = c.shims_of(shim);
        let before = tree_ticks(&shims);
        std::thread::sleep(Duration::from_secs(secs));
        Ok(tree_ticks(&shims) - before)
    })
}

/// The 1-minute load average.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
}

/// Density: `n` sleeping containers started one after another. Returns
/// (containers/s over the first 100, over the last 100, PSS KiB per
/// container, load average with all up); all are removed after.
fn density(
    c: &Containerd,
    n: usize,
    runtime: Option<&str>,
    image: &str,
    args: &[&str],
    shim: &str,
) -> Result<(f64, f64, f64, f64)> {
    with_sleepers(c, n, runtime, &[], image, args, |starts| {
        let window = 100.min(n.saturating_sub(1)).max(1);
        let rate = |a: Instant, b: Instant| window as f64 / b.duration_since(a).as_secs_f64().max(1e-9);
        let first = rate(starts[0], starts[window.min(n - 1)]);
        let last = rate(starts[n - 1 - window.min(n - 1)], starts[n - 1]);
        std::thread::sleep(Duration::from_secs(2));
        let (kib, procs) = tree_pss(&c.shims_of(shim));
        ensure!(procs >= n, "found {procs} processes for {n} containers");
        Ok((first, last, kib as f64 / n as f64, loadavg()))
    })
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

/// What the benchmark does with a containerd beyond the test harness.
trait Bench {
    /// Starts a detached container; returns its id. `ctr run -d` returns
    /// once the task has started, so no polling of `ctr task ls` (which
    /// would cost the harness more than the runtime) is needed.
    fn run_detached(&self, runtime: Option<&str>, extra: &[&str], image: &str, args: &[&str]) -> Result<String>;
    fn run_timed(&self, runtime: Option<&str>, image: &str, args: &[&str]) -> Result<Duration>;
    /// `ctr run --rm`, timed; also the exit status.
    fn run_timed_with(
        &self,
        runtime: Option<&str>,
        extra: &[&str],
        image: &str,
        args: &[&str],
    ) -> Result<(Duration, Option<i32>)>;
    /// Kills (SIGKILL), deletes and removes a container.
    fn remove(&self, id: &str) -> Result<()>;
    /// Pids of shim daemons of `binary` belonging to this containerd.
    fn shims_of(&self, binary: &str) -> Vec<i32>;
}

impl Bench for Containerd {
    /// Starts a detached container; returns its id. `ctr run -d` returns
    /// once the task has started, so no polling of `ctr task ls` (which
    /// would cost the harness more than the runtime) is needed.
    fn run_detached(&self, runtime: Option<&str>, extra: &[&str], image: &str, args: &[&str]) -> Result<String> {
        let id = self.id("bench");
        let out = self.ctr(&run_args("-d", runtime, extra, image, &id, args))?;
        ensure!(out.status.success(), "ctr run -d failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(id)
    }

    fn run_timed(&self, runtime: Option<&str>, image: &str, args: &[&str]) -> Result<Duration> {
        let (d, code) = self.run_timed_with(runtime, &[], image, args)?;
        ensure!(code == Some(0), "ctr run {image} exited {code:?}");
        Ok(d)
    }

    /// `ctr run --rm`, timed; also the exit status.
    fn run_timed_with(
        &self,
        runtime: Option<&str>,
        extra: &[&str],
        image: &str,
        args: &[&str],
    ) -> Result<(Duration, Option<i32>)> {
        let id = self.id("bench");
        let a = run_args("--rm", runtime, extra, image, &id, args);
        let t = Instant::now();
        let out = self.ctr(&a)?;
        Ok((t.elapsed(), out.status.code()))
    }

    /// Kills (SIGKILL), deletes and removes a container.
    fn remove(&self, id: &str) -> Result<()> {
        let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id])?;
        let _ = self.wait_status(id, "STOPPED");
        let _ = self.ctr(&["task", "rm", id])?;
        let _ = self.ctr(&["container", "rm", id])?;
        Ok(())
    }

    /// Pids of shim daemons of `binary` belonging to this containerd.
    fn shims_of(&self, binary: &str) -> Vec<i32> {
        let sock = self.sock.display().to_string();
        wasmbox_e2e::processes()
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
    with_sleepers(c, n, runtime, extra, image, args, |_| {
        std::thread::sleep(Duration::from_millis(1500));
        let shims = c.shims_of(shim);
        let (kib, procs) = tree_pss(&shims);
        ensure!(procs >= n, "found {procs} processes under {} shims for {n} containers", shims.len());
        Ok(kib as f64 / n as f64)
    })
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

/// The sieve's arguments (after the guest's subcommand): up to 100
/// million, 3 times, about a second natively.
const SIEVE_ARGS: [&str; 3] = ["sieve", "100", "3"];

/// The test guest run as `args` natively and (`ctr run --rm` of `image`
/// with `extra`) under `runtime`, alternately, 3 times: the medians in ms
/// (native, wasm), each from the process's start to its exit.
fn versus_native(
    c: &Containerd,
    native: &std::path::Path,
    runtime: Option<&str>,
    extra: &[&str],
    image: &str,
    args: &[&str],
) -> Result<(f64, f64)> {
    let mut wasm_args = vec!["/hello.wasm"];
    wasm_args.extend_from_slice(args);
    interleaved(native, args, || {
        let (d, code) = c.run_timed_with(runtime, extra, image, &wasm_args)?;
        ensure!(code == Some(0), "{args:?} with {extra:?} exited {code:?}");
        Ok(ms(d))
    })
}

/// The native guest run as `args` and `wasm` (a timed run, in ms),
/// alternately, 5 times after one untimed `wasm` (for the code to be
/// cached): the medians (native, wasm).
fn interleaved(native: &std::path::Path, args: &[&str], mut wasm: impl FnMut() -> Result<f64>) -> Result<(f64, f64)> {
    wasm()?;
    let (mut tn, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let out = Command::new(native).args(args).output()?;
        tn.push(ms(t.elapsed()));
        ensure!(out.status.success(), "native {args:?} failed");
        tg.push(wasm()?);
    }
    Ok((median(&mut tn), median(&mut tg)))
}

/// The test guest run as `args` natively and by `wasmbox run` (no
/// containerd, no container: the engine alone) with `annotations`,
/// alternately, 5 times: the medians in ms (native, wasm).
fn versus_native_cli(
    bin_dir: &std::path::Path,
    native: &std::path::Path,
    annotations: &[&str],
    args: &[&str],
) -> Result<(f64, f64)> {
    let cache = tempfile::tempdir()?;
    interleaved(native, args, || {
        let mut run = Command::new(bin_dir.join("wasmbox"));
        run.arg("run").arg("--cache").arg(cache.path());
        for a in annotations {
            run.args(["--annotation", a]);
        }
        let t = Instant::now();
        let out = run.arg(test_guests::P1).args(args).output()?;
        let took = ms(t.elapsed());
        ensure!(out.status.success(), "wasmbox run {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(took)
    })
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

/// The benchmark's wasm image: the test guest at `/hello.wasm`.
fn import_wasm_image(c: &Containerd) -> Result<()> {
    c.import(&ImageSpec {
        name: WASM_IMAGE.into(),
        wasm: test_guests::P1.into(),
        wasm_dest: Some("/hello.wasm".into()),
        args: vec!["hello".into()],
        ..Default::default()
    })
}

pub fn run(opts: &Options) -> Result<String> {
    let bin_dir = wasmbox_e2e::bin_dir()?;
    let c = Containerd::start(&bin_dir)?;
    import_wasm_image(&c)?;
    c.import_busybox(BUSYBOX_IMAGE, &["/bin/busybox"])?;
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

    // 3b. A memory-bound guest (a sieve) vs native.
    let (sn, sg) = versus_native(&c, &native, wasm.0, &[], wasm.1, &SIEVE_ARGS)?;
    row(
        &format!("memory-bound guest: sieve to {} M, {} times (ms)", SIEVE_ARGS[1], SIEVE_ARGS[2]),
        format!("{sg:.0}"),
        format!("{sn:.0} native"),
        format!("{:.2}x native", sg / sn),
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

    // 5. CPU-bound guest with a CPU deadline on (epoch checks in the code).
    let mut td = Vec::new();
    for _ in 0..3 {
        let (d, code) = c.run_timed_with(
            wasm.0,
            &["--annotation", "wasmbox.io/cpu-deadline=1h"],
            wasm.1,
            &["/hello.wasm", "cpu", &rounds],
        )?;
        ensure!(code == Some(0), "cpu run with a deadline exited {code:?}");
        td.push(ms(d));
    }
    let gd = median(&mut td);
    row(
        "CPU-bound guest with a CPU deadline (ms)",
        format!("{gd:.0}"),
        format!("{gn:.0} native"),
        format!("{:.2}x native", gd / gn),
    );

    // 6. A memory bomb under a 64 MiB limit: from ctr run to its exit.
    let limit = ["--memory-limit", "67108864"];
    let (bw, cw) = c.run_timed_with(wasm.0, &limit, wasm.1, &["/hello.wasm", "alloc", "4096"])?;
    let (br, cr) =
        c.run_timed_with(runc.0, &limit, runc.1, &["/bin/busybox", "sh", "-c", "a=x; while :; do a=\"$a$a\"; done"])?;
    row(
        "memory bomb, 64 MiB limit -> exit (ms, status)",
        format!("{:.0} ({})", ms(bw), cw.unwrap_or(-1)),
        format!("{:.0} ({})", ms(br), cr.unwrap_or(-1)),
        format!("{:.2}x", ms(bw) / ms(br)),
    );

    // 7. Idle CPU of sleeping containers.
    let iw = idle_ticks(&c, n, wasm.0, wasm.1, &["/hello.wasm", "sleep", "3600"], SHIM, opts.idle_secs)?;
    let ir = idle_ticks(&c, n, runc.0, runc.1, &["/bin/busybox", "sleep", "3600"], RUNC_SHIM, opts.idle_secs)?;
    row(&format!("idle CPU ticks, {n} sleeping, {} s", opts.idle_secs), iw.to_string(), ir.to_string(), "-".into());

    // 8. Density.
    if opts.density > 0 {
        let nr = (opts.density / 10).max(1);
        let (f, l, k, la) = density(&c, opts.density, wasm.0, wasm.1, &["/hello.wasm", "sleep", "3600"], SHIM)?;
        let (fr, lr, kr, lar) = density(&c, nr, runc.0, runc.1, &["/bin/busybox", "sleep", "3600"], RUNC_SHIM)?;
        row(
            &format!("density: {} wasm / {nr} runc, first 100 (/s)", opts.density),
            format!("{f:.1}"),
            format!("{fr:.1}"),
            format!("{:.2}x", f / fr),
        );
        row("  last 100 started (containers/s)", format!("{l:.1}"), format!("{lr:.1}"), format!("{:.2}x", l / lr));
        row("  PSS per container, all up (MiB)", mib(k), mib(kr), format!("{:.2}x", k / kr));
        row("  load average, all up", format!("{la:.1}"), format!("{lar:.1}"), "-".into());
    }

    let s = table(
        "wasmbox benchmark",
        "ms figures include ctr's own start-up; medians of repeated runs; 'runc' = busybox via containerd-shim-runc-v2",
        &rows,
    );
    if c.shims().len() + c.instances().len() > 0 {
        bail!("benchmark left processes behind: shims {:?} instances {:?}", c.shims(), c.instances());
    }
    Ok(s)
}

/// What `wasmbox-bench --cri` measures.
pub struct CriOptions {
    /// Pods started and stopped per handler for the latency figures.
    pub runs: usize,
    /// Pods of the density figure, wasm.
    pub pods: usize,
    /// wasm containers in each of those pods.
    pub per_pod: usize,
    /// runc pods (one busybox container each) beside them.
    pub runc_pods: usize,
}

/// Pod start: RunPodSandbox + CreateContainer + StartContainer (crictl
/// returns once it runs), ms; the pod is removed after.
fn pod_start_ms(c: &Containerd, name: &str, handler: &str, image: &str, cmd: &[&str]) -> Result<f64> {
    let t = Instant::now();
    c.run_pod(name, handler, image, cmd)?;
    let took = ms(t.elapsed());
    let pod = c.pod_named(name)?;
    c.remove_pod(&pod)?;
    Ok(took)
}

/// StopPodSandbox of a pod whose one container is `cmd`, ms.
fn pod_stop_ms(c: &Containerd, name: &str, handler: &str, image: &str, cmd: &[&str]) -> Result<f64> {
    let pod = c.runp(name, handler, false, None)?;
    c.run_in(&pod, "app", image, cmd)?;
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    c.crictl_ok(&["stopp", &pod.id])?;
    let took = ms(t.elapsed());
    c.crictl_ok(&["rmp", &pod.id])?;
    Ok(took)
}

/// The benchmark through CRI: pod start and stop latency, wasm pods vs
/// runc busybox pods; density of wasm pods of several containers.
pub fn run_cri(opts: &CriOptions) -> Result<String> {
    let bin_dir = wasmbox_e2e::bin_dir()?;
    let c = Containerd::start_cri(&bin_dir)?;
    import_wasm_image(&c)?;
    c.import_busybox(BUSYBOX_IMAGE, &[])?;
    c.import_busybox(wasmbox_e2e::PAUSE_IMAGE, &["/bin/sleep", "2147483647"])?;
    let mut rows = Vec::new();
    let mut row = |metric: &str, w: String, r: String, ratio: String| {
        rows.push(Row { metric: metric.into(), wasmbox: w, runc: r, ratio })
    };
    let wasm_sleep = ["/hello.wasm", "sleep", "3600"];
    let busy_sleep = ["sleep", "3600"];
    // Warm both paths once (image snapshots, compile cache).
    pod_start_ms(&c, "warm-w", "wasmbox", WASM_IMAGE, &wasm_sleep)?;
    pod_start_ms(&c, "warm-r", "runc", BUSYBOX_IMAGE, &busy_sleep)?;
    let (mut sw, mut sr) = (Vec::new(), Vec::new());
    for i in 0..opts.runs {
        sw.push(pod_start_ms(&c, &format!("start-w{i}"), "wasmbox", WASM_IMAGE, &wasm_sleep)?);
        sr.push(pod_start_ms(&c, &format!("start-r{i}"), "runc", BUSYBOX_IMAGE, &busy_sleep)?);
    }
    let (w, r) = (median(&mut sw), median(&mut sr));
    row(
        &format!("pod start: one crictl run (runp + create + start), median of {} (ms)", opts.runs),
        format!("{w:.0}"),
        format!("{r:.0}"),
        format!("{:.2}x", w / r),
    );
    let (mut tw, mut tr) = (Vec::new(), Vec::new());
    for i in 0..opts.runs.min(5) {
        tw.push(pod_stop_ms(&c, &format!("stop-w{i}"), "wasmbox", WASM_IMAGE, &["/hello.wasm", "loop"])?);
        tr.push(pod_stop_ms(&c, &format!("stop-r{i}"), "runc", BUSYBOX_IMAGE, &busy_sleep)?);
    }
    let (w, r) = (median(&mut tw), median(&mut tr));
    row(
        "pod stop: busy wasm guest / busybox sleep (ms)",
        format!("{w:.0}"),
        format!("{r:.0}"),
        format!("{:.2}x", w / r),
    );

    // Density: wasm pods of `per_pod` containers, then runc pods.
    let t = Instant::now();
    let mut pods = Vec::new();
    let measured = (|| -> Result<(f64, f64)> {
        for p in 0..opts.pods {
            let pod = c.runp(&format!("dense-{p}"), "wasmbox", false, None)?;
            for k in 0..opts.per_pod {
                c.run_in(&pod, &format!("c{k}"), WASM_IMAGE, &wasm_sleep)?;
            }
            pods.push(pod);
        }
        let rate = (opts.pods * opts.per_pod) as f64 / t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        let (kib, _) = tree_pss(&c.shims_of(SHIM));
        Ok((rate, kib as f64 / (opts.pods * opts.per_pod).max(1) as f64))
    })();
    for pod in &pods {
        c.remove_pod(pod)?;
    }
    let (wrate, wkib) = measured?;
    let t = Instant::now();
    let mut rpods = Vec::new();
    let measured = (|| -> Result<(f64, f64)> {
        for p in 0..opts.runc_pods {
            let pod = c.runp(&format!("dense-r{p}"), "runc", false, None)?;
            c.run_in(&pod, "c0", BUSYBOX_IMAGE, &busy_sleep)?;
            rpods.push(pod);
        }
        let rate = opts.runc_pods as f64 / t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        let (kib, _) = tree_pss(&c.shims_of(RUNC_SHIM));
        Ok((rate, kib as f64 / opts.runc_pods.max(1) as f64))
    })();
    for pod in &rpods {
        c.remove_pod(pod)?;
    }
    let (rrate, rkib) = measured?;
    row(
        &format!("density: {}x{} wasm / {} runc pods, containers/s", opts.pods, opts.per_pod, opts.runc_pods),
        format!("{wrate:.1}"),
        format!("{rrate:.1}"),
        format!("{:.2}x", wrate / rrate),
    );
    row("  PSS per container, all up (MiB)", mib(wkib), mib(rkib), format!("{:.2}x", wkib / rkib));
    let s = table(
        "wasmbox CRI benchmark",
        "crictl against containerd's CRI; 'runc' = busybox pods of handler runc; runc's PSS includes its pause container",
        &rows,
    );
    if !c.shims().is_empty() || !c.instances().is_empty() {
        bail!("the CRI benchmark left processes behind: shims {:?} instances {:?}", c.shims(), c.instances());
    }
    Ok(s)
}

/// Options of `wasmbox-bench --serve`.
pub struct ServeOptions {
    /// Seconds of load per concurrency level.
    pub secs: u64,
}

/// One keep-alive connection's client: GET `path` again and again until
/// `until`; the latency of each answer (µs), or an error.
fn keep_alive_client(addr: std::net::SocketAddr, path: &str, until: Instant) -> Result<Vec<u64>> {
    use std::io::{BufRead, BufReader, Read, Write};
    let s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let req = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n");
    let mut lat = Vec::new();
    let mut line = String::new();
    while Instant::now() < until {
        let t = Instant::now();
        w.write_all(req.as_bytes())?;
        let (mut len, mut chunked, mut status) = (None, false, 0u16);
        loop {
            line.clear();
            ensure!(r.read_line(&mut line)? > 0, "connection closed");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if lower.starts_with("http/1.1 ") {
                status = lower[9..12].parse().unwrap_or(0);
            } else if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        ensure!(status == 200, "status {status}");
        if let Some(n) = len {
            let mut body = vec![0u8; n];
            r.read_exact(&mut body)?;
        } else if chunked {
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut body = vec![0u8; n + 2];
                r.read_exact(&mut body)?;
                if n == 0 {
                    break;
                }
            }
        }
        lat.push(t.elapsed().as_micros() as u64);
    }
    Ok(lat)
}

/// `conns` keep-alive clients for `secs`: (requests/s, p50 µs, p99 µs).
fn load(addr: std::net::SocketAddr, conns: usize, secs: u64) -> Result<(f64, u64, u64)> {
    let until = Instant::now() + Duration::from_secs(secs);
    let t = Instant::now();
    let results: Vec<Result<Vec<u64>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..conns).map(|_| s.spawn(|| keep_alive_client(addr, "/hello", until))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("client panicked")))).collect()
    });
    let took = t.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    all.sort_unstable();
    ensure!(!all.is_empty(), "no request was answered");
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Ok((all.len() as f64 / took, pct(0.50), pct(0.99)))
}

fn wait_http(addr: std::net::SocketAddr) -> Result<()> {
    let t = Instant::now();
    while keep_alive_client(addr, "/hello", Instant::now() + Duration::from_millis(1))
        .map(|l| l.is_empty())
        .unwrap_or(true)
    {
        ensure!(t.elapsed() < Duration::from_secs(30), "{addr} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The instance processes under the containerd's wasmbox shims.
fn instances(c: &Containerd) -> Vec<i32> {
    tree(&c.shims_of(SHIM))
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains(wasmbox_instance::INSTANCE_ARG))
        })
        .collect()
}

/// Serving the test component: wasmbox (a container on the host network)
/// beside `wasmtime serve` of the same component (when a `wasmtime` CLI
/// is on PATH or in WASMBOX_WASMTIME), the same load generator, loopback
/// only, bounded in time.
pub fn run_serve(opts: &ServeOptions) -> Result<String> {
    const HTTP_IMAGE: &str = "docker.io/library/wasmbox-http:bench";
    let bin_dir = wasmbox_e2e::bin_dir()?;
    let c = Containerd::start(&bin_dir)?;
    c.import(&ImageSpec { name: HTTP_IMAGE.into(), wasm: test_guests::HTTP.into(), ..Default::default() })?;
    let serve_on = |port: u16, extra: &[&str]| -> Result<String> {
        let listen = format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR=127.0.0.1:{port}");
        let mut flags = vec!["--net-host", "--env", listen.as_str()];
        flags.extend_from_slice(extra);
        let id = c.run_detached(Some(RUNTIME), &flags, HTTP_IMAGE, &[])?;
        wait_http(format!("127.0.0.1:{port}").parse()?)?;
        Ok(id)
    };
    // A first start compiles the component into the node's cache; the
    // measured containers start as every later one does, from the cache.
    let warm = serve_on(free_port()?, &[])?;
    c.remove(&warm)?;
    let port = free_port()?;
    let mport = free_port()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let metrics = format!("wasmbox.io/metrics-listen=127.0.0.1:{mport}");
    let id = serve_on(port, &["--annotation", &metrics])?;
    let mut rows = Vec::new();
    let mut others = Vec::new();
    let measured = (|| -> Result<()> {
        std::thread::sleep(Duration::from_millis(500));
        let instance = *instances(&c).first().context("the serving container's instance process")?;
        let (pss, anon) = (smaps_kib(instance, "Pss:") as f64, smaps_kib(instance, "Pss_Anon:") as f64);
        let idle = tree_pss(&c.shims_of(SHIM)).0 as f64;
        let wasmtime = std::env::var("WASMBOX_WASMTIME").unwrap_or_else(|_| "wasmtime".into());
        let peer_port = free_port()?;
        let peer_addr: std::net::SocketAddr = format!("127.0.0.1:{peer_port}").parse()?;
        let mut peer = Command::new(&wasmtime)
            .args(["serve", "-Scli", "--addr", &peer_addr.to_string(), test_guests::HTTP])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok();
        if peer.is_some() && wait_http(peer_addr).is_err() {
            if let Some(p) = peer.as_mut() {
                let _ = p.kill();
                let _ = p.wait();
            }
            peer = None;
        }
        // The peer's memory, idle, after the same first request.
        let peer_pss = peer.as_ref().map(|p| pss_kib(p.id() as i32) as f64);
        let mut loaded = 0.0;
        let mut peer_loaded = None;
        for conns in [1usize, 16, 64] {
            let (rps, p50, p99) = load(addr, conns, opts.secs)?;
            if conns == 64 {
                loaded = tree_pss(&c.shims_of(SHIM)).0 as f64;
            }
            let theirs = if peer.is_some() { Some(load(peer_addr, conns, opts.secs)?) } else { None };
            if conns == 64 {
                peer_loaded = peer.as_ref().map(|p| pss_kib(p.id() as i32) as f64);
            }
            let cell = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
            let ratio = |a: f64, b: Option<f64>| b.map(|b| format!("{:.2}x", a / b)).unwrap_or_else(|| "-".into());
            rows.push(Row {
                metric: format!("requests/s, {conns} keep-alive connection(s), {} s", opts.secs),
                wasmbox: format!("{rps:.0}"),
                runc: cell(theirs.map(|t| t.0), &|v| format!("{v:.0}")),
                ratio: ratio(rps, theirs.map(|t| t.0)),
            });
            rows.push(Row {
                metric: format!("p50 / p99 latency, {conns} connection(s) (µs)"),
                wasmbox: format!("{p50} / {p99}"),
                runc: theirs.map(|t| format!("{} / {}", t.1, t.2)).unwrap_or_else(|| "-".into()),
                ratio: ratio(p99 as f64, theirs.map(|t| t.2 as f64)),
            });
        }
        if let Some(mut p) = peer {
            let _ = p.kill();
            let _ = p.wait();
        }
        let m = {
            let out = Command::new("busybox")
                .args(["wget", "-qO-", &format!("http://127.0.0.1:{mport}/metrics")])
                .output()?;
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let val = |name: &str| m.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
        let n = val("wasmbox_http_requests_total ");
        let per = |secs: f64| format!("{:.1}", if n > 0.0 { secs / n * 1e6 } else { 0.0 });
        rows.push(Row {
            metric: "per-request instantiation of the component, mean (µs)".into(),
            wasmbox: per(val("wasmbox_http_instantiate_seconds_total ")),
            runc: "-".into(),
            ratio: "-".into(),
        });
        rows.push(Row {
            metric: "per-request instance time: instantiate + handle, mean (µs)".into(),
            wasmbox: per(val("wasmbox_http_instance_seconds_total ")),
            runc: "-".into(),
            ratio: "-".into(),
        });
        let vs = |a: f64, b: Option<f64>| b.map(|b| format!("{:.2}x", a / b)).unwrap_or_else(|| "-".into());
        rows.push(Row {
            metric: "PSS idle: the instance process (anon part) (MiB)".into(),
            wasmbox: format!("{} ({})", mib(pss), mib(anon)),
            runc: peer_pss.map(mib).unwrap_or_else(|| "-".into()),
            ratio: vs(pss, peer_pss),
        });
        rows.push(Row {
            metric: "PSS idle: the container, shim included (MiB)".into(),
            wasmbox: mib(idle),
            runc: peer_pss.map(mib).unwrap_or_else(|| "-".into()),
            ratio: vs(idle, peer_pss),
        });
        rows.push(Row {
            metric: "PSS under 64 connections: the container, shim included (MiB)".into(),
            wasmbox: mib(loaded),
            runc: peer_loaded.map(mib).unwrap_or_else(|| "-".into()),
            ratio: vs(loaded, peer_loaded),
        });
        std::thread::sleep(Duration::from_millis(500));
        let after_load = tree_pss(&c.shims_of(SHIM)).0 as f64;
        rows.push(Row {
            metric: "PSS idle again after the load: the container, shim included (MiB)".into(),
            wasmbox: mib(after_load),
            runc: "-".into(),
            ratio: "-".into(),
        });
        // Ten more serving containers: what each adds, its code pages
        // shared with the others'.
        let before = tree_pss(&c.shims_of(SHIM)).0 as f64;
        for _ in 0..10 {
            others.push(serve_on(free_port()?, &[])?);
        }
        std::thread::sleep(Duration::from_millis(500));
        let after = tree_pss(&c.shims_of(SHIM)).0 as f64;
        let all = instances(&c);
        let each: f64 = all.iter().map(|&p| pss_kib(p) as f64).sum::<f64>() / all.len().max(1) as f64;
        let each_anon: f64 =
            all.iter().map(|&p| smaps_kib(p, "Pss_Anon:") as f64).sum::<f64>() / all.len().max(1) as f64;
        rows.push(Row {
            metric: format!("PSS idle, {} serving containers: each instance process (anon part) (MiB)", all.len()),
            wasmbox: format!("{} ({})", mib(each), mib(each_anon)),
            runc: "-".into(),
            ratio: "-".into(),
        });
        rows.push(Row {
            metric: "PSS idle: what each of 10 more serving containers adds, its shim included (MiB)".into(),
            wasmbox: mib((after - before) / 10.0),
            runc: "-".into(),
            ratio: "-".into(),
        });
        Ok(())
    })();
    for o in &others {
        c.remove(o)?;
    }
    c.remove(&id)?;
    measured?;
    Ok(table_with(
        "wasmbox serve benchmark",
        "the hello route of the test component; load from this process's keep-alive clients over loopback",
        "wasmtime serve",
        &rows,
    ))
}

/// Options of the compile-cache benchmark.
pub struct CacheOptions {
    /// Size of the generated module's code, in MiB.
    pub mb: usize,
    /// Sleeping instances whose memory is measured.
    pub instances: usize,
    /// Cached starts timed (the median is shown).
    pub runs: usize,
}

/// The compile cache with a large module: first start (compile) against
/// cached starts under `ctr run --rm`, the instance's own load time and
/// the integrity check's share of it, and the memory of sleeping
/// instances sharing the mapped code.
pub fn run_cache(opts: &CacheOptions) -> Result<String> {
    const IMAGE: &str = "docker.io/library/wasmbox-large:bench";
    let bin_dir = wasmbox_e2e::bin_dir()?;
    let c = Containerd::start(&bin_dir)?;
    let wasm = wasmbox_e2e::generated::large_module(opts.mb, 0);
    let scratch = c.dir.join("large");
    std::fs::create_dir_all(&scratch)?;
    let path = scratch.join("large.wasm");
    std::fs::write(&path, &wasm)?;
    c.import(&ImageSpec { name: IMAGE.into(), wasm: path.clone(), ..Default::default() })?;
    // Compiling takes longer than the default prepare timeout; the
    // optimizing compiler alone (`--tiers` has the others).
    let extra = ["--annotation", "wasmbox.io/prepare-timeout=30m", "--annotation", "wasmbox.io/compiler=cranelift"];
    let run = |c: &Containerd| -> Result<Duration> {
        let id = c.id("large");
        let a = run_args("--rm", Some(RUNTIME), &extra, IMAGE, &id, &["/large.wasm#quick"]);
        let t = Instant::now();
        let out = c.ctr_bounded(&a, Duration::from_secs(1800))?;
        ensure!(out.status.success(), "ctr run of the large module: {}", String::from_utf8_lossy(&out.stderr));
        Ok(t.elapsed())
    };
    let first = run(&c)?;
    let mut cached: Vec<f64> = (0..opts.runs).map(|_| run(&c).map(ms)).collect::<Result<_>>()?;
    let cached = median(&mut cached);
    // The instance's own figures, from the shim's log lines.
    let log = std::fs::read_to_string(c.dir.join("containerd.log"))?;
    let figure = |l: &str, key: &str| -> Option<f64> {
        let at = l.find(key)? + key.len();
        l[at..].split_whitespace().next()?.parse().ok()
    };
    let compile_ms = log
        .lines()
        .filter(|l| l.contains("large.wasm") && l.contains("compiled in"))
        .find_map(|l| figure(l, "compiled in "));
    let mut loads: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("code from cache entry"))
        .filter_map(|l| figure(l, "verified and mapped in "))
        .collect();
    let load_ms = median(&mut loads);
    // The integrity check alone: the cache's verification of the entry.
    let cache = wasmbox_engine::cache::Cache::with_limit(c.dir.join("state/wasmbox/cache"), u64::MAX)?;
    let entry = cache.list().into_iter().max_by_key(|e| e.bytes).context("no cache entry")?;
    let mut checks: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let ok = cache.open_verified(&entry.path).map(|f| f.is_some()).unwrap_or(false);
            (ok, ms(t.elapsed()))
        })
        .filter(|(ok, _)| *ok)
        .map(|(_, t)| t)
        .collect();
    ensure!(!checks.is_empty(), "the cache entry did not verify");
    let check_ms = median(&mut checks);
    // Sleeping instances of the module.
    let mut ids = Vec::new();
    let measured = (|| -> Result<(f64, f64, f64)> {
        for _ in 0..opts.instances {
            ids.push(c.run_detached(Some(RUNTIME), &extra, IMAGE, &["/large.wasm"])?);
        }
        std::thread::sleep(Duration::from_secs(1));
        let all = instances(&c);
        ensure!(all.len() == opts.instances, "{} of {} instances running", all.len(), opts.instances);
        let n = all.len() as f64;
        let each = all.iter().map(|&p| pss_kib(p) as f64).sum::<f64>() / n;
        let anon = all.iter().map(|&p| smaps_kib(p, "Pss_Anon:") as f64).sum::<f64>() / n;
        let with_shims = tree_pss(&c.shims_of(SHIM)).0 as f64 / n;
        Ok((each, anon, with_shims))
    })();
    for id in &ids {
        c.remove(id)?;
    }
    let (each, anon, with_shims) = measured?;
    let row = |metric: String, v: String| Row { metric, wasmbox: v, runc: "-".into(), ratio: "-".into() };
    let rows = vec![
        row(
            "module: wasm size / compiled entry size (MiB)".into(),
            format!("{} / {}", mib(wasm.len() as f64 / 1024.0), mib(entry.bytes as f64 / 1024.0)),
        ),
        row("first `ctr run --rm` (compiles) (ms)".into(), format!("{:.0}", ms(first))),
        row(format!("cached `ctr run --rm`, median of {} (ms)", opts.runs), format!("{cached:.1}")),
        row("first / cached".into(), format!("{:.0}x", ms(first) / cached)),
        row("the instance's compile time (ms)".into(), compile_ms.map(|v| format!("{v:.0}")).unwrap_or("-".into())),
        row("the instance's load of cached code: verify + map, median (ms)".into(), format!("{load_ms:.1}")),
        row("of which the integrity check (SHA-256 of the entry) (ms)".into(), format!("{check_ms:.1}")),
        row(
            format!("PSS of each of {} sleeping instances (anon part) (MiB)", opts.instances),
            format!("{} ({})", mib(each), mib(anon)),
        ),
        row(format!("PSS of each of {} sleeping containers, shims included (MiB)", opts.instances), mib(with_shims)),
    ];
    Ok(table_with(
        "wasmbox compile-cache benchmark",
        &format!("a generated {} MiB WASI module; `#quick` runs 200 of its functions and exits", opts.mb),
        "-",
        &rows,
    ))
}
