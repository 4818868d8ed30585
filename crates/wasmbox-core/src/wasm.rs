//! Recognising WebAssembly bytes and the `path.wasm#export` entrypoint form.

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
    fn splits_entrypoint() {
        assert_eq!(split_entrypoint("/a.wasm").unwrap(), ("/a.wasm", None));
        assert_eq!(split_entrypoint("/a.wasm#greet").unwrap(), ("/a.wasm", Some("greet")));
        assert_eq!(split_entrypoint("/d#x/a.wasm#f").unwrap(), ("/d#x/a.wasm", Some("f")));
        assert!(split_entrypoint("/a.wasm#").is_err());
        assert!(split_entrypoint("#f").is_err());
    }
}
