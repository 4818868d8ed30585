//! Application variables: each takes the container's `SPIN_VARIABLE_NAME`
//! (as the Spin shim reads them) or else the manifest's default; a
//! `required` one with neither fails Create naming every such variable.
//! Components see their own `[component.ID.variables]`, templates over the
//! app's (`"https://{{ api_host }}/v1"`). A `secret` value never appears in
//! an error or a log line.

use crate::manifest::{App, Component};
use crate::VARIABLE_ENV_PREFIX;
use std::collections::BTreeMap;
use wasmbox_spec::{Error, Result};

/// A resolved value, and whether it came from a secret variable.
#[derive(Clone, PartialEq, Eq)]
pub struct Value {
    pub value: String,
    pub secret: bool,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.secret {
            f.write_str("(secret)")
        } else {
            write!(f, "{:?}", self.value)
        }
    }
}

/// Variables by name.
pub type Variables = BTreeMap<String, Value>;

/// The app's variables, from `env` (the container's) and the defaults.
pub fn resolve_app(app: &App, env: &[(String, String)]) -> Result<Variables> {
    let mut out = Variables::new();
    let mut missing = Vec::new();
    for (name, var) in &app.variables {
        let key = format!("{VARIABLE_ENV_PREFIX}{}", name.to_ascii_uppercase());
        let from_env = env.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
        match from_env.or_else(|| var.default.clone()) {
            Some(value) => {
                out.insert(name.clone(), Value { value, secret: var.secret });
            }
            None => missing.push(format!("{name} (set {key} in the container's environment)")),
        }
    }
    if !missing.is_empty() {
        return Err(Error::InvalidArgument {
            what: format!("{} variables", app.manifest_guest),
            reason: format!("required variables have no value: {}", missing.join(", ")),
        });
    }
    Ok(out)
}

/// The component's variables, its templates expanded over `app_vars`; a
/// value is secret when any variable it uses is.
pub fn resolve_component(app: &App, c: &Component, app_vars: &Variables) -> Result<Variables> {
    let mut out = Variables::new();
    for (name, template) in &c.variables {
        let value = expand(template, app_vars).map_err(|reason| Error::InvalidArgument {
            what: format!("{} component.{}.variables.{name}", app.manifest_guest, c.id),
            reason,
        })?;
        let secret = used(template).iter().any(|u| app_vars.get(u).is_some_and(|v| v.secret));
        out.insert(name.clone(), Value { value, secret });
    }
    Ok(out)
}

/// The names a template uses.
fn used(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else { break };
        names.push(rest[start + 2..start + end].trim().to_string());
        rest = &rest[start + end + 2..];
    }
    names
}

/// `template` with each `{{ name }}` replaced by the variable's value.
pub fn expand(template: &str, vars: &Variables) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            return Err(format!("{template:?}: a '{{{{' is not closed by '}}}}'"));
        };
        let name = rest[start + 2..start + end].trim();
        match vars.get(name) {
            Some(v) => out.push_str(&v.value),
            None => {
                let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                return Err(format!(
                    "{{{{ {name} }}}} names no application variable (the manifest's [variables]: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ));
            }
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        App::parse(
            "/spin.toml",
            r#"spin_manifest_version = 2
[application]
name = "a"
[variables]
api_host = { default = "api.example.com" }
token = { required = true, secret = true }
port = { default = "443" }
[[trigger.http]]
route = "/..."
component = "c"
[component.c]
source = "c.wasm"
[component.c.variables]
url = "https://{{ api_host }}:{{port}}/v1"
auth = "Bearer {{ token }}"
"#,
        )
        .unwrap()
    }

    fn env(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn environment_overrides_defaults() {
        let app = app();
        let vars =
            resolve_app(&app, &env(&[("SPIN_VARIABLE_TOKEN", "s3cret"), ("SPIN_VARIABLE_PORT", "8443")])).unwrap();
        assert_eq!(vars["api_host"].value, "api.example.com");
        assert_eq!(vars["port"].value, "8443");
        let c = resolve_component(&app, &app.components["c"], &vars).unwrap();
        assert_eq!(c["url"].value, "https://api.example.com:8443/v1");
        assert!(!c["url"].secret);
        assert_eq!(c["auth"].value, "Bearer s3cret");
        assert!(c["auth"].secret);
        assert_eq!(format!("{:?}", c["auth"]), "(secret)");
    }

    #[test]
    fn missing_required_variables_are_named() {
        let e = resolve_app(&app(), &[]).unwrap_err().to_string();
        assert!(e.contains("token") && e.contains("SPIN_VARIABLE_TOKEN"), "{e}");
        let vars = resolve_app(&app(), &env(&[("SPIN_VARIABLE_TOKEN", "s3cret")])).unwrap();
        let e = expand("{{ nope }}", &vars).unwrap_err();
        assert!(e.contains("nope") && e.contains("api_host"), "{e}");
        assert!(!e.contains("s3cret"));
        assert!(expand("{{ token", &vars).unwrap_err().contains("not closed"));
    }
}
