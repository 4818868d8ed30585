//! The runtime options containerd hands the shim's `start` on stdin: a
//! protobuf `Any` holding either runc's `containerd.runc.v1.Options` or
//! the generic `runtimeoptions.v1.Options`, which is what CRI sends for a
//! runtime that is not runc (its `options` table as TOML in `config_body`,
//! or a TOML file named by `config_path`, as `ctr run
//! --runtime-config-path` sends it).
//!
//! The generic table takes `ShimCgroup` and `ConfigPath`, the node
//! defaults file for this runtime's containers (see
//! `wasmbox_spec::defaults`), so that two runtime handlers can run wasm
//! with different defaults.
//!
//! Of runc's options only `ShimCgroup` means something to this shim;
//! `SystemdCgroup` is accepted and has no effect (the form of
//! `linux.cgroupsPath` already says which layout a container's cgroup
//! takes). Any other key is refused by name.

use anyhow::{bail, Context as _, Result};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, Message};

/// What the shim takes from its runtime options.
#[derive(Debug, Default, PartialEq)]
pub struct RuntimeOptions {
    /// The cgroup the shim daemon is moved into (`ShimCgroup`).
    pub shim_cgroup: Option<String>,
    /// The node defaults file for this runtime's containers (`ConfigPath`),
    /// instead of `/etc/wasmbox/config.toml`.
    pub config_path: Option<String>,
}

const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
const GENERIC_OPTIONS: &str = "runtimeoptions.v1.Options";

/// Decodes what containerd wrote on `start`'s stdin (empty when the
/// runtime has no options).
pub fn parse(input: &[u8]) -> Result<RuntimeOptions> {
    if input.is_empty() {
        return Ok(RuntimeOptions::default());
    }
    let any = Any::parse_from_bytes(input).context("runtime options on stdin are not a protobuf Any")?;
    let kind = any.type_url.rsplit('/').next().unwrap_or_default();
    match kind {
        "" => Ok(RuntimeOptions::default()),
        RUNC_OPTIONS => {
            let o = containerd_shim::api::Options::parse_from_bytes(&any.value)
                .with_context(|| format!("decoding runtime options {RUNC_OPTIONS}"))?;
            Ok(RuntimeOptions { shim_cgroup: Some(o.shim_cgroup).filter(|s| !s.is_empty()), config_path: None })
        }
        GENERIC_OPTIONS => {
            let (path, body) = generic(&any.value)?;
            let (text, source) = match (body.is_empty(), path.is_empty()) {
                (false, _) => (String::from_utf8(body).context("runtime options: config_body is not UTF-8")?, None),
                (true, false) => (
                    std::fs::read_to_string(&path).with_context(|| format!("reading runtime options file {path}"))?,
                    Some(path),
                ),
                (true, true) => return Ok(RuntimeOptions::default()),
            };
            from_toml(&text).with_context(|| match source {
                Some(p) => format!("runtime options file {p}"),
                None => "runtime options (the runtime's `options` table)".to_string(),
            })
        }
        other => {
            bail!("runtime options of type {other:?} are not understood (use {GENERIC_OPTIONS} or {RUNC_OPTIONS})")
        }
    }
}

/// `config_path` (field 2) and `config_body` (field 3) of a
/// `runtimeoptions.v1.Options`; its `type_url` (field 1) only names the
/// format of the body, which is TOML either way.
fn generic(value: &[u8]) -> Result<(String, Vec<u8>)> {
    let mut is = CodedInputStream::from_bytes(value);
    let (mut path, mut body) = (String::new(), Vec::new());
    let bad = |e| anyhow::anyhow!("decoding runtime options {GENERIC_OPTIONS}: {e}");
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(bad)? {
        match (tag >> 3, tag & 7) {
            (2, 2) => path = is.read_string().map_err(bad)?,
            (3, 2) => body = is.read_bytes().map_err(bad)?,
            (_, wire) => {
                let wire = containerd_shim::protos::protobuf::rt::WireType::new(wire)
                    .ok_or_else(|| anyhow::anyhow!("decoding runtime options {GENERIC_OPTIONS}: wire type {wire}"))?;
                is.skip_field(wire).map_err(bad)?;
            }
        }
    }
    Ok((path, body))
}

fn from_toml(text: &str) -> Result<RuntimeOptions> {
    let table: toml::Table = text.parse().context("not TOML")?;
    let mut opts = RuntimeOptions::default();
    for (key, value) in table {
        match key.as_str() {
            "ShimCgroup" => {
                let s = value.as_str().with_context(|| format!("ShimCgroup must be a string, not {value}"))?;
                opts.shim_cgroup = Some(s.to_string()).filter(|s| !s.is_empty());
            }
            "ConfigPath" => {
                let s = value.as_str().with_context(|| format!("ConfigPath must be a string, not {value}"))?;
                if !s.starts_with('/') {
                    bail!("ConfigPath {s:?} must be an absolute path");
                }
                opts.config_path = Some(s.to_string());
            }
            "SystemdCgroup" if value.is_bool() => {}
            other => bail!("option {other:?} is not supported by this runtime (it takes ShimCgroup and ConfigPath)"),
        }
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Vec<u8> {
        Any { type_url: type_url.into(), value, ..Default::default() }.write_to_bytes().unwrap()
    }

    /// A `runtimeoptions.v1.Options` with `config_path` and `config_body`.
    fn generic_value(path: &str, body: &str) -> Vec<u8> {
        let mut v = Vec::new();
        let mut os = containerd_shim::protos::protobuf::CodedOutputStream::vec(&mut v);
        os.write_string(1, "io.containerd.wasmbox.v1.options").unwrap();
        if !path.is_empty() {
            os.write_string(2, path).unwrap();
        }
        if !body.is_empty() {
            os.write_bytes(3, body.as_bytes()).unwrap();
        }
        os.flush().unwrap();
        drop(os);
        v
    }

    #[test]
    fn no_options() {
        assert_eq!(parse(b"").unwrap(), RuntimeOptions::default());
    }

    #[test]
    fn runc_options() {
        let o = containerd_shim::api::Options { shim_cgroup: "/shims".into(), ..Default::default() };
        let input = any("containerd.runc.v1.Options", o.write_to_bytes().unwrap());
        assert_eq!(parse(&input).unwrap().shim_cgroup.as_deref(), Some("/shims"));
    }

    #[test]
    fn cri_options_table() {
        let input = any(GENERIC_OPTIONS, generic_value("", "ShimCgroup = \"/pods/shims\"\nSystemdCgroup = true\n"));
        assert_eq!(parse(&input).unwrap().shim_cgroup.as_deref(), Some("/pods/shims"));
        let input = any(GENERIC_OPTIONS, generic_value("", "ConfigPath = \"/etc/wasmbox/fast.toml\"\n"));
        assert_eq!(parse(&input).unwrap().config_path.as_deref(), Some("/etc/wasmbox/fast.toml"));
        let input = any(GENERIC_OPTIONS, generic_value("", "ConfigPath = \"fast.toml\"\n"));
        assert!(format!("{:#}", parse(&input).unwrap_err()).contains("absolute"));
    }

    #[test]
    fn options_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("opts.toml");
        std::fs::write(&f, "ShimCgroup = \"/x\"\n").unwrap();
        let input = any(GENERIC_OPTIONS, generic_value(f.to_str().unwrap(), ""));
        assert_eq!(parse(&input).unwrap().shim_cgroup.as_deref(), Some("/x"));
        let missing = any(GENERIC_OPTIONS, generic_value("/nonexistent/opts.toml", ""));
        assert!(format!("{:#}", parse(&missing).unwrap_err()).contains("/nonexistent/opts.toml"));
    }

    #[test]
    fn bad_options_are_named() {
        let input = any(GENERIC_OPTIONS, generic_value("", "BinaryName = \"crun\"\n"));
        assert!(format!("{:#}", parse(&input).unwrap_err()).contains("\"BinaryName\" is not supported"));
        let input = any(GENERIC_OPTIONS, generic_value("", "ShimCgroup = 3\n"));
        assert!(format!("{:#}", parse(&input).unwrap_err()).contains("ShimCgroup must be a string"));
        let input = any("example.Other", vec![]);
        assert!(format!("{:#}", parse(&input).unwrap_err()).contains("\"example.Other\" are not understood"));
    }
}
