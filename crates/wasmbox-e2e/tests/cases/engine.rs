//! Engine settings per workload, under a real containerd: each annotation
//! takes effect where the kernel or the guest can see it (a deep call
//! traps, fuel ends a loop, the memory reservation and the pool show in the
//! instance's address space, settings that change code get their own cache
//! entry), each bad value is refused naming the annotation, and a node
//! defaults file (given to the shim with the runtime option `ConfigPath`)
//! sets what a container's own annotation does not.

use super::isolation::task_pid;
use super::serve::{free_port, get, serve, wait_serving};
use super::{ok, show, text, Env, P1, WASM};
use anyhow::{ensure, Context, Result};
use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;
use wasmbox_e2e::RUNTIME;

/// `VmSize` of `pid`, in bytes.
fn vm_size(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmSize")?;
    Ok(kb << 10)
}

/// The address space of the test guest's instance under `extra` flags,
/// once the guest runs (it has said "sleeping"), in bytes.
fn sleeping_vm_size(env: &Env, extra: &[&str]) -> Result<u64> {
    let id = env.c.id("vm");
    let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
    a.extend_from_slice(extra);
    a.extend_from_slice(&[P1, &id, WASM, "sleep", "120"]);
    let mut child = env.c.ctr_spawn(&a)?;
    let stdout = child.stdout.take().context("ctr's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if line.contains("sleeping") {
                let _ = tx.send(());
            }
        }
    });
    let size = rx
        .recv_timeout(Duration::from_secs(60))
        .context("the guest never said \"sleeping\"")
        .and_then(|()| vm_size(task_pid(env, &id)?));
    let _ = env.c.ctr(&["task", "kill", "--signal", "SIGKILL", &id]);
    let out = child.wait_with_output()?;
    size.with_context(|| show(&out))
}

/// The shim's last log line about how code of the test guest was had.
fn last_code_line(env: &Env) -> Result<String> {
    let log = std::fs::read_to_string(env.c.dir.join("containerd.log"))?;
    log.lines()
        .rfind(|l| l.contains(&format!("{WASM}: compiled in")) || l.contains(&format!("{WASM}: code from cache entry")))
        .map(str::to_string)
        .context("no code line for the test guest")
}

const GIB: u64 = 1 << 30;

pub fn engine_settings(env: &Env) -> Result<()> {
    let ann = |kv: &str| ["--annotation".to_string(), kv.to_string()];
    let flags = |kvs: &[&str]| -> Vec<String> { kvs.iter().flat_map(|kv| ann(kv)).collect() };
    let run = |kvs: &[&str], args: &[&str]| {
        let f = flags(kvs);
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        env.run(P1, &f, args)
    };

    // Stack: a deep recursion runs within the default and traps in 16 KiB.
    let cl = "wasmbox.io/compiler=cranelift";
    let out = run(&[cl], &[WASM, "recurse", "2000"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("recursed:"), "{}", show(&out));
    let out = run(&[cl, "wasmbox.io/stack-size=16Ki"], &[WASM, "recurse", "2000"])?;
    ok(&out, 134)?;
    ensure!(text(&out.stderr).contains("call stack exhausted"), "{}", show(&out));
    // 30000 frames do not fit in the default, and fit in 8 MiB.
    let out = run(&[cl], &[WASM, "recurse", "30000"])?;
    ok(&out, 134)?;
    let out = run(&[cl, "wasmbox.io/stack-size=8Mi"], &[WASM, "recurse", "30000"])?;
    ok(&out, 0)?;

    // Fuel: enough runs the guest; too little, or an endless loop, ends in
    // a trap that names the annotation.
    let out = run(&["wasmbox.io/fuel=10000000000"], &[WASM, "hello"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("hello from wasm"), "{}", show(&out));
    for (fuel, args) in [("wasmbox.io/fuel=1000", &[WASM, "hello"][..]), ("wasmbox.io/fuel=2000000", &[WASM, "loop"])] {
        let out = run(&[fuel], args)?;
        ok(&out, 134)?;
        ensure!(
            text(&out.stderr).contains("all fuel consumed") && text(&out.stderr).contains("wasmbox.io/fuel"),
            "{args:?}: {}",
            show(&out)
        );
    }

    // A setting that changes code gets code of its own: compiled once,
    // then from the cache.
    let small =
        ["wasmbox.io/compiler=cranelift", "wasmbox.io/memory-reservation=64Mi", "wasmbox.io/memory-guard-size=0"];
    ok(&run(&small, &[WASM, "hello"])?, 0)?;
    let line = last_code_line(env)?;
    ensure!(line.contains("compiled in"), "64Mi reservation, first run: {line}");
    ok(&run(&small, &[WASM, "hello"])?, 0)?;
    let line = last_code_line(env)?;
    ensure!(line.contains("code from cache entry"), "64Mi reservation, second run: {line}");

    // The reservation and the pool, in the instance's address space.
    let default = sleeping_vm_size(env, &[])?;
    let f = flags(&small);
    let reserved = sleeping_vm_size(env, &f.iter().map(String::as_str).collect::<Vec<_>>())?;
    let f = flags(&["wasmbox.io/pooling=on"]);
    let pooled = sleeping_vm_size(env, &f.iter().map(String::as_str).collect::<Vec<_>>())?;
    println!(
        "    VmSize: default {} MiB, 64Mi reservation {} MiB, pooled {} MiB",
        default >> 20,
        reserved >> 20,
        pooled >> 20
    );
    ensure!(default >= 4 * GIB, "a default memory reserves 4 GiB: VmSize {default}");
    ensure!(reserved + 3 * GIB < default, "memory-reservation=64Mi: VmSize {reserved} vs {default}");
    ensure!(pooled > default + 3 * GIB, "pooling=on reserves a pool: VmSize {pooled} vs {default}");

    // Bad values and combinations, named.
    for (kvs, needles) in [
        (&["wasmbox.io/stack-size=1Gi"][..], &["wasmbox.io/stack-size", "256Mi"][..]),
        (&["wasmbox.io/fuel=0"], &["wasmbox.io/fuel", "\"0\""]),
        (&["wasmbox.io/memory-reservation=lots"], &["wasmbox.io/memory-reservation", "lots"]),
        (&["wasmbox.io/memory-guard-size=-1"], &["wasmbox.io/memory-guard-size"]),
        (&["wasmbox.io/pooling=maybe"], &["wasmbox.io/pooling", "maybe"]),
        (&["wasmbox.io/pooling=off", "wasmbox.io/pool-instances=2"], &["wasmbox.io/pool-instances", "off"]),
        (&["wasmbox.io/pool-tables=none"], &["wasmbox.io/pool-tables", "none"]),
    ] {
        let f = flags(kvs);
        env.expect_refused(P1, &f.iter().map(String::as_str).collect::<Vec<_>>(), &[WASM, "hello"], needles)?;
    }
    Ok(())
}

/// A served component: the pool by default, none with `pooling=off`, a
/// smaller one with `pool-instances`; fuel per request (a spinning
/// request gets a 500 naming the annotation, the next is served).
pub fn serve_engine_settings(env: &Env) -> Result<()> {
    let mut sizes = Vec::new();
    for extra in
        [&[][..], &["--annotation", "wasmbox.io/pooling=off"], &["--annotation", "wasmbox.io/pool-instances=2"]]
    {
        let id = env.c.id("h-pool");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let size = serve(env, &id, addr, extra).and_then(|pid| {
            let r = get(addr, "/hello")?;
            ensure!(r.status == 200, "{extra:?}: /hello {} {:?}", r.status, r.body);
            vm_size(pid)
        });
        let removed = env.kill_and_remove(&id);
        sizes.push(size?);
        removed?;
    }
    println!(
        "    served VmSize: pooled {} GiB, off {} GiB, 2 instances {} GiB",
        sizes[0] >> 30,
        sizes[1] >> 30,
        sizes[2] >> 30
    );
    ensure!(sizes[1] * 10 < sizes[0], "pooling=off: VmSize {} vs pooled {}", sizes[1], sizes[0]);
    ensure!(sizes[2] * 10 < sizes[0], "pool-instances=2: VmSize {} vs {}", sizes[2], sizes[0]);

    let id = env.c.id("h-fuel");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let result = serve(env, &id, addr, &["--annotation", "wasmbox.io/fuel=50000000"]).and_then(|_| {
        let r = get(addr, "/spin")?;
        ensure!(r.status == 500 && r.body.contains("wasmbox.io/fuel"), "/spin: {} {:?}", r.status, r.body);
        let r = get(addr, "/hello")?;
        ensure!(r.status == 200, "after a request out of fuel: {} {:?}", r.status, r.body);
        Ok(())
    });
    let removed = env.kill_and_remove(&id);
    result?;
    removed
}

/// A served component that starts on the baseline tier switches to the
/// optimized code once the background compile has cached it, while
/// clients keep it busy, and no request fails.
pub fn serve_switches_tier(env: &Env) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos().to_string();
    let path = env.c.dir.join("files").join("http-tiers.wasm");
    std::fs::write(&path, super::tagged(&std::fs::read(test_guests::HTTP)?, &nonce))?;
    let image = "docker.io/library/wasmbox-http-tiers:e2e";
    env.c.import(&wasmbox_image::ImageSpec { name: image.into(), wasm: path, ..Default::default() })?;
    let id = env.c.id("h-tier");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let listen = format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR={addr}");
    let metrics_flag = format!("wasmbox.io/metrics-listen={metrics}");
    let flags = ["--net-host", "--env", &listen, "--annotation", &metrics_flag];
    // The node's compile slot, held here: the background compile waits for
    // it, so the server runs on the baseline tier under load first.
    let cache = env.c.dir.join("state/wasmbox/cache");
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(&cache)?;
    let slot = std::fs::File::options().create(true).truncate(false).write(true).open(cache.join(".compile.lock"))?;
    // SAFETY: flock on a file this test owns.
    ensure!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&slot), libc::LOCK_EX) } == 0, "flock");
    let mut slot = Some(slot);
    let (stop, served, failed) = (AtomicBool::new(false), AtomicU64::new(0), std::sync::Mutex::new(Vec::new()));
    let upgrades = || -> u64 {
        get(metrics, "/metrics")
            .ok()
            .and_then(|r| {
                r.body.lines().find_map(|l| l.strip_prefix("wasmbox_http_code_upgrades_total ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    let result = super::isolation::run_detached_image(env, &id, &flags, image, &[]).and_then(|_| {
        wait_serving(addr)?;
        let switched = std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        match get(addr, "/hello") {
                            Ok(r) if r.status == 200 => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failed.lock().unwrap().push(format!("{} {}", r.status, r.body)),
                            Err(e) => failed.lock().unwrap().push(format!("{e:#}")),
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_secs(1));
            let before = (upgrades(), served.load(Ordering::Relaxed));
            // The compile goes on.
            drop(slot.take());
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            let mut switched = false;
            while std::time::Instant::now() < deadline {
                if upgrades() == 1 {
                    switched = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Requests go on after the switch, on the new code.
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, Ordering::Relaxed);
            (before, switched)
        });
        let ((upgrades_before, served_before), switched) = switched;
        ensure!(upgrades_before == 0, "switched while the compile slot was held");
        ensure!(served_before > 0, "nothing served on the baseline tier");
        let log = std::fs::read_to_string(env.c.dir.join("containerd.log"))?;
        let ours: Vec<&str> = log.lines().filter(|l| l.contains(&format!("container {id}: "))).collect();
        ensure!(switched, "no switch to the optimized code within 120 s; the shim's log:\n{}", ours.join("\n"));
        ensure!(ours.iter().any(|l| l.contains("baseline (winch)")), "not started on the baseline tier: {ours:?}");
        ensure!(ours.iter().any(|l| l.contains("handed to the server")), "{ours:?}");
        let failed = failed.lock().unwrap();
        ensure!(
            failed.is_empty(),
            "{} request(s) failed around the switch: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        ensure!(served.load(Ordering::Relaxed) > 0, "no request was served");
        println!(
            "    {served_before} requests served on the baseline tier, {} in all, none failed",
            served.load(Ordering::Relaxed)
        );
        Ok(())
    });
    drop(slot);
    let removed = env.kill_and_remove(&id);
    result?;
    removed
}

/// The `wasmbox defaults` line of `wasmbox node check` run with
/// `WASMBOX_CONFIG=config`.
fn defaults_check(config: &std::path::Path) -> Result<String> {
    let out = std::process::Command::new(wasmbox_e2e::bin_dir()?.join("wasmbox"))
        .args(["node", "check"])
        .env("WASMBOX_CONFIG", config)
        .output()?;
    text(&out.stdout)
        .lines()
        .find(|l| l.contains("wasmbox defaults"))
        .map(str::to_string)
        .with_context(|| format!("no defaults line in node check:\n{}", show(&out)))
}

/// A node defaults file, given with the runtime option `ConfigPath`: its
/// values apply where the container sets none, the container's own
/// annotation wins, and a bad file fails Create naming the file and the
/// key (and leaves nothing behind) until it is fixed.
pub fn node_defaults(env: &Env) -> Result<()> {
    let dir = env.c.dir.join("node-defaults");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.toml");
    let opts = dir.join("options.toml");
    std::fs::write(&opts, format!("ConfigPath = {:?}\n", config.to_str().context("path")?))?;
    let opts = opts.to_str().context("path")?.to_string();
    let with_opts = |extra: &[&str], args: &[&str]| {
        let mut f = vec!["--runtime-config-path", opts.as_str()];
        f.extend_from_slice(extra);
        env.run(P1, &f, args)
    };

    // No file: no defaults.
    ok(&with_opts(&[], &[WASM, "hello"])?, 0)?;
    // The file's fuel applies; the container's own annotation wins.
    std::fs::write(&config, "# wasmbox node defaults\n[defaults]\nfuel = 1000\ncompile-cache = \"on\"\n")?;
    let out = with_opts(&[], &[WASM, "hello"])?;
    ok(&out, 134)?;
    ensure!(text(&out.stderr).contains("wasmbox.io/fuel"), "{}", show(&out));
    let out = with_opts(&["--annotation", "wasmbox.io/fuel=10000000000"], &[WASM, "hello"])?;
    ok(&out, 0)?;
    // Without ConfigPath, this runtime reads /etc/wasmbox/config.toml,
    // which the test machine does not have: no defaults.
    if !std::path::Path::new("/etc/wasmbox/config.toml").exists() {
        ok(&env.run(P1, &[], &[WASM, "hello"])?, 0)?;
    }
    // A bad file fails Create, naming the file and the key.
    let config_s = config.to_str().context("path")?.to_string();
    for (body, needles) in [
        ("[defaults]\ncompiler = \"v8\"\n", vec![config_s.as_str(), "defaults.compiler", "v8"]),
        ("[defaults]\nstack-sise = \"1Mi\"\n", vec![config_s.as_str(), "did you mean wasmbox.io/stack-size"]),
        ("[defaults]\nhandler = \"wasm\"\n", vec![config_s.as_str(), "no node default"]),
        ("[defaults\n", vec![config_s.as_str(), "not TOML"]),
    ] {
        std::fs::write(&config, body)?;
        env.expect_refused(P1, &["--runtime-config-path", opts.as_str()], &[WASM, "hello"], &needles)?;
        // `wasmbox node check` reads the same file and fails on it.
        let line = defaults_check(&config)?;
        ensure!(line.starts_with("FAIL") && needles.iter().all(|n| line.contains(n)), "node check: {line}");
    }
    // Fixed, the next Create runs.
    std::fs::write(&config, "[defaults]\ncompiler = \"winch\"\n")?;
    let line = defaults_check(&config)?;
    ensure!(line.starts_with("ok") && line.ends_with(&format!("{config_s}: compiler=winch")), "node check: {line}");
    ok(&with_opts(&[], &[WASM, "hello"])?, 0)?;
    let line = last_code_line(env)?;
    ensure!(line.contains("baseline (winch)"), "compiler=winch from the defaults: {line}");
    // A served component with the defaults, too.
    let id = env.c.id("h-def");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::write(&config, "[defaults]\nfuel = 50000000\n")?;
    let listen = format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR={addr}");
    let result = super::isolation::run_detached_image(
        env,
        &id,
        &["--runtime-config-path", &opts, "--net-host", "--env", &listen],
        super::serve::HTTP,
        &[],
    )
    .and_then(|_| {
        wait_serving(addr)?;
        let r = get(addr, "/spin")?;
        ensure!(r.status == 500 && r.body.contains("wasmbox.io/fuel"), "/spin: {} {:?}", r.status, r.body);
        Ok(())
    });
    let removed = env.kill_and_remove(&id);
    result?;
    removed
}
