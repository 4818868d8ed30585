//! The `wasmbox` runtime handler in one containerd configuration file:
//! found, added and taken out again with toml_edit, so that everything
//! else in the file (comments, order, quoting, indentation) stays as the
//! user wrote it.

use crate::error::Error;
use crate::RUNTIME_TYPE;
use std::path::Path;
use toml_edit::{Array, DocumentMut, Item, Table, Value};

/// The runtime's name: the CRI handler a RuntimeClass names.
pub const HANDLER: &str = "wasmbox";
/// Annotations CRI passes to the runtime (so pods can choose wasm or Linux
/// per container, with our names and runwasi's and crun's).
pub const PASSED_ANNOTATIONS: [&str; 3] = ["wasmbox.io/*", "module.wasm.image/*", "run.oci.handler"];
const RUNC_TYPE: &str = "io.containerd.runc.v2";
const COMMENT: &str = "added by `wasmbox node install`; `wasmbox node uninstall` removes it";
const RUNC_COMMENT: &str = "containerd 1.6 and 1.7 drop their built-in runc once runtimes are listed:\n\
`wasmbox node install` lists it, `wasmbox node uninstall` removes it";

/// The configuration's form: version 2 (containerd 1.6/1.7, read by 2.x
/// too) or version 3 (containerd 2.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    #[serde(rename = "2")]
    V2,
    #[serde(rename = "3")]
    V3,
}

impl Version {
    pub fn number(self) -> i64 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }

    pub fn from_number(n: i64) -> Option<Version> {
        match n {
            2 => Some(Version::V2),
            3 => Some(Version::V3),
            _ => None,
        }
    }

    /// The plugin holding CRI's runtimes.
    pub fn cri_plugin(self) -> &'static str {
        match self {
            Version::V2 => "io.containerd.grpc.v1.cri",
            Version::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    fn runtimes_path(self) -> [&'static str; 4] {
        ["plugins", self.cri_plugin(), "containerd", "runtimes"]
    }

    /// `plugins."PLUGIN".containerd.runtimes.NAME`, as a header names it.
    pub fn runtime_table(self, name: &str) -> String {
        format!("plugins.\"{}\".containerd.runtimes.{name}", self.cri_plugin())
    }
}

/// What a configuration has under the runtime name `wasmbox`.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Absent,
    /// Our runtime type with our annotations (other keys, such as
    /// `options`, are the user's and may be there).
    Ours,
    /// Something else, described.
    Other(String),
}

/// Whether a runc table goes with a runtimes table the installer creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runc {
    /// When the file's form is version 2 and it has no runtimes table
    /// (containerd 1.6/1.7 would lose their built-in runc).
    IfNoRuntimes,
    /// Never (another file lists the runtimes, or containerd 2.x keeps
    /// its runc).
    Never,
}

/// A file's kind: containerd's TOML, or a k3s/RKE2 template (Go's
/// text/template of TOML whose first line may be `{{ template "base" . }}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Toml,
    Template,
}

/// How to write the runtime into one file.
#[derive(Debug, Clone, Copy)]
pub struct Form {
    pub shape: Shape,
    /// The form a file without a `version` of its own gets (a new file, a
    /// template's body); a file with one keeps its own.
    pub version: Version,
    pub runc: Runc,
}

/// What the installer added to a file besides the runtime, so that it can
/// be taken out again when the file changed after the install.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Added {
    /// A `runc` runtime.
    pub runc: bool,
    /// The `version` line of a file that had none.
    pub version: bool,
}

/// The outcome of registering the runtime in a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Registration {
    /// The file has it already.
    Present,
    /// The file's new text, and the form the runtime was written in.
    Edit { text: String, added: Added, version: Version },
}

/// The first line k3s and RKE2 document for extending their own template.
pub const BASE_LINE: &str = "{{ template \"base\" . }}";

fn is_base_line(line: &str) -> bool {
    let squeezed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    let inner = squeezed.strip_prefix("{{").and_then(|s| s.strip_suffix("}}")).unwrap_or("");
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    inner == "template\"base\"."
}

/// A template split into its base line (with its line end) and the TOML
/// after it; anything else of Go's templates is refused.
fn split_template<'t>(text: &'t str, path: &Path) -> Result<(Option<&'t str>, &'t str), Error> {
    let first_end = text.find('\n').map_or(text.len(), |i| i + 1);
    let (base, body) =
        if is_base_line(&text[..first_end]) { (Some(&text[..first_end]), &text[first_end..]) } else { (None, text) };
    let offset = if base.is_some() { 2 } else { 1 };
    if let Some((n, line)) = body.lines().enumerate().find(|(_, l)| l.contains("{{")) {
        return Err(Error::unsupported(
            path,
            format!(
                "a template this installer does not understand: line {} has `{}`, and only a first line {BASE_LINE} \
                 followed by plain TOML is edited (Go template actions are not evaluated here); add the runtime by hand",
                n + offset,
                line.trim()
            ),
        ));
    }
    Ok((base, body))
}

/// Parses containerd's TOML, naming the file when it is not TOML.
pub fn parse(text: &str, path: &Path) -> Result<DocumentMut, Error> {
    text.parse::<DocumentMut>()
        .map_err(|e| Error::Unparsable { path: path.to_path_buf(), reason: e.to_string().trim().replace('\n', " ") })
}

/// The file's `version`, if it says.
pub fn version_of(doc: &DocumentMut) -> Option<i64> {
    doc.get("version").and_then(Item::as_integer)
}

fn strings(item: Option<&Item>) -> Option<Vec<String>> {
    let array = item?.as_array()?;
    let mut v: Vec<String> = array.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<_>>()?;
    v.sort();
    Some(v)
}

fn describe(item: &Item) -> String {
    match item.as_table_like() {
        Some(t) if t.is_empty() => "an empty table".to_string(),
        Some(t) => t
            .iter()
            .map(|(k, v)| match v {
                Item::Value(v) => format!("{k} = {}", v.to_string().trim()),
                _ => format!("{k} = {{...}}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => format!("not a table: {}", item.to_string().trim()),
    }
}

/// What `root` has at `plugins."CRI".containerd.runtimes.wasmbox` in the
/// given form.
pub fn find(root: &Item, version: Version) -> Found {
    let mut item = root;
    for key in version.runtimes_path().into_iter().chain([HANDLER]) {
        match item.get(key) {
            Some(next) => item = next,
            None => return Found::Absent,
        }
    }
    let mut passed: Vec<String> = PASSED_ANNOTATIONS.iter().map(|s| s.to_string()).collect();
    passed.sort();
    let ours = item.get("runtime_type").and_then(Item::as_str) == Some(RUNTIME_TYPE)
        && strings(item.get("pod_annotations")).as_ref() == Some(&passed)
        && strings(item.get("container_annotations")).as_ref() == Some(&passed);
    if ours {
        Found::Ours
    } else {
        Found::Other(describe(item))
    }
}

/// What a file other than the one being edited (an imported one, another
/// drop-in) has under either form's name.
pub fn find_in_file(text: &str, path: &Path) -> Result<Found, Error> {
    let doc = parse(text, path)?;
    let found = [Version::V2, Version::V3].map(|v| find(doc.as_item(), v));
    Ok(found
        .iter()
        .find(|f| matches!(f, Found::Other(_)))
        .or_else(|| found.iter().find(|f| **f == Found::Ours))
        .cloned()
        .unwrap_or(Found::Absent))
}

/// Whether `doc` configures the CRI plugin of this form at all (containerd
/// 1.x replaces a plugin's whole section with an imported file's).
pub fn has_cri_section(doc: &DocumentMut, version: Version) -> bool {
    doc.get("plugins").and_then(|p| p.get(version.cri_plugin())).is_some()
}

/// Whether `doc` lists CRI runtimes in this form.
pub fn has_runtimes(doc: &DocumentMut, version: Version) -> bool {
    let mut item = doc.as_item();
    for key in version.runtimes_path() {
        match item.get(key) {
            Some(next) => item = next,
            None => return false,
        }
    }
    true
}

/// The whitespace a line starts with, from a decor prefix (which may hold
/// blank lines and comments before it).
fn indent_of(prefix: Option<&str>) -> Option<String> {
    let p = prefix?;
    let last = p.rsplit('\n').next().unwrap_or(p);
    last.chars().all(|c| c == ' ' || c == '\t').then(|| last.to_string())
}

fn header_indent(t: &Table) -> Option<String> {
    indent_of(t.decor().prefix().and_then(|p| p.as_str()))
}

/// How a file indents its table headers: the deepest explicit table on
/// the way to the runtimes (its depth and indent) and the step per level
/// (0 for a file that does not indent headers).
#[derive(Debug, Clone, Default)]
struct Nesting {
    depth: usize,
    indent: String,
    step: usize,
}

impl Nesting {
    /// Takes `t`, at `depth`, into account if it is a table with a header.
    fn see(&mut self, t: &Table, depth: usize) {
        if t.is_implicit() || t.is_dotted() {
            return;
        }
        let Some(indent) = header_indent(t) else { return };
        let child = t
            .iter()
            .filter_map(|(_, v)| v.as_table())
            .filter(|c| !c.is_implicit() && !c.is_dotted())
            .find_map(header_indent)
            .filter(|c| c.len() > indent.len());
        let step = match child {
            Some(c) => c.len() - indent.len(),
            None if depth > 1 => indent.len() / (depth - 1),
            None => self.step,
        };
        *self = Nesting { depth, indent, step };
    }
}

/// Indentation of new tables (at depth 5, runtimes' children) and their
/// keys: copied from a runtime already there, else following how the file
/// indents by depth (containerd's own files do), else none.
fn style(runtimes: &Table, nesting: &Nesting) -> (String, String) {
    let sibling =
        runtimes.iter().filter_map(|(_, v)| v.as_table()).filter(|t| !t.is_dotted() && !t.is_implicit()).last();
    if let Some(s) = sibling {
        let header = header_indent(s).unwrap_or_default();
        let key = s
            .iter()
            .find_map(|(k, v)| v.is_value().then(|| s.key(k)).flatten())
            .and_then(|k| indent_of(k.leaf_decor().prefix().and_then(|p| p.as_str())))
            .unwrap_or_else(|| format!("{header}  "));
        return (header, key);
    }
    let header = if nesting.step == 0 {
        nesting.indent.clone()
    } else {
        format!("{}{}", nesting.indent, " ".repeat(nesting.step * (5 - nesting.depth.min(5))))
    };
    let key = format!("{header}{}", " ".repeat(nesting.step.max(2)));
    (header, key)
}

fn runtime(runtime_type: &str, annotations: bool, comment: &str, header: &str, key: &str) -> Table {
    let mut t = Table::new();
    let comment: String = comment.lines().map(|l| format!("{header}# {l}\n")).collect();
    t.decor_mut().set_prefix(format!("\n{comment}{header}"));
    t.insert("runtime_type", toml_edit::value(runtime_type));
    if annotations {
        for name in ["pod_annotations", "container_annotations"] {
            let passed: Array = PASSED_ANNOTATIONS.into_iter().collect();
            t.insert(name, toml_edit::value(passed));
        }
    }
    let keys: Vec<String> = t.iter().map(|(k, _)| k.to_string()).collect();
    for k in keys {
        if let Some(mut km) = t.key_mut(&k) {
            km.leaf_decor_mut().set_prefix(key.to_string());
        }
    }
    t
}

/// Adds the runtime (and a runc where `runc` says) to `doc` in the given
/// form; implicit parent tables add no headers of their own.
fn add(doc: &mut DocumentMut, version: Version, runc: Runc, path: &Path) -> Result<Added, Error> {
    let keys = version.runtimes_path();
    let mut table = doc.as_table_mut();
    let mut had_runtimes = true;
    let mut nesting = Nesting::default();
    for (n, key) in keys.iter().enumerate() {
        if !table.contains_key(key) {
            let mut t = Table::new();
            t.set_implicit(true);
            table.insert(key, Item::Table(t));
            had_runtimes = n + 1 < keys.len();
        }
        let dotted = || {
            keys[..=n]
                .iter()
                .map(|k| if k.contains('.') { format!("\"{k}\"") } else { k.to_string() })
                .collect::<Vec<_>>()
                .join(".")
        };
        table = match table.get_mut(key) {
            Some(Item::Table(t)) => t,
            Some(Item::Value(Value::InlineTable(_))) => {
                return Err(Error::unsupported(
                    path,
                    format!("`{}` is an inline table ({{ ... }}), which cannot be extended; add the wasmbox runtime to it by hand", dotted()),
                ))
            }
            Some(other) => {
                return Err(Error::unsupported(path, format!("`{}` is {}, not a table", dotted(), other.type_name())))
            }
            None => unreachable!("inserted above"),
        };
        nesting.see(table, n + 1);
    }
    let (header, key) = style(table, &nesting);
    let mut added = Added::default();
    if runc == Runc::IfNoRuntimes && version == Version::V2 && !had_runtimes && !table.contains_key("runc") {
        table.insert("runc", Item::Table(runtime(RUNC_TYPE, false, RUNC_COMMENT, &header, &key)));
        added.runc = true;
    }
    table.insert(HANDLER, Item::Table(runtime(RUNTIME_TYPE, true, COMMENT, &header, &key)));
    Ok(added)
}

/// Whether the document has no keys and no tables (empty, or comments).
pub fn is_blank(doc: &DocumentMut) -> bool {
    doc.as_table().is_empty()
}

/// A file's text as the installer would leave it: the runtime registered
/// in `text` (None: no such file yet).
pub fn register(text: Option<&str>, form: Form, path: &Path) -> Result<Registration, Error> {
    let text = text.unwrap_or("");
    let (base, body) = match form.shape {
        Shape::Template if text.is_empty() => (Some(concat!("{{ template \"base\" . }}", "\n")), ""),
        Shape::Template => split_template(text, path)?,
        Shape::Toml => (None, text),
    };
    let mut doc = parse(body, path)?;
    let mut added = Added::default();
    let (version, runc) = if base.is_some() {
        // The rendered file's version and runtimes are the base's.
        (form.version, Runc::Never)
    } else if is_blank(&doc) {
        (form.version, form.runc)
    } else {
        match version_of(&doc) {
            Some(n) => (
                Version::from_number(n).ok_or_else(|| {
                    Error::unsupported(
                        path,
                        format!("`version = {n}`: only containerd's configuration versions 2 and 3 are edited"),
                    )
                })?,
                form.runc,
            ),
            None => {
                return Err(Error::unsupported(
                    path,
                    "no `version` line, so containerd reads it as a version-1 configuration, whose plugin names \
                     differ (and containerd 2.x drops its runtimes); add `version = 2` at the top (containerd 1.6/1.7) \
                     or migrate it (`containerd config migrate`, 2.x), then install again",
                ))
            }
        }
    };
    match find(doc.as_item(), version) {
        Found::Ours => return Ok(Registration::Present),
        Found::Other(found) => return Err(Error::Conflict { path: path.to_path_buf(), found }),
        Found::Absent => {}
    }
    let fresh = base.is_none() && is_blank(&doc);
    if fresh {
        // A new file, or one of comments only: the user's text stays as
        // it is, the configuration follows it.
        let mut new = DocumentMut::new();
        new.insert("version", toml_edit::value(version.number()));
        added = add(&mut new, version, runc, path)?;
        added.version = true;
        let mut out = body.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out += &new.to_string();
        return Ok(Registration::Edit { text: out, added, version });
    }
    let extra = add(&mut doc, version, runc, path)?;
    added.runc = extra.runc;
    let mut out = String::new();
    if let Some(base) = base {
        out.push_str(base);
        if !base.ends_with('\n') {
            out.push('\n');
        }
    }
    out += &doc.to_string();
    Ok(Registration::Edit { text: out, added, version })
}

/// An implicit table holding nothing but such tables: it renders as nothing.
fn hollow(item: &Item) -> bool {
    item.as_table().is_some_and(|t| t.is_implicit() && t.iter().all(|(_, v)| hollow(v)))
}

/// `text` with the runtime (and what else `added` says) taken out again:
/// for a file that changed after the install. None when it is not there.
pub fn unregister(
    text: &str,
    shape: Shape,
    version: Version,
    added: Added,
    path: &Path,
) -> Result<Option<String>, Error> {
    let (base, body) = match shape {
        Shape::Template => split_template(text, path)?,
        Shape::Toml => (None, text),
    };
    let mut doc = parse(body, path)?;
    let version = version_of(&doc).and_then(Version::from_number).unwrap_or(version);
    if find(doc.as_item(), version) != Found::Ours {
        return Ok(None);
    }
    let mut table = doc.as_table_mut();
    for key in version.runtimes_path() {
        table = match table.get_mut(key).and_then(Item::as_table_mut) {
            Some(t) => t,
            None => return Ok(None),
        };
    }
    table.remove(HANDLER);
    if added.runc {
        let only_ours = table
            .get("runc")
            .and_then(Item::as_table)
            .is_some_and(|r| r.len() == 1 && r.get("runtime_type").and_then(Item::as_str) == Some(RUNC_TYPE));
        if only_ours {
            table.remove("runc");
        }
    }
    if added.version && doc.as_table().iter().all(|(k, v)| k == "version" || hollow(v)) {
        doc.remove("version");
    }
    let mut out = base.map(str::to_string).unwrap_or_default();
    out += &doc.to_string();
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(version: Version) -> Form {
        Form { shape: Shape::Toml, version, runc: Runc::IfNoRuntimes }
    }

    fn edit(text: &str, form: Form) -> (String, Added) {
        match register(Some(text), form, Path::new("test.toml")).unwrap() {
            Registration::Edit { text, added, .. } => (text, added),
            Registration::Present => panic!("already present"),
        }
    }

    #[test]
    fn a_bare_version_2_file_gets_runc_too_and_keeps_its_text() {
        let original = "# my node\nversion = 2\n\n[grpc]\n  address = \"/run/x.sock\" # not the default\n";
        let (text, added) = edit(original, form(Version::V2));
        assert!(added.runc && !added.version);
        assert!(text.starts_with(original), "{text}");
        let doc: DocumentMut = text.parse().unwrap();
        assert_eq!(find(doc.as_item(), Version::V2), Found::Ours);
        assert!(text.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\""), "{text}");
        assert!(
            !text.contains("[plugins]") && !text.contains("[plugins.\"io.containerd.grpc.v1.cri\"]\n"),
            "implicit tables got headers:\n{text}"
        );
        // Registered again: nothing to do.
        assert_eq!(register(Some(&text), form(Version::V2), Path::new("t")).unwrap(), Registration::Present);
        // Taken out: the original again.
        assert_eq!(unregister(&text, Shape::Toml, Version::V2, added, Path::new("t")).unwrap().unwrap(), original);
    }

    #[test]
    fn the_new_runtime_follows_the_last_one_with_its_indentation() {
        let original = "version = 3\n[plugins]\n  [plugins.'io.containerd.cri.v1.runtime']\n    [plugins.'io.containerd.cri.v1.runtime'.containerd]\n      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]\n        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n          runtime_type = 'io.containerd.runc.v2'\n          [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n            SystemdCgroup = false\n  [plugins.'io.containerd.gc.v1.scheduler']\n    pause_threshold = 0.02\n";
        let (text, added) = edit(original, form(Version::V3));
        assert_eq!(added, Added::default());
        let at = text.find("runtimes.wasmbox]").unwrap();
        assert!(at > text.find("runc.options]").unwrap() && at < text.find("gc.v1.scheduler").unwrap(), "{text}");
        assert!(text.contains("\n        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmbox]\n          runtime_type = \"io.containerd.wasmbox.v1\"\n"), "{text}");
    }

    #[test]
    fn refusals_name_the_file_and_why() {
        let p = Path::new("/etc/containerd/config.toml");
        let err = register(Some("version = 2\n[plugins\n"), form(Version::V2), p).unwrap_err();
        assert!(
            matches!(err, Error::Unparsable { .. }) && err.to_string().contains("/etc/containerd/config.toml"),
            "{err}"
        );
        let other = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmbox]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        let err = register(Some(other), form(Version::V2), p).unwrap_err();
        assert!(
            err.to_string().contains("already has a runtime named \"wasmbox\"")
                && err.to_string().contains("io.containerd.runc.v2"),
            "{err}"
        );
        let err = register(Some("[plugins.cri.containerd]\n  snapshotter = \"overlayfs\"\n"), form(Version::V2), p)
            .unwrap_err();
        assert!(err.to_string().contains("version-1"), "{err}");
        let inline = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes = { runc = { runtime_type = \"io.containerd.runc.v2\" } }\n";
        let err = register(Some(inline), form(Version::V2), p).unwrap_err();
        assert!(err.to_string().contains("inline table"), "{err}");
        let tmpl = Form { shape: Shape::Template, version: Version::V3, runc: Runc::Never };
        let err = register(Some("{{ template \"base\" . }}\n{{ if .NodeConfig.AgentConfig.Snapshotter }}\n"), tmpl, p)
            .unwrap_err();
        assert!(err.to_string().contains("line 2") && err.to_string().contains("does not understand"), "{err}");
    }

    #[test]
    fn templates_keep_their_base_line_and_get_no_runc() {
        let tmpl = Form { shape: Shape::Template, version: Version::V2, runc: Runc::IfNoRuntimes };
        let (text, added) = edit("", tmpl);
        assert_eq!(added, Added::default());
        assert!(text.starts_with("{{ template \"base\" . }}\n\n# added by"), "{text}");
        assert!(!text.contains("runtimes.runc"), "{text}");
        assert!(is_base_line("{{- template \"base\" . -}}\n") && !is_base_line("{{ template \"other\" . }}"));
    }

    #[test]
    fn an_empty_file_gets_a_version_and_its_comments_stay_first() {
        let (text, added) = edit("# nothing here yet\n", form(Version::V3));
        assert!(added.version && !added.runc);
        assert!(text.starts_with("# nothing here yet\n\nversion = 3\n"), "{text}");
        let back = unregister(&text, Shape::Toml, Version::V3, added, Path::new("t")).unwrap().unwrap();
        assert!(!back.contains("version") && !back.contains("wasmbox"), "{back}");
    }
}
