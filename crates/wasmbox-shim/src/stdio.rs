//! A container's stdio: containerd hands the shim fifo paths, or a log URI
//! (`ctr run --log-uri`, nerdctl's `run -d`): `file:///PATH` appends
//! stdout and stderr to a file; `binary:///PATH?K=V` starts that logging
//! program as containerd's runc shim does (args `K V` per query pair, env
//! `CONTAINER_ID` and `CONTAINER_NAMESPACE` alone, fd 3 the container's
//! stdout, fd 4 its stderr, fd 5 a pipe it writes to or closes once ready)
//! and waits for it to be ready. stdout and stderr go straight to the
//! instance process as its fds 1 and 2; stdin is pumped from its fifo into a pipe,
//! so that CloseIO (or the guest's exit) can end it.
//!
//! The pump thread alone owns the pipe's writing end: it may block there
//! while the guest does not read, and nothing else ever waits on it. CloseIO
//! only signals the pump (through a cancel pipe), which then hands on what
//! the fifo still holds and closes the pipe, so the guest reads EOF.

use crate::error::ShimError;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

pub struct Stdio {
    /// The paths containerd gave: stdin, stdout, stderr.
    pub paths: (String, String, String),
    /// Writing end of the stdin pump's cancel pipe; dropping it tells the
    /// pump that no more input comes.
    cancel: Mutex<Option<File>>,
}

/// The fds the instance process gets as 0, 1, 2 (None: /dev/null).
pub struct ChildFds {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

fn io_err(id: &str, context: String) -> impl FnOnce(std::io::Error) -> ShimError + '_ {
    move |source| ShimError::Io { id: id.to_string(), context, source }
}

fn pipe(id: &str) -> Result<(File, File), ShimError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| io_err(id, "creating a pipe".into())(e.into()))?;
    Ok((File::from(r), File::from(w)))
}

fn open_output(id: &str, path: &str) -> Result<Option<OwnedFd>, ShimError> {
    if path.is_empty() {
        return Ok(None);
    }
    if let Some(file) = path.strip_prefix("file://") {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map_err(io_err(id, format!("opening log file {file}")))?;
        return Ok(Some(f.into()));
    }
    if let Some((scheme, _)) = path.split_once("://") {
        return Err(ShimError::Unimplemented(format!(
            "container {id:?}: log URI scheme {scheme}:// (fifos, file:// and binary:// are supported)"
        )));
    }
    // Read+write: opening never blocks on a fifo, and the fifo never sees
    // EPIPE while containerd's reader comes and goes.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(id, format!("opening stdio fifo {path}")))?;
    Ok(Some(f.into()))
}

impl Stdio {
    pub fn open(id: &str, stdin: &str, stdout: &str, stderr: &str) -> Result<(Stdio, ChildFds), ShimError> {
        let (out, err) = match stdout.strip_prefix("binary://") {
            Some(uri) => {
                if !stderr.is_empty() && stderr != stdout {
                    return Err(ShimError::Unimplemented(format!(
                        "container {id:?}: a binary:// log URI for stdout and another for stderr ({stderr})"
                    )));
                }
                let (out, err) = start_logger(id, uri)?;
                (Some(out), Some(err))
            }
            None => (open_output(id, stdout)?, open_output(id, stderr)?),
        };
        let (cancel_r, cancel_w) = pipe(id)?;
        let mut child_in = None;
        if !stdin.is_empty() {
            let fifo = OpenOptions::new()
                .read(true)
                .custom_flags(libc_o_nonblock())
                .open(stdin)
                .map_err(io_err(id, format!("opening stdin fifo {stdin}")))?;
            let (r, w) = pipe(id)?;
            child_in = Some(OwnedFd::from(r));
            std::thread::Builder::new()
                .name(format!("stdin-{id}"))
                .spawn(move || pump(fifo, cancel_r, w))
                .map_err(io_err(id, "starting the stdin pump".into()))?;
        }
        let stdio = Stdio { paths: (stdin.into(), stdout.into(), stderr.into()), cancel: Mutex::new(Some(cancel_w)) };
        Ok((stdio, ChildFds { stdin: child_in, stdout: out, stderr: err }))
    }

    /// No more input: the pump passes on what the fifo holds now, then
    /// closes the guest's stdin (it reads EOF). Never blocks.
    pub fn close_stdin(&self) {
        self.cancel.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The namespace of this shim's containers, for logging programs.
static NAMESPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn set_namespace(ns: &str) {
    let _ = NAMESPACE.set(ns.to_string());
}

/// `%XX` escapes decoded; `+` is a space where `plus_is_space` (a URI's
/// query), itself elsewhere (gRPC's messages).
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 3 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
            .flatten();
        match (hex, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') if plus_is_space => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The program and its arguments from `binary://` URI's rest
/// (`/PATH?K=V&K2=V2`).
fn logger_command(uri: &str) -> (String, Vec<String>) {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(percent_decode(k, true));
        if !v.is_empty() {
            args.push(percent_decode(v, true));
        }
    }
    (percent_decode(path, true), args)
}

/// How long a logging program may take to say it is ready.
const LOGGER_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the logging program of a `binary://` URI; the writing ends of
/// the container's stdout and stderr.
fn start_logger(id: &str, uri: &str) -> Result<(OwnedFd, OwnedFd), ShimError> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::process::CommandExt;
    let (program, args) = logger_command(uri);
    let (out_r, out_w) = pipe(id)?;
    let (err_r, err_w) = pipe(id)?;
    let (ready_r, ready_w) = pipe(id)?;
    // Above the fds the child gets (3, 4, 5), close-on-exec: dup2 in the
    // child gives it clean copies at 3, 4 and 5.
    let high = |f: &File| -> Result<OwnedFd, ShimError> {
        // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd we own.
        let fd = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        if fd < 0 {
            return Err(io_err(id, "duplicating a pipe".into())(std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let fds = [high(&out_r)?, high(&err_r)?, high(&ready_w)?];
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", NAMESPACE.get().map(String::as_str).unwrap_or("default"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only dup2, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = {
        let _guard = crate::reaper::spawning();
        cmd.spawn().map_err(io_err(id, format!("starting the log program {program}")))?
    };
    // The shim keeps only the writing ends and the ready pipe's reader.
    drop((fds, out_r, err_r, ready_w));
    let mut ready_r = ready_r;
    let pfd = [PollFd::new(ready_r.as_fd(), PollFlags::POLLIN)];
    let mut pfd = pfd;
    let ready = poll(&mut pfd, PollTimeout::try_from(LOGGER_READY.as_millis() as i32).unwrap_or(PollTimeout::MAX));
    if !matches!(ready, Ok(n) if n > 0) {
        // SAFETY: kill(2) of the child we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        return Err(ShimError::Io {
            id: id.to_string(),
            context: format!("the log program {program} (log URI binary://{uri})"),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, format!("not ready after {LOGGER_READY:?}")),
        });
    }
    let mut byte = [0u8; 1];
    let _ = ready_r.read(&mut byte);
    log::info!("container {id}: logging to {program} (pid {})", child.id());
    Ok((out_w.into(), err_w.into()))
}

fn libc_o_nonblock() -> i32 {
    OFlag::O_NONBLOCK.bits()
}

/// Copies the stdin fifo into the instance's stdin pipe until the fifo's
/// writer leaves, the guest's end is gone, or it is told no more input
/// comes (then it passes on what the fifo still holds first). A fifo nobody
/// has opened for writing yet does not count as ended: poll waits for a
/// writer. Dropping `target` on return gives the guest EOF.
fn pump(mut fifo: File, cancel: File, mut target: File) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut draining = false;
    loop {
        if !draining {
            let mut fds =
                [PollFd::new(fifo.as_fd(), PollFlags::POLLIN), PollFd::new(cancel.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
            let ready = fds[0].revents().unwrap_or(PollFlags::empty());
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                draining = true;
            } else if ready.is_empty() {
                continue;
            }
        }
        match fifo.read(&mut buf) {
            Ok(0) => break,
            // Blocks while the guest does not read; the guest's exit ends it (EPIPE).
            Ok(n) => {
                if target.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if draining {
                    break;
                }
            }
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    /// CloseIO while the guest leaves its stdin unread and more input than
    /// the pipe holds is pending: close_stdin returns at once (it is called
    /// with the task table locked), and the guest still gets the input, then EOF.
    #[test]
    fn binary_log_uris_give_the_program_and_its_args() {
        assert_eq!(
            logger_command("/usr/local/bin/nerdctl?_NERDCTL_INTERNAL_LOGGING=%2Fvar%2Flib%2Fnerdctl%2Fab12&x"),
            (
                "/usr/local/bin/nerdctl".to_string(),
                vec!["_NERDCTL_INTERNAL_LOGGING".into(), "/var/lib/nerdctl/ab12".into(), "x".into()]
            )
        );
        assert_eq!(logger_command("/bin/log%20ger"), ("/bin/log ger".to_string(), vec![]));
        assert_eq!(percent_decode("a+b%zz%4", true), "a b%zz%4");
        assert_eq!(percent_decode("no%20such+thing", false), "no such+thing");
    }

    #[test]
    fn close_stdin_never_waits_on_a_guest_that_does_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (stdio, fds) = Stdio::open("t", fifo.to_str().unwrap(), "", "").unwrap();
        let guest = File::from(fds.stdin.unwrap());
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        let sent = 150 * 1024;
        let feeder = std::thread::spawn(move || writer.write_all(&vec![b'x'; sent]).is_ok());
        // Let the pump fill the guest's pipe and block on it.
        std::thread::sleep(Duration::from_millis(300));
        let stdio = Arc::new(stdio);
        let (tx, rx) = mpsc::channel();
        let s = Arc::clone(&stdio);
        std::thread::spawn(move || {
            s.close_stdin();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("close_stdin blocked behind the stdin pump");
        // The guest reads what was passed on, then EOF.
        let mut got = Vec::new();
        (&guest).read_to_end(&mut got).unwrap();
        assert!(!got.is_empty() && got.iter().all(|&b| b == b'x'), "{} bytes", got.len());
        drop(guest);
        let _ = feeder.join();
    }
}
