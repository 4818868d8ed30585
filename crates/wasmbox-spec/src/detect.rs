//! Wasm or Linux: which backend runs a container.
//!
//! Under CRI one handler runs every container of a pod, so a node with
//! `wasmbox` as a pod's handler also runs its pause container and its
//! Linux sidecars. The choice, in order:
//! 1. a pod's sandbox container is ours (the instance holds the pod's
//!    namespaces, see [`crate::plan::Workload::Sandbox`]);
//! 2. an annotation that forces it: [`HANDLER_ANNOTATION`] (`wasm` or
//!    `linux`), crun's `run.oci.handler` (`wasm`; `wasm-smart`: wasm when
//!    the entrypoint ends in `.wasm` or `.wat`) and the `module.wasm.image/variant`
//!    of crun and runwasi (`compat`; `compat-smart` like `wasm-smart`);
//! 3. an entrypoint named `*.wasm` or `*.wat` is wasm, whatever it holds;
//! 4. else the entrypoint's first bytes, looked up in the rootfs as the
//!    kernel would (relative to `process.cwd`, a bare name along the `PATH`
//!    of `process.env`): an ELF or `#!` script is Linux. Only regular files
//!    are opened (a FIFO would block the reader).
//!
//! Anything else goes to the wasm backend, whose errors say what is wrong
//! with the file (missing, empty, not wasm).

pub use crate::annotations::{CRUN_HANDLER, HANDLER as HANDLER_ANNOTATION, WASM_VARIANT};
use crate::error::{Error, Result};
use crate::plan::{resolve_in_root, CONTAINER_TYPE};
use oci_spec::runtime::Spec;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Which backend runs a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Wasm,
    Linux,
}

/// What the spec's annotations say, if anything (an unknown value is an
/// error naming the annotation).
fn forced(spec: &Spec, arg0: &str) -> Result<Option<Kind>> {
    let Some(ann) = spec.annotations().as_ref() else { return Ok(None) };
    let by_suffix = || {
        let name = arg0.split('#').next().unwrap_or(arg0);
        if name.ends_with(".wasm") || name.ends_with(".wat") {
            Kind::Wasm
        } else {
            Kind::Linux
        }
    };
    let bad = |key: &str, value: &str, expected: &str| Error::InvalidArgument {
        what: format!("annotation {key}={value:?}"),
        reason: format!("expected {expected}"),
    };
    if let Some(v) = ann.get(HANDLER_ANNOTATION) {
        return match v.as_str() {
            "wasm" => Ok(Some(Kind::Wasm)),
            "linux" => Ok(Some(Kind::Linux)),
            _ => Err(bad(HANDLER_ANNOTATION, v, "wasm or linux")),
        };
    }
    if let Some(v) = ann.get(CRUN_HANDLER) {
        return match v.as_str() {
            "wasm" => Ok(Some(Kind::Wasm)),
            "wasm-smart" => Ok(Some(by_suffix())),
            _ => Err(bad(CRUN_HANDLER, v, "wasm or wasm-smart (other crun handlers are not supported)")),
        };
    }
    if let Some(v) = ann.get(WASM_VARIANT) {
        return match v.as_str() {
            "compat" => Ok(Some(Kind::Wasm)),
            "compat-smart" => Ok(Some(by_suffix())),
            _ => Err(bad(WASM_VARIANT, v, "compat or compat-smart")),
        };
    }
    Ok(None)
}

/// Decides which backend runs the container of `spec`, whose rootfs is
/// at `rootfs` (mounted).
pub fn detect(spec: &Spec, rootfs: &Path) -> Result<Kind> {
    let ann = spec.annotations().as_ref();
    crate::annotations::check(ann)?;
    if ann.and_then(|a| a.get(CONTAINER_TYPE)).is_some_and(|t| t == "sandbox") {
        return Ok(Kind::Wasm);
    }
    let process = spec.process().as_ref();
    let args = process.and_then(|p| p.args().as_ref()).cloned().unwrap_or_default();
    let Some(arg0) = args.first() else { return Ok(Kind::Wasm) };
    if let Some(kind) = forced(spec, arg0)? {
        return Ok(kind);
    }
    let file = arg0.split('#').next().unwrap_or(arg0);
    if file.ends_with(".wasm") || file.ends_with(".wat") {
        return Ok(Kind::Wasm);
    }
    let cwd = process.map(|p| p.cwd().to_string_lossy().into_owned()).unwrap_or_default();
    let env = process.and_then(|p| p.env().as_ref()).cloned().unwrap_or_default();
    let magic = candidates(arg0, &cwd, &env).into_iter().find_map(|guest| {
        let host = resolve_in_root(rootfs, &guest).ok()?;
        first_bytes(&host)
    });
    Ok(match magic {
        Some(m) if m.starts_with(b"\x7fELF") || m.starts_with(b"#!") => Kind::Linux,
        _ => Kind::Wasm,
    })
}

/// Where the kernel (and runc, for a bare name) would look for `arg0`.
fn candidates(arg0: &str, cwd: &str, env: &[String]) -> Vec<String> {
    let file = arg0.split('#').next().unwrap_or(arg0);
    if file.starts_with('/') {
        return vec![file.to_string()];
    }
    let cwd = if cwd.is_empty() { "/" } else { cwd };
    if file.contains('/') {
        return vec![format!("{}/{file}", cwd.trim_end_matches('/'))];
    }
    let path = env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut out: Vec<String> =
        path.split(':').filter(|d| d.starts_with('/')).map(|d| format!("{}/{file}", d.trim_end_matches('/'))).collect();
    out.push(format!("{}/{file}", cwd.trim_end_matches('/')));
    out
}

/// The first four bytes of a regular file, if it is one and has them.
fn first_bytes(path: &PathBuf) -> Option<[u8; 4]> {
    use std::os::unix::fs::OpenOptionsExt;
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    // Non-blocking, in case the file was swapped for a FIFO since.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut b = [0u8; 4];
    f.take(4).read_exact(&mut b).ok()?;
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str], env: &[&str], ann: &[(&str, &str)]) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": args, "env": env, "cwd": "/app", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
        });
        if !ann.is_empty() {
            v["annotations"] = ann.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
        }
        serde_json::from_value(v).unwrap()
    }

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in ["bin", "app", "usr/bin"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::fs::write(r.join("bin/busybox"), b"\x7fELF\x02\x01\x01").unwrap();
        std::os::unix::fs::symlink("/bin/busybox", r.join("bin/sh")).unwrap();
        std::fs::write(r.join("usr/bin/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::write(r.join("usr/bin/run.sh.wasm"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::write(r.join("app/app.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(r.join("app/short"), b"\0a").unwrap();
        d
    }

    #[test]
    fn by_bytes() {
        let d = rootfs();
        let r = d.path();
        let kind = |args: &[&str], env: &[&str]| detect(&spec(args, env, &[]), r).unwrap();
        assert_eq!(kind(&["/app/app.wasm"], &[]), Kind::Wasm);
        assert_eq!(kind(&["app.wasm"], &[]), Kind::Wasm, "relative to cwd");
        assert_eq!(kind(&["/app/app.wasm#run"], &[]), Kind::Wasm, "with an export");
        assert_eq!(kind(&["/bin/busybox", "sleep", "1"], &[]), Kind::Linux);
        assert_eq!(kind(&["sh", "-c", "true"], &["PATH=/bin"]), Kind::Linux, "along PATH, through a link");
        assert_eq!(kind(&["sh"], &[]), Kind::Linux, "the default PATH");
        assert_eq!(kind(&["run.sh"], &["PATH=/usr/bin"]), Kind::Linux, "a script");
        assert_eq!(kind(&["/missing"], &[]), Kind::Wasm, "the wasm backend names what is wrong");
        assert_eq!(kind(&["/app/short"], &[]), Kind::Wasm);
        assert_eq!(kind(&["/app"], &[]), Kind::Wasm, "a directory");
        assert_eq!(kind(&["/usr/bin/run.sh.wasm"], &[]), Kind::Wasm, "named .wasm");
        nix::unistd::mkfifo(&r.join("app/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(kind(&["/app/fifo"], &[]), Kind::Wasm, "a FIFO is not opened");
    }

    #[test]
    fn forced_by_annotations() {
        let d = rootfs();
        let r = d.path();
        let kind = |args: &[&str], k: &str, v: &str| detect(&spec(args, &[], &[(k, v)]), r);
        assert_eq!(kind(&["/bin/busybox"], HANDLER_ANNOTATION, "wasm").unwrap(), Kind::Wasm);
        assert_eq!(kind(&["/app/app.wasm"], HANDLER_ANNOTATION, "linux").unwrap(), Kind::Linux);
        assert_eq!(kind(&["/bin/busybox"], CRUN_HANDLER, "wasm").unwrap(), Kind::Wasm);
        assert_eq!(kind(&["/app/app.wasm"], CRUN_HANDLER, "wasm-smart").unwrap(), Kind::Wasm);
        assert_eq!(kind(&["/bin/busybox"], CRUN_HANDLER, "wasm-smart").unwrap(), Kind::Linux);
        assert_eq!(kind(&["/bin/busybox"], WASM_VARIANT, "compat").unwrap(), Kind::Wasm);
        assert_eq!(kind(&["/bin/busybox"], WASM_VARIANT, "compat-smart").unwrap(), Kind::Linux);
        let e = kind(&["/bin/busybox"], CRUN_HANDLER, "krun").unwrap_err().to_string();
        assert!(e.contains("run.oci.handler") && e.contains("krun"), "{e}");
        let e = kind(&["/bin/busybox"], HANDLER_ANNOTATION, "native").unwrap_err().to_string();
        assert!(e.contains("wasmbox.io/handler"), "{e}");
        let sandbox = spec(&["/pause"], &[], &[(CONTAINER_TYPE, "sandbox")]);
        assert_eq!(detect(&sandbox, r).unwrap(), Kind::Wasm);
    }
}
