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
        let config = self.pod_config(name, host_network, cgroup_parent)?;
        let id = self.crictl_ok(&["runp", "--runtime", handler, &config])?;
        Ok(Pod { id, config })
    }

    /// A pod's config file, as [`Containerd::runp`] gives it.
    fn pod_config(&self, name: &str, host_network: bool, cgroup_parent: Option<&str>) -> Result<String> {
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
        Ok(path.display().to_string())
    }

    /// `crictl run`: a pod named `name` and its one container `command`,
    /// made and started by one client (RunPodSandbox, CreateContainer,
    /// StartContainer), as the kubelet starts a pod; [`Containerd::pod_named`]
    /// finds it then.
    pub fn run_pod(&self, name: &str, handler: &str, image: &str, command: &[&str]) -> Result<()> {
        let config = self.pod_config(name, false, None)?;
        let ctr = self.container_config(name, "app", 0, image, command, json!({}), json!({}))?;
        self.crictl_ok(&["run", "--no-pull", "--runtime", handler, &ctr, &config])?;
        Ok(())
    }

    /// The pod [`Containerd::run_pod`] made as `name`.
    pub fn pod_named(&self, name: &str) -> Result<Pod> {
        let id = self.crictl_ok(&["pods", "-q", "--name", name])?;
        anyhow::ensure!(!id.is_empty() && !id.contains('\n'), "pod {name}: crictl pods gave {id:?}");
        Ok(Pod { id, config: self.dir.join(format!("pod-{name}.json")).display().to_string() })
    }

    /// A container's config file.
    #[allow(clippy::too_many_arguments)]
    fn container_config(
        &self,
        key: &str,
        name: &str,
        attempt: u32,
        image: &str,
        command: &[&str],
        linux: Value,
        annotations: Value,
    ) -> Result<String> {
        let config = json!({
            "metadata": {"name": name, "attempt": attempt},
            "image": {"image": image},
            "command": command,
            "log_path": format!("{name}-{attempt}.log"),
            "linux": linux,
            "annotations": annotations,
        });
        let path = self.dir.join(format!("ctr-{key}-{name}-{attempt}.json"));
        std::fs::write(&path, serde_json::to_vec(&config)?)?;
        Ok(path.display().to_string())
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
        self.create_annotated(pod, name, attempt, image, command, linux, json!({}))
    }

    /// [`Containerd::create_in`] with the container's `annotations` (CRI
    /// passes `wasmbox.io/*` ones to the OCI spec).
    #[allow(clippy::too_many_arguments)]
    pub fn create_annotated(
        &self,
        pod: &Pod,
        name: &str,
        attempt: u32,
        image: &str,
        command: &[&str],
        linux: Value,
        annotations: Value,
    ) -> Result<String> {
        let path = self.container_config(&pod.id, name, attempt, image, command, linux, annotations)?;
        self.crictl_ok(&["create", &pod.id, &path, &pod.config])
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
