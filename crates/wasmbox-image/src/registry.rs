//! Pushing an image-layout tarball (as `wasmbox image build` writes it) to
//! a registry over the OCI distribution API, and pulling one into such a
//! tarball. A push checks each blob with HEAD and uploads it with POST +
//! PUT when missing, then PUTs the manifest under the tag; a pull GETs the
//! manifest and its blobs, each checked against its digest, and gives an
//! OCI wasm artifact the image config containerd needs to run it.
//!
//! HTTPS (rustls, trusting webpki's roots, the system's bundle and a CA
//! file given) or, when asked, plain HTTP. A registry's challenge is
//! answered with Basic credentials or with a Bearer token from its token
//! service (anonymous, or with the credentials), as the distribution
//! spec's token flow has it. Credentials come from the caller or from the
//! Docker client config (`docker login`, `nerdctl login`); a password is
//! never sent over plain HTTP except to this machine.

use http_body_util::BodyExt;
use wasmbox_spec::{Error, Result};

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
        // Docker Hub's official images live under library/.
        let repository = if host == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.into()
        };
        Ok(Reference { host: host.into(), repository, tag: tag.into() })
    }
}

/// How to reach a registry: the scheme, whom to trust and who we are.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Plain HTTP instead of HTTPS (a registry on this node or in a test).
    pub plain_http: bool,
    /// A PEM file of certificate authorities to trust besides the
    /// system's (`/etc/ssl/certs/ca-certificates.crt`, or `SSL_CERT_FILE`)
    /// and webpki's: a private registry's CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// USER and PASSWORD from the command line; without them, the Docker
    /// client config's entry for the registry, if there is one.
    pub user: Option<(String, String)>,
    /// That config: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json` (what `docker login` and `nerdctl login`
    /// write).
    pub docker_config: Option<std::path::PathBuf>,
}

impl Access {
    /// The Docker client config the environment points at.
    pub fn default_docker_config() -> Option<std::path::PathBuf> {
        match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => Some(std::path::PathBuf::from(dir).join("config.json")),
            None => std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker/config.json")),
        }
    }
}

#[derive(Debug, Clone)]
struct Credentials {
    user: String,
    password: String,
    /// Where they came from, for errors: `--user` or the config's path.
    from: String,
}

/// The credentials the Docker config at `path` holds for `host`, and,
/// when it holds none but names a credential helper, a note saying so
/// (helpers are programs we do not run).
fn docker_credentials(path: &std::path::Path, host: &str) -> Result<(Option<Credentials>, Option<String>)> {
    use base64::Engine;
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let bad = |reason: String| Error::InvalidArgument { what: path.display().to_string(), reason };
    let config: serde_json::Value = serde_json::from_slice(&data).map_err(|e| bad(format!("not JSON: {e}")))?;
    // Keys are written as `host`, `https://host` or `https://host/v1/`.
    let key_host = |k: &str| {
        let k = k.split_once("://").map_or(k, |(_, rest)| rest);
        k.split('/').next().unwrap_or("").to_string()
    };
    let wanted = |k: &str| {
        let k = key_host(k);
        k == host || (host == DOCKER_HUB_API && k == "index.docker.io")
    };
    let entry = config["auths"].as_object().and_then(|auths| auths.iter().find(|(k, _)| wanted(k)));
    if let Some((key, entry)) = entry {
        let field = |f: &str| entry[f].as_str().filter(|s| !s.is_empty());
        let (user, password) = match (field("auth"), field("username"), field("password")) {
            (Some(auth), _, _) => {
                let plain = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| bad(format!("auths.{key}.auth is not base64 of USER:PASSWORD")))?;
                let (u, p) =
                    plain.split_once(':').ok_or_else(|| bad(format!("auths.{key}.auth is not USER:PASSWORD")))?;
                (u.to_string(), p.to_string())
            }
            (None, Some(u), Some(p)) => (u.to_string(), p.to_string()),
            _ if field("identitytoken").is_some() => {
                return Err(Error::Unsupported(format!(
                    "{}: auths.{key} holds an identity token (OAuth2 refresh token), not a password",
                    path.display()
                )))
            }
            // Empty: `docker login` with a credential helper writes that.
            _ => (String::new(), String::new()),
        };
        if !user.is_empty() {
            return Ok((Some(Credentials { user, password, from: path.display().to_string() }), None));
        }
    }
    let helper = config["credHelpers"].as_object().and_then(|h| h.iter().find(|(k, _)| wanted(k)).map(|(_, v)| v));
    let helper = helper.or(config.get("credsStore")).and_then(|v| v.as_str());
    Ok((
        None,
        helper.map(|h| format!("{} names the credential helper {h:?}, which wasmbox does not run", path.display())),
    ))
}

/// Docker Hub: references say `docker.io`, the API is served here.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    tls: bool,
    /// `host[:port]`, as the Host header carries it.
    host: String,
    /// Path and query.
    path: String,
}

impl Url {
    /// `location` (absolute, or a path on `base`'s host).
    fn resolve(base: &Url, location: &str) -> Result<Url> {
        let bad =
            || Error::InvalidArgument { what: format!("URL {location:?}"), reason: "not http(s)://HOST/PATH".into() };
        let (tls, rest) = match location.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            Some(_) => return Err(bad()),
            None if location.starts_with('/') => return Ok(Url { path: location.into(), ..base.clone() }),
            None => return Err(bad()),
        };
        let (host, path) = rest.find(['/', '?']).map_or((rest, "/"), |i| rest.split_at(i));
        if host.is_empty() {
            return Err(bad());
        }
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
        Ok(Url { tls, host: host.into(), path })
    }

    fn show(&self) -> String {
        format!("{}://{}{}", if self.tls { "https" } else { "http" }, self.host, self.path)
    }

    /// The host without its port or IPv6 brackets: the TLS server name.
    fn server_name(&self) -> &str {
        let h = &self.host;
        if let Some(rest) = h.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        h.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(h, |(n, _)| n)
    }

    /// Where to connect: the host with its port, or the scheme's.
    fn address(&self) -> String {
        let has_port = if self.host.starts_with('[') { self.host.contains("]:") } else { self.host.contains(':') };
        if has_port {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, if self.tls { 443 } else { 80 })
        }
    }

    /// Whether a password sent here would cross the network in clear:
    /// plain HTTP to another machine.
    fn exposes_passwords(&self) -> bool {
        !self.tls && !self.is_loopback()
    }

    /// A registry on this machine: plain HTTP there leaks nothing.
    fn is_loopback(&self) -> bool {
        let name = self.server_name();
        name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// An authentication challenge (`WWW-Authenticate`): its scheme,
/// lowercased, and its parameters.
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, mut rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else { break };
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').unwrap_or(quoted.len());
                (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
            }
            None => after.split_at(after.find(',').unwrap_or(after.len())),
        };
        params.push((key.trim().to_ascii_lowercase(), value.to_string()));
        rest = after;
    }
    (scheme.to_ascii_lowercase(), params)
}

/// What a registry or token service said in a reply's body, shortened
/// for an error.
fn words(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim().chars().take(300).collect()
}

/// Percent-encoding of a query value.
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Client {
    /// The registry's API root.
    base: Url,
    /// Trust for HTTPS: built at the start for an HTTPS registry (with the
    /// CA file), else at the first HTTPS URL it leads to (without).
    tls: std::cell::OnceCell<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    credentials: Option<Credentials>,
    /// Why there are no credentials though the user may have meant some.
    helper_note: Option<String>,
    /// The Authorization header the last challenge earned.
    authorization: std::cell::RefCell<Option<String>>,
    rt: tokio::runtime::Runtime,
}

type Reply = (u16, http::HeaderMap, Vec<u8>);

/// Trust for HTTPS: webpki's roots, the system's bundle and `ca_file`.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>> {
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    if let Ok(pem) = std::fs::read(&system) {
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
    }
    if let Some(file) = ca_file {
        let bad = |reason: String| Error::InvalidArgument { what: format!("CA file {}", file.display()), reason };
        let pem = std::fs::read(file).map_err(|e| Error::io(format!("reading CA file {}", file.display()), e))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("holds no PEM certificate".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Unsupported(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// One request and its reply over a connection of its own.
async fn exchange<S>(io: S, url: &Url, method: &str, headers: &[(String, String)], body: Vec<u8>) -> Result<Reply>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let what = format!("{method} {}", url.show());
    let fail = |e: &dyn std::fmt::Display| Error::io(what.clone(), std::io::Error::other(e.to_string()));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(|e| fail(&e))?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(&url.path).header("host", &url.host);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .header("content-length", body.len())
        .header("user-agent", concat!("wasmbox/", env!("CARGO_PKG_VERSION")))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| Error::InvalidArgument { what: what.clone(), reason: e.to_string() })?;
    let resp = sender.send_request(req).await.map_err(|e| fail(&e))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| fail(&e))?.to_bytes().to_vec();
    Ok((status, headers, body))
}

impl Client {
    /// A client of `reference`'s registry, reached as `access` says.
    fn new(reference: &Reference, access: &Access) -> Result<Client> {
        let host = if reference.host == "docker.io" { DOCKER_HUB_API.to_string() } else { reference.host.clone() };
        let base = Url { tls: !access.plain_http, host, path: "/".into() };
        let (credentials, helper_note) = match (&access.user, &access.docker_config) {
            (Some((user, password)), _) => {
                (Some(Credentials { user: user.clone(), password: password.clone(), from: "--user".into() }), None)
            }
            (None, Some(config)) => docker_credentials(config, &base.host)?,
            (None, None) => (None, None),
        };
        if let Some(c) = credentials.as_ref().filter(|_| base.exposes_passwords()) {
            return Err(Error::InvalidArgument {
                what: format!("credentials for {} (from {})", base.host, c.from),
                reason: "wasmbox sends a password over plain HTTP only to a registry on this machine; use HTTPS".into(),
            });
        }
        let tls = std::cell::OnceCell::new();
        if !access.plain_http {
            let _ = tls.set(tls_config(access.ca_file.as_deref())?);
        }
        Ok(Client {
            tls,
            base,
            credentials,
            helper_note,
            authorization: std::cell::RefCell::new(None),
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
            what: format!("{kind} {digest} of {}/{repo}", self.base.host),
            reason: "only sha256 digests are supported".into(),
        })?;
        if let Some(got) = crate::layout::digest_mismatch(want, &body) {
            return Err(Error::InvalidArgument {
                what: format!("{kind} {digest} of {}/{repo}", self.base.host),
                reason: format!("the registry sent content whose digest is {got}"),
            });
        }
        Ok(body)
    }

    /// One exchange with `url`, over TLS when it says so.
    fn fetch(&self, method: &str, url: &Url, headers: &[(String, String)], body: Vec<u8>) -> Result<Reply> {
        let what = format!("{method} {}", url.show());
        self.rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(url.address()).await.map_err(|e| Error::io(what.clone(), e))?;
            if !url.tls {
                return exchange(stream, url, method, headers, body).await;
            }
            let config = match self.tls.get() {
                Some(c) => c.clone(),
                None => {
                    let built = tls_config(None)?;
                    self.tls.get_or_init(|| built).clone()
                }
            };
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(url.server_name().to_string())
                .map_err(|e| Error::InvalidArgument { what: what.clone(), reason: format!("server name: {e}") })?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, stream).await.map_err(|e| {
                Error::InvalidArgument {
                    what: format!("TLS with {}", url.host),
                    reason: format!(
                        "{e}; if the registry serves plain HTTP, use --plain-http; if a private CA signed its \
                         certificate, give it with --tls-ca FILE"
                    ),
                }
            })?;
            exchange(tls, url, method, headers, body).await
        })
    }

    /// Whether `url` is the registry itself (its host, and its scheme:
    /// an HTTPS registry's credentials never go out over plain HTTP).
    fn is_registry(&self, url: &Url) -> bool {
        url.tls == self.base.tls && url.host == self.base.host
    }

    /// `fetch`, following redirects of GET and HEAD (blob stores on other
    /// hosts; the Authorization header stays with the registry). The reply
    /// and the URL that gave it.
    fn follow(&self, method: &str, url: &Url, headers: &[(&str, &str)], body: Vec<u8>) -> Result<(Reply, Url)> {
        let mut url = url.clone();
        for _ in 0..6 {
            let mut all: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            if self.is_registry(&url) {
                if let Some(auth) = self.authorization.borrow().clone() {
                    all.push(("authorization".into(), auth));
                }
            }
            let reply = self.fetch(method, &url, &all, body.clone())?;
            let redirect = matches!(reply.0, 301 | 302 | 303 | 307 | 308) && matches!(method, "GET" | "HEAD");
            match reply.1.get("location").and_then(|v| v.to_str().ok()).filter(|_| redirect) {
                Some(location) => url = Url::resolve(&url, location)?,
                None => return Ok((reply, url)),
            }
        }
        Err(Error::InvalidArgument { what: format!("{method} {}", url.show()), reason: "too many redirects".into() })
    }

    /// A request to the registry (`target`: a path on it, or a URL it
    /// gave), answering one authentication challenge of the registry's.
    fn send(&self, method: &str, target: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Reply> {
        let url = Url::resolve(&self.base, target)?;
        let what = format!("{method} {}", url.show());
        // A host a redirect led to gets no credentials, nor an answer.
        let redirected = |at: &Url| Error::InvalidArgument {
            what: what.clone(),
            reason: format!(
                "redirected to {}, which asks for credentials: the registry's go to the registry only",
                at.show()
            ),
        };
        let (reply, at) = self.follow(method, &url, headers, body.clone())?;
        if reply.0 != 401 {
            return Ok(reply);
        }
        if !self.is_registry(&at) {
            return Err(redirected(&at));
        }
        let challenge = reply.1.get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let fresh = self.authenticate(&challenge, &what)?;
        let bearer = fresh.starts_with("Bearer ");
        *self.authorization.borrow_mut() = Some(fresh);
        let (reply, at) = self.follow(method, &url, headers, body)?;
        match reply.0 {
            401 if !self.is_registry(&at) => Err(redirected(&at)),
            // A token service grants what it may; the registry's second
            // challenge means the token lacks the scope.
            401 if bearer => Err(self.denied(&what, 401)),
            401 => Err(self.refused(&what)),
            _ => Ok(reply),
        }
    }

    /// The user was let in but may not do this (a 403, or a token without
    /// the scope asked for).
    fn denied(&self, what: &str, status: u16) -> Error {
        let reason = match &self.credentials {
            Some(c) => format!(
                "the registry does not allow {} (from {}) this (status {status}): the credentials were accepted, \
                 the access is not granted",
                c.user, c.from
            ),
            None => self.wants_credentials(),
        };
        Error::InvalidArgument { what: what.into(), reason }
    }

    fn refused(&self, what: &str) -> Error {
        let reason = match &self.credentials {
            Some(c) => format!("the registry refused the credentials of {} (from {})", c.user, c.from),
            None => self.wants_credentials(),
        };
        Error::InvalidArgument { what: what.into(), reason }
    }

    fn wants_credentials(&self) -> String {
        let mut reason = "the registry wants credentials: give --user USER[:PASSWORD], or log in with docker or \
                          nerdctl (their config.json is read)"
            .to_string();
        if let Some(note) = &self.helper_note {
            reason = format!("{reason}; {note}");
        }
        reason
    }

    /// The Authorization header that answers `challenge`: Basic with the
    /// credentials, or Bearer with a token from the challenge's realm
    /// (with the credentials, else anonymous).
    fn authenticate(&self, challenge: &str, what: &str) -> Result<String> {
        use base64::Engine;
        let (scheme, params) = parse_challenge(challenge);
        let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let basic = |c: &Credentials| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password)))
        };
        match scheme.as_str() {
            "basic" => match &self.credentials {
                Some(c) => Ok(basic(c)),
                None => Err(Error::InvalidArgument { what: what.into(), reason: self.wants_credentials() }),
            },
            "bearer" => {
                let realm = param("realm").ok_or_else(|| Error::InvalidArgument {
                    what: what.into(),
                    reason: format!("the registry's Bearer challenge names no realm: {challenge:?}"),
                })?;
                let mut query = Vec::new();
                if let Some(service) = param("service") {
                    query.push(format!("service={}", query_escape(service)));
                }
                for scope in param("scope").unwrap_or("").split(' ').filter(|s| !s.is_empty()) {
                    query.push(format!("scope={}", query_escape(scope)));
                }
                let mut url = Url::resolve(&self.base, realm)?;
                if !query.is_empty() {
                    let sep = if url.path.contains('?') { '&' } else { '?' };
                    url.path = format!("{}{sep}{}", url.path, query.join("&"));
                }
                let mut headers = vec![("accept".to_string(), "application/json".to_string())];
                if let Some(c) = &self.credentials {
                    if url.exposes_passwords() {
                        return Err(Error::InvalidArgument {
                            what: format!("the token service {}", url.show()),
                            reason: "wasmbox sends a password over plain HTTP only to this machine".into(),
                        });
                    }
                    headers.push(("authorization".into(), basic(c)));
                }
                let (status, _, body) = self.fetch("GET", &url, &headers, Vec::new())?;
                if status == 401 || status == 403 {
                    return Err(self.refused(&format!("{what}: a token from {}", url.show())));
                }
                if status != 200 {
                    let words = words(&body);
                    return Err(Error::InvalidArgument {
                        what: format!("GET {}", url.show()),
                        reason: format!("the token service answered status {status}: {words}"),
                    });
                }
                let reply: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let token = reply["token"].as_str().or(reply["access_token"].as_str()).ok_or_else(|| {
                    Error::InvalidArgument {
                        what: format!("GET {}", url.show()),
                        reason: "the reply holds no token".into(),
                    }
                })?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(Error::Unsupported(format!("{what}: the registry's authentication {challenge:?}"))),
        }
    }

    /// The request's reply when its status is one of `ok`, else an error
    /// naming the request, the status and the registry's words.
    fn expect(&self, method: &str, target: &str, headers: &[(&str, &str)], body: Vec<u8>, ok: &[u16]) -> Result<Reply> {
        let reply = self.send(method, target, headers, body)?;
        if ok.contains(&reply.0) {
            return Ok(reply);
        }
        let words = words(&reply.2);
        let what = format!("{method} {}", Url::resolve(&self.base, target)?.show());
        if reply.0 == 403 {
            return Err(self.denied(&what, 403));
        }
        Err(Error::InvalidArgument { what, reason: format!("status {}: {words}", reply.0) })
    }
}

/// Pushes the tarball's image to `reference` (else the name it was built
/// with), reached as `access` says. Returns the pushed reference and manifest digest.
pub fn push(tarball: &std::path::Path, reference: Option<&str>, access: &Access) -> Result<String> {
    let bytes = std::fs::read(tarball).map_err(|e| Error::io(format!("reading {}", tarball.display()), e))?;
    let layout = crate::layout::Layout::read(tarball, &bytes)?;
    let bad = |reason: String| layout.bad(reason);
    let index: serde_json::Value =
        serde_json::from_slice(layout.index()?).map_err(|e| bad(format!("index.json: {e}")))?;
    let desc = index["manifests"].get(0).ok_or_else(|| bad("index.json lists no manifest".into()))?;
    let name = desc["annotations"]["io.containerd.image.name"].as_str();
    let reference =
        Reference::parse(reference.or(name).ok_or_else(|| bad("no reference given and none in the image".into()))?)?;
    let client = Client::new(&reference, access)?;
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
        // A path on the registry, or a URL (credentials go to it only if it
        // is the registry's).
        let sep = if location.contains('?') { '&' } else { '?' };
        client.expect(
            "PUT",
            &format!("{location}{sep}digest={d}"),
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

/// Pulls `reference` (reached as `access` says) and writes it to `out` as an
/// image-layout tarball `ctr image import` (or `wasmbox image push`) takes.
/// An index gives its `wasip2/wasm`, `wasip1/wasm`, `wasi/wasm` or host
/// Linux manifest, in that order. An OCI wasm artifact is written runnable
/// ([`crate::layout::runnable_artifact`]); other images as they are. Every
/// manifest and blob is checked against its digest. Returns a line saying
/// what was written.
pub fn pull(reference: &str, access: &Access, out: impl std::io::Write) -> Result<String> {
    let text = reference;
    let reference = Reference::parse(reference)?;
    let client = Client::new(&reference, access)?;
    let repo = &reference.repository;
    let bad = |reason: String| Error::InvalidArgument { what: format!("image {text}"), reason };
    let json = |data: &[u8], what: &str| -> Result<serde_json::Value> {
        serde_json::from_slice(data).map_err(|e| bad(format!("{what} is not JSON: {e}")))
    };
    let target = format!("/v2/{repo}/manifests/{}", reference.tag);
    let (_, headers, mut manifest) =
        client.expect("GET", &target, &[("accept", MANIFEST_TYPES)], Vec::new(), &[200])?;
    if let Some(d) = headers.get("docker-content-digest").and_then(|v| v.to_str().ok()) {
        if d.strip_prefix("sha256:").is_none_or(|hex| crate::layout::digest_mismatch(hex, &manifest).is_some()) {
            return Err(bad(format!("the manifest the registry sent does not match its digest {d}")));
        }
    }
    let mut m = json(&manifest, "the manifest")?;
    if let Some(list) = m["manifests"].as_array() {
        let host = crate::layout::host_arch();
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
    if config_type == crate::layout::WASM_CONFIG_MEDIA_TYPE {
        crate::layout::runnable_artifact(&name, &config, &layers, out)?;
        return Ok(format!("pulled {name}: an OCI wasm artifact, written with an image config containerd runs"));
    }
    let blobs: Vec<&[u8]> =
        std::iter::once(config.as_slice()).chain(layers.iter().map(|(_, d)| d.as_slice())).collect();
    crate::layout::write_tarball(&name, &manifest, &blobs, out)?;
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

    #[test]
    fn docker_hub_names() {
        let r = Reference::parse("docker.io/hello:v1").unwrap();
        assert_eq!((r.host.as_str(), r.repository.as_str()), ("docker.io", "library/hello"));
        assert_eq!(Reference::parse("docker.io/me/hello").unwrap().repository, "me/hello");
    }

    #[test]
    fn challenges() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(
            params,
            [
                ("realm".to_string(), "https://auth.example.com/token".to_string()),
                ("service".into(), "registry.example.com".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        let (scheme, params) = parse_challenge("Basic realm=wasmbox");
        assert_eq!((scheme.as_str(), params), ("basic", vec![("realm".to_string(), "wasmbox".to_string())]));
        assert_eq!(query_escape("repository:a/b:pull,push x"), "repository:a/b:pull%2Cpush%20x");
    }

    #[test]
    fn urls() {
        let base = Url { tls: true, host: "reg.example.com:5000".into(), path: "/".into() };
        assert_eq!(Url::resolve(&base, "/v2/x/blobs/uploads/1?a=b").unwrap().host, "reg.example.com:5000");
        let cdn = Url::resolve(&base, "http://cdn.example.com?sig=1").unwrap();
        assert_eq!((cdn.tls, cdn.host.as_str(), cdn.path.as_str()), (false, "cdn.example.com", "/?sig=1"));
        assert_eq!((cdn.server_name(), cdn.address()), ("cdn.example.com", "cdn.example.com:80".to_string()));
        assert_eq!((base.server_name(), base.address()), ("reg.example.com", "reg.example.com:5000".to_string()));
        let v6 = Url { tls: true, host: "[::1]".into(), path: "/".into() };
        assert_eq!((v6.server_name(), v6.address(), v6.is_loopback()), ("::1", "[::1]:443".to_string(), true));
        assert!(Url { host: "localhost:5000".into(), ..base.clone() }.is_loopback());
        assert!(!base.is_loopback());
        for bad in ["ftp://x/y", "https:///y", "relative/path"] {
            assert!(Url::resolve(&base, bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }

    #[test]
    fn docker_config_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert!(matches!(docker_credentials(&path, "reg:5000").unwrap(), (None, None)));
        // base64("alice:s3cr:et")
        std::fs::write(
            &path,
            r#"{"auths":{"https://reg:5000/v1/":{"auth":"YWxpY2U6czNjcjpldA=="},"index.docker.io":{"username":"bob","password":"pw"}},"credsStore":"pass"}"#,
        )
        .unwrap();
        let (c, _) = docker_credentials(&path, "reg:5000").unwrap();
        let c = c.unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "s3cr:et"));
        assert_eq!(docker_credentials(&path, DOCKER_HUB_API).unwrap().0.unwrap().user, "bob");
        let (none, note) = docker_credentials(&path, "other:5000").unwrap();
        assert!(none.is_none() && note.unwrap().contains("\"pass\""));
        // With a credential helper, `docker login` leaves an empty entry.
        std::fs::write(&path, r#"{"auths":{"reg:5000":{}},"credHelpers":{"reg:5000":"ecr-login"}}"#).unwrap();
        let (none, note) = docker_credentials(&path, "reg:5000").unwrap();
        assert!(none.is_none() && note.unwrap().contains("\"ecr-login\""));
        std::fs::write(&path, r#"{"auths":{"reg:5000":{"auth":"bm9jb2xvbg=="}}}"#).unwrap();
        let e = docker_credentials(&path, "reg:5000").unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("auths.reg:5000.auth"), "{e}");
        std::fs::write(&path, "{").unwrap();
        assert!(docker_credentials(&path, "reg:5000").unwrap_err().to_string().contains("not JSON"));
    }

    #[test]
    fn no_password_over_plain_http_to_another_machine() {
        let reference = Reference::parse("registry.example.com/a/b:v1").unwrap();
        let user = Some(("alice".to_string(), "pw".to_string()));
        let access = Access { plain_http: true, user: user.clone(), ..Access::default() };
        let e = Client::new(&reference, &access).err().expect("refused").to_string();
        assert!(e.contains("registry.example.com") && e.contains("plain HTTP"), "{e}");
        let local = Reference::parse("127.0.0.1:5000/a/b:v1").unwrap();
        assert!(Client::new(&local, &access).is_ok());
        assert!(Client::new(&reference, &Access { user, ..Access::default() }).is_ok());
    }

    #[test]
    fn bad_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let access = Access { ca_file: Some(path.clone()), ..Access::default() };
        let reference = Reference::parse("registry.example.com/a/b:v1").unwrap();
        let e = Client::new(&reference, &access).err().expect("refused").to_string();
        assert!(e.contains("ca.pem") && e.contains("no PEM certificate"), "{e}");
    }

    /// An HTTP server on loopback for `replies` connections (or 20 s):
    /// answers each with `reply(request head, its port)`; the heads it saw.
    fn serve(replies: usize, reply: fn(&str, u16) -> String) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let seen = std::thread::spawn(move || {
            let mut heads = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while heads.len() < replies && std::time::Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                conn.write_all(reply(&head, port).as_bytes()).unwrap();
                heads.push(head);
            }
            heads
        });
        (port, seen)
    }

    #[test]
    fn a_redirected_host_gets_no_credentials() {
        // The blob store: asks for credentials of its own.
        let (store, store_seen) = serve(1, |_, port| {
            format!(
                "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\"\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            )
        });
        // The registry: Basic, then a redirect to the store.
        static STORE: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        STORE.store(store, std::sync::atomic::Ordering::SeqCst);
        let (registry, registry_seen) = serve(2, |head, _| {
            if !head.contains("authorization: basic") {
                return "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"r\"\r\ncontent-length: 0\r\n\r\n"
                    .into();
            }
            let store = STORE.load(std::sync::atomic::Ordering::SeqCst);
            format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{store}/blob\r\ncontent-length: 0\r\n\r\n")
        });
        let reference = Reference::parse(&format!("127.0.0.1:{registry}/a/b:v1")).unwrap();
        let access = Access { plain_http: true, user: Some(("alice".into(), "pw".into())), ..Access::default() };
        let client = Client::new(&reference, &access).unwrap();
        let e = client.get_checked("a/b", "blobs", "sha256:00", "*/*").unwrap_err().to_string();
        assert!(e.contains(&format!("redirected to http://127.0.0.1:{store}/blob")), "{e}");
        let registry_heads = registry_seen.join().unwrap();
        assert!(registry_heads[1].contains("authorization: basic"), "{registry_heads:?}");
        let store_heads = store_seen.join().unwrap();
        assert!(!store_heads[0].contains("authorization"), "the blob store got credentials: {store_heads:?}");
    }
}
