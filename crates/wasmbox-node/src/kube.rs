//! The installer's one call to the Kubernetes API: a JSON merge patch of
//! its Node's labels and annotations, as the pod's service account (the
//! in-cluster configuration every pod gets: `KUBERNETES_SERVICE_HOST`,
//! `_PORT`, the token and CA under [`SERVICE_ACCOUNT`]).
//!
//! On reqwest (rustls with ring, as the registry client): a whole
//! Kubernetes client crate for one PATCH would bring its own HTTP stack
//! and the generated API types of every Kubernetes object.

use crate::error::Error;
use std::path::Path;
use std::time::Duration;

/// Where a pod's service-account credentials are mounted.
pub const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The label that says a node has the wasmbox runtime (what
/// deploy/runtimeclass.yaml's `scheduling.nodeSelector` selects).
pub const RUNTIME_LABEL: (&str, &str) = ("wasmbox.io/runtime", "wasmbox");
/// The label that names the installed wasmbox's version.
pub const INSTALLED_LABEL: &str = "wasmbox.io/installed";
/// The annotation that names the installed shim's SHA-256.
pub const SHIM_ANNOTATION: &str = "wasmbox.io/shim-sha256";

/// The API server as a pod reaches it, with the pod's credentials. Read
/// before the installer leaves the pod's mount namespace.
#[derive(Clone)]
pub struct InCluster {
    base: String,
    token: String,
    ca: Vec<u8>,
}

impl std::fmt::Debug for InCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InCluster").field("base", &self.base).finish_non_exhaustive()
    }
}

fn api_error(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Api { what: what.into(), reason: reason.into() }
}

impl InCluster {
    /// The in-cluster configuration of this pod.
    pub fn from_pod() -> Result<InCluster, Error> {
        Self::from(
            std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            std::env::var("KUBERNETES_SERVICE_PORT").ok(),
            Path::new(SERVICE_ACCOUNT),
        )
    }

    fn from(host: Option<String>, port: Option<String>, dir: &Path) -> Result<InCluster, Error> {
        let (Some(host), Some(port)) = (host.filter(|h| !h.is_empty()), port.filter(|p| !p.is_empty())) else {
            return Err(api_error(
                "the in-cluster configuration",
                "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set: --label-node works from a pod",
            ));
        };
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| {
                api_error(
                    format!("the service-account {name}"),
                    format!("{}: {e} (the pod needs its service account token mounted)", p.display()),
                )
            })
        };
        let token = String::from_utf8_lossy(&read("token")?).trim().to_string();
        let ca = read("ca.crt")?;
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Ok(InCluster { base: format!("https://{host}:{port}"), token, ca })
    }

    /// Sets (Some) or removes (None) labels and annotations of `node`.
    pub fn patch_node(
        &self,
        node: &str,
        labels: &[(&str, Option<&str>)],
        annotations: &[(&str, Option<&str>)],
    ) -> Result<(), Error> {
        let map = |kv: &[(&str, Option<&str>)]| -> serde_json::Map<String, serde_json::Value> {
            kv.iter().map(|(k, v)| (k.to_string(), v.map_or(serde_json::Value::Null, |v| v.into()))).collect()
        };
        let body = serde_json::json!({"metadata": {"labels": map(labels), "annotations": map(annotations)}});
        let what = format!("patching node {node}");
        let url = format!("{}/api/v1/nodes/{node}", self.base);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(&self.ca)
            .map_err(|e| api_error(&what, format!("the service-account CA: {e}")))?;
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| api_error(&what, e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| api_error(&what, format!("a runtime: {e}")))?;
        rt.block_on(async {
            let reply = client
                .patch(&url)
                .bearer_auth(&self.token)
                .header("Content-Type", "application/merge-patch+json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| api_error(&what, chain(&e)))?;
            let status = reply.status();
            if status.is_success() {
                return Ok(());
            }
            let text = reply.text().await.unwrap_or_default();
            // A Status object's message, else the body.
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            let hint = if status == reqwest::StatusCode::FORBIDDEN {
                " (the installer's ClusterRole must allow get and patch on nodes)"
            } else {
                ""
            };
            Err(api_error(&what, format!("{status}: {message}{hint}")))
        })
    }
}

/// An error and its sources (reqwest's own text names only the request).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_pod_it_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = InCluster::from(None, None, dir.path()).unwrap_err().to_string();
        assert!(err.contains("KUBERNETES_SERVICE_HOST"), "{err}");
        let err = InCluster::from(Some("10.96.0.1".into()), Some("443".into()), dir.path()).unwrap_err().to_string();
        assert!(err.contains("token") && err.contains("service account"), "{err}");
    }

    #[test]
    fn an_ipv6_service_address_is_bracketed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t\n").unwrap();
        std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
        let c = InCluster::from(Some("fd00::1".into()), Some("443".into()), dir.path()).unwrap();
        assert_eq!(c.base, "https://[fd00::1]:443");
        assert_eq!(c.token, "t");
    }
}
