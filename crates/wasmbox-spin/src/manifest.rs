//! `spin.toml`, manifest version 2, read into an [`App`] and checked: every
//! error names the manifest, the field (`component.cart.files[1]`) and the
//! reason. A field wasmbox does not know is refused with the known names
//! of its table (a typo would otherwise be silently ignored); a field it
//! knows but cannot honour yet is refused as not supported.

use crate::route::{HttpTrigger, Pattern, Target};
use std::collections::BTreeMap;
use toml::{Table, Value};
use wasmbox_spec::{Error, Result};

/// An application variable (`[variables]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Variable {
    pub default: Option<String>,
    pub required: bool,
    /// Never logged nor shown in errors.
    pub secret: bool,
}

/// A directory granted to a component (`files`), read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// Relative to the manifest's directory.
    pub source: String,
    /// Absolute, where the component sees it.
    pub destination: String,
}

/// One component (`[component.ID]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Component {
    pub id: String,
    /// The wasm, relative to the manifest's directory.
    pub source: String,
    pub files: Vec<Files>,
    pub environment: BTreeMap<String, String>,
    pub allowed_outbound_hosts: Vec<String>,
    pub key_value_stores: Vec<String>,
    /// Component variables: name to a template over app variables.
    pub variables: BTreeMap<String, String>,
}

/// A Spin application.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct App {
    /// The manifest's path in the image (errors name it).
    pub manifest_guest: String,
    pub name: String,
    pub version: Option<String>,
    pub variables: BTreeMap<String, Variable>,
    /// By id, in the manifest's order of ids (sorted).
    pub components: BTreeMap<String, Component>,
    pub http: Vec<HttpTrigger>,
}

/// Where a value was found, for errors: `component.cart.files[1]`.
fn at(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

struct Reader<'a> {
    manifest: &'a str,
}

impl Reader<'_> {
    fn bad(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument { what: format!("{} field {field}", self.manifest), reason: reason.into() }
    }

    fn unsupported(&self, field: &str, what: &str) -> Error {
        Error::Unsupported(format!("{} field {field}: {what} is not supported by wasmbox yet", self.manifest))
    }

    /// Refuses keys of `table` outside `known`.
    fn only(&self, path: &str, table: &Table, known: &[&str]) -> Result<()> {
        match table.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(self.bad(
                &at(path, k),
                format!(
                    "unknown field; {} knows {}",
                    if path.is_empty() { "the manifest" } else { path },
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    fn string(&self, path: &str, v: &Value) -> Result<String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.bad(path, format!("expected a string, found {}", v.type_str())))
    }

    fn opt_string(&self, path: &str, table: &Table, key: &str) -> Result<Option<String>> {
        table.get(key).map(|v| self.string(&at(path, key), v)).transpose()
    }

    fn bool(&self, path: &str, table: &Table, key: &str) -> Result<bool> {
        match table.get(key) {
            None => Ok(false),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(v) => Err(self.bad(&at(path, key), format!("expected true or false, found {}", v.type_str()))),
        }
    }

    fn table<'v>(&self, path: &str, v: &'v Value) -> Result<&'v Table> {
        v.as_table().ok_or_else(|| self.bad(path, format!("expected a table, found {}", v.type_str())))
    }

    fn strings(&self, path: &str, table: &Table, key: &str) -> Result<Vec<String>> {
        let path = at(path, key);
        match table.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => {
                a.iter().enumerate().map(|(i, v)| self.string(&format!("{path}[{i}]"), v)).collect()
            }
            Some(v) => Err(self.bad(&path, format!("expected an array of strings, found {}", v.type_str()))),
        }
    }

    fn string_map(&self, path: &str, table: &Table, key: &str) -> Result<BTreeMap<String, String>> {
        let path = at(path, key);
        let Some(v) = table.get(key) else { return Ok(BTreeMap::new()) };
        self.table(&path, v)?.iter().map(|(k, v)| Ok((k.clone(), self.string(&at(&path, k), v)?))).collect()
    }
}

/// A Spin name: lowercase letters, digits, `-` (kebab-case ids) or `_`
/// (variable names), starting with a letter.
fn valid_name(name: &str, sep: char) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == sep)
        && !name.ends_with(sep)
        && !name.contains(&format!("{sep}{sep}"))
}

impl App {
    /// Reads the manifest `text`, found at `manifest_guest` in the image.
    pub fn parse(manifest_guest: &str, text: &str) -> Result<App> {
        let r = Reader { manifest: manifest_guest };
        let doc: Table = text.parse().map_err(|e: toml::de::Error| Error::InvalidArgument {
            what: manifest_guest.to_string(),
            reason: format!("not valid TOML: {}", e.to_string().trim_end()),
        })?;
        match doc.get("spin_manifest_version") {
            Some(Value::Integer(2)) => {}
            Some(Value::String(s)) if s == "1" => {
                return Err(r.unsupported(
                    "spin_manifest_version",
                    "manifest version 1 (Spin 1.x; `spin doctor` upgrades it to version 2)",
                ))
            }
            Some(v) => return Err(r.bad("spin_manifest_version", format!("expected 2, found {v}"))),
            None => {
                return Err(
                    r.bad("spin_manifest_version", "missing; a Spin 2 or 3 manifest says spin_manifest_version = 2")
                )
            }
        }
        r.only("", &doc, &["spin_manifest_version", "application", "variables", "trigger", "component"])?;
        let mut app = App { manifest_guest: manifest_guest.to_string(), ..App::default() };

        let application =
            r.table("application", doc.get("application").ok_or_else(|| r.bad("application", "missing"))?)?;
        r.only("application", application, &["name", "version", "description", "authors", "trigger", "targets"])?;
        app.name =
            r.opt_string("application", application, "name")?.ok_or_else(|| r.bad("application.name", "missing"))?;
        app.version = r.opt_string("application", application, "version")?;
        if let Some(t) = application.get("trigger") {
            let t = r.table("application.trigger", t)?;
            if let Some(k) = t.keys().find(|k| *k != "http") {
                return Err(r.unsupported(&at("application.trigger", k), &format!("the {k} trigger")));
            }
        }

        if let Some(v) = doc.get("variables") {
            for (name, v) in r.table("variables", v)? {
                let path = at("variables", name);
                if !valid_name(name, '_') {
                    return Err(r.bad(
                        &path,
                        "a variable name is lowercase letters, digits and single underscores, starting with a letter",
                    ));
                }
                let t = r.table(&path, v)?;
                r.only(&path, t, &["default", "required", "secret", "description"])?;
                let var = Variable {
                    default: r.opt_string(&path, t, "default")?,
                    required: r.bool(&path, t, "required")?,
                    secret: r.bool(&path, t, "secret")?,
                };
                match (&var.default, var.required) {
                    (Some(_), true) => return Err(r.bad(&path, "a required variable has no default")),
                    (None, false) => return Err(r.bad(&path, "give it a default or mark it required = true")),
                    _ => {}
                }
                app.variables.insert(name.clone(), var);
            }
        }

        if let Some(v) = doc.get("component") {
            for (id, v) in r.table("component", v)? {
                let c = r.component(&at("component", id), id, v)?;
                app.components.insert(id.clone(), c);
            }
        }

        let triggers = r.table(
            "trigger",
            doc.get("trigger").ok_or_else(|| r.bad("trigger", "missing; an app needs a [[trigger.http]]"))?,
        )?;
        let mut inline = 0;
        for (kind, list) in triggers {
            if kind != "http" {
                return Err(r.unsupported(&at("trigger", kind), &format!("the {kind} trigger (only http is)")));
            }
            let Value::Array(list) = list else {
                return Err(r.bad("trigger.http", "expected an array of tables ([[trigger.http]])"));
            };
            for (i, t) in list.iter().enumerate() {
                let path = format!("trigger.http[{i}]");
                let t = r.table(&path, t)?;
                r.only(&path, t, &["route", "component", "executor", "static_response", "id"])?;
                let route = match t.get("route") {
                    None => return Err(r.bad(&at(&path, "route"), "missing")),
                    Some(Value::String(s)) => {
                        Some(Pattern::parse(s).map_err(|reason| r.bad(&at(&path, "route"), reason))?)
                    }
                    Some(Value::Table(p)) if p.get("private") == Some(&Value::Boolean(true)) && p.len() == 1 => None,
                    Some(v) => {
                        return Err(
                            r.bad(&at(&path, "route"), format!("expected a route or {{ private = true }}, found {v}"))
                        )
                    }
                };
                if let Some(e) = t.get("executor") {
                    let e = r.table(&at(&path, "executor"), e)?;
                    match e.get("type").and_then(Value::as_str) {
                        Some("spin") if e.len() == 1 => {}
                        Some("wagi") => return Err(r.unsupported(&at(&path, "executor"), "the Wagi executor")),
                        _ => return Err(r.bad(&at(&path, "executor"), "expected { type = \"spin\" }")),
                    }
                }
                let target = match (t.get("component"), t.get("static_response")) {
                    (Some(_), Some(_)) => return Err(r.bad(&path, "has both component and static_response")),
                    (None, None) => return Err(r.bad(&at(&path, "component"), "missing")),
                    (Some(Value::String(id)), None) => {
                        if !app.components.contains_key(id) {
                            let known: Vec<&str> = app.components.keys().map(String::as_str).collect();
                            return Err(r.bad(
                                &at(&path, "component"),
                                format!(
                                    "no component {id:?} (the manifest has: {})",
                                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                                ),
                            ));
                        }
                        Target::Component(id.clone())
                    }
                    (Some(v @ Value::Table(_)), None) => {
                        // An inline component gets a name of its own.
                        inline += 1;
                        let id = format!("inline-component{inline}");
                        let c = r.component(&at(&path, "component"), &id, v)?;
                        app.components.insert(id.clone(), c);
                        Target::Component(id)
                    }
                    (Some(v), None) => {
                        return Err(r.bad(
                            &at(&path, "component"),
                            format!("expected a component id or table, found {}", v.type_str()),
                        ))
                    }
                    (None, Some(s)) => r.static_response(&at(&path, "static_response"), s)?,
                };
                app.http.push(HttpTrigger { route, target });
            }
        }
        if app.http.is_empty() {
            return Err(r.bad("trigger.http", "no HTTP trigger: nothing to serve"));
        }
        // A component no trigger uses is loaded by nobody: say so rather
        // than compile it for nothing.
        for id in app.components.keys() {
            if !app.http.iter().any(|t| t.target == Target::Component(id.clone())) {
                return Err(r.bad(&at("component", id), "no trigger runs this component"));
            }
        }
        crate::route::Router::new(&app.http).map_err(|reason| r.bad("trigger.http", reason))?;
        Ok(app)
    }

    /// `path` (relative to the manifest's directory, or absolute) as a
    /// path in the image.
    pub fn guest_path(&self, path: &str) -> String {
        if path.starts_with('/') {
            return path.to_string();
        }
        let dir = self.manifest_guest.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        format!("{dir}/{}", path.trim_start_matches("./"))
    }
}

impl Reader<'_> {
    fn component(&self, path: &str, id: &str, v: &Value) -> Result<Component> {
        if !valid_name(id, '-') {
            return Err(self.bad(
                path,
                "a component id is kebab-case: lowercase letters, digits and single hyphens, starting with a letter",
            ));
        }
        let t = self.table(path, v)?;
        self.only(
            path,
            t,
            &[
                "source",
                "description",
                "files",
                "exclude_files",
                "allowed_http_hosts",
                "allowed_outbound_hosts",
                "key_value_stores",
                "sqlite_databases",
                "ai_models",
                "environment",
                "build",
                "variables",
                "dependencies",
                "dependencies_inherit_configuration",
                "tool",
            ],
        )?;
        for (key, what) in [
            ("sqlite_databases", "SQLite databases"),
            ("ai_models", "AI models"),
            ("dependencies", "component dependencies"),
            ("exclude_files", "exclude_files"),
        ] {
            if t.get(key).is_some_and(|v| {
                v.as_array().is_none_or(|a| !a.is_empty()) && v.as_table().is_none_or(|t| !t.is_empty())
            }) {
                return Err(self.unsupported(&at(path, key), what));
            }
        }
        let source = match t.get("source") {
            None => return Err(self.bad(&at(path, "source"), "missing")),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Table(_)) => {
                return Err(self
                    .unsupported(&at(path, "source"), "a source by URL or registry (package the wasm in the image)"))
            }
            Some(v) => return Err(self.bad(&at(path, "source"), format!("expected the wasm's path, found {v}"))),
        };
        let mut files = Vec::new();
        if let Some(v) = t.get("files") {
            let Value::Array(list) = v else {
                return Err(self.bad(&at(path, "files"), format!("expected an array, found {}", v.type_str())));
            };
            for (i, f) in list.iter().enumerate() {
                let fp = format!("{}[{i}]", at(path, "files"));
                files.push(match f {
                    Value::String(s) => {
                        if s.contains(['*', '?', '[']) {
                            return Err(self.unsupported(&fp, &format!("the glob pattern {s:?} (name a directory, or {{ source = DIR, destination = PATH }})")));
                        }
                        let rel = s.trim_start_matches("./").trim_end_matches('/');
                        Files { source: rel.to_string(), destination: format!("/{rel}") }
                    }
                    Value::Table(ft) => {
                        self.only(&fp, ft, &["source", "destination"])?;
                        let source = self.opt_string(&fp, ft, "source")?.ok_or_else(|| self.bad(&at(&fp, "source"), "missing"))?;
                        let destination = self.opt_string(&fp, ft, "destination")?.ok_or_else(|| self.bad(&at(&fp, "destination"), "missing"))?;
                        if !destination.starts_with('/') {
                            return Err(self.bad(&at(&fp, "destination"), "must be an absolute path"));
                        }
                        Files { source, destination }
                    }
                    v => return Err(self.bad(&fp, format!("expected a path or {{ source, destination }}, found {}", v.type_str()))),
                });
            }
            for f in &files {
                if f.destination.split('/').any(|s| s == "..") || f.source.split('/').any(|s| s == "..") {
                    return Err(self.bad(
                        &at(path, "files"),
                        format!("{:?} -> {:?}: '..' is not allowed", f.source, f.destination),
                    ));
                }
            }
        }
        let mut allowed_outbound_hosts = self.strings(path, t, "allowed_outbound_hosts")?;
        // Version 1's name for HTTP hosts: `host[:port]`, meaning http and https.
        for h in self.strings(path, t, "allowed_http_hosts")? {
            if h == "insecure:allow-all" {
                allowed_outbound_hosts.push("*://*:*".into());
            } else {
                allowed_outbound_hosts.push(format!("http://{h}"));
                allowed_outbound_hosts.push(format!("https://{h}"));
            }
        }
        let key_value_stores = self.strings(path, t, "key_value_stores")?;
        if !key_value_stores.is_empty() {
            return Err(self.unsupported(&at(path, "key_value_stores"), "key-value storage"));
        }
        let environment = self.string_map(path, t, "environment")?;
        let variables = self.string_map(path, t, "variables")?;
        for name in variables.keys() {
            if !valid_name(name, '_') {
                return Err(self.bad(
                    &at(&at(path, "variables"), name),
                    "a variable name is lowercase letters, digits and single underscores, starting with a letter",
                ));
            }
        }
        Ok(Component {
            id: id.to_string(),
            source,
            files,
            environment,
            allowed_outbound_hosts,
            key_value_stores,
            variables,
        })
    }

    fn static_response(&self, path: &str, v: &Value) -> Result<Target> {
        let t = self.table(path, v)?;
        self.only(path, t, &["status_code", "headers", "body"])?;
        let status = match t.get("status_code") {
            None => 200,
            Some(Value::Integer(n)) if (100..=599).contains(n) => *n as u16,
            Some(v) => {
                return Err(self.bad(&at(path, "status_code"), format!("expected an HTTP status (100-599), found {v}")))
            }
        };
        let headers = self.string_map(path, t, "headers")?.into_iter().collect();
        let body = self.opt_string(path, t, "body")?.unwrap_or_default();
        Ok(Target::Static { status, headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = r#"
spin_manifest_version = 2

[application]
name = "shop"
version = "1.0.0"
authors = ["someone"]

[variables]
api_host = { default = "api.example.com" }
token = { required = true, secret = true }

[[trigger.http]]
route = "/cart/..."
component = "cart"

[[trigger.http]]
route = "/users/:id"
component = { source = "users.wasm" }

[[trigger.http]]
route = { private = true }
component = "internal"

[[trigger.http]]
route = "/old"
static_response = { status_code = 302, headers = { location = "/cart" } }

[component.cart]
source = "target/cart.wasm"
files = ["static", { source = "assets", destination = "/data" }]
allowed_outbound_hosts = ["https://{{ api_host }}"]
environment = { MODE = "test" }
[component.cart.variables]
url = "https://{{ api_host }}/v1"
[component.cart.build]
command = "cargo build"

[component.internal]
source = "/abs/internal.wasm"
"#;

    #[test]
    fn reads_an_app() {
        let app = App::parse("/app/spin.toml", APP).unwrap();
        assert_eq!(app.name, "shop");
        assert_eq!(app.variables["token"], Variable { default: None, required: true, secret: true });
        assert_eq!(app.components.len(), 3);
        let cart = &app.components["cart"];
        assert_eq!(app.guest_path(&cart.source), "/app/target/cart.wasm");
        assert_eq!(cart.files[0], Files { source: "static".into(), destination: "/static".into() });
        assert_eq!(cart.files[1], Files { source: "assets".into(), destination: "/data".into() });
        assert_eq!(cart.environment["MODE"], "test");
        assert_eq!(app.guest_path(&app.components["internal"].source), "/abs/internal.wasm");
        assert_eq!(app.components["inline-component1"].source, "users.wasm");
        assert_eq!(app.http.len(), 4);
        assert_eq!(app.http[2].route, None);
        assert!(
            matches!(&app.http[3].target, Target::Static { status: 302, headers, .. } if headers[0] == ("location".into(), "/cart".into()))
        );
    }

    fn err(text: &str) -> String {
        App::parse("/spin.toml", text).unwrap_err().to_string()
    }

    fn with(extra: &str) -> String {
        format!("spin_manifest_version = 2\n[application]\nname = \"a\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\n{extra}")
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err("spin_manifest_version = \"1\"").contains("version 1"));
        assert!(err("x = ").contains("not valid TOML"));
        let e = err(&with("flies = [\"static\"]"));
        assert!(e.contains("component.c.flies") && e.contains("unknown field") && e.contains("files"), "{e}");
        let e = err(&with("key_value_stores = [\"default\"]"));
        assert!(e.contains("component.c.key_value_stores") && e.contains("not supported"), "{e}");
        let e = err(&with("files = [\"static/*.css\"]"));
        assert!(e.contains("component.c.files[0]") && e.contains("glob"), "{e}");
        let e = err(&with("source2 = 1"));
        assert!(e.contains("component.c.source2"), "{e}");
        let e = err(&with("[variables]\nx = {}"));
        assert!(e.contains("variables.x") && e.contains("default"), "{e}");
        let e = err(&with("[[trigger.http]]\nroute = \"/x\"\ncomponent = \"nope\""));
        assert!(e.contains("trigger.http[1].component") && e.contains("\"nope\"") && e.contains("c"), "{e}");
        let e = err(&with("[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\""));
        assert!(e.contains("trigger.http") && e.contains("/..."), "{e}");
        let e = err(&with("[[trigger.redis]]\nchannel = \"x\"\ncomponent = \"c\""));
        assert!(e.contains("trigger.redis") && e.contains("not supported"), "{e}");
        let e = err(&with("[component.d]\nsource = \"d.wasm\""));
        assert!(e.contains("component.d") && e.contains("no trigger"), "{e}");
        let e = err(&with("[component.Bad_Id]\nsource = \"d.wasm\""));
        assert!(e.contains("component.Bad_Id") && e.contains("kebab-case"), "{e}");
        let e = err(&with("files = [{ source = \"../etc\", destination = \"/etc\" }]"));
        assert!(e.contains("'..'"), "{e}");
    }
}
