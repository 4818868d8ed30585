//! Reaping: the shim is a subreaper and reaps every child on SIGCHLD,
//! reporting each exit to containerd-shim's monitor (which feeds the
//! service and `mount_rootfs`).
//!
//! Spawning and reaping are serialized by [`SPAWN_LOCK`]: a spawner holds
//! it (shared) from fork until it has told the service which pid to
//! watch, and the reaper takes it (exclusive) for each round of `waitpid`.
//! So the reaper can never reap a child before its spawner knows it: not
//! the instance that fails at once (its exit would be lost and its id
//! stuck), not a child whose exec failed (std's `spawn` reaps that one
//! itself, and panics if someone else did first).

use std::sync::{RwLock, RwLockReadGuard};

static SPAWN_LOCK: RwLock<()> = RwLock::new(());

/// Held while a child is spawned and registered.
pub fn spawning() -> RwLockReadGuard<'static, ()> {
    SPAWN_LOCK.read().unwrap_or_else(|p| p.into_inner())
}

/// Starts the reaper thread.
pub fn start() -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])?;
    std::thread::Builder::new().name("reaper".into()).spawn(move || {
        for _ in signals.forever() {
            let _round = SPAWN_LOCK.write().unwrap_or_else(|p| p.into_inner());
            while let Some((pid, code)) = reap_one() {
                let _ = containerd_shim::monitor::monitor_notify_by_pid(pid, code);
            }
        }
    })?;
    Ok(())
}

/// Reaps one exited child: its pid and status (exit code, or 128+N when
/// signal N ended it); None when none is left to reap. Raw waitpid, not
/// nix's: nix cannot represent a death by a real-time signal and would
/// drop such an exit after reaping it, leaving the task RUNNING forever.
fn reap_one() -> Option<(i32, i32)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid only writes the status into our local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            if libc::WIFEXITED(status) {
                return Some((pid, libc::WEXITSTATUS(status)));
            }
            if libc::WIFSIGNALED(status) {
                return Some((pid, 128 + libc::WTERMSIG(status)));
            }
            continue;
        }
        if pid < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR {
            continue;
        }
        return None;
    }
}
