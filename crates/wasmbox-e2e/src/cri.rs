//! Pods and containers through crictl, as the kubelet makes them: the
//! CRI tier and the CRI benchmark share these.

use crate::Containerd;
use anyhow::Result;
use serde_json::{json, Value};

/// A pod made with `crictl runp`.
pub struct Pod {
    pub id: String,
    /// Its config file (crictl create needs it again).
    pub config: String,
}

impl Containerd {
    /// `crictl runp --runtime HANDLER`: a pod named `name` (host network or
    /// its own; `cgroup_parent` as the kubelet gives one).
    pub fn runp(&self, name: &str, handler: &str, host_network: bool, cgroup_parent: Option<&str>) -> Result<Pod> {
        let logs = self.dir.join("pods").join(name);
        std::fs::create_dir_all(&logs)?;
        let mut config = json!({
            "metadata": {"name": name, "namespace": "wasmbox-test", "uid": format!("uid-{name}"), "attempt": 0},
            "log_directory": logs,
            "linux": {},
        });
        if host_network {
            // NamespaceMode NODE; the kubelet sets no hostname then (the
            // pod shares the host's UTS namespace).
            config["linux"] = json!({"security_context": {"namespace_options": {"network": 2}}});
        } else {
            config["hostname"] = json!(name);
        }
        if let Some(parent) = cgroup_parent {
            config["linux"]["cgroup_parent"] = json!(parent);
        }
        let path = self.dir.join(format!("pod-{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&config)?)?;
        let config = path.display().to_string();
        let id = self.crictl_ok(&["runp", "--runtime", handler, &config])?;
        Ok(Pod { id, config })
    }

    /// `crictl create`: a container of `pod` (not started), with `linux`
    /// as its `LinuxContainerConfig`.
    pub fn create_in(
        &self,
        pod: &Pod,
        name: &str,
        attempt: u32,
        image: &str,
        command: &[&str],
        linux: Value,
    ) -> Result<String> {
        let config = json!({
            "metadata": {"name": name, "attempt": attempt},
            "image": {"image": image},
            "command": command,
            "log_path": format!("{name}-{attempt}.log"),
            "linux": linux,
        });
        let path = self.dir.join(format!("ctr-{}-{name}-{attempt}.json", pod.id));
        std::fs::write(&path, serde_json::to_vec(&config)?)?;
        self.crictl_ok(&["create", &pod.id, &path.display().to_string(), &pod.config])
    }

    /// Creates and starts a container of `pod`; its id.
    pub fn run_in(&self, pod: &Pod, name: &str, image: &str, command: &[&str]) -> Result<String> {
        let id = self.create_in(pod, name, 0, image, command, json!({}))?;
        self.crictl_ok(&["start", &id])?;
        Ok(id)
    }

    /// Stops and removes the pod.
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        self.crictl_ok(&["stopp", &pod.id])?;
        self.crictl_ok(&["rmp", &pod.id])?;
        Ok(())
    }
}
