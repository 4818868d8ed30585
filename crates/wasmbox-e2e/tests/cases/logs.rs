//! Log URIs, as `ctr run --log-uri` and nerdctl's `run -d` give them:
//! `file://` appends stdout and stderr to a file; `binary://` hands them
//! to a logging program on fds 3 and 4, started as containerd's runc shim
//! starts one; a program that cannot start fails the run, naming it.

use super::{ok, show, text, Env, P1, RUNTIME, WASM};
use anyhow::{ensure, Result};
use std::time::{Duration, Instant};

fn wait_for(path: &std::path::Path, needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = std::fs::read_to_string(path).unwrap_or_default();
        if got.contains(needle) || Instant::now() > deadline {
            return Ok(got);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_logged(env: &Env, uri: &str) -> Result<()> {
    let id = env.c.id("logs");
    ok(&env.c.ctr(&["run", "-d", "--log-uri", uri, "--runtime", RUNTIME, P1, &id, WASM, "hello"])?, 0)?;
    env.c.wait_status(&id, "STOPPED")?;
    ok(&env.c.ctr(&["task", "rm", &id])?, 0)?;
    ok(&env.c.ctr(&["container", "rm", &id])?, 0)
}

pub fn log_uris(env: &Env) -> Result<()> {
    let dir = env.c.dir.join("logs");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("out.log");
    run_logged(env, &format!("file://{}", file.display()))?;
    let got = wait_for(&file, "hello on stderr")?;
    ensure!(got.contains("hello from wasm") && got.contains("hello on stderr"), "file:// log: {got:?}");
    // A logging program: its args from the query, its env the two
    // variables alone, stdout and stderr on fds 3 and 4.
    let script = dir.join("logger.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nout=\"$2\"\n/usr/bin/env > \"$out/env\"\n/bin/cat <&3 > \"$out/stdout\" &\n/bin/cat <&4 > \"$out/stderr\" &\necho ready >&5\nexec 5>&-\nwait\n",
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    run_logged(env, &format!("binary://{}?out={}", script.display(), dir.display()))?;
    let out = wait_for(&dir.join("stdout"), "hello from wasm")?;
    let err = wait_for(&dir.join("stderr"), "hello on stderr")?;
    ensure!(out.contains("hello from wasm") && !out.contains("stderr"), "binary:// stdout: {out:?}");
    ensure!(err.contains("hello on stderr"), "binary:// stderr: {err:?}");
    let vars = std::fs::read_to_string(dir.join("env"))?;
    ensure!(vars.contains("CONTAINER_ID=logs-") && vars.contains("CONTAINER_NAMESPACE="), "logger env: {vars}");
    ensure!(!vars.contains("TTRPC_ADDRESS") && !vars.contains("PATH=/"), "the logger inherited the shim's env: {vars}");
    // A program that is not there: the run fails, naming it.
    let id = env.c.id("logs");
    let uri = format!("binary://{}/nope?x=1", dir.display());
    let o = env.c.ctr(&["run", "-d", "--log-uri", &uri, "--runtime", RUNTIME, P1, &id, WASM, "hello"])?;
    ensure!(!o.status.success() && text(&o.stderr).contains("nope"), "{}", show(&o));
    let _ = env.c.ctr(&["container", "rm", &id]);
    Ok(())
}
