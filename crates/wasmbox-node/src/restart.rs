//! Restarting containerd when asked, and waiting until a new containerd
//! answers on its socket. Running containers survive: their shims are not
//! containerd's children, and the new containerd reconnects to them.

use crate::error::Error;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How containerd is restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// `systemctl restart UNIT`, the unit of the layout found.
    Systemd,
    /// A command run with `sh -c`.
    Command(String),
}

/// Where the restart command runs, when that is not simply here: from an
/// installer pod, in the host's cgroups (a containerd it starts must not
/// be in the pod's, which is killed with the pod), told which containerd
/// to restart.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Added to the command's environment.
    pub env: Vec<(String, String)>,
    /// `cgroup.procs` files the command moves into before it runs.
    pub cgroup_procs: Vec<CString>,
}

/// What to restart and where it answers.
pub struct Daemon<'a> {
    /// systemd units that may run containerd, most likely first.
    pub units: &'a [&'a str],
    pub socket: &'a Path,
    /// `ctr` to ask containerd with; without it, a connection to the
    /// socket counts as an answer.
    pub ctr: Option<PathBuf>,
    pub context: &'a Context,
}

/// The identity of the socket file: containerd makes a new one when it
/// starts (its inode number may be the old one's, freed a moment before;
/// its change time is not).
fn socket_id(socket: &Path) -> Option<(u64, u64, i64, i64)> {
    std::fs::metadata(socket).ok().map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The command line that restarts containerd.
fn command_for(how: &Restart, units: &[&str]) -> Result<String, Error> {
    match how {
        Restart::Command(c) => Ok(c.clone()),
        Restart::Systemd => {
            if !systemd_runs() {
                return Err(Error::Restart {
                    command: "systemctl restart".to_string(),
                    reason: "systemd does not run this host; say how containerd is restarted with --restart-cmd CMD"
                        .to_string(),
                });
            }
            let active = units.iter().find(|u| {
                Command::new("systemctl").args(["is-active", "--quiet", u]).status().is_ok_and(|s| s.success())
            });
            let unit = active.or(units.first()).copied().unwrap_or("containerd");
            Ok(format!("systemctl restart {unit}"))
        }
    }
}

/// Whether containerd answers on `socket`.
fn answers(socket: &Path, ctr: Option<&Path>) -> Result<(), String> {
    match ctr {
        Some(ctr) => {
            let mut child = Command::new(ctr)
                .arg("--address")
                .arg(socket)
                .arg("version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("{}: {e}", ctr.display()))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => return Ok(()),
                    Ok(Some(_)) => {
                        let out = child.wait_with_output().map(|o| o.stderr).unwrap_or_default();
                        return Err(format!("`ctr version`: {}", String::from_utf8_lossy(&out).trim()));
                    }
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err("`ctr version` did not return".to_string());
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        None => std::os::unix::net::UnixStream::connect(socket).map(|_| ()).map_err(|e| e.to_string()),
    }
}

/// Restarts containerd as `how` says and waits (at most `timeout`) until
/// a new containerd answers; what happened, in a sentence.
pub fn restart(how: &Restart, daemon: &Daemon, timeout: Duration) -> Result<String, Error> {
    let command = command_for(how, daemon.units)?;
    let before = socket_id(daemon.socket);
    // The command's output goes to a file, not a pipe: a containerd it
    // starts in the background would hold a pipe open.
    let log_path = std::env::temp_dir().join(format!("wasmbox-restart-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).map_err(Error::io("creating", &log_path))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&command)
        .envs(daemon.context.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(Error::io("opening", &log_path))?)
        .stderr(log);
    if !daemon.context.cgroup_procs.is_empty() {
        let procs = daemon.context.cgroup_procs.clone();
        // SAFETY: between fork and exec only open, write and close, on
        // paths made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if !ok {
                        return Err(err);
                    }
                }
                Ok(())
            })
        };
    }
    let status = cmd.status();
    let said = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    let started = Instant::now();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            let tail: Vec<&str> = said.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Error::Restart { command, reason: format!("{s}: {}", tail.join(" / ")) });
        }
        Err(e) => return Err(Error::Restart { command, reason: e.to_string() }),
    }
    let deadline = started + timeout;
    let mut last;
    loop {
        let now = socket_id(daemon.socket);
        last = if now.is_none() {
            format!("no socket at {}", daemon.socket.display())
        } else if before.is_some() && now == before {
            "the socket is still the one from before the restart (did the command restart containerd?)".to_string()
        } else {
            match answers(daemon.socket, daemon.ctr.as_deref()) {
                Ok(()) => {
                    return Ok(format!(
                        "restarted containerd (`{command}`); it answers on {} again after {:.1} s",
                        daemon.socket.display(),
                        started.elapsed().as_secs_f64()
                    ))
                }
                Err(e) => e,
            }
        };
        if Instant::now() > deadline {
            return Err(Error::NoAnswer {
                socket: daemon.socket.to_path_buf(),
                secs: timeout.as_secs(),
                command,
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_is_named_with_what_it_said() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock");
        let d = Daemon { units: &[], socket: &sock, ctr: None, context: &Context::default() };
        let err = restart(&Restart::Command("echo no such service >&2; exit 3".into()), &d, Duration::from_secs(1))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit 3") && msg.contains("no such service"), "{msg}");
    }

    #[test]
    fn a_containerd_that_never_comes_back_is_an_error_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock");
        let d = Daemon { units: &[], socket: &sock, ctr: None, context: &Context::default() };
        let err = restart(&Restart::Command("true".into()), &d, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, Error::NoAnswer { .. }) && err.to_string().contains("no socket"), "{err}");
    }

    #[test]
    fn a_new_listener_on_the_socket_is_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock");
        let old = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let d = Daemon { units: &[], socket: &sock, ctr: None, context: &Context::default() };
        // The same socket as before does not count.
        let err = restart(&Restart::Command("true".into()), &d, Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("still the one from before"), "{err}");
        drop(old);
        let path = sock.clone();
        let cmd = format!("rm -f {}", sock.display());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            std::os::unix::net::UnixListener::bind(&path).unwrap()
        });
        let said = restart(&Restart::Command(cmd), &d, Duration::from_secs(10)).unwrap();
        assert!(said.contains("answers on"), "{said}");
        drop(t.join().unwrap());
    }

    #[test]
    fn the_command_is_told_which_containerd() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock");
        let seen = dir.path().join("seen");
        let context =
            Context { env: vec![("WASMBOX_CONTAINERD_CONFIG".into(), "/x/config.toml".into())], cgroup_procs: vec![] };
        let d = Daemon { units: &[], socket: &sock, ctr: None, context: &context };
        let cmd = format!("echo \"$WASMBOX_CONTAINERD_CONFIG\" > {}", seen.display());
        let _ = restart(&Restart::Command(cmd), &d, Duration::from_millis(100));
        assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), "/x/config.toml");
    }
}
