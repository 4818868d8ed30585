//! The compile cache under a real containerd: a module compiled once is
//! loaded from the cache by the next container's new shim; corrupt,
//! truncated and foreign entries are discarded and recompiled (and the
//! right program runs); two first starts at once compile once; the
//! annotation turns the cache off; an untrusted directory is refused.

use super::{ok, show, text, Env, P1, RUNTIME, WASM};
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

/// The shim's log lines about how `wasm`'s code was had, in order.
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

fn cache_dir(env: &Env) -> PathBuf {
    env.c.dir.join("state/wasmbox/cache")
}

/// The entry the last line names.
fn entry_of(line: &str) -> Result<PathBuf> {
    let at = line.find(" cache entry ").map(|i| i + 13).or_else(|| line.find("cached as ").map(|i| i + 10));
    let rest = &line[at.context("no entry in the line")?..];
    Ok(PathBuf::from(
        rest.split(|c: char| c.is_whitespace() || matches!(c, ';' | ',' | '"' | '\\')).next().unwrap_or(""),
    ))
}

/// These cases pin one tier (the optimized one, as before tiers): which
/// entries a start writes and reads is then certain (tiers.rs has the rest).
const ONE_TIER: [&str; 2] = ["--annotation", "wasmbox.io/compiler=cranelift"];

fn hello_runs(env: &Env, wasm: &str, extra: &[&str]) -> Result<()> {
    let out = env.run(P1, &[&ONE_TIER[..], extra].concat(), &[wasm, "hello"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("hello from wasm"), "{}", show(&out));
    Ok(())
}

pub fn compile_cache(env: &Env) -> Result<()> {
    // A module no other case runs: compiled here first.
    let wasm = "/fresh/cache.wasm";
    hello_runs(env, wasm, &[])?;
    hello_runs(env, wasm, &[])?;
    let lines = code_lines(env, wasm)?;
    ensure!(lines.len() == 2, "expected two code lines: {lines:#?}");
    ensure!(lines[0].contains("compiled in") && lines[0].contains("cached as"), "first start: {}", lines[0]);
    // The second container had its own, new shim.
    ensure!(lines[1].contains("code from cache entry"), "second start: {}", lines[1]);
    let entry = entry_of(&lines[0])?;
    ensure!(entry.starts_with(cache_dir(env)) && entry.exists(), "entry {}", entry.display());
    // Spoiled entries: each is discarded with its reason, recompiled, and
    // the right program still runs.
    let other = {
        hello_runs(env, "/fresh/other.wasm", &[])?;
        entry_of(code_lines(env, "/fresh/other.wasm")?.last().context("other's line")?)?
    };
    let sum = |p: &PathBuf| p.with_extension("cwasm.sum");
    let good = std::fs::read(&entry)?;
    type Spoil<'a> = Box<dyn Fn() -> Result<()> + 'a>;
    let spoils: [(&str, Spoil); 3] = [
        (
            "corrupt",
            Box::new(|| {
                let mut b = good.clone();
                let n = b.len() / 2;
                b[n] ^= 0xff;
                Ok(std::fs::write(&entry, b)?)
            }),
        ),
        ("truncated", Box::new(|| Ok(std::fs::write(&entry, &good[..good.len() / 3])?))),
        (
            "foreign",
            Box::new(|| {
                std::fs::copy(&other, &entry)?;
                std::fs::copy(sum(&other), sum(&entry))?;
                Ok(())
            }),
        ),
    ];
    for (what, spoil) in spoils {
        spoil()?;
        let before = code_lines(env, wasm)?.len();
        hello_runs(env, wasm, &[])?;
        let lines = code_lines(env, wasm)?;
        let line = lines.get(before).with_context(|| format!("{what}: no new line"))?;
        let reason = match what {
            "corrupt" => "corrupt or tampered",
            "truncated" => "truncated",
            _ => "foreign entry",
        };
        ensure!(line.contains("discarded") && line.contains(reason) && line.contains("compiled in"), "{what}: {line}");
        ensure!(std::fs::read(&entry)? == good, "{what}: the entry was not rewritten as compiled");
    }
    // Two first starts at once: one compiles, the other waits and loads.
    let wasm2 = "/fresh/concurrent.wasm";
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let id = env.c.id("cc");
            env.c.ctr_spawn(&["run", "--rm", "--runtime", RUNTIME, ONE_TIER[0], ONE_TIER[1], P1, &id, wasm2, "hello"])
        })
        .collect::<Result<_>>()?;
    for r in runs {
        ok(&wasmbox_e2e::wait_ctr(r)?, 0)?;
    }
    let lines = code_lines(env, wasm2)?;
    let compiled = lines.iter().filter(|l| l.contains("compiled in")).count();
    ensure!(lines.len() == 2 && compiled == 1, "two first starts: {lines:#?}");
    // Off by annotation: compiled, the cache untouched (once earlier
    // cases' background compiles have written theirs).
    env.c.wait_background_compiles(Duration::from_secs(120));
    let n = std::fs::read_dir(cache_dir(env))?.count();
    hello_runs(env, "/fresh/nocache.wasm", &["--annotation", "wasmbox.io/compile-cache=off"])?;
    let line = code_lines(env, "/fresh/nocache.wasm")?.pop().context("no line")?;
    ensure!(line.contains("wasmbox.io/compile-cache=off"), "{line}");
    ensure!(std::fs::read_dir(cache_dir(env))?.count() == n, "the cache changed with the cache off");
    let _ = WASM;
    Ok(())
}

/// A cache directory others may write is not used: the code is compiled
/// (the log says why) and the program runs.
pub fn untrusted_cache_dir_is_refused(env: &Env) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = cache_dir(env);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    let ran = hello_runs(env, "/fresh/untrusted.wasm", &[]);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    ran?;
    let line = code_lines(env, "/fresh/untrusted.wasm")?.pop().context("no line")?;
    ensure!(line.contains("compile cache refused") && line.contains("mode is 777"), "{line}");
    Ok(())
}
