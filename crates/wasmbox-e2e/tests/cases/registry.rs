//! Images through a real registry: `wasmbox image push` to a private
//! docker-registry, `ctr image pull --plain-http`, and the pulled image
//! run; OCI wasm artifacts pushed by our CLI and by wkg, which containerd's
//! clients refuse as they are, pulled by `wasmbox image pull` into images
//! containerd runs; an image pushed by oras (runwasi's layout) pulled and
//! run; bad artifacts and tampered blobs refused, naming the image.

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
    build_hello(&reference, &tar)?;
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
    build_and_push_artifact(&format!("{}/wasmbox/http-artifact:v1", reg.addr), test_guests::HTTP, &art)?;
    expect_artifact_manifest(reg.addr.as_str(), "wasmbox/http-artifact")?;
    artifacts(env, &reg, &dir)?;
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

/// `wasmbox image build -t REFERENCE -o TAR --wasm-path WASM P1 hello`:
/// a rootfs image that says hello.
fn build_hello(reference: &str, tar: &std::path::Path) -> Result<()> {
    let built = std::process::Command::new(wasmbox()?)
        .args(["image", "build", "-t", reference, "-o"])
        .arg(tar)
        .args(["--wasm-path", WASM, test_guests::P1, "hello"])
        .output()?;
    ok(&built, 0)
}

/// `wasmbox image build --artifact -t REFERENCE -o TAR WASM`.
fn build_artifact(reference: &str, wasm: &str, tar: &std::path::Path) -> Result<()> {
    let built = std::process::Command::new(wasmbox()?)
        .args(["image", "build", "--artifact", "-t", reference, "-o"])
        .arg(tar)
        .arg(wasm)
        .output()?;
    ok(&built, 0)
}

/// [`build_artifact`], then `wasmbox image push --plain-http TAR`.
fn build_and_push_artifact(reference: &str, wasm: &str, tar: &std::path::Path) -> Result<()> {
    build_artifact(reference, wasm, tar)?;
    ok(&std::process::Command::new(wasmbox()?).args(["image", "push", "--plain-http"]).arg(tar).output()?, 0)
}

/// The registry serves `REPO:v1` as an OCI wasm artifact: the wasm config
/// and layer media types in its manifest.
fn expect_artifact_manifest(addr: &str, repo: &str) -> Result<()> {
    let (status, body) = get(addr, &format!("/v2/{repo}/manifests/v1"), "application/vnd.oci.image.manifest.v1+json")?;
    ensure!(
        status == 200 && body.contains(wasmbox_image::WASM_CONFIG_MEDIA_TYPE) && body.contains("\"application/wasm\""),
        "{repo}'s manifest: {status} {body}"
    );
    Ok(())
}

/// How the open test registry is reached.
const PLAIN: (&[&str], Option<&std::path::Path>) = (&["--plain-http"], None);

fn is_16(version: &str) -> bool {
    version.contains(" 1.6.")
}

/// `wasmbox image pull ACCESS... REF -o TAR` (with `docker_config` as
/// DOCKER_CONFIG, when given), then `ctr image import` and `ctr run` of it
/// with `args`: its stdout (1.6.20 refuses wasm-layer images at import:
/// then None).
fn pull_import_run(
    env: &Env,
    reference: &str,
    tar: &std::path::Path,
    access: (&[&str], Option<&std::path::Path>),
    args: &[&str],
) -> Result<Option<String>> {
    let mut pull = std::process::Command::new(wasmbox()?);
    pull.args(["image", "pull"]).args(access.0).args([reference, "-o"]).arg(tar);
    if let Some(config) = access.1 {
        pull.env("DOCKER_CONFIG", config);
    }
    let pulled = pull.output()?;
    ok(&pulled, 0)?;
    ensure!(text(&pulled.stdout).contains("OCI wasm artifact"), "{}", show(&pulled));
    let import = env.c.ctr(&["image", "import", tar.to_str().unwrap()])?;
    let id = env.c.id("artifact");
    let mut run = vec!["run", "--rm", "--runtime", RUNTIME, reference, &id];
    run.extend_from_slice(args);
    let out = env.c.ctr(&run)?;
    if is_16(&wasmbox_e2e::containerd_version()) {
        ensure!(!import.status.success() || !out.status.success(), "1.6 ran a wasm-layer image: {}", show(&out));
        return Ok(None);
    }
    ok(&import, 0)?;
    ok(&out, 0)?;
    Ok(Some(text(&out.stdout)))
}

/// OCI wasm artifacts (config application/vnd.wasm.config.v0+json, one
/// application/wasm layer) from our CLI and from wkg.
fn artifacts(env: &Env, reg: &wasmbox_e2e::Registry, dir: &std::path::Path) -> Result<()> {
    let version = wasmbox_e2e::containerd_version();
    let cmd_ref = format!("{}/wasmbox/cmd-artifact:v1", reg.addr);
    build_and_push_artifact(&cmd_ref, test_guests::P1, &dir.join("cmd-artifact.tar"))?;
    // As it is, containerd's own client refuses it: 1.6.20 at unpack, later
    // versions for its config type.
    let pull = env.c.ctr(&["image", "pull", "--plain-http", &cmd_ref])?;
    let id = env.c.id("artifact");
    let raw = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, &cmd_ref, &id, "/app.wasm", "hello"])?;
    let why = format!("{}{}", text(&pull.stderr), text(&raw.stderr));
    ensure!(
        !raw.status.success()
            && (why.contains("unknown image config media type application/vnd.wasm.config.v0+json")
                || (is_16(&version) && why.contains("mismatched image rootfs and manifest layers"))),
        "containerd ran an artifact as it is, or said something else: {}",
        show(&raw)
    );
    let _ = env.c.ctr(&["image", "rm", &cmd_ref]);
    if let Some(out) = pull_import_run(env, &cmd_ref, &dir.join("cmd-pulled.tar"), PLAIN, &["/app.wasm", "hello"])? {
        ensure!(out.contains("hello from wasm") && out.contains(r#"args: ["hello"]"#), "artifact run: {out}");
    }
    // Pushed by wkg, the wasm package tools' client: a component.
    let wkg_ref = format!("{}/wasmbox/wkg-component:v1", reg.addr);
    let pushed = std::process::Command::new(wasmbox_e2e::go_tool("wkg"))
        .args(["oci", "push", "--insecure", &reg.addr, &wkg_ref, test_guests::P2])
        .output()?;
    ok(&pushed, 0)?;
    expect_artifact_manifest(reg.addr.as_str(), "wasmbox/wkg-component")?;
    if let Some(out) = pull_import_run(env, &wkg_ref, &dir.join("wkg-pulled.tar"), PLAIN, &["/app.wasm", "hello"])? {
        ensure!(out.contains("hello from wasm"), "wkg-pushed component: {out}");
    }
    // Bad artifacts, pushed by oras: each refused by the pull, naming it.
    let bad_dir = dir.join("bad");
    std::fs::create_dir_all(&bad_dir)?;
    std::fs::copy(test_guests::P1, bad_dir.join("a.wasm"))?;
    std::fs::write(bad_dir.join("b.wasm"), crate::tagged(&std::fs::read(test_guests::P1)?, "b"))?;
    std::fs::write(bad_dir.join("config.json"), r#"{"architecture":"wasm","os":"wasip1"}"#)?;
    std::fs::write(bad_dir.join("notes.txt"), "not wasm")?;
    let config = format!("config.json:{}", wasmbox_image::WASM_CONFIG_MEDIA_TYPE);
    for (name, files, needle) in [
        ("two-layers", vec!["a.wasm:application/wasm", "b.wasm:application/wasm"], "2 wasm layers"),
        ("foreign-layer", vec!["a.wasm:application/wasm", "notes.txt:text/plain"], "has media type text/plain"),
    ] {
        let reference = format!("{}/wasmbox/bad-{name}:v1", reg.addr);
        let mut args = vec!["push", "--plain-http", reference.as_str(), "--config", config.as_str()];
        args.extend(files);
        ok(&std::process::Command::new(wasmbox_e2e::go_tool("oras")).current_dir(&bad_dir).args(&args).output()?, 0)?;
        let o = std::process::Command::new(wasmbox()?)
            .args(["image", "pull", "--plain-http", &reference, "-o"])
            .arg(bad_dir.join(format!("{name}.tar")))
            .output()?;
        let err = text(&o.stderr);
        ensure!(!o.status.success() && err.contains(&reference) && err.contains(needle), "{name}: {}", show(&o));
        ensure!(!bad_dir.join(format!("{name}.tar")).exists(), "{name}: a refused pull left its output");
    }
    // runwasi's layout with two wasm layers: pulled by containerd, refused
    // by the shim at Create, naming the image.
    let two = format!("{}/wasmbox/bad-two-runwasi-layers:v1", reg.addr);
    std::fs::write(
        bad_dir.join("image-config.json"),
        r#"{"architecture":"wasm","os":"wasip1","config":{"Entrypoint":["/app.wasm"]},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    )?;
    let layer = wasmbox_image::RUNWASI_COMPONENT_LAYER;
    let (a, b) = (format!("a.wasm:{layer}"), format!("b.wasm:{layer}"));
    let args = [
        "push",
        "--plain-http",
        &two,
        "--config",
        "image-config.json:application/vnd.oci.image.config.v1+json",
        &a,
        &b,
    ];
    ok(&std::process::Command::new(wasmbox_e2e::go_tool("oras")).current_dir(&bad_dir).args(args).output()?, 0)?;
    if !is_16(&version) {
        ok(&env.c.ctr(&["image", "pull", "--plain-http", &two])?, 0)?;
        env.expect_refused(&two, &[], &[], &[&two, "2 wasm layers"])?;
    }
    Ok(())
}

/// Registries over HTTPS that want credentials, Basic (htpasswd) and
/// token (the distribution spec's flow, with the test's token service):
/// `wasmbox image push` and `pull` with `--user`, with the password on
/// stdin and with the config.json `docker login` writes; `ctr image pull
/// --user` (the CA in a hosts.toml) and the image run. Each refusal (an unknown CA, no
/// credentials, a wrong password) fails the push and says why.
pub fn registry_tls_and_auth(env: &Env) -> Result<()> {
    use base64::Engine;
    use wasmbox_e2e::{RegistryAuth, REGISTRY_PASSWORD, REGISTRY_USER};
    let dir = env.c.dir.join("secure");
    let (nobody, logged_in) = (dir.join("no-login"), dir.join("logged-in"));
    std::fs::create_dir_all(&nobody)?;
    std::fs::create_dir_all(&logged_in)?;
    let login = format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}");
    let cli = |args: &[&str], docker_config: &std::path::Path, stdin: &str| -> Result<std::process::Output> {
        use std::io::Write;
        let mut child = std::process::Command::new(wasmbox()?)
            .args(args)
            .env("DOCKER_CONFIG", docker_config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
        Ok(child.wait_with_output()?)
    };
    for auth in [RegistryAuth::Basic, RegistryAuth::Token] {
        let reg = wasmbox_e2e::Registry::start_secure(auth)?;
        let ca = reg.ca.clone().context("a secure registry without a CA")?;
        let ca = ca.to_str().context("CA path")?;
        let kind = format!("{auth:?}").to_lowercase();
        let reference = format!("{}/wasmbox/secure-{kind}:v1", reg.addr);
        let tar = dir.join(format!("{kind}.tar"));
        build_hello(&reference, &tar)?;
        let tar = tar.to_str().context("path")?;
        let refused = |args: &[&str], needles: &[&str]| -> Result<()> {
            let o = cli(&[&["image", "push"], args, &[tar]].concat(), &nobody, "")?;
            let err = text(&o.stderr);
            ensure!(
                !o.status.success() && needles.iter().all(|n| err.contains(n)),
                "{kind}: push {args:?} should fail saying {needles:?}: {}",
                show(&o)
            );
            Ok(())
        };
        refused(&["--user", &login], &[&format!("TLS with {}", reg.addr), "--tls-ca"])?;
        refused(&["--tls-ca", ca], &[&reg.addr, "wants credentials", "--user"])?;
        refused(
            &["--tls-ca", ca, "--user", &format!("{REGISTRY_USER}:wrong")],
            &["refused the credentials of", REGISTRY_USER],
        )?;
        let tokens = reg.tokens_issued();
        let push = cli(&["image", "push", "--tls-ca", ca, "--user", &login, tar], &nobody, "")?;
        ok(&push, 0)?;
        ensure!(text(&push.stdout).contains(&format!("pushed {reference}")), "{}", show(&push));
        ensure!(auth == RegistryAuth::Basic || reg.tokens_issued() > tokens, "{kind}: the push earned no token");
        // The password on standard input; every blob is there already.
        ok(
            &cli(
                &["image", "push", "--tls-ca", ca, "--user", REGISTRY_USER, tar],
                &nobody,
                &format!("{REGISTRY_PASSWORD}\n"),
            )?,
            0,
        )?;
        // containerd's own client pulls it with the same credentials, told
        // by a hosts.toml to use HTTPS with the CA (for a loopback
        // address 1.6 would otherwise speak plain HTTP).
        reg.trust_in(&env.c)?;
        let hosts_dir = env.c.dir.join("certs.d").display().to_string();
        ok(&env.c.ctr(&["image", "pull", "--hosts-dir", &hosts_dir, "--user", &login, &reference])?, 0)?;
        let id = env.c.id("secure");
        let out = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, &reference, &id])?;
        ok(&out, 0)?;
        ensure!(text(&out.stdout).contains("hello from wasm"), "{kind}: {}", show(&out));
        // An artifact, pushed and pulled with the credentials `docker
        // login` would have written.
        let b64 = base64::engine::general_purpose::STANDARD.encode(&login);
        std::fs::write(
            logged_in.join("config.json"),
            serde_json::json!({"auths": {format!("https://{}", reg.addr): {"auth": b64}}}).to_string(),
        )?;
        let art_ref = format!("{}/wasmbox/secure-{kind}-artifact:v1", reg.addr);
        let art = dir.join(format!("{kind}-artifact.tar"));
        build_artifact(&art_ref, test_guests::P1, &art)?;
        ok(&cli(&["image", "push", "--tls-ca", ca, art.to_str().context("path")?], &logged_in, "")?, 0)?;
        let pulled = dir.join(format!("{kind}-pulled.tar"));
        let access: (&[&str], _) = (&["--tls-ca", ca], Some(logged_in.as_path()));
        if let Some(out) = pull_import_run(env, &art_ref, &pulled, access, &["/app.wasm", "hello"])? {
            ensure!(out.contains("hello from wasm"), "{kind}: pulled artifact: {out}");
        }
        for r in [&reference, &art_ref] {
            let _ = env.c.ctr(&["image", "rm", r]);
        }
    }
    Ok(())
}

/// A tarball whose wasm blob was changed after it was built: refused by
/// our push and inspect and by containerd's import, the blob named.
pub fn tampered_blob_is_refused(env: &Env) -> Result<()> {
    let dir = env.c.dir.join("tamper");
    std::fs::create_dir_all(&dir)?;
    let tar = dir.join("layer-image.tar");
    // A wasm of its own (a digest no other test put in the content store:
    // containerd skips writing a blob it already has).
    let wasm = crate::tagged(&std::fs::read(test_guests::P1)?, &format!("tampered-{}", std::process::id()));
    let file = dir.join("app.wasm");
    std::fs::write(&file, &wasm)?;
    ok(
        &std::process::Command::new(wasmbox()?)
            .args(["image", "build", "--wasm-layer", "-t", "127.0.0.1:1/wasmbox/tampered:v1", "-o"])
            .arg(&tar)
            .arg(&file)
            .output()?,
        0,
    )?;
    let mut bytes = std::fs::read(&tar)?;
    let at = bytes.windows(64).position(|w| w == &wasm[..64]).context("the wasm blob in the tarball")?;
    bytes[at + wasm.len() / 2] ^= 0xff;
    std::fs::write(&tar, &bytes)?;
    for verb in [&["image", "inspect"][..], &["image", "push", "--plain-http"][..]] {
        let o = std::process::Command::new(wasmbox()?).args(verb).arg(&tar).output()?;
        let err = text(&o.stderr);
        ensure!(
            !o.status.success() && err.contains("blob sha256:") && err.contains("does not match its digest"),
            "{verb:?}: {}",
            show(&o)
        );
    }
    // containerd 1.6 checks every blob of the tarball at import; 1.7 and
    // 2.x leave out layers of a type they do not know, so the image
    // imports without its wasm and the shim's Create says which blob of
    // which image is missing.
    let image = "127.0.0.1:1/wasmbox/tampered:v1";
    let import = env.c.ctr(&["image", "import", tar.to_str().unwrap()])?;
    if import.status.success() {
        env.expect_refused(image, &[], &[], &[image, "is not in containerd's content store"])?;
    }
    Ok(())
}
