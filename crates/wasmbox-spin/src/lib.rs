//! Spin applications as containers: a `spin.toml` (manifest version 2) in
//! the image is read and checked ([`manifest`]), its HTTP trigger becomes a
//! route table that also yields the headers Spin gives a component
//! ([`route`]), its variables are resolved from the manifest's defaults and
//! the container's environment ([`vars`]), and each component gets a plan
//! of its own from the container's ([`component_plans`]): its wasm, files,
//! environment and outbound allow-list.
//!
//! Must not depend on wasmtime, containment or containerd: it reads the
//! manifest and files of the rootfs, and the engine serves what it plans.

pub mod manifest;
pub mod route;
pub mod vars;

pub use manifest::{App, Component};
pub use route::{HttpTrigger, Match, Router, Target};
pub use vars::Variables;

use std::path::{Path, PathBuf};
use wasmbox_spec::annotations::ALLOWED_OUTBOUND_HOSTS;
use wasmbox_spec::{Error, Plan, Preopen, Result};

/// Where the Spin shim and SpinKube make an app listen: every address, port
/// 80 (the container's `SPIN_HTTP_LISTEN_ADDR` or our annotation say otherwise).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:80";
/// The environment variable the Spin shim reads the listen address from.
pub const LISTEN_ENV: &str = "SPIN_HTTP_LISTEN_ADDR";
/// Prefix of the environment variables that set application variables
/// (`SPIN_VARIABLE_API_HOST` sets `api_host`), as in the Spin shim.
pub const VARIABLE_ENV_PREFIX: &str = "SPIN_VARIABLE_";

/// One component of an app, ready for the engine: its plan (wasm, args,
/// environment, files, allow-list) and its resolved variables.
#[derive(Debug, Clone)]
pub struct ComponentPlan {
    pub id: String,
    pub plan: Plan,
    /// The component's variables (`[component.ID.variables]`), resolved.
    pub variables: Variables,
}

/// The app's components' plans, in the manifest's order of components,
/// derived from the container's `plan`: each gets the container's
/// environment (less `SPIN_VARIABLE_*`) and then its own `environment`,
/// its own `files` (read-only) and the container's volumes, and its own
/// `allowed_outbound_hosts` unless the container's annotation sets one
/// list for all. `rootfs` is the host directory of the image's root; the
/// manifest's paths resolve inside it.
pub fn component_plans(app: &App, plan: &Plan, rootfs: &Path) -> Result<Vec<ComponentPlan>> {
    let vars = vars::resolve_app(app, &plan.env)?;
    let mut out = Vec::new();
    for c in app.components.values() {
        let field = |f: &str| format!("component.{}.{f}", c.id);
        let guest_source = app.guest_path(&c.source);
        let wasm = wasmbox_spec::plan::resolve_in_root(rootfs, &guest_source)?;
        if !wasm.is_file() {
            return Err(Error::InvalidArgument {
                what: format!("{} {}", app.manifest_guest, field("source")),
                reason: format!("{guest_source} is not a file in the image"),
            });
        }
        let mut env: Vec<(String, String)> =
            plan.env.iter().filter(|(k, _)| !k.starts_with(VARIABLE_ENV_PREFIX)).cloned().collect();
        for (k, v) in &c.environment {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let mut preopens: Vec<Preopen> = Vec::new();
        for (i, f) in c.files.iter().enumerate() {
            let guest_source = app.guest_path(&f.source);
            let host = wasmbox_spec::plan::resolve_in_root(rootfs, &guest_source)?;
            if !host.is_dir() {
                return Err(Error::Unsupported(format!(
                    "{} {}[{i}]: {guest_source} is not a directory; wasmbox grants a component directories only (single files and glob patterns are not supported yet)",
                    app.manifest_guest,
                    field("files")
                )));
            }
            preopens.push(Preopen { host, guest: f.destination.clone(), readonly: true });
        }
        // The container's volumes (not its rootfs, which is the app's).
        preopens.extend(plan.preopens.iter().filter(|p| p.guest != "/").cloned());
        let mut annotations = plan.annotations.clone();
        if !annotations.contains_key(ALLOWED_OUTBOUND_HOSTS) {
            let hosts = c
                .allowed_outbound_hosts
                .iter()
                .map(|h| {
                    vars::expand(h, &vars).map_err(|reason| Error::InvalidArgument {
                        what: format!("{} {}", app.manifest_guest, field("allowed_outbound_hosts")),
                        reason,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            if !hosts.is_empty() {
                annotations.insert(ALLOWED_OUTBOUND_HOSTS.to_string(), hosts.join(","));
            }
        }
        let variables = vars::resolve_component(app, c, &vars)?;
        out.push(ComponentPlan {
            id: c.id.clone(),
            plan: Plan {
                wasm,
                export: None,
                args: vec![guest_source],
                env,
                cwd: "/".into(),
                preopens,
                file_mounts: Vec::new(),
                annotations,
                app: None,
            },
            variables,
        });
    }
    Ok(out)
}

/// Reads the app the container's plan names (see [`Plan::app`]).
pub fn load(plan: &Plan) -> Result<(App, PathBuf)> {
    let Some(app) = &plan.app else {
        return Err(Error::InvalidArgument { what: "the plan".into(), reason: "it names no Spin application".into() });
    };
    let text = std::fs::read_to_string(&app.manifest)
        .map_err(|e| Error::io(format!("reading {} ({})", app.guest, app.manifest.display()), e))?;
    Ok((App::parse(&app.guest, &text)?, app.rootfs.clone()))
}
