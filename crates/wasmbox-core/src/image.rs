//! Builds an OCI image (image-layout tarball) around a `.wasm`, with no
//! registry and no daemon: `ctr image import` takes the result as it is.
//!
//! The image has one uncompressed layer holding the wasm (and any extra
//! files), an Entrypoint naming the wasm, and the host's platform, so
//! containerd unpacks it like any other image.

use crate::error::{Error, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;

/// What to put in the image.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Full reference, e.g. `docker.io/library/hello-wasm:latest`.
    pub name: String,
    /// The `.wasm` to package.
    pub wasm: PathBuf,
    /// Where the wasm lands in the rootfs; default `/<file name>`.
    pub wasm_dest: Option<String>,
    /// Further files: (host path, absolute path in the image).
    pub files: Vec<(PathBuf, String)>,
    /// The image's Cmd (arguments after the wasm).
    pub args: Vec<String>,
    /// The image's Env, `K=V`.
    pub env: Vec<String>,
}

/// The platform architecture name OCI uses for this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn check_dest(dest: &str) -> Result<String> {
    let bad = !dest.starts_with('/') || dest.split('/').any(|c| c == "..") || dest.ends_with('/');
    if bad {
        return Err(Error::InvalidArgument {
            what: format!("image path {dest:?}"),
            reason: "must be an absolute file path without '..'".into(),
        });
    }
    Ok(dest.trim_start_matches('/').to_string())
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// The file-type bits of a mode that make an entry a named pipe.
pub const S_IFIFO: u32 = 0o010000;
/// The file-type bits of a mode that make an entry a symbolic link (its
/// data is the target).
pub const S_IFLNK: u32 = 0o120000;
/// The file-type bits of a mode that make an entry a directory.
pub const S_IFDIR: u32 = 0o040000;

/// Builds the layer tar: every parent directory, then each file, with fixed
/// owners and times so the same inputs give the same digest.
fn layer(entries: &[(String, Vec<u8>, u32)]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in entries {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            acc.push_str(part);
            acc.push('/');
            dirs.insert(acc.clone());
        }
    }
    let io = |e| Error::io("writing image layer", e);
    for dir in dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        tar.append_data(&mut h, &dir, std::io::empty()).map_err(io)?;
    }
    for (path, data, mode) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(mode & 0o7777);
        h.set_mtime(0);
        if mode & 0o170000 == S_IFDIR {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, format!("{}/", path.trim_end_matches('/')), std::io::empty()).map_err(io)?;
            continue;
        }
        if mode & 0o170000 == S_IFLNK {
            // A symbolic link: `data` is its target.
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            let target = std::str::from_utf8(data).map_err(|_| Error::InvalidArgument {
                what: format!("image entry {path}"),
                reason: "a link target must be UTF-8".into(),
            })?;
            tar.append_link(&mut h, path, target).map_err(io)?;
            continue;
        }
        let fifo = mode & 0o170000 == S_IFIFO;
        h.set_entry_type(if fifo { tar::EntryType::Fifo } else { tar::EntryType::Regular });
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, path, data.as_slice()).map_err(io)?;
    }
    tar.into_inner().map_err(io)
}

/// Writes the image-layout tarball for `spec` to `out`.
pub fn build(spec: &ImageSpec, out: impl Write) -> Result<()> {
    let wasm_bytes = read(&spec.wasm)?;
    crate::wasm::detect(&spec.wasm, &wasm_bytes)?;
    let file_name =
        spec.wasm.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "app.wasm".into());
    let wasm_dest = spec.wasm_dest.clone().unwrap_or_else(|| format!("/{file_name}"));
    let mut files = vec![(wasm_dest.clone(), wasm_bytes, 0o644)];
    for (host, dest) in &spec.files {
        // A named pipe stays one (a hostile image can hold one), unread.
        let fifo =
            std::fs::symlink_metadata(host).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
        if fifo {
            files.push((dest.clone(), Vec::new(), S_IFIFO | 0o644));
        } else {
            files.push((dest.clone(), read(host)?, 0o644));
        }
    }
    build_raw(&spec.name, &files, &[wasm_dest], &spec.args, &spec.env, out)
}

/// Writes an image-layout tarball of any files: (path in image, bytes,
/// mode; with [`S_IFIFO`] in the mode, a named pipe). `build` is this plus the checks that make a wasm image.
pub fn build_raw(
    name: &str,
    files: &[(String, Vec<u8>, u32)],
    entrypoint: &[String],
    args: &[String],
    env: &[String],
    out: impl Write,
) -> Result<()> {
    let mut entries = Vec::new();
    for (dest, data, mode) in files {
        entries.push((check_dest(dest)?, data.clone(), *mode));
    }
    let layer = layer(&entries)?;
    let layer_digest = sha256_hex(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Cmd": args,
            "Env": env,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        "history": [{"created_by": "wasmbox image build"}],
    }))
    .expect("serialize config");
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    }))
    .expect("serialize manifest");
    let manifest_digest = sha256_hex(&manifest);
    let tag = name.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map(|(_, t)| t).unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .expect("serialize index");

    let mut tar = tar::Builder::new(out);
    let io = |e| Error::io("writing image tarball", e);
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        tar.append_data(&mut h, path, data).map_err(io)
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    add(&format!("blobs/sha256/{config_digest}"), &config)?;
    add(&format!("blobs/sha256/{layer_digest}"), &layer)?;
    add(&format!("blobs/sha256/{manifest_digest}"), &manifest)?;
    tar.into_inner().map_err(io)?.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_layout_is_consistent() {
        let scratch = tempfile::Builder::new().prefix("wasmbox-image-").tempdir().unwrap();
        let wasm = scratch.path().join("hello.wasm");
        std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
        let spec = ImageSpec {
            name: "docker.io/library/hello-wasm:v1".into(),
            wasm: wasm.clone(),
            args: vec!["hello".into()],
            ..Default::default()
        };
        let mut out = Vec::new();
        build(&spec, &mut out).unwrap();
        let mut files = std::collections::HashMap::new();
        for e in tar::Archive::new(out.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            files.insert(e.path().unwrap().to_string_lossy().into_owned(), data);
        }
        // Every blob is stored under its own digest.
        for (path, data) in &files {
            if let Some(d) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(d, sha256_hex(data));
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "docker.io/library/hello-wasm:v1");
        assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "v1");
        // Same inputs, same bytes.
        let mut again = Vec::new();
        build(&spec, &mut again).unwrap();
        assert_eq!(out, again);
        // Not wasm: refused with the file's name.
        std::fs::write(&wasm, b"hello").unwrap();
        let e = build(&spec, Vec::new()).unwrap_err().to_string();
        assert!(e.contains("hello.wasm") && e.contains("magic"), "{e}");
        assert!(check_dest("/../etc/passwd").is_err());
        assert!(check_dest("relative").is_err());
    }
}
