//! The shim's reaper never reaps a child before the thread that spawned
//! it is done with it. std's `spawn` waits for a child whose exec failed
//! and panics ("wait() should either return Ok or panic") when someone
//! else reaped it first: with the reaper running and children exiting
//! all around, a spawn that fails must still come back as an error.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn failed_spawns_are_left_to_their_spawner() {
    wasmbox_shim::reaper::start().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Children that exit at once keep SIGCHLD, and so the reaper, busy.
    let noise = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _spawning = wasmbox_shim::reaper::spawning();
                let _ = Command::new("/bin/true").stdout(Stdio::null()).spawn();
            }
        })
    };
    for _ in 0..1000 {
        let _spawning = wasmbox_shim::reaper::spawning();
        let mut cmd = Command::new("/nonexistent/wasmbox-reaper-test");
        // SAFETY: the hook does nothing; it makes std fork and exec (and
        // wait for a child whose exec failed) rather than posix_spawn.
        unsafe { cmd.pre_exec(|| Ok(())) };
        let err = cmd.spawn().expect_err("spawning a missing binary");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    }
    stop.store(true, Ordering::Relaxed);
    noise.join().unwrap();
}
