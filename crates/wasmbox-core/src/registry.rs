//! Pushing an image-layout tarball (as `wasmbox image build` writes it) to
//! a registry over the OCI distribution API: each blob is checked with
//! HEAD and uploaded with POST + PUT when missing, then the manifest is
//! PUT under the tag. Plain HTTP only, which a registry on the node or in
//! a test serves; TLS and registry authentication are not supported yet
//! and fail with an error that says so.

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
    fn send(&self, method: &str, target: &str, content_type: Option<&str>, body: Vec<u8>) -> Result<Reply> {
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
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
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
    fn expect(&self, method: &str, target: &str, ct: Option<&str>, body: Vec<u8>, ok: &[u16]) -> Result<Reply> {
        let reply = self.send(method, target, ct, body)?;
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
    if !plain_http {
        return Err(Error::Unsupported(format!(
            "pushing to {} over HTTPS: only plain HTTP (--plain-http) is supported yet",
            reference.host
        )));
    }
    let blob = |digest: &str| layout.blob(digest);
    let manifest_digest = desc["digest"].as_str().unwrap_or("");
    let manifest = blob(manifest_digest)?;
    let m: serde_json::Value = serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest: {e}")))?;
    if m.get("manifests").is_some() {
        return Err(Error::Unsupported("pushing an image index (several platforms)".into()));
    }
    let media_type = m["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json").to_string();
    let client = Client {
        host: reference.host.clone(),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the registry client", e))?,
    };
    let repo = &reference.repository;
    let digests: Vec<String> = std::iter::once(&m["config"])
        .chain(m["layers"].as_array().into_iter().flatten())
        .filter_map(|d| d["digest"].as_str().map(str::to_string))
        .collect();
    for d in &digests {
        let data = blob(d)?;
        if client.send("HEAD", &format!("/v2/{repo}/blobs/{d}"), None, Vec::new())?.0 == 200 {
            continue;
        }
        let (_, headers, _) = client.expect("POST", &format!("/v2/{repo}/blobs/uploads/"), None, Vec::new(), &[202])?;
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
            Some("application/octet-stream"),
            data.to_vec(),
            &[201],
        )?;
    }
    client.expect(
        "PUT",
        &format!("/v2/{repo}/manifests/{}", reference.tag),
        Some(&media_type),
        manifest.to_vec(),
        &[201],
    )?;
    Ok(format!("pushed {}/{}:{} ({manifest_digest})", reference.host, repo, reference.tag))
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
