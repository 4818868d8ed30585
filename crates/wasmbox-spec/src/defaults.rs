//! A node's defaults for our annotations: `/etc/wasmbox/config.toml` (or
//! the file `$WASMBOX_CONFIG` names, which the runtime option `ConfigPath`
//! sets for one runtime handler), read by the shim at each Create.
//!
//! ```toml
//! [defaults]
//! compiler = "cranelift"
//! stack-size = "1Mi"
//! fuel = 5000000000
//! ```
//!
//! Each key of `[defaults]` is an annotation's name without `wasmbox.io/`;
//! its value (a string, a number or a boolean) is what a container gets
//! when its spec does not carry that annotation: a container's own
//! annotation always wins. Values are checked by the annotations' own
//! parsers, so a bad file fails every Create with an error naming the
//! file, the key and the reason; no file means no defaults. Annotations
//! that say what one container is (its handler, its listen addresses) have
//! no node default.
//!
//! The shim writes the defaults in force into the bundle
//! ([`BUNDLE_DEFAULTS`]) at Create, and [`crate::plan::load_spec`] adds
//! them to the spec it reads: a container keeps the defaults it was created
//! with through restarts and execs, whatever the file says later.

use crate::annotations::{self, HANDLER, HTTP_LISTEN, METRICS_LISTEN, PREFIX};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The node's defaults file.
pub const NODE_CONFIG: &str = "/etc/wasmbox/config.toml";

/// The environment variable that names another file (the shim's runtime
/// option `ConfigPath` sets it for its daemon).
pub const CONFIG_ENV: &str = "WASMBOX_CONFIG";

/// The bundle's copy of the defaults a container was created with (JSON:
/// annotation name to value).
pub const BUNDLE_DEFAULTS: &str = "wasmbox-defaults.json";

/// Annotations that describe one container and so have no node default.
const PER_CONTAINER: &[&str] = &[HANDLER, HTTP_LISTEN, METRICS_LISTEN];

/// The defaults file this process reads: `$WASMBOX_CONFIG`, else
/// [`NODE_CONFIG`].
pub fn path() -> PathBuf {
    std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| NODE_CONFIG.into())
}

/// The defaults in `file`, by full annotation name (none when the file does
/// not exist); an error names the file and what is wrong in it.
pub fn load(file: &Path) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(Error::io(format!("reading the node's wasmbox defaults {}", file.display()), e)),
    };
    parse(&text).map_err(|reason| Error::InvalidArgument { what: format!("node defaults {}", file.display()), reason })
}

/// One line on the defaults in `file`, for `wasmbox node check`: the file
/// and each default it sets; an error names the file and what is wrong in
/// it (the error every Create would fail with).
pub fn summary(file: &Path) -> Result<String> {
    let defaults = load(file)?;
    let set: Vec<String> =
        defaults.iter().map(|(k, v)| format!("{}={v}", k.strip_prefix(PREFIX).unwrap_or(k))).collect();
    Ok(match (set.is_empty(), file.exists()) {
        (true, false) => format!("{} absent: every setting has its built-in default", file.display()),
        (true, true) => format!("{}: no defaults set", file.display()),
        (false, _) => format!("{}: {}", file.display(), set.join(", ")),
    })
}

/// The defaults of a file's text, by full annotation name; the error says
/// what is wrong (without the file's name).
pub fn parse(text: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("not TOML: {e}"))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let toml::Value::Table(defaults) = value else {
            return Err(format!("{key:?} is not a table; the file holds a [defaults] table"));
        };
        if key != "defaults" {
            return Err(format!("[{key}] is not known; the file holds a [defaults] table"));
        }
        for (name, value) in defaults {
            let full = format!("{PREFIX}{name}");
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => return Err(format!("defaults.{name} = {other}: expected a string, a number or a boolean")),
            };
            if PER_CONTAINER.contains(&full.as_str()) {
                return Err(format!("defaults.{name}: {full} is a container's own; it has no node default"));
            }
            let one: HashMap<String, String> = [(full.clone(), value.clone())].into();
            annotations::check(Some(&one)).map_err(|e| format!("defaults.{name}: {e}"))?;
            out.insert(full, value);
        }
    }
    Ok(out)
}

/// Writes `defaults` into `bundle` for [`merge`] (nothing when there are
/// none).
pub fn snapshot(bundle: &Path, defaults: &BTreeMap<String, String>) -> Result<()> {
    if defaults.is_empty() {
        return Ok(());
    }
    let path = bundle.join(BUNDLE_DEFAULTS);
    let json = serde_json::to_vec(defaults).map_err(|e| Error::Unsupported(format!("encoding defaults: {e}")))?;
    std::fs::write(&path, json).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Adds the defaults the bundle was created with to `spec`'s annotations,
/// where the spec does not set them.
pub fn merge(bundle: &Path, spec: &mut oci_spec::runtime::Spec) -> Result<()> {
    let path = bundle.join(BUNDLE_DEFAULTS);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let defaults: BTreeMap<String, String> =
        serde_json::from_slice(&bytes).map_err(|e| Error::Spec { path: path.clone(), reason: e.to_string() })?;
    let mut all = spec.annotations().clone().unwrap_or_default();
    for (k, v) in defaults {
        all.entry(k).or_insert(v);
    }
    spec.set_annotations(Some(all));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_by_full_name() {
        let d = parse("[defaults]\ncompiler = \"winch\"\nfuel = 1000\nhttp-request-log = true\n").unwrap();
        assert_eq!(d["wasmbox.io/compiler"], "winch");
        assert_eq!(d["wasmbox.io/fuel"], "1000");
        assert_eq!(d["wasmbox.io/http-request-log"], "true");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, needles) in [
            ("[defaults]\ncompiler = \"v8\"\n", &["defaults.compiler", "v8", "auto"][..]),
            ("[defaults]\ncompiller = \"winch\"\n", &["defaults.compiller", "did you mean wasmbox.io/compiler"]),
            ("[defaults]\nhandler = \"wasm\"\n", &["defaults.handler", "no node default"]),
            ("[engine]\ncompiler = \"winch\"\n", &["[engine] is not known"]),
            ("compiler = \"winch\"\n", &["\"compiler\" is not a table"]),
            ("[defaults\n", &["not TOML"]),
            ("[defaults]\nfuel = 1.5\n", &["defaults.fuel", "expected a string"]),
        ] {
            let e = parse(text).unwrap_err();
            for n in needles {
                assert!(e.contains(n), "{text:?}: {e}");
            }
        }
    }

    #[test]
    fn a_missing_file_is_no_defaults_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(&dir.path().join("none.toml")).unwrap().is_empty());
        let f = dir.path().join("config.toml");
        std::fs::write(&f, "[defaults]\nstack-size = \"lots\"\n").unwrap();
        let e = load(&f).unwrap_err().to_string();
        assert!(e.contains(f.to_str().unwrap()) && e.contains("wasmbox.io/stack-size"), "{e}");
    }

    #[test]
    fn the_containers_own_annotation_wins() {
        let dir = tempfile::tempdir().unwrap();
        let d: BTreeMap<String, String> = [
            ("wasmbox.io/compiler".to_string(), "winch".to_string()),
            ("wasmbox.io/fuel".to_string(), "9".to_string()),
        ]
        .into();
        snapshot(dir.path(), &d).unwrap();
        let mut spec = oci_spec::runtime::Spec::default();
        spec.set_annotations(Some([("wasmbox.io/compiler".to_string(), "pulley".to_string())].into()));
        merge(dir.path(), &mut spec).unwrap();
        let a = spec.annotations().clone().unwrap();
        assert_eq!(a["wasmbox.io/compiler"], "pulley");
        assert_eq!(a["wasmbox.io/fuel"], "9");
    }
}
