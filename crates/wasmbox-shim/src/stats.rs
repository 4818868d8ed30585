//! Task metrics in the messages containerd decodes, as the runc shim
//! gives them: from the container's cgroup (cgroups v1 `Metrics`, or v2's
//! on a unified host).

use containerd_shim::protos::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;

/// The container's cgroup figures: CPU, memory (with limit, peak, failures
/// and OOM kills) and pids.
pub fn cgroup_metrics(cg: &wasmbox_sandbox::cgroup::Cgroup) -> std::io::Result<Any> {
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

/// A container's metrics (see [`cgroup_metrics`]), failures named as the
/// container's.
pub fn container_metrics(id: &str, cg: &wasmbox_sandbox::cgroup::Cgroup) -> Result<Any, crate::error::ShimError> {
    cgroup_metrics(cg).map_err(|e| crate::error::ShimError::Io {
        id: id.to_string(),
        context: format!("reading the metrics of cgroup {}", cg.path),
        source: e,
    })
}

/// The pids in a container's cgroup, or its own process's when the cgroup
/// lists none.
pub fn container_pids(cg: &wasmbox_sandbox::cgroup::Cgroup, pid: u32) -> Vec<u32> {
    let mut pids = cg.pids();
    if pids.is_empty() {
        pids.push(pid);
    }
    pids
}

/// Calls `on_oom` each time the kernel's OOM killer acts in the cgroup,
/// until the cgroup is removed: cgroups-rs's eventfd on
/// `memory.oom_control` (v1), read by a thread that blocks (no polling),
/// and one more here that forwards. cgroup v2 hosts get no OOM events yet
/// (logged).
pub fn watch_oom(cg: &wasmbox_sandbox::cgroup::Cgroup, id: &str, on_oom: Box<dyn Fn() + Send>) {
    use cgroups_rs::fs::memory::MemController;
    if cg.v2() {
        log::info!("container {id}: OOM events are not watched on cgroup v2 yet");
        return;
    }
    let Some(mem) = cg.inner().controller_of::<MemController>() else { return };
    match mem.register_oom_event(id) {
        Ok(rx) => {
            let spawned = std::thread::Builder::new().name("oom".into()).stack_size(64 * 1024).spawn(move || {
                // The sender goes when the cgroup does.
                while rx.recv().is_ok() {
                    on_oom();
                }
            });
            if let Err(e) = spawned {
                log::warn!("container {id}: no OOM events: {e}");
            }
        }
        Err(e) => log::warn!("container {id}: no OOM events: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::protobuf::Message;

    /// A real cgroup (the tests run as root): its limit comes back in the
    /// message containerd decodes.
    #[test]
    fn metrics_come_from_the_cgroup() {
        let path = format!("wasmbox-unit/stats-{}", std::process::id());
        let cg = wasmbox_sandbox::cgroup::Cgroup::create(&path).unwrap();
        let limit = 48 << 20;
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_value(serde_json::json!({"memory": {"limit": limit}, "pids": {"limit": 7}})).unwrap();
        cg.apply(&resources).unwrap();
        let any = super::cgroup_metrics(&cg);
        cg.remove().unwrap();
        let _ = wasmbox_sandbox::cgroup::Cgroup::load("wasmbox-unit").remove();
        let any = any.unwrap();
        if cg.v2() {
            assert!(any.type_url.ends_with("io.containerd.cgroups.v2.Metrics"), "{}", any.type_url);
            let m = containerd_shim::protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value).unwrap();
            assert_eq!(m.memory.usage_limit, limit);
            assert_eq!(m.pids.limit, 7);
        } else {
            assert!(any.type_url.ends_with("io.containerd.cgroups.v1.Metrics"), "{}", any.type_url);
            let m = super::Metrics::parse_from_bytes(&any.value).unwrap();
            assert_eq!(m.memory.usage.limit, limit);
            assert_eq!(m.pids.limit, 7);
        }
    }
}
