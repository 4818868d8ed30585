//! Which file of a node's containerd configuration gets the runtime, in
//! which form: containerd's own `config.toml` (edited in place, or a
//! drop-in beside it when it imports a directory), the templates k3s and
//! RKE2 render it from, MicroK8s's template, k0s's drop-in directory.

use crate::error::Error;
use crate::files;
use crate::handler::{self, Form, Runc, Shape, Version};
use std::path::{Path, PathBuf};
use std::process::Command;

/// containerd's own configuration.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// Where k3s writes containerd's configuration (and reads its templates).
pub const K3S_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd";
/// The same for RKE2.
pub const RKE2_DIR: &str = "/var/lib/rancher/rke2/agent/etc/containerd";
/// The template MicroK8s renders containerd's configuration from.
pub const MICROK8S_TEMPLATE: &str = "/var/snap/microk8s/current/args/containerd-template.toml";
/// The configuration k0s runs its containerd with (and manages while its
/// first line is `# k0s_managed=true`).
pub const K0S_CONFIG: &str = "/etc/k0s/containerd.toml";
const K0S_MARKER: &str = "# k0s_managed=true";
/// The name of the file of our own in a directory containerd imports.
pub const DROP_IN: &str = "wasmbox.toml";

/// The kinds of node the installer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Containerd,
    K3s,
    Rke2,
    MicroK8s,
    K0s,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Containerd => "containerd",
            Kind::K3s => "k3s",
            Kind::Rke2 => "RKE2",
            Kind::MicroK8s => "MicroK8s",
            Kind::K0s => "k0s",
        }
    }

    /// The systemd units that may run this containerd, likeliest first.
    pub fn units(self) -> &'static [&'static str] {
        match self {
            Kind::Containerd => &["containerd"],
            Kind::K3s => &["k3s", "k3s-agent"],
            Kind::Rke2 => &["rke2-server", "rke2-agent"],
            Kind::MicroK8s => &["snap.microk8s.daemon-containerd"],
            Kind::K0s => &["k0sworker", "k0scontroller"],
        }
    }

    fn socket(self) -> &'static str {
        match self {
            Kind::Containerd => "/run/containerd/containerd.sock",
            Kind::K3s | Kind::Rke2 => "/run/k3s/containerd/containerd.sock",
            Kind::MicroK8s => "/var/snap/microk8s/common/run/containerd.sock",
            Kind::K0s => "/run/k0s/containerd.sock",
        }
    }
}

/// Where and how the runtime is written on this node.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: Kind,
    /// The configuration the install is recorded under.
    pub config: PathBuf,
    /// The file the runtime goes into (it may not exist yet).
    pub file: PathBuf,
    pub form: Form,
    /// Other files containerd reads with it: a `wasmbox` runtime in one of
    /// them counts.
    pub also: Vec<PathBuf>,
    /// The patterns containerd imports (a backup must match none).
    pub imports: Vec<PathBuf>,
    /// Why this file, for the report.
    pub why: String,
    /// containerd's socket.
    pub socket: PathBuf,
    /// The default directory for the shim.
    pub bin_dir: PathBuf,
}

/// `name` as PATH finds it (or as given when it has a slash).
pub fn on_path(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if name.components().count() > 1 {
        return exec(name).then(|| name.to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(name)).find(|p| exec(p))
}

/// containerd's major version, from `containerd --version`.
pub fn containerd_major(containerd: &Path) -> Result<u32, Error> {
    let fail = |reason: String| Error::Containerd { path: containerd.to_path_buf(), reason };
    let out = Command::new(containerd).arg("--version").output().map_err(|e| fail(format!("cannot run it: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let number = text.split_whitespace().nth(2).unwrap_or_default();
    crate::major_minor(number)
        .map(|(major, _)| major)
        .ok_or_else(|| fail(format!("`--version` said {:?}, not a containerd version", text.trim())))
}

fn version_for_new_file(containerd: &Path, file: &Path) -> Result<Version, Error> {
    match containerd_major(containerd) {
        Ok(m) if m >= 2 => Ok(Version::V3),
        Ok(_) => Ok(Version::V2),
        Err(e) => Err(Error::Containerd {
            path: containerd.to_path_buf(),
            reason: format!(
                "{e}; {} has no configuration yet, and its form (version 2 or 3) depends on containerd's version: say which containerd with --containerd",
                file.display()
            ),
        }),
    }
}

fn read_text(path: &Path) -> Result<Option<String>, Error> {
    match files::read_opt(path)? {
        None => Ok(None),
        Some(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| Error::Unparsable { path: path.to_path_buf(), reason: "it is not UTF-8 text".to_string() }),
    }
}

/// Go's `filepath.Match` for one path component: `*`, `?` and `[...]`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, length of the class incl. ']').
        let (negate, mut i) = match p.first() {
            Some('^') | Some('!') => (true, 1),
            _ => (false, 0),
        };
        let mut hit = false;
        let start = i;
        while i < p.len() && (p[i] != ']' || i == start) {
            if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                hit |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                hit |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((hit != negate, i + 1))
    }
    fn go(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len()).any(|k| go(&p[1..], &s[k..])),
            Some('?') => !s.is_empty() && go(&p[1..], &s[1..]),
            Some('[') => match (s.first(), class(&p[1..], *s.first().unwrap_or(&'\0'))) {
                (Some(_), Some((true, len))) => go(&p[1 + len..], &s[1..]),
                _ => false,
            },
            Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
        }
    }
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &s)
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The files a pattern of `imports` names, sorted as containerd reads them.
fn expand(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    if has_glob(&dir.to_string_lossy()) {
        return Vec::new();
    }
    if !has_glob(name) {
        return if pattern.is_file() { vec![pattern.to_path_buf()] } else { Vec::new() };
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| glob_match(name, n)))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
}

/// Whether `path` matches one of the import patterns.
pub fn imported(path: &Path, patterns: &[PathBuf]) -> bool {
    patterns.iter().any(|p| {
        p.parent() == path.parent()
            && match (p.file_name().and_then(|n| n.to_str()), path.file_name().and_then(|n| n.to_str())) {
                (Some(pat), Some(name)) => glob_match(pat, name),
                _ => false,
            }
    })
}

fn kind_of(path: &Path) -> Result<Kind, Error> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let rancher = name.ends_with(".tmpl")
        || (name == "config.toml" && path.parent().is_some_and(|d| d.ends_with("agent/etc/containerd")));
    if rancher {
        return Ok(if path.components().any(|c| c.as_os_str() == "rke2") { Kind::Rke2 } else { Kind::K3s });
    }
    if name == "containerd-template.toml" {
        return Ok(Kind::MicroK8s);
    }
    let first = read_text(path)?.and_then(|t| t.lines().next().map(str::to_string));
    if first.as_deref().map(str::trim_end) == Some(K0S_MARKER) {
        return Ok(Kind::K0s);
    }
    Ok(Kind::Containerd)
}

/// The configuration this node's containerd reads: k3s's, RKE2's,
/// MicroK8s's or k0s's where they are installed, else containerd's own.
pub fn default_config() -> PathBuf {
    let candidates = [
        Path::new(K3S_DIR).join("config.toml"),
        Path::new(RKE2_DIR).join("config.toml"),
        PathBuf::from(MICROK8S_TEMPLATE),
        PathBuf::from(K0S_CONFIG),
    ];
    candidates.into_iter().find(|p| p.exists()).unwrap_or_else(|| PathBuf::from(CONTAINERD_CONFIG))
}

/// Works out the target for `config` (None: [`default_config`]);
/// `containerd` is the binary whose version decides a new file's form.
pub fn resolve(config: Option<&Path>, containerd: &Path) -> Result<Target, Error> {
    let config = match config {
        Some(c) => std::path::absolute(c).map_err(Error::io("resolving", c))?,
        None => default_config(),
    };
    match kind_of(&config)? {
        Kind::Containerd => containerd_target(&config, containerd),
        k @ (Kind::K3s | Kind::Rke2) => rancher_target(&config, k),
        Kind::MicroK8s => Ok(Target {
            kind: Kind::MicroK8s,
            file: config.clone(),
            form: Form { shape: Shape::Toml, version: Version::V2, runc: Runc::IfNoRuntimes },
            also: Vec::new(),
            imports: Vec::new(),
            why: format!("MicroK8s renders containerd's configuration from {}", config.display()),
            socket: PathBuf::from(Kind::MicroK8s.socket()),
            bin_dir: PathBuf::from("/usr/local/bin"),
            config,
        }),
        Kind::K0s => k0s_target(&config, containerd),
    }
}

fn containerd_target(config: &Path, containerd: &Path) -> Result<Target, Error> {
    let text = read_text(config)?;
    let doc = text.as_deref().map(|t| handler::parse(t, config)).transpose()?;
    let blank = doc.as_ref().is_none_or(handler::is_blank);
    let version = match &doc {
        _ if blank => version_for_new_file(containerd, config)?,
        // Anything but 2 and 3 is refused with the reason when it is edited.
        Some(d) => handler::version_of(d).and_then(Version::from_number).unwrap_or(Version::V2),
        None => Version::V2,
    };
    let socket = doc
        .as_ref()
        .and_then(|d| d.get("grpc").and_then(|g| g.get("address")).and_then(|a| a.as_str()))
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(Kind::Containerd.socket()), PathBuf::from);
    let bin_dir = on_path(containerd)
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin"));
    let mut target = Target {
        kind: Kind::Containerd,
        config: config.to_path_buf(),
        file: config.to_path_buf(),
        form: Form { shape: Shape::Toml, version, runc: Runc::IfNoRuntimes },
        also: Vec::new(),
        imports: Vec::new(),
        why: format!("containerd's configuration {} (version {})", config.display(), version.number()),
        socket,
        bin_dir,
    };
    let imports: Vec<String> = doc
        .as_ref()
        .and_then(|d| d.get("imports"))
        .and_then(|i| i.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if imports.is_empty() {
        return Ok(target);
    }
    // containerd 2.x resolves relative imports against the file's directory
    // (1.x against its working directory, / under systemd).
    let dir = config.parent().unwrap_or(Path::new("/"));
    let patterns: Vec<PathBuf> = imports.iter().map(|i| dir.join(i)).collect();
    let matched = patterns.iter().find_map(|p| {
        let (d, name) = (p.parent()?, p.file_name()?.to_str()?);
        (has_glob(name) && !has_glob(&d.to_string_lossy()) && glob_match(name, DROP_IN))
            .then(|| (p.clone(), d.join(DROP_IN)))
    });
    let (pattern, dropin) = matched.map_or((None, None), |(p, d)| (Some(p), Some(d)));
    let imported: Vec<PathBuf> =
        patterns.iter().flat_map(|p| expand(p)).filter(|p| Some(p) != dropin.as_ref() && p != config).collect();
    target.imports = patterns;
    let (Some(pattern), Some(dropin)) = (pattern, dropin) else {
        target.also = imported;
        target.why += &format!("; its imports name no directory a {DROP_IN} of ours would be read from");
        return Ok(target);
    };
    let main = doc.as_ref().expect("imports come from a document");
    let major = if version == Version::V3 { Ok(2) } else { containerd_major(containerd) };
    if major.as_ref().is_ok_and(|m| *m >= 2) {
        // containerd 2.x merges imported files into the configuration.
        target.also = std::iter::once(config.to_path_buf()).chain(imported).collect();
        target.form.runc = Runc::Never;
        target.why = format!(
            "{} imports {}: the runtime goes into a file of its own, {}",
            config.display(),
            pattern.display(),
            dropin.display()
        );
        target.file = dropin;
        return Ok(target);
    }
    // containerd 1.x replaces a plugin's whole section with the last file's
    // that configures it: the runtime goes where CRI is configured.
    let mut holders: Vec<PathBuf> = Vec::new();
    if handler::has_cri_section(main, Version::V2) {
        holders.push(config.to_path_buf());
    }
    for f in &imported {
        if let Some(t) = read_text(f)? {
            let d = handler::parse(&t, f)?;
            if handler::has_cri_section(&d, Version::V2) || d.get("plugins").and_then(|p| p.get("cri")).is_some() {
                holders.push(f.clone());
            }
        }
    }
    let assumed = match &major {
        Ok(_) => String::new(),
        Err(e) => format!(" (containerd 1.x assumed: {e})"),
    };
    match holders.pop() {
        None => {
            target.also = std::iter::once(config.to_path_buf()).chain(imported).collect();
            target.why = format!(
                "{} imports {}: the runtime goes into a file of its own, {}{assumed}",
                config.display(),
                pattern.display(),
                dropin.display()
            );
            target.file = dropin;
        }
        Some(holder) => {
            target.also = std::iter::once(config.to_path_buf())
                .chain(imported)
                .chain(std::iter::once(dropin).filter(|d| d.exists()))
                .filter(|f| *f != holder)
                .collect();
            target.why = format!(
                "{} configures containerd's CRI plugin, and containerd 1.x replaces that whole section with an \
                 imported file's, so a drop-in would drop it: the runtime goes into {}{assumed}",
                holder.display(),
                holder.display()
            );
            target.file = holder;
        }
    }
    Ok(target)
}

fn rancher_target(given: &Path, kind: Kind) -> Result<Target, Error> {
    let dir = given.parent().unwrap_or(Path::new("/"));
    let generated = dir.join("config.toml");
    let (v3, v2) = (dir.join("config-v3.toml.tmpl"), dir.join("config.toml.tmpl"));
    let name = given.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let (file, version) = if name.ends_with(".tmpl") {
        let v = if name.starts_with("config-v3") { Version::V3 } else { Version::V2 };
        (given.to_path_buf(), v)
    } else if v3.exists() {
        (v3, Version::V3)
    } else if v2.exists() {
        (v2, Version::V2)
    } else {
        // No template yet: the one for the configuration version k3s writes.
        let text = read_text(&generated)?.ok_or_else(|| {
            Error::unsupported(
                &generated,
                format!("{} has not written it yet, so its containerd's configuration version is unknown: start {} once, or name the template to create with --config", kind.name(), kind.name()),
            )
        })?;
        let doc = handler::parse(&text, &generated)?;
        match handler::version_of(&doc) {
            Some(3) => (v3, Version::V3),
            Some(2) => (v2, Version::V2),
            other => {
                return Err(Error::unsupported(
                    &generated,
                    format!(
                        "configuration version {other:?}: {} templates exist for versions 2 and 3 only",
                        kind.name()
                    ),
                ))
            }
        }
    };
    Ok(Target {
        kind,
        config: file.clone(),
        why: format!(
            "{} writes {} from a template at each start: the runtime goes into {}, after its base",
            kind.name(),
            generated.display(),
            file.display()
        ),
        file,
        form: Form { shape: Shape::Template, version, runc: Runc::IfNoRuntimes },
        also: Vec::new(),
        imports: Vec::new(),
        socket: PathBuf::from(kind.socket()),
        bin_dir: PathBuf::from("/usr/local/bin"),
    })
}

fn k0s_target(config: &Path, containerd: &Path) -> Result<Target, Error> {
    let dir = config.parent().unwrap_or(Path::new("/")).join("containerd.d");
    let text = read_text(config)?.unwrap_or_default();
    let doc = handler::parse(&text, config)?;
    let version = match handler::version_of(&doc).and_then(Version::from_number) {
        Some(v) => v,
        None => {
            let bundled = Path::new("/var/lib/k0s/bin/containerd");
            version_for_new_file(if bundled.exists() { bundled } else { containerd }, &dir.join(DROP_IN))?
        }
    };
    let file = dir.join(DROP_IN);
    let also = expand(&dir.join("*.toml")).into_iter().filter(|f| *f != file).collect();
    Ok(Target {
        kind: Kind::K0s,
        config: config.to_path_buf(),
        why: format!(
            "k0s manages {} and merges the drop-ins of {}: the runtime goes into {}",
            config.display(),
            dir.display(),
            file.display()
        ),
        file,
        form: Form { shape: Shape::Toml, version, runc: Runc::Never },
        also,
        imports: vec![dir.join("*.toml")],
        socket: PathBuf::from(Kind::K0s.socket()),
        bin_dir: PathBuf::from("/usr/local/bin"),
    })
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_as_go_matches_them() {
        assert!(glob_match("*.toml", "wasmbox.toml"));
        assert!(!glob_match("*.toml", "wasmbox.toml.wasmbox-backup"));
        assert!(glob_match("*", "config.toml.wasmbox-backup"));
        assert!(glob_match("[0-9]*-?.toml", "10-a.toml"));
        assert!(!glob_match("[!w]*.toml", "wasmbox.toml"));
        assert!(glob_match("wasmbox.toml", "wasmbox.toml"));
    }
}
