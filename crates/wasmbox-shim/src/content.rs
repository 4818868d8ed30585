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
//! The client is containerd's generated gRPC API (`containerd-client`:
//! tonic on the unix socket), on a runtime of its own that lives only for
//! the lookup.

use crate::error::ShimError;
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, images_client::ImagesClient,
    GetContainerRequest, GetImageRequest, ReadContentRequest,
};
use containerd_client::tonic::{metadata::AsciiMetadataValue, transport::Channel, Code, Request, Status};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

static CONTAINERD: OnceLock<(String, String)> = OnceLock::new();

/// containerd's gRPC socket and this shim's namespace, from its flags.
pub fn set_containerd(address: &str, namespace: &str) {
    let _ = CONTAINERD.set((address.to_string(), namespace.to_string()));
}

/// The largest message taken from containerd: the most its gRPC server
/// sends (tonic's default is 4 MiB; a blob comes in chunks of 1 MiB).
const MAX_MESSAGE: usize = 16 << 20;

/// The container's image and its one wasm layer, if its manifest has
/// wasm layers: `Ok(None)` for an image without (or when the shim knows no
/// containerd); an error names the image and what is wrong (two wasm
/// layers, a digest mismatch, an unreachable containerd).
pub fn wasm_layer(id: &str) -> Result<Option<(String, Vec<u8>)>, ShimError> {
    let Some((address, namespace)) = CONTAINERD.get() else { return Ok(None) };
    wasm_layer_at(address, namespace, id)
}

fn wasm_layer_at(address: &str, namespace: &str, id: &str) -> Result<Option<(String, Vec<u8>)>, ShimError> {
    let bad = |what: String| ShimError::InvalidArgument(format!("container {id:?}: {what}"));
    let namespace = AsciiMetadataValue::try_from(namespace)
        .map_err(|e| bad(format!("namespace {namespace:?} of containerd at {address}: {e}")))?;
    // On the calling thread: a current-thread runtime starts no thread,
    // and no timer is armed (none is set on the channel; time is enabled
    // only so that a future tonic that sleeps cannot panic). With tokio's
    // signal feature in the build, the IO driver also makes the
    // process-wide signal socket pair, once. tonic spawns the channel's
    // HTTP/2 connection onto this runtime; dropping the runtime at the end
    // of this function drops it, and so closes the socket.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| bad(format!("starting a containerd client: {e}")))?;
    rt.block_on(async {
        let channel = containerd_client::connect(address)
            .await
            .map_err(|e| bad(format!("connecting to containerd at {address}: {}", causes(&e))))?;
        lookup(id, &Containerd { channel, namespace }).await
    })
}

/// An error and its causes: tonic's transport error says only "transport
/// error", the reason (no such socket, permission denied) is its source.
/// A cause that reads as the one before it (a wrapper that displays its
/// source) is said once.
fn causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let (mut last, mut next) = (s.clone(), e.source());
    while let Some(c) = next {
        let text = c.to_string();
        if text != last {
            s = format!("{s}: {text}");
        }
        (last, next) = (text, c.source());
    }
    s
}

/// A failed call, for a message: `Images.Get: NotFound: image "x": not found`.
fn failed(call: &str, s: &Status) -> String {
    format!("{call}: {:?}: {}", s.code(), s.message())
}

/// Why a blob was not read.
enum BlobError {
    /// containerd's answer to Content.Read.
    Read(Status),
    /// What was read is not what the digest names.
    Digest { digest: String, actual: String },
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobError::Read(s) => f.write_str(&failed("Content.Read", s)),
            BlobError::Digest { digest, actual } => write!(f, "blob {digest} read from the content store is {actual}"),
        }
    }
}

struct Containerd {
    channel: Channel,
    namespace: AsciiMetadataValue,
}

impl Containerd {
    /// `message` in this shim's namespace.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert("containerd-namespace", self.namespace.clone());
        r
    }

    async fn image_of(&self, id: &str) -> Result<String, Status> {
        let mut client = ContainersClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
        let got = client.get(self.request(GetContainerRequest { id: id.to_string() })).await?;
        Ok(got.into_inner().container.map(|c| c.image).unwrap_or_default())
    }

    /// The media type and digest of the image's target.
    async fn target_of(&self, image: &str) -> Result<(String, String), Status> {
        let mut client = ImagesClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
        let got = client.get(self.request(GetImageRequest { name: image.to_string() })).await?;
        let target = got.into_inner().image.and_then(|i| i.target).unwrap_or_default();
        Ok((target.media_type, target.digest))
    }

    /// The blob `digest` names, checked against it.
    async fn blob(&self, digest: &str) -> Result<Vec<u8>, BlobError> {
        let mut client = ContentClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
        // Size 0: the whole blob, in as many messages as containerd sends.
        let req = self.request(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 });
        let mut stream = client.read(req).await.map_err(BlobError::Read)?.into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(BlobError::Read)? {
            data.extend_from_slice(&chunk.data);
        }
        let actual = format!("sha256:{:x}", Sha256::digest(&data));
        if actual != digest {
            return Err(BlobError::Digest { digest: digest.to_string(), actual });
        }
        Ok(data)
    }
}

async fn lookup(id: &str, c: &Containerd) -> Result<Option<(String, Vec<u8>)>, ShimError> {
    let fail = |image: &str, why: String| ShimError::InvalidArgument(format!("container {id:?}: image {image}: {why}"));
    let image = c.image_of(id).await.map_err(|s| fail("?", failed("Containers.Get", &s)))?;
    if image.is_empty() {
        return Ok(None);
    }
    let (media_type, digest) = c.target_of(&image).await.map_err(|s| fail(&image, failed("Images.Get", &s)))?;
    if !media_type.contains("manifest") || media_type.contains("list") {
        // An index: wasm images are pushed as one manifest.
        return Ok(None);
    }
    let manifest = c.blob(&digest).await.map_err(|e| fail(&image, e.to_string()))?;
    let Some(layer_digest) =
        wasmbox_spec::wasm::wasm_layer_of(&manifest).map_err(|e| fail(&image, format!("manifest {digest}: {e}")))?
    else {
        return Ok(None);
    };
    let layer_digest = layer_digest.as_str();
    let wasm = c.blob(layer_digest).await.map_err(|e| match &e {
        // containerd 1.7 and 2.x leave out, at import, a layer of a type
        // they do not know whose blob fails its digest.
        BlobError::Read(s) if s.code() == Code::NotFound => {
            fail(&image, format!("wasm layer {layer_digest} is not in containerd's content store ({e})"))
        }
        _ => fail(&image, e.to_string()),
    })?;
    log::info!("container {id}: wasm layer {layer_digest} of image {image} ({} bytes)", wasm.len());
    Ok(Some((image, wasm)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_containerd_is_named_with_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let address = dir.path().join("containerd.sock");
        let address = address.to_str().unwrap();
        let err = wasm_layer_at(address, "default", "c1").unwrap_err().to_string();
        assert!(err.contains("container \"c1\""), "{err}");
        assert!(err.contains(&format!("connecting to containerd at {address}")), "{err}");
        assert!(err.ends_with(": transport error: No such file or directory (os error 2)"), "{err}");
    }

    #[test]
    fn a_namespace_that_is_no_header_value_is_refused() {
        let err = wasm_layer_at("/nonexistent", "bad\nns", "c1").unwrap_err().to_string();
        assert!(err.contains("namespace \"bad\\nns\""), "{err}");
    }

    #[test]
    fn blob_errors_read() {
        let e = BlobError::Read(Status::not_found("content digest sha256:ab: not found"));
        assert_eq!(e.to_string(), "Content.Read: NotFound: content digest sha256:ab: not found");
        let e = BlobError::Digest { digest: "sha256:ab".into(), actual: "sha256:cd".into() };
        assert_eq!(e.to_string(), "blob sha256:ab read from the content store is sha256:cd");
    }
}
