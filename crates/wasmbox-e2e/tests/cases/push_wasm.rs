//! `wasmbox image push FILE.wasm REF`, as `wkg oci push` and `oras push`
//! users type it: the wasm goes up as an OCI wasm artifact (or, with
//! `--image`, as a runnable image), and a file of neither kind is refused
//! saying what was expected.

use super::{ok, show, text, Env, RUNTIME};
use anyhow::{ensure, Result};
use std::process::Command;

pub fn push_wasm_file(env: &Env) -> Result<()> {
    let reg = wasmbox_e2e::Registry::start()?;
    let wasmbox = wasmbox_e2e::bin_dir()?.join("wasmbox");
    let dir = env.c.dir.join("push-wasm");
    std::fs::create_dir_all(&dir)?;
    let push = |args: &[&str]| Command::new(&wasmbox).args(["image", "push", "--plain-http"]).args(args).output();

    // A .wasm as an OCI wasm artifact: `wasmbox image pull` finds one.
    let artifact = format!("{}/wasmbox/raw-artifact:v1", reg.addr);
    let out = push(&[test_guests::P1, &artifact])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("as an OCI wasm artifact"), "{}", show(&out));
    ensure!(text(&out.stdout).contains(&format!("pushed {artifact}")), "{}", show(&out));
    let tar = dir.join("pulled.tar");
    let pulled = Command::new(&wasmbox).args(["image", "pull", "--plain-http", &artifact, "-o"]).arg(&tar).output()?;
    ok(&pulled, 0)?;
    ensure!(text(&pulled.stdout).contains("OCI wasm artifact"), "{}", show(&pulled));

    // With --image: a runnable image, which ctr pulls and runs as it is.
    let image = format!("{}/wasmbox/raw-image:v1", reg.addr);
    let out = push(&["--image", test_guests::P1, &image])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("as a runnable image"), "{}", show(&out));
    ok(&env.c.ctr(&["image", "pull", "--plain-http", &image])?, 0)?;
    let id = env.c.id("pushed-wasm");
    let run = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, &image, &id])?;
    ok(&run, 0)?;
    ensure!(text(&run.stdout).contains("hello from wasm"), "{}", show(&run));

    // Neither a wasm nor an image tarball: what was expected, and the file.
    let odd = dir.join("notes.txt");
    std::fs::write(&odd, "review1 not a number\n")?;
    let out = push(&[odd.to_str().unwrap(), &image])?;
    ensure!(!out.status.success(), "{}", show(&out));
    let err = text(&out.stderr);
    ensure!(
        err.contains("notes.txt") && err.contains("expected a .wasm") && err.contains("image-layout tarball"),
        "{}",
        show(&out)
    );
    // A .wasm needs the reference to push to.
    let out = push(&[test_guests::P1])?;
    ensure!(!out.status.success() && text(&out.stderr).contains("give the reference"), "{}", show(&out));
    Ok(())
}
