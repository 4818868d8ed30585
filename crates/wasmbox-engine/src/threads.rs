//! Where a compile's parallel work runs.
//!
//! wasmtime compiles a module's functions in parallel on rayon's current
//! pool. In an instance process that must not be rayon's global pool: its
//! threads would outlive the compile, and the process is about to drop its
//! privileges (user, capabilities, seccomp), which must then hold for
//! every thread it has. So an instance compiles on a scoped pool whose
//! threads are made for one compile and joined before it returns (no
//! thread exists before or after), as many as the CPUs the process may use
//! (its affinity and its cgroup's CPU quota). A cached start makes none.

/// How a compile may use threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// On the calling thread alone.
    One,
    /// On rayon's global pool (a process that lives on with its threads:
    /// the CLI, a background compile).
    Global,
    /// On a pool of this many threads, made for each compile and joined
    /// before it returns (an instance process).
    Scoped(usize),
}

impl Threads {
    /// A scoped pool as large as the CPUs this process may use (one thread
    /// means no pool).
    pub fn scoped() -> Threads {
        match std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) {
            0 | 1 => Threads::One,
            n => Threads::Scoped(n),
        }
    }

    /// Whether engines are configured for parallel compilation.
    pub fn parallel(self) -> bool {
        self != Threads::One
    }

    /// Runs `compile` where these threads say; a scoped pool that cannot be
    /// made (no threads left under a pids limit, say) is an error, never a
    /// fall back to the global pool.
    pub fn run<R: Send>(self, compile: impl FnOnce() -> R + Send) -> Result<R, String> {
        match self {
            Threads::One | Threads::Global => Ok(compile()),
            Threads::Scoped(n) => {
                let done = rayon_core::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("{THREAD_NAME}{i}"))
                    .build_scoped(|thread| thread.run(), |pool| pool.install(compile))
                    .map_err(|e| format!("starting {n} compile threads: {e}"));
                gone();
                done
            }
        }
    }
}

/// The name of a scoped pool's threads, with their index.
const THREAD_NAME: &str = "compile-";

/// Threads of this process whose name is a compile thread's.
fn compile_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(THREAD_NAME)))
                .count()
        })
        .unwrap_or(0)
}

/// Waits (up to a second) for joined compile threads to leave the
/// process: a thread is joined when it has finished, a moment before the
/// kernel has removed it, and the privilege drop that follows counts the
/// process's threads.
fn gone() {
    for _ in 0..1000 {
        if compile_threads() == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (bounded) until `compile_threads()` is `n`; what it is then.
    fn settle(n: usize) -> usize {
        for _ in 0..200 {
            if compile_threads() == n {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        compile_threads()
    }

    /// A scoped compile runs on its pool's threads and leaves none behind
    /// (a joined thread may show in /proc for a moment while it exits).
    #[test]
    fn scoped_threads_are_joined() {
        let on = Threads::Scoped(3).run(|| (rayon_core::current_num_threads(), settle(3))).unwrap();
        assert_eq!(on, (3, 3));
        assert_eq!(compile_threads(), 0);
        assert_eq!(Threads::One.run(|| 7).unwrap(), 7);
    }
}
