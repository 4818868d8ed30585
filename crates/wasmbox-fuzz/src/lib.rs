//! The bodies of wasmbox's fuzz targets. Each takes the fuzzer's bytes to
//! one parser of untrusted input, the way the runtime meets that input, and
//! may return any error but must never panic or hang; they write only to
//! their scratch directory (see [`remove_scratch`]):
//!
//! | target | what it parses | where the input comes from |
//! | --- | --- | --- |
//! | `oci_spec` | a bundle's `config.json` to the plan, the limits, the isolation and the seccomp profile | containerd, from the image and the client |
//! | `annotations` | `wasmbox.io/` annotations, each setting's value, the engine's settings | pod specs, `ctr --annotation`, node defaults |
//! | `allow_list` | outbound rules (`wasmbox.io/allowed-outbound-hosts`) | pod specs |
//! | `image_reference` | an image reference | the CLI, manifests |
//! | `auth_challenge` | a registry's `WWW-Authenticate` values | any registry |
//! | `image_layout` | an OCI image-layout tarball (index, manifests, configs, blobs) | `wasmbox image push`/`inspect`, downloads |
//! | `content_manifest` | an image manifest, for its wasm layer | containerd's content store, registries |
//! | `node_defaults` | the node's `/etc/wasmbox/config.toml` | the node's operator |
//! | `wasm_describe` | a wasm binary's header, imports and exports | images |
//! | `spin_manifest` | a Spin app's `spin.toml`: fields, routes, variables and their templates, each component's plan | images |
//!
//! `fuzz/` (cargo-fuzz's layout) runs each under libFuzzer
//! (`scripts/fuzz.sh`); `tests/replay.rs` replays `fuzz/corpus/NAME/` as a
//! test, so every input that ever crashed a target stays fixed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A target's body: the fuzzer's bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target, by name (the name of its `fuzz/fuzz_targets/NAME.rs` and
/// `fuzz/corpus/NAME/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("oci_spec", oci_spec),
    ("annotations", annotations),
    ("allow_list", allow_list),
    ("image_reference", image_reference),
    ("auth_challenge", auth_challenge),
    ("image_layout", image_layout),
    ("content_manifest", content_manifest),
    ("node_defaults", node_defaults),
    ("wasm_describe", wasm_describe),
    ("spin_manifest", spin_manifest),
];

/// A scratch directory of this process's, made once: a bundle whose rootfs
/// holds `/app.wasm` and `/data/`, for the spec target, and where the
/// layout target writes its one file.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("wasmbox-fuzz-{}", std::process::id()));
        let rootfs = dir.join("bundle/rootfs");
        std::fs::create_dir_all(rootfs.join("data")).expect("a scratch directory");
        std::fs::write(rootfs.join("app.wasm"), b"\0asm\x01\0\0\0").expect("a scratch file");
        dir
    })
}

/// Removes the scratch directory (a fuzzing run leaves it in `/dev/shm`
/// as `wasmbox-fuzz-PID`; `scripts/fuzz.sh` removes those).
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(scratch());
}

/// Annotations from `key=value` lines (a line without `=` is a key with an
/// empty value).
fn key_values(data: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(data)
        .lines()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// The engine's readers of a workload's annotations.
fn engine_settings(ours: &BTreeMap<String, String>) {
    let _ = wasmbox_engine::tier::Settings::of(ours);
    let _ = wasmbox_engine::tuning::Tuning::of(ours);
    let _ = wasmbox_engine::proposals::Disabled::of(ours);
    let _ = wasmbox_engine::net::Policy::of(ours);
}

/// A bundle's `config.json`: what Create reads of it.
pub fn oci_spec(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(data) else { return };
    let bundle = scratch().join("bundle");
    let _ = wasmbox_spec::Workload::from_spec(&bundle, &bundle.join("config.json"), &spec);
    let _ = wasmbox_spec::Limits::from_spec(&spec);
    let _ = wasmbox_sandbox::isolation::Isolation::from_spec(&spec);
    if let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        let _ = wasmbox_sandbox::seccomp::check(seccomp);
    }
    if let Ok(ours) = wasmbox_spec::annotations::ours(spec.annotations().as_ref()) {
        engine_settings(&ours);
    }
}

/// Annotations as a container carries them, and each value through the
/// size and duration readers.
pub fn annotations(data: &[u8]) {
    let all = key_values(data);
    let _ = wasmbox_spec::annotations::check(Some(&all));
    for v in all.values() {
        let _ = wasmbox_spec::annotations::parse_bytes(v);
        let _ = wasmbox_spec::annotations::parse_duration(v);
    }
    if let Ok(ours) = wasmbox_spec::annotations::ours(Some(&all)) {
        engine_settings(&ours);
    }
}

pub fn allow_list(data: &[u8]) {
    let _ = wasmbox_engine::net::AllowList::parse(&String::from_utf8_lossy(data));
}

pub fn image_reference(data: &[u8]) {
    let _ = wasmbox_image::registry::Reference::parse(&String::from_utf8_lossy(data));
}

/// `WWW-Authenticate` values, one per line (a header each).
pub fn auth_challenge(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.lines().collect();
    let _ = wasmbox_image::registry::Challenge::parse(&values);
}

/// An image-layout tarball, as `wasmbox image inspect` reads one.
pub fn image_layout(data: &[u8]) {
    let path = scratch().join("layout.tar");
    if std::fs::write(&path, data).is_ok() {
        let _ = wasmbox_image::layout::inspect(&path);
    }
}

pub fn content_manifest(data: &[u8]) {
    let _ = wasmbox_spec::wasm::wasm_layer_of(data);
}

pub fn node_defaults(data: &[u8]) {
    let _ = wasmbox_spec::defaults::parse(&String::from_utf8_lossy(data));
}

pub fn wasm_describe(data: &[u8]) {
    let path = Path::new("/fuzz.wasm");
    let _ = wasmbox_spec::wasm::detect(path, data);
    let _ = wasmbox_spec::wasm::describe(path, data);
}

/// A Spin app's manifest, then the route table on paths of its own routes
/// and the components' plans (variables from the environment, templates,
/// files resolved in the scratch rootfs).
pub fn spin_manifest(data: &[u8]) {
    let Ok(app) = wasmbox_spin::App::parse("/spin.toml", &String::from_utf8_lossy(data)) else { return };
    if let Ok(router) = wasmbox_spin::Router::new(&app.http) {
        for t in &app.http {
            if let Some(p) = &t.route {
                let path = p.raw().replace("...", "a/b").replace(':', "");
                if let Some(m) = router.route(&path) {
                    let _ = m.headers("http://h/", None);
                }
            }
        }
    }
    let rootfs = scratch().join("bundle/rootfs");
    let plan = wasmbox_spec::Plan {
        wasm: rootfs.join("spin.toml"),
        export: None,
        args: vec!["/spin.toml".into()],
        env: vec![("SPIN_VARIABLE_X".into(), "x".into())],
        cwd: "/".into(),
        preopens: Vec::new(),
        file_mounts: Vec::new(),
        annotations: BTreeMap::new(),
        app: None,
    };
    let _ = wasmbox_spin::component_plans(&app, &plan, &rootfs);
}
