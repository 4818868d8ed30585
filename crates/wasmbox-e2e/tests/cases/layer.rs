//! Images whose wasm is a layer, not a file of the rootfs (runwasi's
//! layout: an image config for `wasip1/wasm` and one
//! `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`
//! layer): containerd stores the layer and gives the container an empty
//! rootfs (from 1.6.25, 1.7.7 and 2.0; 1.6.20 refuses the image), and the
//! shim reads the wasm from containerd's content store.

use super::{ok, show, text, Env, RUNTIME};
use anyhow::{ensure, Result};

pub fn wasm_layer_image(env: &Env) -> Result<()> {
    let name = "docker.io/library/wasmbox-layer:v1";
    let tar = env.c.dir.join("layer-image.tar");
    let spec = wasmbox_image::ImageSpec {
        name: name.into(),
        wasm: test_guests::P1.into(),
        args: vec!["hello".into()],
        ..Default::default()
    };
    wasmbox_image::build_wasm_layer_image(&spec, std::io::BufWriter::new(std::fs::File::create(&tar)?))?;
    let import = env.c.ctr(&["image", "import", tar.to_str().unwrap()])?;
    let version = wasmbox_e2e::containerd_version();
    if version.contains(" 1.6.") || version.contains(" v1.6.") {
        // Before containerd's fix (1.6.25) the unpack refuses the image.
        let id = env.c.id("layer");
        let run = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, name, &id])?;
        ensure!(!import.status.success() || !run.status.success(), "1.6 took a wasm-layer image: {}", show(&run));
        return Ok(());
    }
    ok(&import, 0)?;
    let id = env.c.id("layer");
    let out = env.c.ctr(&["run", "--rm", "--runtime", RUNTIME, name, &id])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).contains("hello from wasm"), "{}", show(&out));
    let log = std::fs::read_to_string(env.c.dir.join("containerd.log"))?;
    ensure!(
        log.lines().any(|l| l.contains(&format!("container {id}: wasm layer sha256:")) && l.contains(name)),
        "no log line of the layer read from the content store"
    );
    Ok(())
}
