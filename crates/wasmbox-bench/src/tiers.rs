//! `--tiers`: each compiler's first start (empty cache) and cached start of
//! a large generated module, beside runc's start in the same run; how long
//! `auto`'s background compile takes to put the optimized code in the
//! cache; and the steady-state speed of each tier on the CPU-bound guest
//! against the same program built natively.

use super::*;

/// Options of the tiers benchmark.
pub struct TiersOptions {
    /// Size of the generated module's code, in MiB.
    pub mb: usize,
    /// Cached starts timed per compiler (the median is shown).
    pub runs: usize,
    /// Rounds of the CPU-bound guest (millions), for the compiled tiers;
    /// the interpreter gets a tenth.
    pub cpu_rounds: u64,
    /// A real program's .wasm, whose first and cached starts are measured
    /// too (`yosys -V`).
    pub real: Option<std::path::PathBuf>,
}

const COMPILERS: [&str; 4] = ["auto", "cranelift", "winch", "pulley"];

/// Cache entries (with records) of the wasm whose digest is `digest`.
fn entries_of(cache_dir: &std::path::Path, digest: &str) -> usize {
    std::fs::read_dir(cache_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(digest) && n.ends_with(".cwasm") && e.path().with_extension("cwasm.sum").exists()
                })
                .count()
        })
        .unwrap_or(0)
}

/// A real program's starts (yosys, a C++ program of 69 MB that needs
/// exception handling, which Winch lacks): under `auto` (the fallback
/// tier, then the optimized code from the background compile) and under
/// `cranelift`, each from an empty cache (a copy of its own, so another
/// digest).
fn real_program(
    c: &Containerd,
    wasm: &std::path::Path,
    cache_dir: &std::path::Path,
    runc: f64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let label = wasm.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let mb = bytes.len() as f64 / 1e6;
    for compiler in ["auto", "cranelift"] {
        let copy = wasmbox_e2e::generated::tagged(&bytes, compiler);
        let digest = wasmbox_engine::cache::Cache::digest(&copy);
        let path = c.dir.join(format!("real-{compiler}.wasm"));
        std::fs::write(&path, &copy)?;
        let image = format!("docker.io/library/wasmbox-real-{compiler}:bench");
        c.import(&ImageSpec {
            name: image.clone(),
            wasm: path,
            wasm_dest: Some("/app.wasm".into()),
            ..Default::default()
        })?;
        let annotation = format!("wasmbox.io/compiler={compiler}");
        let extra = ["--annotation", "wasmbox.io/prepare-timeout=30m", "--annotation", annotation.as_str()];
        let run = || -> Result<Duration> {
            let id = c.id("real");
            let a = run_args("--rm", Some(RUNTIME), &extra, &image, &id, &["/app.wasm", "-V"]);
            let t = Instant::now();
            let out = c.ctr_bounded(&a, Duration::from_secs(1800))?;
            ensure!(out.status.success(), "{label} ({compiler}): {}", String::from_utf8_lossy(&out.stderr));
            Ok(t.elapsed())
        };
        let started = Instant::now();
        let first = ms(run()?);
        rows.push(Row {
            metric: format!("{label} ({mb:.1} MB), {compiler}: first start, empty cache (ms)"),
            wasmbox: format!("{first:.0}"),
            runc: format!("{runc:.0}"),
            ratio: format!("{:.2}x", first / runc),
        });
        if compiler == "auto" {
            let deadline = Instant::now() + Duration::from_secs(3600);
            while entries_of(cache_dir, &digest) < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            ensure!(entries_of(cache_dir, &digest) >= 2, "{label}: no optimized code after an hour");
            rows.push(Row {
                metric: format!("{label}, auto: optimized code cached, from the first start (ms)"),
                wasmbox: format!("{:.0}", ms(started.elapsed())),
                runc: "-".into(),
                ratio: "-".into(),
            });
        }
        let mut cached: Vec<f64> = (0..3).map(|_| run().map(ms)).collect::<Result<_>>()?;
        let cached = median(&mut cached);
        rows.push(Row {
            metric: format!("{label}, {compiler}: cached start, median of 3 (ms)"),
            wasmbox: format!("{cached:.1}"),
            runc: format!("{runc:.0}"),
            ratio: format!("{:.2}x", cached / runc),
        });
    }
    Ok(())
}

pub fn run_tiers(opts: &TiersOptions) -> Result<String> {
    let bin_dir = wasmbox_e2e::bin_dir()?;
    let c = Containerd::start(&bin_dir)?;
    import_wasm_image(&c)?;
    c.import_busybox(BUSYBOX_IMAGE, &[])?;
    let cache_dir = c.dir.join("state/wasmbox/cache");
    let scratch = c.dir.join("large");
    std::fs::create_dir_all(&scratch)?;
    let mut rows = Vec::new();
    let row = |metric: String, v: String, peer: String, ratio: String| Row { metric, wasmbox: v, runc: peer, ratio };
    // runc's start, in the same run.
    let mut runc: Vec<f64> = (0..opts.runs)
        .map(|_| c.run_timed(None, BUSYBOX_IMAGE, &["/bin/busybox", "true"]).map(ms))
        .collect::<Result<_>>()?;
    let runc = median(&mut runc);
    rows.push(row(
        format!("runc: `ctr run --rm busybox true`, median of {}", opts.runs),
        "-".into(),
        format!("{runc:.0}"),
        "-".into(),
    ));
    let mut wasm_size = 0;
    for (i, compiler) in COMPILERS.iter().enumerate() {
        // A module of its own (another seed): each first start is a miss.
        let wasm = wasmbox_e2e::generated::large_module(opts.mb, i as u64 + 1);
        wasm_size = wasm.len();
        let digest = wasmbox_engine::cache::Cache::digest(&wasm);
        let path = scratch.join(format!("large-{compiler}.wasm"));
        std::fs::write(&path, &wasm)?;
        let image = format!("docker.io/library/wasmbox-tiers-{compiler}:bench");
        c.import(&ImageSpec {
            name: image.clone(),
            wasm: path,
            wasm_dest: Some("/large.wasm".into()),
            ..Default::default()
        })?;
        let annotation = format!("wasmbox.io/compiler={compiler}");
        let extra = ["--annotation", "wasmbox.io/prepare-timeout=30m", "--annotation", annotation.as_str()];
        let run = |c: &Containerd| -> Result<Duration> {
            let id = c.id("tiers");
            let a = run_args("--rm", Some(RUNTIME), &extra, &image, &id, &["/large.wasm#quick"]);
            let t = Instant::now();
            let out = c.ctr_bounded(&a, Duration::from_secs(1800))?;
            ensure!(out.status.success(), "ctr run ({compiler}): {}", String::from_utf8_lossy(&out.stderr));
            Ok(t.elapsed())
        };
        let started = Instant::now();
        let first = ms(run(&c)?);
        rows.push(row(
            format!("{compiler}: first start, empty cache (ms)"),
            format!("{first:.0}"),
            format!("{runc:.0}"),
            format!("{:.2}x", first / runc),
        ));
        if *compiler == "auto" {
            // The background compile: until the optimized entry is beside
            // the baseline's.
            let deadline = Instant::now() + Duration::from_secs(1800);
            while entries_of(&cache_dir, &digest) < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            ensure!(entries_of(&cache_dir, &digest) >= 2, "auto: no optimized code after 30 min");
            rows.push(row(
                "auto: optimized code cached, from the first start (ms)".into(),
                format!("{:.0}", ms(started.elapsed())),
                "-".into(),
                "-".into(),
            ));
        }
        let mut cached: Vec<f64> = (0..opts.runs).map(|_| run(&c).map(ms)).collect::<Result<_>>()?;
        let cached = median(&mut cached);
        rows.push(row(
            format!("{compiler}: cached start, median of {} (ms)", opts.runs),
            format!("{cached:.1}"),
            format!("{runc:.0}"),
            format!("{:.2}x", cached / runc),
        ));
    }
    if let Some(real) = &opts.real {
        real_program(&c, real, &cache_dir, runc, &mut rows)?;
    }
    // Steady state: the CPU-bound guest on each tier against native.
    let native = native_cpu_binary(&bin_dir)?;
    for compiler in ["cranelift", "winch", "pulley"] {
        let rounds = if compiler == "pulley" { (opts.cpu_rounds / 10).max(1) } else { opts.cpu_rounds };
        let r = rounds.to_string();
        let annotation = format!("wasmbox.io/compiler={compiler}");
        let extra = ["--annotation", annotation.as_str()];
        // Once to have the code cached; then timed.
        c.run_timed_with(Some(RUNTIME), &extra, WASM_IMAGE, &["/hello.wasm", "cpu", "1"])?;
        let (mut tn, mut tg) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let t = Instant::now();
            let out = Command::new(&native).args(["cpu", &r]).output()?;
            tn.push(ms(t.elapsed()));
            ensure!(out.status.success(), "native cpu run failed");
            let (d, code) = c.run_timed_with(Some(RUNTIME), &extra, WASM_IMAGE, &["/hello.wasm", "cpu", &r])?;
            ensure!(code == Some(0), "cpu run ({compiler}) exited {code:?}");
            tg.push(ms(d));
        }
        let (gn, gg) = (median(&mut tn), median(&mut tg));
        rows.push(row(
            format!("{compiler}: CPU-bound guest, {rounds} M rounds (ms)"),
            format!("{gg:.0}"),
            format!("{gn:.0} native"),
            format!("{:.2}x native", gg / gn),
        ));
    }
    // The memory-bound guest (a sieve): each compiled tier, and what
    // costs the optimized code speed: explicit bounds checks (a memory
    // reservation below 4 GiB), epoch checks (a CPU deadline), fuel.
    for (label, extra) in [
        ("cranelift", vec!["--annotation", "wasmbox.io/compiler=cranelift"]),
        ("winch", vec!["--annotation", "wasmbox.io/compiler=winch"]),
        (
            "cranelift, memory-reservation=512Mi (bounds checks)",
            vec![
                "--annotation",
                "wasmbox.io/compiler=cranelift",
                "--annotation",
                "wasmbox.io/memory-reservation=512Mi",
            ],
        ),
        (
            "cranelift, cpu-deadline=1h (epoch checks)",
            vec!["--annotation", "wasmbox.io/compiler=cranelift", "--annotation", "wasmbox.io/cpu-deadline=1h"],
        ),
        (
            "cranelift, fuel (metering)",
            vec!["--annotation", "wasmbox.io/compiler=cranelift", "--annotation", "wasmbox.io/fuel=1000000000000000"],
        ),
    ] {
        let (sn, sg) = versus_native(&c, &native, Some(RUNTIME), &extra, WASM_IMAGE, &SIEVE_ARGS)?;
        rows.push(row(
            format!("{label}: sieve to {} M, {} times (ms)", SIEVE_ARGS[1], SIEVE_ARGS[2]),
            format!("{sg:.0}"),
            format!("{sn:.0} native"),
            format!("{:.2}x native", sg / sn),
        ));
    }
    // The same guest without containerd: the engine's own speed, apart
    // from the container's start.
    let (sn, sg) = versus_native_cli(&bin_dir, &native, &["wasmbox.io/compiler=cranelift"], &SIEVE_ARGS)?;
    rows.push(row(
        format!("cranelift, `wasmbox run` (no container): sieve to {} M, {} times (ms)", SIEVE_ARGS[1], SIEVE_ARGS[2]),
        format!("{sg:.0}"),
        format!("{sn:.0} native"),
        format!("{:.2}x native", sg / sn),
    ));
    Ok(table_with(
        "wasmbox tiers benchmark",
        &format!(
            "a generated {} MiB WASI module ({} bytes), one per compiler so each first start compiles; `#quick` runs 200 of its functions and exits; starts are `ctr run --rm`",
            opts.mb, wasm_size
        ),
        "runc",
        &rows,
    ))
}
