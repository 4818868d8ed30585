//! `wasmbox node install` and `wasmbox node uninstall`: the shim copied
//! into containerd's PATH, the `wasmbox` runtime registered in the
//! configuration layout found, what was done recorded, and undone exactly.
//!
//! Order of work: every backup is written, then the record, then the shim,
//! then the configuration (containerd never sees the runtime without its
//! program). Uninstall takes the configuration back first, then the shim.

use crate::error::Error;
use crate::files::{self, Attrs};
use crate::handler::{self, Registration, Shape};
use crate::layout::{self, Target};
use crate::restart::{self, Context as RestartContext, Daemon, Restart};
use crate::state::{FileRecord, Original, Record, ShimRecord, State};
use crate::SHIM_BINARY;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `install` is asked to do.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// containerd's configuration (default: [`layout::default_config`]).
    pub config: Option<PathBuf>,
    /// Where the shim goes (default: beside the containerd on PATH for
    /// containerd's own layout, else /usr/local/bin).
    pub bin_dir: Option<PathBuf>,
    /// The shim to install.
    pub shim: PathBuf,
    /// The containerd binary: its version decides a new file's form, `ctr`
    /// beside it asks whether containerd answers.
    pub containerd: PathBuf,
    /// The record of installs ([`crate::state::DEFAULT_STATE`]).
    pub state: PathBuf,
    /// Restart containerd after changing its configuration.
    pub restart: Option<Restart>,
    pub restart_timeout: Duration,
    /// Where the restart command runs (from a pod: see [`crate::host`]).
    pub restart_context: RestartContext,
    /// Say what would be done; change nothing.
    pub dry_run: bool,
}

/// What `uninstall` is asked to do.
#[derive(Debug, Clone)]
pub struct UninstallOptions {
    /// The configuration installed into (default: the only one recorded).
    pub config: Option<PathBuf>,
    pub containerd: PathBuf,
    pub state: PathBuf,
    pub restart: Option<Restart>,
    pub restart_timeout: Duration,
    pub restart_context: RestartContext,
    pub dry_run: bool,
    /// Remove the shim even while processes run from it.
    pub force: bool,
}

/// What was done (or would be), a line each, for people.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub lines: Vec<String>,
    /// Whether a file changed (or would).
    pub changed: bool,
}

const BACKUP_SUFFIX: &str = ".wasmbox-backup";

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `FILE.wasmbox-backup`, unless containerd would import that as well:
/// then under the state file's directory.
fn backup_path(file: &Path, imports: &[PathBuf], state: &Path) -> PathBuf {
    let beside = with_suffix(file, BACKUP_SUFFIX);
    if !layout::imported(&beside, imports) {
        return beside;
    }
    let flat = file.to_string_lossy().trim_start_matches('/').replace('/', "%");
    state.parent().unwrap_or(Path::new("/")).join("backups").join(format!("{flat}{BACKUP_SUFFIX}"))
}

fn write_backup(backup: &Path, bytes: &[u8], of: &Path) -> Result<Original, Error> {
    if let Some(dir) = backup.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    files::write_atomic(backup, bytes, Attrs::of_or(of, 0o644))?;
    Ok(Original { backup: backup.to_path_buf(), sha256: files::sha256(bytes) })
}

fn read_text(path: &Path) -> Result<Option<String>, Error> {
    files::read_opt(path)?
        .map(|b| {
            String::from_utf8(b)
                .map_err(|_| Error::Unparsable { path: path.to_path_buf(), reason: "it is not UTF-8 text".into() })
        })
        .transpose()
}

/// `ctr` beside the containerd binary, else on PATH.
fn ctr_for(containerd: &Path) -> Option<PathBuf> {
    layout::on_path(containerd)
        .and_then(|c| c.parent().map(|d| d.join("ctr")))
        .filter(|c| c.is_file())
        .or_else(|| layout::on_path(Path::new("ctr")))
}

fn check_shim(path: &Path) -> Result<(), Error> {
    use std::io::Read;
    let fail = |reason: String| Error::Shim { path: path.to_path_buf(), reason };
    let mut f = std::fs::File::open(path)
        .map_err(|e| fail(format!("{e}; build it (cargo build --release) or say where it is with --shim")))?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(fail("not a file".into()));
    }
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return Err(fail("not a program (an ELF executable)".into()));
    }
    Ok(())
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// Where the runtime is already registered, if it is: the target file,
/// else a file read with it. A differently set up `wasmbox` anywhere is a
/// conflict.
fn registration(target: &Target, current: Option<&str>) -> Result<(Registration, Option<PathBuf>), Error> {
    let r = handler::register(current, target.form, &target.file)?;
    let mut present_in = (r == Registration::Present).then(|| target.file.clone());
    for f in &target.also {
        if let Some(text) = read_text(f)? {
            match handler::find_in_file(&text, f)? {
                handler::Found::Other(found) => return Err(Error::Conflict { path: f.clone(), found }),
                handler::Found::Ours if present_in.is_none() => present_in = Some(f.clone()),
                _ => {}
            }
        }
    }
    Ok(match present_in {
        Some(p) => (Registration::Present, Some(p)),
        None => (r, None),
    })
}

/// Installs the shim and registers the runtime; see the module's doc.
pub fn install(o: &InstallOptions) -> Result<Report, Error> {
    let o = &InstallOptions {
        state: std::path::absolute(&o.state).map_err(Error::io("resolving", &o.state))?,
        ..o.clone()
    };
    let target = layout::resolve(o.config.as_deref(), &o.containerd)?;
    // One install or uninstall at a time (a dry run changes nothing).
    let _lock = if o.dry_run { None } else { Some(State::lock(&o.state)?) };
    let mut state = State::load(&o.state)?;
    let previous = state.find(&target.config).cloned();
    let mut report = Report { lines: vec![format!("{} node: {}", target.kind.name(), target.why)], changed: false };
    let say = |r: &mut Report, s: String| r.lines.push(s);

    // The configuration.
    let current = read_text(&target.file)?;
    let (reg, present_in) = registration(&target, current.as_deref())?;
    let config_change = match reg {
        Registration::Present => {
            let at = present_in.unwrap_or_else(|| target.file.clone());
            say(&mut report, format!("the wasmbox runtime is in {} already", at.display()));
            None
        }
        Registration::Edit { text, added, version } => Some((text, added, version)),
    };

    // The shim.
    let bin_dir = o.bin_dir.clone().unwrap_or_else(|| target.bin_dir.clone());
    let bin_dir = std::path::absolute(&bin_dir).map_err(Error::io("resolving", &bin_dir))?;
    let shim = std::path::absolute(&o.shim).map_err(Error::io("resolving", &o.shim))?;
    check_shim(&shim)?;
    let want = files::sha256_file(&shim)?;
    let dst = bin_dir.join(SHIM_BINARY);
    if let Some(s) = previous.as_ref().and_then(|p| p.shim.as_ref()).filter(|s| s.path != dst) {
        return Err(Error::unsupported(
            &s.path,
            format!(
                "an earlier install put the shim here; to install it into {} instead, run `wasmbox node uninstall` first",
                bin_dir.display()
            ),
        ));
    }
    let have = if dst.exists() { Some(files::sha256_file(&dst)?) } else { None };
    let shim_change = have.as_deref() != Some(want.as_str());
    report.changed = config_change.is_some() || shim_change;
    let backup = backup_path(&target.file, &target.imports, &o.state);
    let first_change = previous.as_ref().is_none_or(|p| !p.files.iter().any(|f| f.path == target.file));

    if o.dry_run {
        if let Some((text, ..)) = &config_change {
            let keeps = match (&current, first_change) {
                (None, _) => " (a new file)".to_string(),
                (Some(_), true) => format!(" (the original copied to {} first)", backup.display()),
                (Some(_), false) => String::new(),
            };
            say(&mut report, format!("would write {}{keeps}:", target.file.display()));
            let old_name = if current.is_some() { target.file.display().to_string() } else { "/dev/null".to_string() };
            let diff = crate::diff::unified(
                current.as_deref().unwrap_or(""),
                text,
                &old_name,
                &target.file.display().to_string(),
            );
            report.lines.extend(diff.lines().map(str::to_string));
        }
        if shim_change {
            say(&mut report, format!("would copy {} to {} (sha256 {})", shim.display(), dst.display(), short(&want)));
        } else {
            say(&mut report, format!("{} is this shim already (sha256 {})", dst.display(), short(&want)));
        }
        if report.changed {
            say(&mut report, format!("would record what it did in {}", o.state.display()));
        }
        if o.restart.is_some() && config_change.is_some() {
            say(&mut report, "would restart containerd and wait until it answers".to_string());
        }
        return Ok(report);
    }

    let mut record = previous.clone().unwrap_or_else(|| Record {
        config: target.config.clone(),
        layout: format!("{}: {}", target.kind.name(), target.why),
        files: Vec::new(),
        shim: None,
        restart_pending: false,
    });
    // Backups and the record before anything changes.
    if let Some((text, added, version)) = &config_change {
        let known = record.files.iter().position(|f| f.path == target.file);
        let original = match (known, &current) {
            (Some(i), _) => record.files[i].original.clone(),
            (None, None) => None,
            (None, Some(cur)) => Some(write_backup(&backup, cur.as_bytes(), &target.file)?),
        };
        let mut added = *added;
        if let Some(i) = known {
            added.runc |= record.files[i].added.runc;
            added.version |= record.files[i].added.version;
        }
        let file = FileRecord {
            path: target.file.clone(),
            original,
            written_sha256: files::sha256(text.as_bytes()),
            template: target.form.shape == Shape::Template,
            version: *version,
            added,
        };
        match known {
            Some(i) => record.files[i] = file,
            None => record.files.push(file),
        }
        record.restart_pending = true;
    }
    if shim_change {
        let original = match (&record.shim, &have) {
            (Some(s), _) => s.original.clone(),
            (None, None) => None,
            (None, Some(sha)) => {
                let backup = with_suffix(&dst, BACKUP_SUFFIX);
                files::copy_verified(&dst, &backup, sha, Attrs::of_or(&dst, 0o755))?;
                Some(Original { backup, sha256: sha.clone() })
            }
        };
        record.shim = Some(ShimRecord { path: dst.clone(), sha256: want.clone(), original });
    }
    if report.changed {
        state.put(record.clone());
        state.save(&o.state)?;
    }

    // The shim, then the configuration.
    if shim_change {
        files::copy_verified(&shim, &dst, &want, Attrs { mode: 0o755, owner: None })?;
        say(
            &mut report,
            format!("copied {} to {} (sha256 {}, checked after copying)", shim.display(), dst.display(), short(&want)),
        );
    } else {
        say(&mut report, format!("{} is this shim already (sha256 {})", dst.display(), short(&want)));
    }
    if let Some((text, added, version)) = &config_change {
        if let Some(dir) = target.file.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        files::write_atomic(&target.file, text.as_bytes(), Attrs::of_or(&target.file, 0o644))?;
        let runc = if added.runc { " and runc" } else { "" };
        let what = format!("the runtime wasmbox{runc} under [{}]", version.runtime_table("*"));
        match (&current, &record.files.iter().find(|f| f.path == target.file).and_then(|f| f.original.clone())) {
            (None, _) => say(&mut report, format!("created {} with {what}", target.file.display())),
            (Some(_), Some(orig)) => say(
                &mut report,
                format!("wrote {}: {what} (the original is kept at {})", target.file.display(), orig.backup.display()),
            ),
            (Some(_), None) => say(&mut report, format!("wrote {}: {what}", target.file.display())),
        }
    }
    if report.changed {
        say(&mut report, format!("recorded in {} (`wasmbox node uninstall` reverts it)", o.state.display()));
    }

    // containerd reads its configuration when it starts.
    let pending = previous.as_ref().is_some_and(|p| p.restart_pending) || config_change.is_some();
    match &o.restart {
        Some(how) if pending => {
            let daemon = Daemon { units: target.kind.units(), socket: &target.socket, ctr: ctr_for(&o.containerd), context: &o.restart_context };
            say(&mut report, restart::restart(how, &daemon, o.restart_timeout)?);
            record.restart_pending = false;
            state.put(record);
            state.save(&o.state)?;
        }
        Some(_) => say(&mut report, "containerd runs with this configuration already: not restarted".to_string()),
        None if pending => say(
            &mut report,
            format!(
                "containerd reads its configuration when it starts: restart it (`systemctl restart {}`), or run this again with --restart or --restart-cmd CMD",
                target.kind.units()[0]
            ),
        ),
        None => {}
    }
    Ok(report)
}

/// The record `uninstall` works on: the one for `config` (as given, as a
/// file it wrote, or as resolved), else the only one there is.
fn pick(state: &State, o: &UninstallOptions) -> Result<Option<Record>, Error> {
    let matching =
        |c: &Path| state.installs.iter().find(|r| r.config == c || r.files.iter().any(|f| f.path == c)).cloned();
    if let Some(c) = &o.config {
        let abs = std::path::absolute(c).map_err(Error::io("resolving", c))?;
        if let Some(r) = matching(&abs) {
            return Ok(Some(r));
        }
        return Ok(layout::resolve(Some(&abs), &o.containerd).ok().and_then(|t| matching(&t.config)));
    }
    match state.installs.len() {
        0 => Ok(None),
        1 => Ok(state.installs.first().cloned()),
        _ => match layout::resolve(None, &o.containerd).ok().and_then(|t| matching(&t.config)) {
            Some(r) => Ok(Some(r)),
            None => Err(Error::Ambiguous {
                state: o.state.clone(),
                recorded: state.installs.iter().map(|r| r.config.display().to_string()).collect::<Vec<_>>().join(", "),
            }),
        },
    }
}

/// Processes running the program at `path` (shims and their instances).
fn running_from(path: &Path) -> Vec<i32> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let deleted = with_suffix(&path, " (deleted)");
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<i32> = procs
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            (exe == path || exe == deleted).then_some(pid)
        })
        .collect();
    pids.sort();
    pids
}

/// One step of an uninstall.
enum Step {
    /// Write these bytes (the original, or the file without the runtime).
    Write {
        path: PathBuf,
        bytes: Vec<u8>,
        said: String,
    },
    Remove {
        path: PathBuf,
        said: String,
    },
    /// The shim from before, back from its backup.
    PutBack {
        backup: PathBuf,
        path: PathBuf,
        sha256: String,
        said: String,
    },
    /// Nothing to change; a word about it.
    Note(String),
}

/// Reverts what `install` recorded for one configuration.
pub fn uninstall(o: &UninstallOptions) -> Result<Report, Error> {
    let o = &UninstallOptions {
        state: std::path::absolute(&o.state).map_err(Error::io("resolving", &o.state))?,
        ..o.clone()
    };
    // One install or uninstall at a time (a dry run changes nothing).
    let _lock = if o.dry_run { None } else { Some(State::lock(&o.state)?) };
    let mut state = State::load(&o.state)?;
    let Some(record) = pick(&state, o)? else {
        let what = o.config.as_ref().map_or_else(|| "any configuration".to_string(), |c| c.display().to_string());
        return Ok(Report {
            lines: vec![format!("{} records no install into {what}: nothing to undo", o.state.display())],
            changed: false,
        });
    };
    let mut report =
        Report { lines: vec![format!("undoing the install into {}", record.config.display())], changed: false };
    let mut steps = Vec::new();
    // Backups no longer needed once the steps are done.
    let mut done_with = Vec::new();
    for f in record.files.iter().rev() {
        let shown = f.path.display();
        let Some(bytes) = files::read_opt(&f.path)? else {
            match &f.original {
                None => steps.push(Step::Note(format!("{shown} is gone already"))),
                Some(orig) => steps.push(Step::Note(format!(
                    "{shown} was removed after the install: not put back (its original is kept at {})",
                    orig.backup.display()
                ))),
            }
            continue;
        };
        let sha = files::sha256(&bytes);
        if sha == f.written_sha256 {
            match &f.original {
                Some(orig) => {
                    let back = files::read_opt(&orig.backup)?.ok_or_else(|| Error::State {
                        path: orig.backup.clone(),
                        reason: format!("the copy of {shown}'s original is missing; {shown} is left as it is"),
                    })?;
                    if files::sha256(&back) != orig.sha256 {
                        return Err(Error::State {
                            path: orig.backup.clone(),
                            reason: format!(
                                "the copy of {shown}'s original changed since the install; nothing was changed"
                            ),
                        });
                    }
                    steps.push(Step::Write {
                        path: f.path.clone(),
                        bytes: back,
                        said: format!("restored {shown} as it was before the install (byte for byte)"),
                    });
                    done_with.push(orig.backup.clone());
                }
                None => steps.push(Step::Remove {
                    path: f.path.clone(),
                    said: format!("removed {shown} (the install created it)"),
                }),
            }
            continue;
        }
        if f.original.as_ref().is_some_and(|orig| orig.sha256 == sha) {
            steps.push(Step::Note(format!("{shown} is as it was before the install")));
            done_with.extend(f.original.iter().map(|orig| orig.backup.clone()));
            continue;
        }
        // Changed after the install: take the runtime out, keep the rest.
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Unparsable { path: f.path.clone(), reason: "it is not UTF-8 text".into() })?;
        let shape = if f.template { Shape::Template } else { Shape::Toml };
        let kept = f
            .original
            .as_ref()
            .map(|orig| format!(" (its original is kept at {})", orig.backup.display()))
            .unwrap_or_default();
        match handler::unregister(&text, shape, f.version, f.added, &f.path)? {
            Some(new) if f.original.is_none() && handler::parse(&new, &f.path).is_ok_and(|d| handler::is_blank(&d)) => {
                steps.push(Step::Remove {
                    path: f.path.clone(),
                    said: format!("removed {shown} (the install created it; it changed since, but held nothing else)"),
                })
            }
            Some(new) => steps.push(Step::Write {
                path: f.path.clone(),
                bytes: new.into_bytes(),
                said: format!(
                    "{shown} changed after the install: took the wasmbox runtime out and kept the rest{kept}"
                ),
            }),
            None => steps.push(Step::Note(format!(
                "{shown} changed after the install and has no wasmbox runtime of ours: left as it is{kept}"
            ))),
        }
    }
    if let Some(s) = &record.shim {
        let shown = s.path.display();
        let have = if s.path.exists() { Some(files::sha256_file(&s.path)?) } else { None };
        match (&have, &s.original) {
            (None, _) => steps.push(Step::Note(format!("{shown} is gone already"))),
            (Some(h), Some(orig)) if *h == s.sha256 => {
                steps.push(Step::PutBack {
                    backup: orig.backup.clone(),
                    path: s.path.clone(),
                    sha256: orig.sha256.clone(),
                    said: format!("put back the shim {shown} had before the install"),
                });
                done_with.push(orig.backup.clone());
            }
            (Some(h), None) if *h == s.sha256 => {
                // containerd finds a task's shim by its program when it
                // restarts; without it, it lets the task go (1.6 logs
                // "failed to resolve runtime path") and its container runs
                // on untracked.
                let pids = running_from(&s.path);
                if !pids.is_empty() && !o.force {
                    return Err(Error::InUse { path: s.path.clone(), pids });
                }
                let said = if pids.is_empty() {
                    format!("removed {shown}")
                } else {
                    format!(
                        "removed {shown} while {} processes run from it (--force): containerd cannot take their containers back after it restarts",
                        pids.len()
                    )
                };
                steps.push(Step::Remove { path: s.path.clone(), said })
            }
            (Some(h), Some(orig)) if *h == orig.sha256 => {
                steps.push(Step::Note(format!("{shown} is the shim from before the install")));
                done_with.push(orig.backup.clone());
            }
            (Some(_), _) => steps.push(Step::Note(format!("{shown} was replaced after the install: left as it is"))),
        }
    }
    let config_changed = steps.iter().any(|s| match s {
        Step::Write { path, .. } | Step::Remove { path, .. } => record.files.iter().any(|f| f.path == *path),
        _ => false,
    });
    report.changed = steps.iter().any(|s| !matches!(s, Step::Note(_)));

    if o.dry_run {
        for step in &steps {
            match step {
                Step::Write { path, bytes, said } => {
                    report.lines.push(format!("would have {said}:"));
                    let cur = read_text(path)?.unwrap_or_default();
                    let shown = path.display().to_string();
                    let diff = crate::diff::unified(&cur, &String::from_utf8_lossy(bytes), &shown, &shown);
                    report.lines.extend(diff.lines().map(str::to_string));
                }
                Step::Remove { said, .. } | Step::PutBack { said, .. } => {
                    report.lines.push(format!("would have {said}"))
                }
                Step::Note(n) => report.lines.push(n.clone()),
            }
        }
        return Ok(report);
    }
    for step in steps {
        match step {
            Step::Write { path, bytes, said } => {
                files::write_atomic(&path, &bytes, Attrs::of_or(&path, 0o644))?;
                report.lines.push(said);
            }
            Step::Remove { path, said } => {
                files::remove(&path)?;
                report.lines.push(said);
            }
            Step::PutBack { backup, path, sha256, said } => {
                files::copy_verified(&backup, &path, &sha256, Attrs::of_or(&path, 0o755))?;
                report.lines.push(said);
            }
            Step::Note(n) => report.lines.push(n),
        }
    }
    for b in done_with {
        files::remove(&b)?;
    }
    state.remove(&record.config);
    state.save(&o.state)?;
    report.lines.push(format!("removed the record from {}", o.state.display()));

    // A containerd never restarted since the install still runs the
    // original configuration: only a change it loaded needs a restart.
    let pending = config_changed && !record.restart_pending;
    match &o.restart {
        Some(how) if pending => {
            let target = layout::resolve(Some(&record.config), &o.containerd);
            let (units, socket) = match &target {
                Ok(t) => (t.kind.units(), t.socket.clone()),
                Err(_) => (layout::Kind::Containerd.units(), PathBuf::from("/run/containerd/containerd.sock")),
            };
            let daemon = Daemon { units, socket: &socket, ctr: ctr_for(&o.containerd), context: &o.restart_context };
            report.lines.push(restart::restart(how, &daemon, o.restart_timeout)?);
        }
        Some(_) => report.lines.push("containerd runs without the wasmbox runtime already: not restarted".to_string()),
        None if pending => report.lines.push(
            "containerd reads its configuration when it starts: restart it to drop the runtime (or run this again with --restart)".to_string(),
        ),
        None => {}
    }
    Ok(report)
}
