//! A container's stdio: containerd hands the shim fifo paths (or a
//! `file://` log URI). stdout and stderr go straight to the instance
//! process as its fds 1 and 2; stdin is pumped from its fifo into a pipe,
//! so that CloseIO (or the guest's exit) can end it.

use crate::error::ShimError;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

pub struct Stdio {
    /// The paths containerd gave: stdin, stdout, stderr.
    pub paths: (String, String, String),
    /// Writing end of the stdin pump's cancel pipe; dropping it stops the pump.
    cancel: Mutex<Option<File>>,
    /// The pump's side of the instance's stdin pipe.
    stdin: Arc<Mutex<Option<File>>>,
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
            "container {id:?}: log URI scheme {scheme}:// (only fifos and file:// are supported)"
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
        let out = open_output(id, stdout)?;
        let err = open_output(id, stderr)?;
        let (cancel_r, cancel_w) = pipe(id)?;
        let pump_w: Arc<Mutex<Option<File>>> = Arc::new(Mutex::new(None));
        let mut child_in = None;
        if !stdin.is_empty() {
            let fifo = OpenOptions::new()
                .read(true)
                .custom_flags(libc_o_nonblock())
                .open(stdin)
                .map_err(io_err(id, format!("opening stdin fifo {stdin}")))?;
            let (r, w) = pipe(id)?;
            *pump_w.lock().unwrap() = Some(w);
            child_in = Some(OwnedFd::from(r));
            let target = Arc::clone(&pump_w);
            std::thread::Builder::new()
                .name(format!("stdin-{id}"))
                .spawn(move || pump(fifo, cancel_r, target))
                .map_err(io_err(id, "starting the stdin pump".into()))?;
        }
        let stdio = Stdio {
            paths: (stdin.into(), stdout.into(), stderr.into()),
            cancel: Mutex::new(Some(cancel_w)),
            stdin: pump_w,
        };
        Ok((stdio, ChildFds { stdin: child_in, stdout: out, stderr: err }))
    }

    /// Closes the guest's stdin (it reads EOF) and stops the pump.
    pub fn close_stdin(&self) {
        self.cancel.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn libc_o_nonblock() -> i32 {
    OFlag::O_NONBLOCK.bits()
}

/// Copies the stdin fifo into the instance's stdin pipe until the fifo's
/// writer leaves, or until cancelled. A fifo nobody has opened for writing
/// yet does not count as ended: poll waits for a writer.
fn pump(mut fifo: File, cancel: File, target: Arc<Mutex<Option<File>>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN), PollFd::new(cancel.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            break;
        }
        let ready = fds[0].revents().unwrap_or(PollFlags::empty());
        if ready.is_empty() {
            continue;
        }
        match fifo.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut t = target.lock().unwrap_or_else(|p| p.into_inner());
                let written = t.as_mut().is_some_and(|w| w.write_all(&buf[..n]).is_ok());
                if !written {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    target.lock().unwrap_or_else(|p| p.into_inner()).take();
}
