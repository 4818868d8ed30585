//! Minimal task metrics read from /proc (cgroup figures come with the
//! isolation work): memory (RSS), CPU time and the pid count, in the
//! cgroups v1 `Metrics` message containerd decodes.

use containerd_shim::protos::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;

/// Parses (rss bytes, user ns, kernel ns) from /proc/PID/{statm,stat}.
fn read_proc(pid: u32) -> std::io::Result<(u64, u64, u64)> {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let rss_pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    let ns = |ticks: u64| ticks * 1_000_000_000 / tick;
    let (utime, stime) = (fields.get(11).copied().unwrap_or(0), fields.get(12).copied().unwrap_or(0));
    Ok((rss_pages * page, ns(utime), ns(stime)))
}

pub fn metrics(pid: u32) -> std::io::Result<Any> {
    let (rss, user, kernel, current) = match read_proc(pid) {
        Ok((rss, user, kernel)) => (rss, user, kernel, 1),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0, 0, 0),
        Err(e) => return Err(e),
    };
    let m = Metrics {
        pids: MessageField::some(PidsStat { current, ..Default::default() }),
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage { total: user + kernel, user, kernel, ..Default::default() }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            rss,
            usage: MessageField::some(MemoryEntry { usage: rss, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    containerd_shim::util::convert_to_any(Box::new(m)).map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let (rss, user, kernel) = super::read_proc(std::process::id()).unwrap();
        assert!(rss > 0);
        let _ = (user, kernel);
        let any = super::metrics(std::process::id()).unwrap();
        assert!(any.type_url.ends_with("io.containerd.cgroups.v1.Metrics"), "{}", any.type_url);
    }
}
