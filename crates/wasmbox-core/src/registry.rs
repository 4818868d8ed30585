//! Pushing an image-layout tarball (as `wasmbox image build` writes it) to
//! a registry over the OCI distribution API, and pulling one into such a
//! tarball. A push checks each blob with HEAD and uploads it with POST +
//! PUT when missing, then PUTs the manifest under the tag; a pull GETs the
//! manifest and its blobs, each checked against its digest, and gives an
//! OCI wasm artifact the image config containerd needs to run it. Plain
//! HTTP only, which a registry on the node or in a test serves; TLS and
//! registry authentication are not supported yet and fail with an error
//! that says so.

use crate::error::{Error, Result};
use http_body_util::BodyExt;

/// A reference split into registry host, repository and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub host: String,
    pub repository: String,
    pub tag: String,
}

impl Reference {
    /// `HOST[:PORT]/REPO[:TAG]`; the host is required (a registry to push
    /// to), the tag defaults to `latest`.
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |why: &str| Error::InvalidArgument { what: format!("image reference {text:?}"), reason: why.into() };
        let (host, rest) = text.split_once('/').ok_or_else(|| bad("no registry host (HOST[:PORT]/REPO[:TAG])"))?;
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad("the first part must be a registry host such as 127.0.0.1:5000"));
        }
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (rest, "latest"),
        };
        let valid = |s: &str| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
        };
        if !valid(repository) || tag.is_empty() || tag.contains('@') {
            return Err(bad("the repository must be lowercase letters, digits and ._-/, the tag non-empty"));
        }
        Ok(Reference { host: host.into(), repository: repository.into(), tag: tag.into() })
    }
}

struct Client {
    host: String,
    rt: tokio::runtime::Runtime,
}

type Reply = (u16, http::HeaderMap, Vec<u8>);

impl Client {
    /// A client of `reference`'s registry; `verb` ("pushing to") for the
    /// error when HTTPS would be needed.
    fn new(reference: &Reference, plain_http: bool, verb: &str) -> Result<Client> {
        if !plain_http {
            return Err(Error::Unsupported(format!(
                "{verb} {} over HTTPS: only plain HTTP (--plain-http) is supported yet",
                reference.host
            )));
        }
        Ok(Client {
            host: reference.host.clone(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("starting the registry client", e))?,
        })
    }

    /// GET of a blob or manifest by digest, checked against it.
    fn get_checked(&self, repo: &str, kind: &str, digest: &str, accept: &str) -> Result<Vec<u8>> {
        let target = format!("/v2/{repo}/{kind}/{digest}");
        let (_, _, body) = self.expect("GET", &target, &[("accept", accept)], Vec::new(), &[200])?;
        let want = digest.strip_prefix("sha256:").ok_or_else(|| Error::InvalidArgument {
            what: format!("{kind} {digest} of {}/{repo}", self.host),
            reason: "only sha256 digests are supported".into(),
        })?;
        if let Some(got) = crate::image::digest_mismatch(want, &body) {
            return Err(Error::InvalidArgument {
                what: format!("{kind} {digest} of {}/{repo}", self.host),
                reason: format!("the registry sent content whose digest is {got}"),
            });
        }
        Ok(body)
    }

    fn send(&self, method: &str, target: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Reply> {
        let host = self.host.clone();
        let what = format!("{method} http://{host}{target}");
        let io = |e: std::io::Error| Error::io(what.clone(), e);
        self.rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(&host).await.map_err(io)?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| Error::io(what.clone(), std::io::Error::other(e)))?;
            tokio::spawn(conn);
            let mut req = hyper::Request::builder().method(method).uri(target).header("host", &host);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req
                .header("content-length", body.len())
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .map_err(|e| Error::InvalidArgument { what: what.clone(), reason: e.to_string() })?;
            let resp = sender.send_request(req).await.map_err(|e| Error::io(what.clone(), std::io::Error::other(e)))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::io(what.clone(), std::io::Error::other(e)))?
                .to_bytes()
                .to_vec();
            Ok((status, headers, body))
        })
    }

    /// The request's reply when its status is one of `ok`, else an error
    /// naming the request, the status and the registry's words.
    fn expect(&self, method: &str, target: &str, headers: &[(&str, &str)], body: Vec<u8>, ok: &[u16]) -> Result<Reply> {
        let reply = self.send(method, target, headers, body)?;
        if ok.contains(&reply.0) {
            return Ok(reply);
        }
        let words = String::from_utf8_lossy(&reply.2).trim().chars().take(300).collect::<String>();
        let reason = match reply.0 {
            401 | 403 => format!("the registry wants authentication (status {}): not supported yet; {words}", reply.0),
            s => format!("status {s}: {words}"),
        };
        Err(Error::InvalidArgument { what: format!("{method} http://{}{target}", self.host), reason })
    }
}

/// Pushes the tarball's image to `reference` (else the name it was built
/// with) over plain HTTP. Returns the pushed reference and manifest digest.
pub fn push(tarball: &std::path::Path, reference: Option<&str>, plain_http: bool) -> Result<String> {
    let bytes = std::fs::read(tarball).map_err(|e| Error::io(format!("reading {}", tarball.display()), e))?;
    let layout = crate::image::Layout::read(tarball, &bytes)?;
    let bad = |reason: String| layout.bad(reason);
    let index: serde_json::Value =
        serde_json::from_slice(layout.index()?).map_err(|e| bad(format!("index.json: {e}")))?;
    let desc = index["manifests"].get(0).ok_or_else(|| bad("index.json lists no manifest".into()))?;
    let name = desc["annotations"]["io.containerd.image.name"].as_str();
    let reference =
        Reference::parse(reference.or(name).ok_or_else(|| bad("no reference given and none in the image".into()))?)?;
    let client = Client::new(&reference, plain_http, "pushing to")?;
    let blob = |digest: &str| layout.blob(digest);
    let manifest_digest = desc["digest"].as_str().unwrap_or("");
    let manifest = blob(manifest_digest)?;
    let m: serde_json::Value = serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest: {e}")))?;
    if m.get("manifests").is_some() {
        return Err(Error::Unsupported("pushing an image index (several platforms)".into()));
    }
    let media_type = m["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json").to_string();
    let repo = &reference.repository;
    let digests: Vec<String> = std::iter::once(&m["config"])
        .chain(m["layers"].as_array().into_iter().flatten())
        .filter_map(|d| d["digest"].as_str().map(str::to_string))
        .collect();
    // Every blob is checked before anything is sent: a tampered image
    // leaves nothing in the registry.
    let blobs = digests.iter().map(|d| Ok((d, blob(d)?))).collect::<Result<Vec<_>>>()?;
    for (d, data) in blobs {
        if client.send("HEAD", &format!("/v2/{repo}/blobs/{d}"), &[], Vec::new())?.0 == 200 {
            continue;
        }
        let (_, headers, _) = client.expect("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], Vec::new(), &[202])?;
        let location = headers.get("location").and_then(|v| v.to_str().ok()).ok_or_else(|| Error::InvalidArgument {
            what: format!("the upload of {d} to {}", reference.host),
            reason: "the registry gave no Location".into(),
        })?;
        // The location may be absolute; the request goes to the same host.
        let path = match location.split_once("://") {
            Some((_, rest)) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        client.expect(
            "PUT",
            &format!("{path}{sep}digest={d}"),
            &[("content-type", "application/octet-stream")],
            data.to_vec(),
            &[201],
        )?;
    }
    client.expect(
        "PUT",
        &format!("/v2/{repo}/manifests/{}", reference.tag),
        &[("content-type", &media_type)],
        manifest.to_vec(),
        &[201],
    )?;
    Ok(format!("pushed {}/{}:{} ({manifest_digest})", reference.host, repo, reference.tag))
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Pulls `reference` over plain HTTP and writes it to `out` as an
/// image-layout tarball `ctr image import` (or `wasmbox image push`) takes.
/// An index gives its `wasip2/wasm`, `wasip1/wasm`, `wasi/wasm` or host
/// Linux manifest, in that order. An OCI wasm artifact is written runnable
/// ([`crate::image::runnable_artifact`]); other images as they are. Every
/// manifest and blob is checked against its digest. Returns a line saying
/// what was written.
pub fn pull(reference: &str, plain_http: bool, out: impl std::io::Write) -> Result<String> {
    let text = reference;
    let reference = Reference::parse(reference)?;
    let client = Client::new(&reference, plain_http, "pulling from")?;
    let repo = &reference.repository;
    let bad = |reason: String| Error::InvalidArgument { what: format!("image {text}"), reason };
    let json = |data: &[u8], what: &str| -> Result<serde_json::Value> {
        serde_json::from_slice(data).map_err(|e| bad(format!("{what} is not JSON: {e}")))
    };
    let target = format!("/v2/{repo}/manifests/{}", reference.tag);
    let (_, headers, mut manifest) =
        client.expect("GET", &target, &[("accept", MANIFEST_TYPES)], Vec::new(), &[200])?;
    if let Some(d) = headers.get("docker-content-digest").and_then(|v| v.to_str().ok()) {
        if d.strip_prefix("sha256:").is_none_or(|hex| crate::image::digest_mismatch(hex, &manifest).is_some()) {
            return Err(bad(format!("the manifest the registry sent does not match its digest {d}")));
        }
    }
    let mut m = json(&manifest, "the manifest")?;
    if let Some(list) = m["manifests"].as_array() {
        let host = crate::image::host_arch();
        let rank = |d: &&serde_json::Value| {
            let (os, arch) = (d["platform"]["os"].as_str().unwrap_or(""), d["platform"]["architecture"].as_str());
            match (os, arch) {
                ("wasip2", Some("wasm")) => 0,
                ("wasip1", Some("wasm")) => 1,
                ("wasi", Some("wasm")) => 2,
                ("linux", Some(a)) if a == host => 3,
                _ => 9,
            }
        };
        let chosen = list.iter().filter(|d| rank(d) < 9).min_by_key(rank).ok_or_else(|| {
            bad(format!("its index has no manifest for wasm (wasip1, wasip2, wasi) nor linux/{host}"))
        })?;
        let digest = chosen["digest"].as_str().unwrap_or("").to_string();
        manifest = client.get_checked(repo, "manifests", &digest, MANIFEST_TYPES)?;
        m = json(&manifest, &format!("manifest {digest}"))?;
        if m.get("manifests").is_some() {
            return Err(bad(format!("manifest {digest} is an index inside an index")));
        }
    }
    let blob = |desc: &serde_json::Value| -> Result<(String, Vec<u8>)> {
        let digest = desc["digest"].as_str().ok_or_else(|| bad("a descriptor without a digest".into()))?;
        Ok((desc["mediaType"].as_str().unwrap_or("").to_string(), client.get_checked(repo, "blobs", digest, "*/*")?))
    };
    let (config_type, config) = blob(&m["config"])?;
    let layers = m["layers"].as_array().into_iter().flatten().map(blob).collect::<Result<Vec<_>>>()?;
    let name = format!("{}/{repo}:{}", reference.host, reference.tag);
    if config_type == crate::image::WASM_CONFIG_MEDIA_TYPE {
        crate::image::runnable_artifact(&name, &config, &layers, out)?;
        return Ok(format!("pulled {name}: an OCI wasm artifact, written with an image config containerd runs"));
    }
    let blobs: Vec<&[u8]> =
        std::iter::once(config.as_slice()).chain(layers.iter().map(|(_, d)| d.as_slice())).collect();
    crate::image::write_tarball(&name, &manifest, &blobs, out)?;
    Ok(format!("pulled {name} ({} layers)", layers.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/wasmbox/p1:v1").unwrap();
        assert_eq!((r.host.as_str(), r.repository.as_str(), r.tag.as_str()), ("127.0.0.1:5000", "wasmbox/p1", "v1"));
        assert_eq!(Reference::parse("localhost/x").unwrap().tag, "latest");
        for bad in ["p1:v1", "library/p1", "127.0.0.1:5000/Upper:v1", "127.0.0.1:5000/x:"] {
            assert!(Reference::parse(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }
}
