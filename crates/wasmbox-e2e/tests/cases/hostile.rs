//! A hostile image, as containerd unpacks it, against a wasm guest: symbolic
//! links in the layer pointing at a host file (absolutely and by climbing
//! out with `..`), an entrypoint that is such a link to a wasm on the host,
//! a character device node, a setuid file. Each is refused or contained,
//! and the reason is where the user looks.

use super::isolation::run_detached_image;
use super::{ok, show, text, Env};
use anyhow::{ensure, Context, Result};

pub const HOSTILE: &str = "docker.io/library/wasmbox-test-hostile:latest";

/// The image's files beside the guest at `/testguest.wasm`: (path, data,
/// mode), given the host file the links aim at and a wasm on the host.
pub fn files(secret: &str, host_wasm: &str) -> Vec<(String, Vec<u8>, u32)> {
    use wasmbox_image::{S_IFCHR, S_IFLNK};
    let climb = format!("{}{}", "../".repeat(24), secret.trim_start_matches('/'));
    vec![
        ("/links/abs".into(), secret.as_bytes().to_vec(), S_IFLNK | 0o777),
        ("/links/up".into(), climb.into_bytes(), S_IFLNK | 0o777),
        ("/evil.wasm".into(), host_wasm.as_bytes().to_vec(), S_IFLNK | 0o777),
        // /dev/zero's numbers: readable anywhere devices are.
        ("/devzero".into(), vec![1, 5], S_IFCHR | 0o666),
        ("/suid".into(), b"setuid root\n".to_vec(), 0o4755),
    ]
}

pub fn hostile_image(env: &Env) -> Result<()> {
    let secret = env.c.dir.join("secret.txt");
    let secret_text = std::fs::read_to_string(&secret).context("the host's secret file")?;
    let guest = "/testguest.wasm";
    // Links out of the rootfs resolve inside it (or are refused): the
    // host's file is never read.
    for link in ["/links/abs", "/links/up"] {
        let out = env.run(HOSTILE, &[], &[guest, "read", link])?;
        ensure!(!text(&out.stdout).contains(secret_text.trim()), "{link} read the host's file:\n{}", show(&out));
        ok(&out, 1)?;
    }
    // An entrypoint linking to a wasm on the host is looked up in the
    // rootfs, where there is none: refused, naming it.
    env.expect_refused(HOSTILE, &[], &["/evil.wasm"], &["/evil.wasm"])?;
    // A device node of the image: the rootfs is mounted nodev, so opening
    // it fails (runc's device cgroup refuses it too); as an entrypoint it
    // is refused as a device.
    let out = env.run(HOSTILE, &[], &[guest, "read", "/devzero"])?;
    ok(&out, 1)?;
    ensure!(text(&out.stdout).contains("read /devzero failed"), "{}", show(&out));
    env.expect_refused(HOSTILE, &[], &["/devzero"], &["/devzero", "a device"])?;
    // The setuid file is plain data to a wasm guest, and the rootfs the
    // instance sees is mounted nosuid and nodev.
    let id = env.c.id("hostile");
    let pid = run_detached_image(env, &id, &[], HOSTILE, &[guest, "sleep", "600000"])?;
    let result = (|| -> Result<()> {
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
        // The topmost mount on the rootfs (the last listed) is what the
        // guest's files are opened through.
        let suffix = format!("{id}/rootfs");
        let top = mounts
            .lines()
            .rfind(|l| l.split_whitespace().nth(4).is_some_and(|m| m.ends_with(&suffix)))
            .with_context(|| format!("no rootfs mount in the instance's mountinfo:\n{mounts}"))?;
        let opts = top.split_whitespace().nth(5).unwrap_or("");
        ensure!(opts.contains("nosuid") && opts.contains("nodev"), "rootfs mounted {opts}: {top}");
        Ok(())
    })();
    env.kill_and_remove(&id)?;
    result
}
