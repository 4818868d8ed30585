//! The wasm layer of an image whose rootfs holds no wasm: an OCI wasm
//! artifact (config `application/vnd.wasm.config.v0+json`, one
//! `application/wasm` layer) or runwasi's layout (an image config and an
//! `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`
//! layer). containerd stores such layers at pull without unpacking them,
//! so the shim reads them from its content store over containerd's gRPC
//! API (the `-address` it was started with, its namespace): the
//! container's image (Containers.Get), the image's manifest (Images.Get,
//! Content.Read), and the layer, checked against its digest.
//!
//! The client is a few messages on hyper's HTTP/2 over the unix socket:
//! gRPC framing and the fields read, encoded by hand.

use crate::error::ShimError;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

static CONTAINERD: OnceLock<(String, String)> = OnceLock::new();

/// containerd's gRPC socket and this shim's namespace, from its flags.
pub fn set_containerd(address: &str, namespace: &str) {
    let _ = CONTAINERD.set((address.to_string(), namespace.to_string()));
}

const WASM_LAYERS: [&str; 2] = ["application/wasm", "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"];

// --- protobuf, the little of it these messages need

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn string_field(out: &mut Vec<u8>, field: u32, s: &str) {
    varint(out, ((field << 3) | 2) as u64);
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The length-delimited fields numbered `field` of a message.
fn fields(b: &[u8], field: u32) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some(key) = read_varint(b, &mut i) else { break };
        let (num, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                if read_varint(b, &mut i).is_none() {
                    break;
                }
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let Some(len) = read_varint(b, &mut i) else { break };
                let end = i.saturating_add(len as usize);
                if end > b.len() {
                    break;
                }
                if num == field {
                    out.push(&b[i..end]);
                }
                i = end;
            }
            _ => break,
        }
    }
    out
}

fn field_str(b: &[u8], field: u32) -> String {
    fields(b, field).first().map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_default()
}

// --- gRPC over HTTP/2 on the unix socket

struct Grpc {
    sender: hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    namespace: String,
}

impl Grpc {
    /// One call; the response messages (a server stream gives several).
    async fn call(&mut self, method: &str, message: Vec<u8>) -> std::result::Result<Vec<Vec<u8>>, String> {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("http://containerd{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("containerd-namespace", &self.namespace)
            .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
            .map_err(|e| e.to_string())?;
        let resp = self.sender.send_request(req).await.map_err(|e| e.to_string())?;
        let head_status = resp.headers().get("grpc-status").cloned();
        let head_message = resp.headers().get("grpc-message").cloned();
        let collected = resp.into_body().collect().await.map_err(|e| e.to_string())?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = trailers.get("grpc-status").cloned().or(head_status);
        let message = trailers.get("grpc-message").cloned().or(head_message);
        let code = status.as_ref().and_then(|s| s.to_str().ok()).unwrap_or("0");
        if code != "0" {
            let m = message.as_ref().and_then(|s| s.to_str().ok()).unwrap_or("");
            return Err(format!("{method}: gRPC status {code}: {}", crate::stdio::percent_decode(m, false)));
        }
        let body = collected.to_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i + 5 <= body.len() {
            let len = u32::from_be_bytes([body[i + 1], body[i + 2], body[i + 3], body[i + 4]]) as usize;
            let end = (i + 5 + len).min(body.len());
            out.push(body[i + 5..end].to_vec());
            i = end;
        }
        Ok(out)
    }

    async fn read_blob(&mut self, digest: &str) -> std::result::Result<Vec<u8>, String> {
        let mut req = Vec::new();
        string_field(&mut req, 1, digest);
        let mut data = Vec::new();
        for m in self.call("/containerd.services.content.v1.Content/Read", req).await? {
            for chunk in fields(&m, 2) {
                data.extend_from_slice(chunk);
            }
        }
        let actual = format!("sha256:{:x}", Sha256::digest(&data));
        if actual != digest {
            return Err(format!("blob {digest} read from the content store is {actual}"));
        }
        Ok(data)
    }
}

/// The container's image and its one wasm layer, if its manifest has
/// wasm layers: `Ok(None)` for an image without (or when the shim knows no
/// containerd); an error names the image and what is wrong (two wasm
/// layers, a digest mismatch, an unreachable containerd).
pub fn wasm_layer(id: &str) -> Result<Option<(String, Vec<u8>)>, ShimError> {
    let Some((address, namespace)) = CONTAINERD.get() else { return Ok(None) };
    // IO only (no timers). With tokio's signal feature in the build, the IO
    // driver also makes the process-wide signal socket pair, once.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| ShimError::InvalidArgument(format!("container {id:?}: starting a containerd client: {e}")))?;
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(address).await.map_err(|e| {
            ShimError::InvalidArgument(format!("container {id:?}: connecting to containerd at {address}: {e}"))
        })?;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| ShimError::InvalidArgument(format!("container {id:?}: containerd at {address}: {e}")))?;
        let conn = tokio::spawn(conn);
        let mut grpc = Grpc { sender, namespace: namespace.clone() };
        let found = lookup(id, &mut grpc).await;
        // The connection (and its socket) ends here, not with the runtime.
        drop(grpc);
        conn.abort();
        let _ = conn.await;
        found
    })
}

async fn lookup(id: &str, c: &mut Grpc) -> Result<Option<(String, Vec<u8>)>, ShimError> {
    let fail = |image: &str, why: String| ShimError::InvalidArgument(format!("container {id:?}: image {image}: {why}"));
    let mut req = Vec::new();
    string_field(&mut req, 1, id);
    let container = c.call("/containerd.services.containers.v1.Containers/Get", req).await.map_err(|e| fail("?", e))?;
    let container =
        container.first().map(|m| fields(m, 1).first().map(|c| c.to_vec()).unwrap_or_default()).unwrap_or_default();
    let image = field_str(&container, 3);
    if image.is_empty() {
        return Ok(None);
    }
    let mut req = Vec::new();
    string_field(&mut req, 1, &image);
    let got = c.call("/containerd.services.images.v1.Images/Get", req).await.map_err(|e| fail(&image, e))?;
    let img = got.first().and_then(|m| fields(m, 1).first().map(|i| i.to_vec())).unwrap_or_default();
    let target = fields(&img, 3).first().map(|t| t.to_vec()).unwrap_or_default();
    let (media_type, digest) = (field_str(&target, 1), field_str(&target, 2));
    if !media_type.contains("manifest") || media_type.contains("list") {
        // An index: wasm images are pushed as one manifest.
        return Ok(None);
    }
    let manifest = c.read_blob(&digest).await.map_err(|e| fail(&image, e))?;
    let m: serde_json::Value =
        serde_json::from_slice(&manifest).map_err(|e| fail(&image, format!("manifest {digest}: {e}")))?;
    let layers: Vec<&serde_json::Value> = m["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["mediaType"].as_str().is_some_and(|t| WASM_LAYERS.contains(&t)))
        .collect();
    match layers.len() {
        0 => return Ok(None),
        1 => {}
        n => return Err(fail(&image, format!("{n} wasm layers; one is run, so which is ambiguous"))),
    }
    let layer_digest = layers[0]["digest"].as_str().unwrap_or("");
    let wasm = c.read_blob(layer_digest).await.map_err(|e| {
        if e.contains("gRPC status 5:") {
            // NotFound: containerd 1.7 and 2.x leave out, at import, a
            // layer of a type they do not know whose blob fails its digest.
            fail(&image, format!("wasm layer {layer_digest} is not in containerd's content store ({e})"))
        } else {
            fail(&image, e)
        }
    })?;
    log::info!("container {id}: wasm layer {layer_digest} of image {image} ({} bytes)", wasm.len());
    Ok(Some((image, wasm)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_fields_round_trip() {
        let mut inner = Vec::new();
        string_field(&mut inner, 1, "application/vnd.oci.image.manifest.v1+json");
        string_field(&mut inner, 2, "sha256:ab");
        varint(&mut inner, (3 << 3) as u64);
        varint(&mut inner, 300);
        let mut outer = Vec::new();
        string_field(&mut outer, 1, "img");
        varint(&mut outer, ((3 << 3) | 2) as u64);
        varint(&mut outer, inner.len() as u64);
        outer.extend_from_slice(&inner);
        assert_eq!(field_str(&outer, 1), "img");
        let target = fields(&outer, 3)[0];
        assert_eq!(field_str(target, 2), "sha256:ab");
        assert!(fields(&outer[..outer.len() - 2], 3).is_empty());
    }
}
