//! Task metrics in the messages containerd decodes, as the runc shim
//! gives them: from the container's cgroup (cgroups v1 `Metrics`, or v2's
//! on a unified host), with a /proc reading of one process as a fallback.

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

/// The container's cgroup figures: CPU, memory (with limit, peak, failures
/// and OOM kills) and pids.
pub fn cgroup_metrics(cg: &wasmbox_core::cgroup::Cgroup) -> std::io::Result<Any> {
    let to_any = |m: Box<dyn containerd_shim::protos::protobuf::MessageDyn>| {
        containerd_shim::util::convert_to_any(m).map_err(|e| std::io::Error::other(e.to_string()))
    };
    if cg.v2() {
        let m = containerd_shim::cgroup::collect_metrics_v2(cg.inner())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        return to_any(Box::new(m));
    }
    use cgroups_rs::fs::cpu::CpuController;
    use cgroups_rs::fs::cpuacct::CpuAcctController;
    use cgroups_rs::fs::memory::MemController;
    use cgroups_rs::fs::pid::PidController;
    use containerd_shim::protos::cgroups::metrics::{MemoryOomControl, Throttle};
    let inner = cg.inner();
    let mut m = Metrics::new();
    if let Some(a) = inner.controller_of::<CpuAcctController>().map(|c| c.cpuacct()) {
        let mut throttling = Throttle::new();
        if let Some(c) = inner.controller_of::<CpuController>() {
            for line in c.cpu().stat.lines() {
                let mut f = line.split_whitespace();
                let (k, v) = (f.next().unwrap_or(""), f.next().and_then(|v| v.parse().ok()).unwrap_or(0));
                match k {
                    "nr_periods" => throttling.periods = v,
                    "nr_throttled" => throttling.throttled_periods = v,
                    "throttled_time" => throttling.throttled_time = v,
                    _ => {}
                }
            }
        }
        m.cpu = MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: a.usage,
                user: a.usage_user,
                kernel: a.usage_sys,
                per_cpu: a.usage_percpu.split_whitespace().filter_map(|s| s.parse().ok()).collect(),
                ..Default::default()
            }),
            throttling: MessageField::some(throttling),
            ..Default::default()
        });
    }
    if let Some(c) = inner.controller_of::<MemController>() {
        let (s, sw, k) = (c.memory_stat(), c.memswap(), c.kmem_stat());
        let entry = |usage: u64, limit: i64, max: u64, failcnt: u64| {
            MessageField::some(MemoryEntry { usage, limit: limit.max(0) as u64, max, failcnt, ..Default::default() })
        };
        m.memory = MessageField::some(MemoryStat {
            cache: s.stat.cache,
            rss: s.stat.rss,
            rss_huge: s.stat.rss_huge,
            mapped_file: s.stat.mapped_file,
            dirty: s.stat.dirty,
            writeback: s.stat.writeback,
            pg_fault: s.stat.pgfault,
            pg_maj_fault: s.stat.pgmajfault,
            inactive_anon: s.stat.inactive_anon,
            active_anon: s.stat.active_anon,
            inactive_file: s.stat.inactive_file,
            active_file: s.stat.active_file,
            unevictable: s.stat.unevictable,
            hierarchical_memory_limit: s.stat.hierarchical_memory_limit.max(0) as u64,
            hierarchical_swap_limit: s.stat.hierarchical_memsw_limit.max(0) as u64,
            total_cache: s.stat.total_cache,
            total_rss: s.stat.total_rss,
            total_inactive_file: s.stat.total_inactive_file,
            total_active_file: s.stat.total_active_file,
            usage: entry(s.usage_in_bytes, s.limit_in_bytes, s.max_usage_in_bytes, s.fail_cnt),
            swap: entry(sw.usage_in_bytes, sw.limit_in_bytes, sw.max_usage_in_bytes, sw.fail_cnt),
            kernel: entry(k.usage_in_bytes, k.limit_in_bytes, k.max_usage_in_bytes, k.fail_cnt),
            ..Default::default()
        });
        m.memory_oom_control = MessageField::some(MemoryOomControl {
            oom_kill_disable: s.oom_control.oom_kill_disable as u64,
            under_oom: s.oom_control.under_oom as u64,
            oom_kill: s.oom_control.oom_kill,
            ..Default::default()
        });
    }
    if let Some(p) = inner.controller_of::<PidController>() {
        m.pids = MessageField::some(PidsStat {
            current: p.get_pid_current().unwrap_or(0),
            limit: match p.get_pid_max() {
                Ok(cgroups_rs::fs::MaxValue::Value(v)) => v.max(0) as u64,
                _ => 0,
            },
            ..Default::default()
        });
    }
    to_any(Box::new(m))
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
