//! Images through a real registry: `wasmbox image push` to a private
//! docker-registry, `ctr image pull --plain-http`, and the pulled image
//! run; an OCI wasm artifact pushed is served back with its media types;
//! an image pushed by oras (runwasi's layout) pulled and run.

use super::{ok, show, text, Env, RUNTIME, WASM};
use anyhow::{ensure, Context, Result};

fn wasmbox() -> Result<std::path::PathBuf> {
    let p = wasmbox_e2e::bin_dir()?.join("wasmbox");
    ensure!(p.exists(), "{} not built (cargo build --release --workspace)", p.display());
    Ok(p)
}

/// GET of a registry path with an Accept header: status and body.
fn get(addr: &str, path: &str, accept: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: {accept}\r\nconnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no status")?;
    Ok((status, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

pub fn registry_push_pull_run(env: &Env) -> Result<()> {
    let reg = wasmbox_e2e::Registry::start()?;
    let dir = env.c.dir.join("push");
    std::fs::create_dir_all(&dir)?;
    // A rootfs image, built and pushed by our CLI, pulled by ctr, run.
    let reference = format!("{}/wasmbox/hello:v1", reg.addr);
    let tar = dir.join("hello.tar");
    let build = std::process::Command::new(wasmbox()?)
        .args(["image", "build", "-t", &reference, "-o"])
        .arg(&tar)
        .args(["--wasm-path", WASM, test_guests::P1, "hello"])
        .output()?;
    ok(&build, 0)?;
    let push = std::process::Command::new(wasmbox()?).args(["image", "push", "--plain-http"]).arg(&tar).output()?;
    ok(&push, 0)?;
    ensure!(text(&push.stdout).contains(&format!("pushed {reference}")), "{}", show(&push));
    // Pushing again finds every blob there (HEAD) and succeeds.
    ok(&std::process::Command::new(wasmbox()?).args(["image", "push", "--plain-http"]).arg(&tar).output()?, 0)?;
    ok(&env.c.ctr(&["image", "pull", "--plain-http", &reference])?, 0)?;
    let id = env.c.id("pulled");
    let out = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, &reference, &id])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("hello from wasm"), "{}", show(&out));
    // An artifact: the registry serves its manifest with the wasm config
    // and layer media types.
    let art = dir.join("http.tar");
    let art_ref = format!("{}/wasmbox/http-artifact:v1", reg.addr);
    let b = std::process::Command::new(wasmbox()?)
        .args(["image", "build", "--artifact", "-t", &art_ref, "-o"])
        .arg(&art)
        .arg(test_guests::HTTP)
        .output()?;
    ok(&b, 0)?;
    ok(&std::process::Command::new(wasmbox()?).args(["image", "push", "--plain-http"]).arg(&art).output()?, 0)?;
    let (status, body) =
        get(&reg.addr, "/v2/wasmbox/http-artifact/manifests/v1", "application/vnd.oci.image.manifest.v1+json")?;
    ensure!(
        status == 200
            && body.contains(wasmbox_core::image::WASM_CONFIG_MEDIA_TYPE)
            && body.contains("\"application/wasm\""),
        "artifact manifest: {status} {body}"
    );
    // A command artifact: pulled and run through the content store.
    let cmd_art = dir.join("cmd.tar");
    let cmd_ref = format!("{}/wasmbox/cmd-artifact:v1", reg.addr);
    let b = std::process::Command::new(wasmbox()?)
        .args(["image", "build", "--artifact", "-t", &cmd_ref, "-o"])
        .arg(&cmd_art)
        .arg(test_guests::P1)
        .output()?;
    ok(&b, 0)?;
    ok(&std::process::Command::new(wasmbox()?).args(["image", "push", "--plain-http"]).arg(&cmd_art).output()?, 0)?;
    let pull = env.c.ctr(&["image", "pull", "--plain-http", &cmd_ref])?;
    eprintln!("ARTIFACT PULL {}", show(&pull));
    let id = env.c.id("artifact");
    let run = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, &cmd_ref, &id, "/app.wasm", "hello"])?;
    eprintln!("ARTIFACT RUN {}", show(&run));
    // Pushed by a peer client: oras, runwasi's layout (an image config,
    // the wasm as one layer). containerd from 1.6.25/1.7.7 on pulls it
    // and the shim runs the layer; 1.6.20's unpack refuses it.
    let oras_dir = dir.join("oras");
    std::fs::create_dir_all(&oras_dir)?;
    std::fs::copy(test_guests::P1, oras_dir.join("app.wasm"))?;
    std::fs::write(
        oras_dir.join("config.json"),
        r#"{"architecture":"wasm","os":"wasip1","config":{"Entrypoint":["/app.wasm"],"Cmd":["hello"]},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    )?;
    let oras_ref = format!("{}/wasmbox/oras-layer:v1", reg.addr);
    let pushed = std::process::Command::new(wasmbox_e2e::go_tool("oras"))
        .current_dir(&oras_dir)
        .args(["push", "--plain-http", &oras_ref, "--config", "config.json:application/vnd.oci.image.config.v1+json"])
        .arg("app.wasm:application/vnd.bytecodealliance.wasm.component.layer.v0+wasm")
        .output()?;
    ok(&pushed, 0)?;
    let pull = env.c.ctr(&["image", "pull", "--plain-http", &oras_ref])?;
    let version = wasmbox_e2e::containerd_version();
    let id = env.c.id("oras");
    if version.contains(" 1.6.") {
        let run = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, &oras_ref, &id])?;
        ensure!(!pull.status.success() || !run.status.success(), "1.6 ran a wasm-layer image: {}", show(&run));
    } else {
        ok(&pull, 0)?;
        let out = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, &oras_ref, &id])?;
        ok(&out, 0)?;
        ensure!(text(&out.stdout).contains("hello from wasm"), "oras-pushed image: {}", show(&out));
    }
    // Without --plain-http, and with a bad reference: clear errors.
    let o = std::process::Command::new(wasmbox()?).args(["image", "push"]).arg(&tar).output()?;
    ensure!(!o.status.success() && text(&o.stderr).contains("--plain-http"), "{}", show(&o));
    let o = std::process::Command::new(wasmbox()?)
        .args(["image", "push", "--plain-http"])
        .arg(&tar)
        .arg("nohost/x:v1")
        .output()?;
    ensure!(!o.status.success() && text(&o.stderr).contains("nohost/x:v1"), "{}", show(&o));
    Ok(())
}
