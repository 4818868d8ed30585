//! Builds an OCI image (image-layout tarball) around a `.wasm`, with no
//! registry and no daemon: `ctr image import` takes the result as it is.
//!
//! The image has one uncompressed layer holding the wasm (and any extra
//! files), an Entrypoint naming the wasm, and the host's platform, so
//! containerd unpacks it like any other image.

use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;
use wasmbox_spec::{wasm, Error, Result};

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
    /// A rootfs image for the platform `wasi/wasm` (as `docker buildx
    /// --platform wasi/wasm` builds them) rather than the host's Linux one.
    pub wasi_platform: bool,
}

/// The platform architecture name OCI uses for this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `None` when `data` hashes to the SHA-256 `hex`, else its own digest
/// (`sha256:...`).
pub(crate) fn digest_mismatch(hex: &str, data: &[u8]) -> Option<String> {
    let got = sha256_hex(data);
    (got != hex).then(|| format!("sha256:{got}"))
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
/// The file-type bits of a mode that make an entry a character device
/// (its data is `[major, minor]`): what a hostile image may carry.
pub const S_IFCHR: u32 = 0o020000;

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
        if mode & 0o170000 == S_IFCHR {
            h.set_entry_type(tar::EntryType::Char);
            h.set_size(0);
            h.set_device_major(data.first().copied().unwrap_or(0).into()).map_err(io)?;
            h.set_device_minor(data.get(1).copied().unwrap_or(0).into()).map_err(io)?;
            tar.append_data(&mut h, path, std::io::empty()).map_err(io)?;
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
    wasm::detect(&spec.wasm, &wasm_bytes)?;
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
    let platform = if spec.wasi_platform { ("wasi", "wasm") } else { ("linux", host_arch()) };
    build_rootfs(&spec.name, &files, &[wasm_dest], &spec.args, &spec.env, platform, out)
}

/// A Spin application packaged as a runnable image, the Spin shim's way:
/// `spin.toml` at `/`, each component's wasm and every file under the
/// directories its `files` name at their paths relative to the manifest,
/// Entrypoint `/`, and `env` as the image's Env (`SPIN_VARIABLE_NAME=...`
/// sets a variable). The manifest is checked as a node would check it; a
/// source or directory outside the manifest's directory, a symbolic link,
/// a core module (not supported by the runtime yet) or a component that is
/// not wasm is an error naming it. Returns a line per file packaged.
pub fn build_spin(
    name: &str,
    manifest: &std::path::Path,
    env: &[String],
    wasi_platform: bool,
    out: impl Write,
) -> Result<Vec<String>> {
    let shown = manifest.display().to_string();
    let text = std::fs::read_to_string(manifest).map_err(|e| Error::io(format!("reading {shown}"), e))?;
    let app = wasmbox_spin::App::parse(&shown, &text)?;
    let dir = manifest.parent().unwrap_or(std::path::Path::new("."));
    let bad = |what: String, reason: &str| Error::InvalidArgument { what, reason: reason.to_string() };
    let inside = |rel: &str, what: String| -> Result<String> {
        let rel = rel.trim_start_matches("./").trim_end_matches('/');
        if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(bad(what, "must be a path inside the manifest's directory (no '/' at its start, no '..')"));
        }
        Ok(rel.to_string())
    };
    let mut files: std::collections::BTreeMap<String, (Vec<u8>, u32)> = std::collections::BTreeMap::new();
    files.insert("/spin.toml".into(), (text.clone().into_bytes(), 0o644));
    for c in app.components.values() {
        let rel = inside(&c.source, format!("{shown} component.{}.source {:?}", c.id, c.source))?;
        let host = dir.join(&rel);
        let bytes = read(&host)?;
        if wasm::detect(&host, &bytes)? == wasm::WasmKind::Module {
            return Err(Error::Unsupported(format!(
                "{shown} component.{}: {} is a core module (a wasm32-wasip1 build); wasmbox runs Spin components built for wasm32-wasip2",
                c.id,
                host.display()
            )));
        }
        files.insert(format!("/{rel}"), (bytes, 0o644));
        for f in &c.files {
            let rel = inside(&f.source, format!("{shown} component.{}.files {:?}", c.id, f.source))?;
            let mut pending = vec![rel];
            while let Some(rel) = pending.pop() {
                let host = dir.join(&rel);
                let md = std::fs::symlink_metadata(&host)
                    .map_err(|e| Error::io(format!("reading {}", host.display()), e))?;
                if md.is_dir() {
                    let entries =
                        std::fs::read_dir(&host).map_err(|e| Error::io(format!("listing {}", host.display()), e))?;
                    for e in entries {
                        let e = e.map_err(|e| Error::io(format!("listing {}", host.display()), e))?;
                        pending.push(format!("{rel}/{}", e.file_name().to_string_lossy()));
                    }
                } else if md.is_file() {
                    files.insert(format!("/{rel}"), (read(&host)?, 0o644));
                } else {
                    return Err(bad(
                        format!("{} (component.{}.files)", host.display(), c.id),
                        "only directories and regular files are packaged (a symbolic link could point anywhere on the node)",
                    ));
                }
            }
        }
    }
    let lines = files.iter().map(|(path, (data, _))| format!("{path} ({} bytes)", data.len())).collect();
    let files: Vec<(String, Vec<u8>, u32)> = files.into_iter().map(|(p, (d, m))| (p, d, m)).collect();
    let platform = if wasi_platform { ("wasi", "wasm") } else { ("linux", host_arch()) };
    build_rootfs(name, &files, &["/".to_string()], &[], env, platform, out)?;
    Ok(lines)
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
    build_rootfs(name, files, entrypoint, args, env, ("linux", host_arch()), out)
}

/// [`build_raw`] for a platform `(os, architecture)`.
fn build_rootfs(
    name: &str,
    files: &[(String, Vec<u8>, u32)],
    entrypoint: &[String],
    args: &[String],
    env: &[String],
    (os, arch): (&str, &str),
    out: impl Write,
) -> Result<()> {
    let mut entries = Vec::new();
    for (dest, data, mode) in files {
        entries.push((check_dest(dest)?, data.clone(), *mode));
    }
    let layer = layer(&entries)?;
    let layer_digest = sha256_hex(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": os,
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
    write_layout(
        name,
        "application/vnd.oci.image.config.v1+json",
        &config,
        &[("application/vnd.oci.image.layer.v1.tar", &layer)],
        out,
    )
}

/// Writes an image layout tarball: index (naming the image), manifest,
/// config and layers, each blob under its digest.
pub(crate) fn write_layout(
    name: &str,
    config_type: &str,
    config: &[u8],
    layers: &[(&str, &[u8])],
    out: impl Write,
) -> Result<()> {
    let config_digest = sha256_hex(config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": config_type,
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": layers.iter().map(|(mt, data)| json!({
            "mediaType": mt,
            "digest": format!("sha256:{}", sha256_hex(data)),
            "size": data.len(),
        })).collect::<Vec<_>>(),
    }))
    .expect("serialize manifest");
    let blobs: Vec<&[u8]> = std::iter::once(config).chain(layers.iter().map(|(_, d)| *d)).collect();
    write_tarball(name, &manifest, &blobs, out)
}

/// Writes an image layout tarball of one manifest (its bytes as they are)
/// and its blobs, the index naming the image `name`.
pub(crate) fn write_tarball(name: &str, manifest: &[u8], blobs: &[&[u8]], out: impl Write) -> Result<()> {
    let manifest_digest = sha256_hex(manifest);
    let tag = name.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map(|(_, t)| t).unwrap_or("latest");
    let media_type = serde_json::from_slice::<serde_json::Value>(manifest)
        .ok()
        .and_then(|m| m["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
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
    let mut written = std::collections::HashSet::new();
    for data in blobs {
        let digest = sha256_hex(data);
        if written.insert(digest.clone()) {
            add(&format!("blobs/sha256/{digest}"), data)?;
        }
    }
    add(&format!("blobs/sha256/{manifest_digest}"), manifest)?;
    tar.into_inner().map_err(io)?.flush().map_err(io)
}

/// Writes an image in runwasi's layout for `spec.wasm`: an image config
/// for `wasip1/wasm` (or `wasip2/wasm`) with an Entrypoint naming the
/// wasm (`/app.wasm`, or `spec.wasm_dest`), Cmd and Env, no rootfs layers,
/// and the wasm as one [`RUNWASI_COMPONENT_LAYER`] layer. containerd
/// gives such a container an empty rootfs; the shim reads the layer.
pub fn build_wasm_layer_image(spec: &ImageSpec, out: impl Write) -> Result<()> {
    if !spec.files.is_empty() {
        return Err(Error::InvalidArgument {
            what: "--wasm-layer".into(),
            reason: "an image whose wasm is a layer has no rootfs for --file".into(),
        });
    }
    let wasm = read(&spec.wasm)?;
    let kind = wasm::detect(&spec.wasm, &wasm)?;
    let dest = spec.wasm_dest.clone().unwrap_or_else(|| "/app.wasm".into());
    let os = if kind == wasm::WasmKind::Component { "wasip2" } else { "wasip1" };
    let config = wasm_layer_config(os, &dest, &spec.args, &spec.env, "wasmbox image build --wasm-layer");
    write_layout(
        &spec.name,
        "application/vnd.oci.image.config.v1+json",
        &config,
        &[(RUNWASI_COMPONENT_LAYER, &wasm)],
        out,
    )
}

/// Writes an OCI wasm artifact (CNCF TAG Runtime layout) for `spec.wasm`:
/// a config of media type [`WASM_CONFIG_MEDIA_TYPE`] (platform `wasip1` or
/// `wasip2/wasm`, the layer's digest, a component's imports and exports)
/// and the wasm as its one [`WASM_LAYER_MEDIA_TYPE`] layer. Extra files,
/// args and env have no place in that layout and are refused.
pub fn build_artifact(spec: &ImageSpec, out: impl Write) -> Result<()> {
    if !spec.files.is_empty() || !spec.args.is_empty() || !spec.env.is_empty() || spec.wasm_dest.is_some() {
        return Err(Error::InvalidArgument {
            what: "--artifact".into(),
            reason: "an OCI wasm artifact holds the wasm alone: no --file, --env, --wasm-path or args".into(),
        });
    }
    let wasm = read(&spec.wasm)?;
    let info = wasm::describe(&spec.wasm, &wasm)?;
    let component = info.kind == wasm::WasmKind::Component;
    let mut config = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "wasm",
        "os": if component { "wasip2" } else { "wasip1" },
        "layerDigests": [format!("sha256:{}", sha256_hex(&wasm))],
    });
    if component {
        config["component"] = json!({ "imports": info.imports, "exports": info.exports });
    }
    let config = serde_json::to_vec(&config).expect("serialize config");
    write_layout(&spec.name, WASM_CONFIG_MEDIA_TYPE, &config, &[(WASM_LAYER_MEDIA_TYPE, &wasm)], out)
}

/// The image config of an image whose wasm is its one layer (no rootfs
/// layers): platform `OS/wasm`, the Entrypoint naming the wasm.
fn wasm_layer_config(os: &str, entrypoint: &str, args: &[String], env: &[String], created_by: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "wasm",
        "os": os,
        "config": {"Entrypoint": [entrypoint], "Cmd": args, "Env": env, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [{"created_by": created_by}],
    }))
    .expect("serialize config")
}

/// Writes an OCI wasm artifact (its `config` and layers, as pulled) as an
/// image containerd runs: containerd's clients (ctr, the CRI plugin,
/// nerdctl) refuse an image whose config is [`WASM_CONFIG_MEDIA_TYPE`], so
/// the artifact's one wasm layer (the same blob, the same digest) gets an
/// OCI image config for its platform (`wasip1/wasm` or `wasip2/wasm`) with
/// the Entrypoint `/app.wasm`, as [`build_wasm_layer_image`] writes it; the
/// shim reads the layer from containerd's content store. An artifact with
/// no, two or foreign layers is an error naming the image.
pub fn runnable_artifact(name: &str, config: &[u8], layers: &[(String, Vec<u8>)], out: impl Write) -> Result<()> {
    let bad = |reason: String| Error::InvalidArgument { what: format!("OCI wasm artifact {name}"), reason };
    let config: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| bad(format!("its config is not JSON: {e}")))?;
    if let Some((mt, data)) = layers.iter().find(|(mt, _)| mt != WASM_LAYER_MEDIA_TYPE && mt != RUNWASI_COMPONENT_LAYER)
    {
        return Err(bad(format!("layer sha256:{} has media type {mt}, not {WASM_LAYER_MEDIA_TYPE}", sha256_hex(data))));
    }
    let wasm = match layers {
        [] => return Err(bad("no wasm layer".into())),
        [(_, wasm)] => wasm,
        more => return Err(bad(format!("{} wasm layers; one is run, so which is ambiguous", more.len()))),
    };
    let kind = wasm::detect(std::path::Path::new(&format!("{name} layer")), wasm)?;
    let os = match config["os"].as_str() {
        Some(os @ ("wasip1" | "wasip2")) => os,
        _ if kind == wasm::WasmKind::Component => "wasip2",
        _ => "wasip1",
    };
    let image_config =
        wasm_layer_config(os, "/app.wasm", &[], &[], "wasmbox image pull: an OCI wasm artifact given an image config");
    write_layout(name, "application/vnd.oci.image.config.v1+json", &image_config, &[(WASM_LAYER_MEDIA_TYPE, wasm)], out)
}

/// Media type of the config of an OCI wasm artifact (CNCF TAG Runtime).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The media types of wasm layers, shared with the shim (which reads such
/// a layer from containerd's content store).
pub use wasmbox_spec::wasm::{RUNWASI_COMPONENT_LAYER, WASM_LAYER_MEDIA_TYPE};

fn describe_lines(out: &mut Vec<String>, what: &str, path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let info = wasm::describe(path, bytes)?;
    let kind = if info.kind == wasm::WasmKind::Module { "core module" } else { "component" };
    out.push(format!("{what}: {kind}, {}, {} bytes, sha256:{}", info.world, bytes.len(), sha256_hex(bytes)));
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    out.push(format!("  imports ({}): {}", info.imports.len(), list(&info.imports)));
    out.push(format!("  exports ({}): {}", info.exports.len(), list(&info.exports)));
    Ok(())
}

/// The files of an image-layout tarball, by path.
pub(crate) struct Layout {
    path: std::path::PathBuf,
    files: std::collections::HashMap<String, Vec<u8>>,
}

impl Layout {
    /// Reads the tarball `bytes` (from `path`, which errors name).
    pub(crate) fn read(path: &std::path::Path, bytes: &[u8]) -> Result<Layout> {
        let mut layout = Layout { path: path.to_path_buf(), files: std::collections::HashMap::new() };
        let mut archive = tar::Archive::new(bytes);
        let entries =
            archive.entries().map_err(|e| layout.bad(format!("not a wasm file nor an image tarball: {e}")))?;
        for e in entries {
            let mut e = e.map_err(|e| layout.bad(format!("reading the tarball: {e}")))?;
            let name = e.path().map(|p| p.to_string_lossy().trim_start_matches("./").to_string()).unwrap_or_default();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).map_err(|e| layout.bad(format!("reading {name}: {e}")))?;
            layout.files.insert(name, data);
        }
        Ok(layout)
    }

    /// An error about this image.
    pub(crate) fn bad(&self, reason: String) -> Error {
        Error::InvalidArgument { what: format!("image {}", self.path.display()), reason }
    }

    pub(crate) fn index(&self) -> Result<&[u8]> {
        self.files
            .get("index.json")
            .map(Vec::as_slice)
            .ok_or_else(|| self.bad("no index.json: not an OCI image layout".into()))
    }

    /// The blob `digest` names, checked against it.
    pub(crate) fn blob(&self, digest: &str) -> Result<&[u8]> {
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| self.bad(format!("digest {digest:?} is not sha256")))?;
        let data = self
            .files
            .get(&format!("blobs/sha256/{hex}"))
            .ok_or_else(|| self.bad(format!("blob {digest} is missing")))?;
        if let Some(got) = digest_mismatch(hex, data) {
            return Err(self.bad(format!("blob {digest} does not match its digest ({got})")));
        }
        Ok(data)
    }
}

/// What a node would run from `path`: a `.wasm`, or an OCI image-layout
/// tarball (as `wasmbox image build` or `ctr image export` write them).
/// Every blob read is checked against its digest; an artifact with no or
/// two wasm layers, or a layer of an unknown media type, is an error
/// naming the image.
pub fn inspect(path: &std::path::Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut out = Vec::new();
    if bytes.starts_with(b"\0asm") {
        describe_lines(&mut out, &path.display().to_string(), path, &bytes)?;
        return Ok(out);
    }
    let layout = Layout::read(path, &bytes)?;
    let bad = |reason: String| layout.bad(reason);
    let blob = |digest: &str| layout.blob(digest);
    let json = |data: &[u8], what: &str| -> Result<serde_json::Value> {
        serde_json::from_slice(data).map_err(|e| bad(format!("{what} is not JSON: {e}")))
    };
    let index = json(layout.index()?, "index.json")?;
    let mut manifests: Vec<serde_json::Value> = index["manifests"].as_array().cloned().unwrap_or_default();
    let mut seen = 0;
    while let Some(desc) = manifests.pop() {
        seen += 1;
        if seen > 64 {
            return Err(bad("more than 64 manifests".into()));
        }
        let digest = desc["digest"].as_str().unwrap_or("");
        let m = json(blob(digest)?, &format!("manifest {digest}"))?;
        if let Some(nested) = m["manifests"].as_array() {
            // An index: each platform's manifest.
            manifests.extend(nested.iter().cloned());
            continue;
        }
        let name = desc["annotations"]["io.containerd.image.name"].as_str().unwrap_or("(unnamed)");
        out.push(format!("image {name}, manifest {digest}"));
        let config_type = m["config"]["mediaType"].as_str().unwrap_or("");
        let config = json(blob(m["config"]["digest"].as_str().unwrap_or(""))?, "the config")?;
        let platform =
            format!("{}/{}", config["os"].as_str().unwrap_or("?"), config["architecture"].as_str().unwrap_or("?"));
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        let wasm_layers: Vec<&serde_json::Value> = layers
            .iter()
            .filter(|l| matches!(l["mediaType"].as_str(), Some(WASM_LAYER_MEDIA_TYPE | RUNWASI_COMPONENT_LAYER)))
            .collect();
        if config_type == WASM_CONFIG_MEDIA_TYPE || !wasm_layers.is_empty() {
            let layout = if config_type == WASM_CONFIG_MEDIA_TYPE {
                "OCI wasm artifact (config application/vnd.wasm.config.v0+json)"
            } else {
                "image with wasm layers (runwasi's layout)"
            };
            out.push(format!("  layout: {layout}, platform {platform}"));
            if let Some(other) = layers.iter().find(|l| {
                !matches!(l["mediaType"].as_str(), Some(WASM_LAYER_MEDIA_TYPE | RUNWASI_COMPONENT_LAYER))
                    && config_type == WASM_CONFIG_MEDIA_TYPE
            }) {
                return Err(bad(format!(
                    "{name}: layer {} has media type {}, not {WASM_LAYER_MEDIA_TYPE}",
                    other["digest"], other["mediaType"]
                )));
            }
            match wasm_layers.len() {
                0 => return Err(bad(format!("{name}: an artifact with no wasm layer"))),
                1 => {}
                n => return Err(bad(format!("{name}: {n} wasm layers; one is run, so which is ambiguous"))),
            }
            let d = wasm_layers[0]["digest"].as_str().unwrap_or("");
            describe_lines(&mut out, &format!("  layer {d}"), path, blob(d)?)?;
            out.push(if config_type == WASM_CONFIG_MEDIA_TYPE {
                "  runs on wasmbox: once `wasmbox image pull` has given it an image config (containerd's clients refuse this config type: `unknown image config media type`); then as runwasi's layout".into()
            } else {
                "  runs on wasmbox: yes (the shim reads the layer from containerd's content store); containerd 1.6.25+, 1.7.7+ or 2.x".into()
            });
            continue;
        }
        let entrypoint: Vec<String> = config["config"]["Entrypoint"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(config["config"]["Cmd"].as_array().into_iter().flatten())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let wasi_platform = platform.starts_with("wasi") || platform.ends_with("/wasm");
        let layout = if wasi_platform { "wasi/wasm platform image (a rootfs)" } else { "rootfs image" };
        out.push(format!("  layout: {layout}, platform {platform}, runs {entrypoint:?}"));
        let wasm_path =
            entrypoint.first().map(|e| wasm::split_entrypoint(e).map(|(p, _)| p.trim_start_matches('/').to_string()));
        let mut found = false;
        for l in &layers {
            let d = l["digest"].as_str().unwrap_or("");
            let data = blob(d)?;
            let mt = l["mediaType"].as_str().unwrap_or("");
            if !mt.ends_with(".tar") && !mt.ends_with("tar") {
                out.push(format!("  layer {d} ({mt}): compressed layers are not looked into"));
                continue;
            }
            let Some(Ok(want)) = &wasm_path else { continue };
            // A Spin application: the entrypoint names its manifest or a
            // directory holding `spin.toml` (see wasmbox_spec::plan).
            let spin = if want.ends_with(".toml") {
                want.clone()
            } else {
                format!("{want}/spin.toml").trim_start_matches('/').to_string()
            };
            for e in tar::Archive::new(data).entries().into_iter().flatten().flatten() {
                let mut e = e;
                let p = e.path().map(|p| p.to_string_lossy().trim_start_matches("./").to_string()).unwrap_or_default();
                if p == spin {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut e, &mut text).map_err(|e| bad(format!("reading /{p}: {e}")))?;
                    let app = wasmbox_spin::App::parse(&format!("/{p}"), &text)?;
                    let ids: Vec<&str> = app.components.keys().map(String::as_str).collect();
                    out.push(format!("  /{p}: Spin application {:?}, components: {}", app.name, ids.join(", ")));
                    found = true;
                } else if &p == want {
                    let mut w = Vec::new();
                    std::io::Read::read_to_end(&mut e, &mut w).map_err(|e| bad(format!("reading /{p}: {e}")))?;
                    describe_lines(&mut out, &format!("  /{p}"), std::path::Path::new(&format!("/{p}")), &w)?;
                    found = true;
                }
            }
        }
        if !found {
            out.push("  no wasm at the entrypoint: a Linux image (runc runs it under the wasmbox handler)".into());
        }
    }
    Ok(out)
}

/// An image-layout tarball to push, made from what the user named: a
/// tarball as it is, or a `.wasm` packaged on the fly.
pub struct Pushable {
    /// The tarball to push.
    pub tarball: PathBuf,
    /// What was built from a `.wasm`, for the user (`None`: a tarball).
    pub built: Option<String>,
    /// Holds a built tarball until the push is done.
    _dir: Option<tempfile::TempDir>,
}

/// What `wasmbox image push FILE REF` pushes: an image-layout tarball as it
/// is; a `.wasm` (module or component) as an OCI wasm artifact named
/// `reference` (CNCF TAG Runtime layout, as `wkg oci push` and `oras push`
/// make), or as a runnable rootfs image when `runnable`; anything else is
/// an error saying what was expected.
pub fn pushable(file: &std::path::Path, reference: Option<&str>, runnable: bool) -> Result<Pushable> {
    let mut head = [0u8; 512];
    let n = std::fs::File::open(file)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
    let head = &head[..n];
    if head.starts_with(b"\0asm") {
        let name = reference.ok_or_else(|| Error::InvalidArgument {
            what: file.display().to_string(),
            reason: "a .wasm has no image name in it: give the reference to push to (HOST[:PORT]/REPO[:TAG])".into(),
        })?;
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
        let tarball = dir.path().join("image.tar");
        let spec = ImageSpec {
            name: name.to_string(),
            wasm: file.to_path_buf(),
            wasm_dest: None,
            files: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            wasi_platform: false,
        };
        let out =
            std::fs::File::create(&tarball).map_err(|e| Error::io(format!("creating {}", tarball.display()), e))?;
        let out = std::io::BufWriter::new(out);
        let built = if runnable {
            build(&spec, out)?;
            "a runnable image (the wasm in a rootfs layer)"
        } else {
            build_artifact(&spec, out)?;
            "an OCI wasm artifact (config application/vnd.wasm.config.v0+json, one application/wasm layer)"
        };
        return Ok(Pushable { tarball, built: Some(format!("{} as {built}", file.display())), _dir: Some(dir) });
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        if runnable {
            return Err(Error::InvalidArgument {
                what: format!("--image with {}", file.display()),
                reason: "--image packages a .wasm; this is already an image tarball, pushed as it is without it".into(),
            });
        }
        return Ok(Pushable { tarball: file.to_path_buf(), built: None, _dir: None });
    }
    Err(Error::InvalidArgument {
        what: file.display().to_string(),
        reason: "expected a .wasm (a module or component, starting with \\0asm) or an OCI image-layout tarball \
                 (from wasmbox image build -o, docker save, skopeo copy oci-archive:)"
            .into(),
    })
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
        // Artifacts: two wasm layers, or a layer of another type, are refused
        // naming the image.
        let tar = scratch.path().join("a.tar");
        let two =
            [(WASM_LAYER_MEDIA_TYPE, &b"\0asm\x01\0\0\0"[..]), (WASM_LAYER_MEDIA_TYPE, &b"\0asm\x01\0\0\0\0"[..])];
        write_layout("x/two:1", WASM_CONFIG_MEDIA_TYPE, b"{}", &two, std::fs::File::create(&tar).unwrap()).unwrap();
        let e = inspect(&tar).unwrap_err().to_string();
        assert!(e.contains("x/two:1") && e.contains("2 wasm layers"), "{e}");
        let odd = [(WASM_LAYER_MEDIA_TYPE, &b"\0asm\x01\0\0\0"[..]), ("text/plain", &b"hi"[..])];
        write_layout("x/odd:1", WASM_CONFIG_MEDIA_TYPE, b"{}", &odd, std::fs::File::create(&tar).unwrap()).unwrap();
        let e = inspect(&tar).unwrap_err().to_string();
        assert!(e.contains("x/odd:1") && e.contains("text/plain"), "{e}");
        assert!(check_dest("/../etc/passwd").is_err());
        assert!(check_dest("relative").is_err());
    }

    #[test]
    fn artifacts_are_given_an_image_config() {
        let module = b"\0asm\x01\0\0\0".to_vec();
        let one = [(WASM_LAYER_MEDIA_TYPE.to_string(), module.clone())];
        let mut out = Vec::new();
        runnable_artifact("r/a:1", br#"{"os":"wasip1","architecture":"wasm"}"#, &one, &mut out).unwrap();
        let layout = Layout::read(std::path::Path::new("t.tar"), &out).unwrap();
        let index: serde_json::Value = serde_json::from_slice(layout.index().unwrap()).unwrap();
        let m: serde_json::Value =
            serde_json::from_slice(layout.blob(index["manifests"][0]["digest"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(m["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
        // The same wasm blob, under the same digest and media type.
        assert_eq!(m["layers"][0]["mediaType"], WASM_LAYER_MEDIA_TYPE);
        assert_eq!(m["layers"][0]["digest"], format!("sha256:{}", sha256_hex(&module)));
        let config: serde_json::Value =
            serde_json::from_slice(layout.blob(m["config"]["digest"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("wasip1"), Some("wasm")));
        assert_eq!(config["config"]["Entrypoint"][0], "/app.wasm");
        // None, two, foreign, or not wasm: refused naming the image.
        let two = [one[0].clone(), one[0].clone()];
        let foreign = [one[0].clone(), ("text/plain".to_string(), b"hi".to_vec())];
        let junk = [(WASM_LAYER_MEDIA_TYPE.to_string(), b"hi".to_vec())];
        for (layers, why) in [
            (&[][..], "no wasm layer"),
            (&two[..], "2 wasm layers"),
            (&foreign[..], "text/plain"),
            (&junk[..], "r/a:1 layer"),
        ] {
            let e = runnable_artifact("r/a:1", b"{}", layers, Vec::new()).unwrap_err().to_string();
            assert!(e.contains("r/a:1") && e.contains(why), "{e}");
        }
    }
}
