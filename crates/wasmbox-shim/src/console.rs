//! A Linux container's TTY, as containerd's runc shim does it: runc gets
//! `--console-socket`, makes the pty, and sends its master over that
//! socket (SCM_RIGHTS); the shim copies the master to the stdout fifo and
//! the stdin pump's pipe to the master, each in a thread that blocks (no
//! polling) and ends with the pty. ResizePty sets the master's window size.
//! A wasm container's pty is the shim's own ([`open_pty`]): the instance
//! gets the slave as its stdio and makes it its controlling terminal.

use crate::error::ShimError;
use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A listening console socket in a private directory of its own (the
/// bundle's path may be longer than a socket path can be).
pub struct ConsoleSocket {
    dir: PathBuf,
    pub path: PathBuf,
    listener: UnixListener,
}

fn io(id: &str, context: String) -> impl FnOnce(std::io::Error) -> ShimError + '_ {
    move |source| ShimError::Io { id: id.to_string(), context, source }
}

impl ConsoleSocket {
    pub fn new(id: &str) -> Result<ConsoleSocket, ShimError> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wasmbox-pty-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(io(id, format!("creating {}", dir.display())))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let path = dir.join("pty.sock");
        let listener = UnixListener::bind(&path).map_err(io(id, format!("binding {}", path.display())))?;
        Ok(ConsoleSocket { dir, path, listener })
    }

    /// The pty master runc sent (runc has exited: it connected already).
    pub fn receive(&self, id: &str) -> Result<OwnedFd, ShimError> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        self.listener.set_nonblocking(true).map_err(io(id, "console socket".into()))?;
        let (conn, _) = self.listener.accept().map_err(io(id, "runc sent no console (pty master)".into()))?;
        conn.set_nonblocking(false).map_err(io(id, "console socket".into()))?;
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| io(id, "receiving the pty master".into())(e.into()))?;
        for cmsg in msg.cmsgs().map_err(|e| io(id, "receiving the pty master".into())(e.into()))? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just gave us this fd; nothing else owns it.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(ShimError::FailedPrecondition { id: id.to_string(), reason: "runc sent no pty master".into() })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new pty for a container whose TTY the shim makes itself (a wasm
/// container's): (master, slave).
pub fn open_pty(id: &str) -> Result<(OwnedFd, OwnedFd), ShimError> {
    let pty = nix::pty::openpty(None, None).map_err(|e| io(id, "opening a pty".into())(e.into()))?;
    for fd in [&pty.master, &pty.slave] {
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    }
    Ok((pty.master, pty.slave))
}

/// A running TTY: the master, and the copies to and from it.
pub struct Console {
    master: OwnedFd,
}

impl Console {
    /// Starts copying: the master to `stdout` (until the pty closes), and
    /// `stdin` (the stdin pump's pipe) to the master (until it ends).
    pub fn start(
        id: &str,
        master: OwnedFd,
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
    ) -> Result<Console, ShimError> {
        let dup = |f: &OwnedFd| f.try_clone().map_err(io(id, "duplicating the pty master".into()));
        if let Some(out) = stdout {
            let mut from = File::from(dup(&master)?);
            let mut to = File::from(out);
            std::thread::Builder::new()
                .name(format!("tty-out-{id}"))
                .spawn(move || {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match from.read(&mut buf) {
                            // EIO: every end of the pty's slave side is closed.
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                })
                .map_err(io(id, "starting the TTY output copy".into()))?;
        }
        if let Some(input) = stdin {
            let mut from = File::from(input);
            let mut to = File::from(dup(&master)?);
            std::thread::Builder::new()
                .name(format!("tty-in-{id}"))
                .spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                })
                .map_err(io(id, "starting the TTY input copy".into()))?;
        }
        Ok(Console { master })
    }

    /// Sets the pty's window size (ResizePty).
    pub fn resize(&self, width: u32, height: u32) -> Result<(), ShimError> {
        let ws = libc::winsize { ws_row: height as u16, ws_col: width as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer we pass.
        let r = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        nix::errno::Errno::result(r).map(|_| ()).map_err(|e| ShimError::Io {
            id: String::new(),
            context: "resizing the TTY".into(),
            source: e.into(),
        })
    }
}
