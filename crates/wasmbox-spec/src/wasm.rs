//! Recognising WebAssembly bytes, the `path.wasm#export` entrypoint form,
//! and the image layers that are a `.wasm` rather than a tar.

use crate::error::{Error, Result};
use std::path::Path;

/// What a `.wasm` file holds, read from its header, never from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A core module (wasm32-wasip1 and friends).
    Module,
    /// A component (wasm32-wasip2).
    Component,
}

const MAGIC: &[u8; 4] = b"\0asm";

/// Media type of the wasm layer of an OCI wasm artifact (CNCF TAG Runtime).
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// runwasi's media type for a component layer.
pub const RUNWASI_COMPONENT_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// The media types of an image layer whose blob is the `.wasm` itself:
/// containerd stores such a layer without unpacking it.
pub const WASM_LAYER_MEDIA_TYPES: [&str; 2] = [WASM_LAYER_MEDIA_TYPE, RUNWASI_COMPONENT_LAYER];

/// Tells a core module from a component by the 8-byte header: the magic,
/// then a 16-bit version and a 16-bit layer (0 for modules, 1 for components).
pub fn detect(path: &Path, bytes: &[u8]) -> Result<WasmKind> {
    let not_wasm = |reason: String| Error::NotWasm { path: path.to_path_buf(), reason };
    if bytes.is_empty() {
        return Err(not_wasm("the file is empty (0 bytes)".into()));
    }
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        return Err(not_wasm(format!("it does not start with the wasm magic bytes 00 61 73 6d (found {head})")));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    match (layer, version) {
        (0, 1) => Ok(WasmKind::Module),
        (1, _) => Ok(WasmKind::Component),
        _ => Err(not_wasm(format!("unknown wasm binary version {version} layer {layer}"))),
    }
}

/// What a wasm binary declares at its top level, for `wasmbox image inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmInfo {
    pub kind: WasmKind,
    /// `wasi:cli/command`, `wasi:http/proxy` (WASI 0.2), `wasi:cli/command@0.3`,
    /// `wasi:http/service@0.3` (WASI 0.3), a core module's `WASI preview 1
    /// command` (exports `_start`), or `library` (none of these).
    pub world: &'static str,
    /// Core modules: `module.name`; components: interface or function names.
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Reads a wasm's top-level imports and exports; an error names `path` and
/// what could not be parsed.
pub fn describe(path: &Path, bytes: &[u8]) -> Result<WasmInfo> {
    let kind = detect(path, bytes)?;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| Error::InvalidWasm {
            path: path.to_path_buf(),
            what: if kind == WasmKind::Module { "module" } else { "component" },
            reason: e.to_string(),
        })?;
        use wasmparser::Payload::*;
        match payload {
            ModuleSection { .. } | ComponentSection { .. } if kind == WasmKind::Component => depth += 1,
            End(_) => depth = depth.saturating_sub(1),
            ImportSection(r) if kind == WasmKind::Module => {
                for imp in r.into_imports().flatten() {
                    imports.push(format!("{}.{}", imp.module, imp.name));
                }
            }
            ExportSection(r) if kind == WasmKind::Module => {
                exports.extend(r.into_iter().flatten().map(|e| e.name.to_string()));
            }
            ComponentImportSection(r) if depth == 0 => {
                imports.extend(r.into_iter().flatten().map(|i| i.name.name.to_string()));
            }
            ComponentExportSection(r) if depth == 0 => {
                exports.extend(r.into_iter().flatten().map(|e| e.name.name.to_string()));
            }
            _ => {}
        }
    }
    let has = |p: &str| exports.iter().any(|e| e.starts_with(p));
    let world = match kind {
        WasmKind::Component if has("wasi:http/incoming-handler@0.2") => "wasi:http/proxy",
        WasmKind::Component if has("wasi:http/handler@0.3") => "wasi:http/service@0.3",
        WasmKind::Component if has("wasi:cli/run@0.2") => "wasi:cli/command",
        WasmKind::Component if has("wasi:cli/run@0.3") => "wasi:cli/command@0.3",
        WasmKind::Module if exports.iter().any(|e| e == "_start") => "WASI preview 1 command",
        _ => "library",
    };
    Ok(WasmInfo { kind, world, imports, exports })
}

impl WasmInfo {
    /// Whether the component serves HTTP: it exports
    /// `wasi:http/incoming-handler@0.2.x` or `wasi:http/handler@0.3.x`.
    pub fn serves_http(&self) -> bool {
        matches!(self.world, "wasi:http/proxy" | "wasi:http/service@0.3")
    }

    /// Whether the component uses WASI 0.3 (the component model's async
    /// ABI): any of its top-level imports or exports is a `wasi:` interface
    /// at 0.3.x.
    pub fn wasi_0_3(&self) -> bool {
        self.imports.iter().chain(&self.exports).any(|n| n.starts_with("wasi:") && n.contains("@0.3."))
    }

    /// The first top-level import or export that names a pre-release of a
    /// WASI interface (`wasi:cli/environment@0.3.0-rc-2025-09-16`, say):
    /// wasmtime implements released versions only, and a pre-release never
    /// links against a release.
    pub fn wasi_prerelease(&self) -> Option<&str> {
        self.imports.iter().chain(&self.exports).map(String::as_str).find(|n| {
            n.strip_prefix("wasi:").and_then(|n| n.split_once('@')).is_some_and(|(_, version)| version.contains('-'))
        })
    }
}

/// The digest of the one wasm layer an image manifest (from containerd's
/// content store, or a registry) lists, `None` when it lists none; an
/// error says why the manifest cannot be run (not JSON, two wasm layers, a
/// wasm layer without a `sha256:` digest).
pub fn wasm_layer_of(manifest: &[u8]) -> Result<Option<String>, String> {
    let m: serde_json::Value = serde_json::from_slice(manifest).map_err(|e| e.to_string())?;
    let layers: Vec<&serde_json::Value> = m["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["mediaType"].as_str().is_some_and(|t| WASM_LAYER_MEDIA_TYPES.contains(&t)))
        .collect();
    match layers.len() {
        0 => Ok(None),
        1 => match layers[0]["digest"].as_str() {
            Some(d)
                if d.strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())) =>
            {
                Ok(Some(d.to_string()))
            }
            other => Err(format!("its wasm layer's digest {other:?} is not sha256:<64 hex digits>")),
        },
        n => Err(format!("{n} wasm layers; one is run, so which is ambiguous")),
    }
}

/// Splits `"/app.wasm#greet"` into the path and the export to call.
/// An empty export name (`"/app.wasm#"`) is rejected.
pub fn split_entrypoint(arg0: &str) -> Result<(&str, Option<&str>)> {
    match arg0.rsplit_once('#') {
        None => Ok((arg0, None)),
        Some((path, name)) if !name.is_empty() && !path.is_empty() => Ok((path, Some(name))),
        Some(_) => Err(Error::InvalidArgument {
            what: format!("entrypoint {arg0:?}"),
            reason: "expected PATH.wasm or PATH.wasm#EXPORT with both parts non-empty".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kinds_and_rejects_non_wasm() {
        let p = Path::new("/x.wasm");
        assert_eq!(detect(p, b"\0asm\x01\0\0\0").unwrap(), WasmKind::Module);
        assert_eq!(detect(p, b"\0asm\x0d\0\x01\0").unwrap(), WasmKind::Component);
        let empty = detect(p, b"").unwrap_err().to_string();
        assert!(empty.contains("/x.wasm") && empty.contains("empty"), "{empty}");
        let text = detect(p, b"#!/bin/sh\necho hi").unwrap_err().to_string();
        assert!(text.contains("magic bytes") && text.contains("23 21 2f 62"), "{text}");
        assert!(detect(p, b"\0asm").is_err());
        assert!(detect(p, b"\0asm\x02\0\0\0").unwrap_err().to_string().contains("version 2"));
    }

    #[test]
    fn describes_a_module() {
        // (module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
        //         (func (export "_start")))
        let m = b"\0asm\x01\0\0\0\x01\x08\x02\x60\x01\x7f\x00\x60\x00\x00\
            \x02\x24\x01\x16wasi_snapshot_preview1\x09proc_exit\x00\x00\
            \x03\x02\x01\x01\x07\x0a\x01\x06_start\x00\x01\x0a\x04\x01\x02\x00\x0b";
        let info = describe(Path::new("/m.wasm"), m).unwrap();
        assert_eq!(info.kind, WasmKind::Module);
        assert_eq!(info.world, "WASI preview 1 command");
        assert_eq!(info.imports, vec!["wasi_snapshot_preview1.proc_exit"]);
        assert_eq!(info.exports, vec!["_start"]);
        let bad = describe(Path::new("/m.wasm"), &m[..m.len() - 3]).unwrap_err().to_string();
        assert!(bad.contains("/m.wasm"), "{bad}");
    }

    #[test]
    fn tells_wasi_versions_apart() {
        let info = |world, imports: &[&str], exports: &[&str]| WasmInfo {
            kind: WasmKind::Component,
            world,
            imports: imports.iter().map(|s| s.to_string()).collect(),
            exports: exports.iter().map(|s| s.to_string()).collect(),
        };
        let p2 = info("wasi:cli/command", &["wasi:cli/environment@0.2.6"], &["wasi:cli/run@0.2.6"]);
        assert!(!p2.wasi_0_3() && p2.wasi_prerelease().is_none() && !p2.serves_http());
        let p3 = info(
            "wasi:http/service@0.3",
            &["wasi:cli/stdout@0.3.0", "wasi:io/streams@0.2.6"],
            &["wasi:http/handler@0.3.0"],
        );
        assert!(p3.wasi_0_3() && p3.wasi_prerelease().is_none() && p3.serves_http());
        let rc = info("library", &["wasi:cli/environment@0.3.0-rc-2025-09-16"], &["wasi:cli/run@0.3.0-rc-2025-09-16"]);
        assert!(rc.wasi_0_3());
        assert_eq!(rc.wasi_prerelease(), Some("wasi:cli/environment@0.3.0-rc-2025-09-16"));
        // Other packages' pre-releases are not WASI's.
        assert!(info("library", &["fermyon:spin/key-value@2.0.0-rc"], &[]).wasi_prerelease().is_none());
    }

    #[test]
    fn the_wasm_layer_of_a_manifest() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let layer = |t: &str, d: &str| format!(r#"{{"mediaType":"{t}","digest":"{d}","size":1}}"#);
        let manifest = |layers: &[String]| format!(r#"{{"schemaVersion":2,"layers":[{}]}}"#, layers.join(","));
        let tar = layer("application/vnd.oci.image.layer.v1.tar", &d);
        assert_eq!(wasm_layer_of(manifest(std::slice::from_ref(&tar)).as_bytes()), Ok(None));
        let wasm = layer("application/wasm", &d);
        assert_eq!(wasm_layer_of(manifest(&[tar, wasm.clone()]).as_bytes()), Ok(Some(d.clone())));
        let two = wasm_layer_of(manifest(&[wasm.clone(), wasm]).as_bytes()).unwrap_err();
        assert!(two.contains("2 wasm layers"), "{two}");
        let bad = wasm_layer_of(manifest(&[layer("application/wasm", "sha256:../../x")]).as_bytes()).unwrap_err();
        assert!(bad.contains("sha256:../../x"), "{bad}");
        assert!(wasm_layer_of(b"[1,2").is_err());
    }

    #[test]
    fn splits_entrypoint() {
        assert_eq!(split_entrypoint("/a.wasm").unwrap(), ("/a.wasm", None));
        assert_eq!(split_entrypoint("/a.wasm#greet").unwrap(), ("/a.wasm", Some("greet")));
        assert_eq!(split_entrypoint("/d#x/a.wasm#f").unwrap(), ("/d#x/a.wasm", Some("f")));
        assert!(split_entrypoint("/a.wasm#").is_err());
        assert!(split_entrypoint("#f").is_err());
    }
}
