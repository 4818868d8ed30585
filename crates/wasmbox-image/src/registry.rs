//! Pushing an image-layout tarball (as `wasmbox image build` writes it) to
//! a registry over the OCI distribution API, and pulling one into such a
//! tarball. A push checks each blob with HEAD, mounts it from the
//! repository the image was named after when that is another repository
//! of the same registry, else uploads it (POST + PUT), then PUTs the
//! manifest under the tag; a pull GETs the manifest and its blobs, each
//! checked against its digest, and gives an OCI wasm artifact the image
//! config containerd needs to run it.
//!
//! HTTPS (rustls with ring, trusting the system's certificates, webpki's
//! roots and a CA file given) or, when asked, plain HTTP. A registry's
//! challenge is answered with Basic credentials or with a Bearer token from
//! its token service (anonymous, or with the credentials), as the
//! distribution spec's token flow has it. Credentials come from the caller
//! or from the Docker client config (`docker login`, `nerdctl login`); a
//! password is never sent over plain HTTP except to this machine.
//!
//! The distribution API is spoken by the `oci-client` crate. What it lacked,
//! and what this module therefore keeps of its own:
//!
//! - **The challenge** (`Session::authorize`). oci-client answers a Basic
//!   challenge without checking the password, turns a token service's
//!   refusal into an unauthenticated request (its `get_auth_token` drops
//!   the error), and sends the password to whatever realm a Bearer
//!   challenge names, plain HTTP included. So its errors cannot tell no
//!   credentials from wrong ones from credentials without access, and the
//!   plain-HTTP rule could not hold for a token realm. We probe `/v2/`
//!   ourselves with reqwest (the version oci-client uses, the same trust),
//!   fetch the token, and hand oci-client a settled Basic pair or Bearer
//!   token. A token the registry stops taking (expired) is fetched again
//!   once per request (`Session::call`).
//! - **The Docker config** (`docker_credentials`). oci-client reads none;
//!   the `docker_credential` crate runs credential helpers (we name them in
//!   the error, we do not run them) and its errors name neither the file's
//!   key nor a missing file apart from bad JSON.
//! - **The index's platform**. oci-client's resolver sees parsed manifests
//!   only and wants the host's os/arch; we rank `wasip2`, `wasip1`, `wasi`
//!   and the host's Linux in the raw index and fetch the choice by digest.
//! - **Our words for its errors** (`Session::fail`): a 401 or 403 comes
//!   back as one of four variants depending on the call, a TLS failure as a
//!   reqwest error whose rustls cause lies a few sources down.
//! - **Guards against its panics**: `Client::try_from` also builds reqwest's
//!   default client, which panics when the system has no CA certificates
//!   (we build that one first and report its error); `push_blob`'s
//!   monolithic path unwraps the parse of the upload `Location` (we upload
//!   through `push_blob_stream`, which reports it).
//! - **No proxies**: oci-client's reqwest client follows `HTTP(S)_PROXY`,
//!   with no switch to turn that off; a password for a loopback registry
//!   must not travel to a proxy, so both clients are given none.

use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::token_cache::RegistryTokenType;
use oci_client::RegistryOperation;
use wasmbox_spec::{Error, Result};

type OciResult<T> = std::result::Result<T, OciDistributionError>;

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
        // The distribution spec's tag: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}.
        let valid_tag = |t: &str| {
            t.len() <= 128
                && t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !valid(repository) || !valid_tag(tag) {
            return Err(bad(
                "the repository must be lowercase letters, digits and ._-/, the tag letters, digits and ._- \
                 (at most 128)",
            ));
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
    /// system's (as rustls-native-certs finds them: `SSL_CERT_FILE`,
    /// `SSL_CERT_DIR`, else the distribution's bundle) and webpki's: a
    /// private registry's CA.
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

const USER_AGENT: &str = concat!("wasmbox/", env!("CARGO_PKG_VERSION"));

/// The media types a manifest GET accepts: image manifests and indexes,
/// OCI's and Docker's.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A proxy no request goes through (its `NO_PROXY` matches every name,
/// `*`, and every address, which `*` does not): given to oci-client, it
/// replaces the environment's proxies (see the module's doc).
const NO_PROXY_AT_ALL: (&str, &str) = ("http://127.0.0.1:9", "*,0.0.0.0/0,::/0");

/// Whether a password sent to `url` would cross the network in clear:
/// plain HTTP to another machine.
fn exposes_passwords(url: &url::Url) -> bool {
    url.scheme() != "https" && !is_loopback(url)
}

/// A host on this machine: plain HTTP there leaks nothing.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `host[:port]`, as errors name a server.
fn authority(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    url.port().map_or_else(|| host.to_string(), |port| format!("{host}:{port}"))
}

/// What a registry or token service said in a reply's body, shortened
/// for an error.
fn words(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim().chars().take(300).collect()
}

/// An error and its sources, `: `-joined (reqwest's own text names only
/// the URL; the cause is a few sources down).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// The TLS failure behind a request's error, if that is what it is. rustls
/// reports it inside an `io::Error` (that hyper-rustls wraps in another),
/// whose `source()` skips what it wraps: that is walked into instead.
fn tls_cause<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// How a 401's `WWW-Authenticate` headers (parsed by http-auth) ask to be
/// answered: Bearer when offered, else Basic.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    /// The token service's URL and its `service` parameter.
    Bearer {
        realm: Option<String>,
        service: Option<String>,
    },
    /// A scheme we do not speak (the header as it came).
    Other(String),
}

impl Challenge {
    fn of(headers: &http::HeaderMap) -> Challenge {
        let values: Vec<&str> =
            headers.get_all(http::header::WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).collect();
        Challenge::parse(&values)
    }

    /// What a registry's `WWW-Authenticate` values (one per header line)
    /// ask for: a bearer token (preferred where several are offered),
    /// basic credentials, or a scheme we do not speak.
    pub fn parse(values: &[&str]) -> Challenge {
        let challenges: Vec<_> = values.iter().filter_map(|v| http_auth::parse_challenges(v).ok()).flatten().collect();
        let bearer = challenges.iter().find(|c| c.scheme.eq_ignore_ascii_case("bearer"));
        if let Some(c) = bearer {
            let param =
                |name: &str| c.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_unescaped());
            return Challenge::Bearer { realm: param("realm"), service: param("service") };
        }
        if challenges.iter().any(|c| c.scheme.eq_ignore_ascii_case("basic")) {
            return Challenge::Basic;
        }
        Challenge::Other(values.join(", "))
    }
}

/// How a session proves who it is, as the probe of `/v2/` settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// `/v2/` asked for nothing: requests go without credentials.
    Open,
    Basic,
    /// A token from the token service (with the credentials, or anonymous).
    Bearer,
}

/// A registry reached as the user said: where, whom to trust, who we are.
/// Building one touches no network.
struct Session {
    reference: Reference,
    /// The same, as oci-client names it (with the API host for Docker Hub).
    oci_ref: oci_client::Reference,
    /// The registry's root: `https://HOST[:PORT]/`, or `http://`.
    base: url::Url,
    credentials: Option<Credentials>,
    /// Why there are no credentials though the user may have meant some.
    helper_note: Option<String>,
    /// Trusted besides the system's certificates (DER): webpki's roots and
    /// the CA file's.
    roots: Vec<Vec<u8>>,
    /// The token scopes to ask for.
    scopes: Vec<String>,
    rt: tokio::runtime::Runtime,
}

/// oci-client's client with what the probe settled.
struct Connection {
    oci: oci_client::Client,
    auth: RegistryAuth,
    kind: Auth,
}

impl Session {
    /// A session with `reference`'s registry, reached as `access` says,
    /// whose tokens are asked for `scopes`.
    fn new(reference: &Reference, access: &Access, scopes: Vec<String>) -> Result<Session> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        // reqwest is built without a crypto provider (its own would be
        // aws-lc-rs): ring is the process's default, installed once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let host = if reference.host == "docker.io" { DOCKER_HUB_API.to_string() } else { reference.host.clone() };
        let scheme = if access.plain_http { "http" } else { "https" };
        let base = url::Url::parse(&format!("{scheme}://{host}/"))
            .map_err(|e| Error::InvalidArgument { what: format!("registry host {host:?}"), reason: e.to_string() })?;
        let (credentials, helper_note) = match (&access.user, &access.docker_config) {
            (Some((user, password)), _) => {
                (Some(Credentials { user: user.clone(), password: password.clone(), from: "--user".into() }), None)
            }
            (None, Some(config)) => docker_credentials(config, &host)?,
            (None, None) => (None, None),
        };
        if let Some(c) = credentials.as_ref().filter(|_| exposes_passwords(&base)) {
            return Err(Error::InvalidArgument {
                what: format!("credentials for {host} (from {})", c.from),
                reason: "wasmbox sends a password over plain HTTP only to a registry on this machine; use HTTPS".into(),
            });
        }
        let mut roots: Vec<Vec<u8>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().map(|c| c.to_vec()).collect();
        if let Some(file) = &access.ca_file {
            let bad = |reason: String| Error::InvalidArgument { what: format!("CA file {}", file.display()), reason };
            let pem = std::fs::read(file).map_err(|e| Error::io(format!("reading CA file {}", file.display()), e))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(bad("holds no PEM certificate".into()));
            }
            for cert in certs {
                // A root reqwest would refuse later, refused here naming the file.
                rustls::RootCertStore::empty().add(cert.clone()).map_err(|e| bad(e.to_string()))?;
                roots.push(cert.to_vec());
            }
        }
        let oci_ref = oci_client::Reference::with_tag(host, reference.repository.clone(), reference.tag.clone());
        Ok(Session {
            reference: reference.clone(),
            oci_ref,
            base,
            credentials,
            helper_note,
            roots,
            scopes,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("starting the registry client", e))?,
        })
    }

    /// The URL of `path` under the repository's API (for errors).
    fn api(&self, path: &str) -> String {
        format!("{}v2/{}/{path}", self.base, self.reference.repository)
    }

    /// Another repository of this registry, as oci-client names it.
    fn sibling(&self, repository: &str) -> oci_client::Reference {
        let host = self.oci_ref.registry().to_string();
        oci_client::Reference::with_tag(host, repository.into(), "latest".into())
    }

    /// The probe's client: the trust oci-client's gets, no proxy.
    fn http(&self) -> Result<reqwest::Client> {
        let building = |e: reqwest::Error| Error::io("building the registry client", std::io::Error::other(chain(&e)));
        let roots = self.roots.iter().map(|der| reqwest::Certificate::from_der(der)).collect::<Result<Vec<_>, _>>();
        reqwest::Client::builder()
            .tls_certs_merge(roots.map_err(building)?)
            .no_proxy()
            .user_agent(USER_AGENT)
            .build()
            .map_err(building)
    }

    /// oci-client's client for this registry.
    fn oci(&self) -> Result<oci_client::Client> {
        use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
        let building =
            |e: &dyn std::error::Error| Error::io("building the registry client", std::io::Error::other(chain(e)));
        // `Client::try_from` also builds reqwest's default client and
        // panics if that fails, as it does where the system has no CA
        // certificates: built here first, it reports instead.
        reqwest::Client::builder().build().map_err(|e| {
            Error::io(
                "building the registry client",
                std::io::Error::other(format!(
                    "{}; oci-client needs the system's CA certificates: install ca-certificates, or point \
                     SSL_CERT_FILE at a PEM bundle",
                    chain(&e)
                )),
            )
        })?;
        let config = ClientConfig {
            protocol: if self.base.scheme() == "https" { ClientProtocol::Https } else { ClientProtocol::Http },
            extra_root_certificates: self
                .roots
                .iter()
                .map(|der| Certificate { encoding: CertificateEncoding::Der, data: der.clone() })
                .collect(),
            // POST + PUT, as the distribution spec's simplest upload.
            use_monolithic_push: true,
            user_agent: USER_AGENT,
            http_proxy: Some(NO_PROXY_AT_ALL.0.into()),
            no_proxy: Some(NO_PROXY_AT_ALL.1.into()),
            ..ClientConfig::default()
        };
        oci_client::Client::try_from(config).map_err(|e| building(&e))
    }

    /// Answers the registry's challenge at `/v2/`: Basic with the
    /// credentials (checked there), or Bearer with a token for the
    /// session's scopes from the challenge's realm (with the credentials,
    /// else anonymous). Each refusal says why.
    async fn authorize(&self) -> Result<(RegistryAuth, Auth)> {
        let http = self.http()?;
        let v2 = self.base.join("v2/").expect("a path joins an http(s) URL");
        let what = format!("GET {v2}");
        let reply = http.get(v2.clone()).send().await.map_err(|e| self.transport(&what, &e))?;
        if reply.status() != http::StatusCode::UNAUTHORIZED {
            return Ok((RegistryAuth::Anonymous, Auth::Open));
        }
        match Challenge::of(reply.headers()) {
            Challenge::Basic => {
                let c = self.credentials.as_ref().ok_or_else(|| self.wants(&what))?;
                let reply = http
                    .get(v2)
                    .basic_auth(&c.user, Some(&c.password))
                    .send()
                    .await
                    .map_err(|e| self.transport(&what, &e))?;
                match reply.status().as_u16() {
                    401 => Err(self.refused(&what)),
                    403 => Err(self.denied(&what, 403)),
                    _ => Ok((RegistryAuth::Basic(c.user.clone(), c.password.clone()), Auth::Basic)),
                }
            }
            Challenge::Bearer { realm: None, .. } => Err(Error::InvalidArgument {
                what,
                reason: "the registry's Bearer challenge names no realm (token service)".into(),
            }),
            Challenge::Bearer { realm: Some(realm), service } => {
                let url = v2.join(&realm).ok().filter(|u| matches!(u.scheme(), "http" | "https")).ok_or_else(|| {
                    Error::InvalidArgument {
                        what: what.clone(),
                        reason: format!("the registry's token service {realm:?} is not an http(s) URL"),
                    }
                })?;
                let mut request = http.get(url.clone()).header(http::header::ACCEPT, "application/json");
                if let Some(c) = &self.credentials {
                    if exposes_passwords(&url) {
                        return Err(Error::InvalidArgument {
                            what: format!("the token service {url}"),
                            reason: "wasmbox sends a password over plain HTTP only to this machine".into(),
                        });
                    }
                    request = request.basic_auth(&c.user, Some(&c.password));
                }
                let mut query: Vec<(&str, &str)> = service.iter().map(|s| ("service", s.as_str())).collect();
                query.extend(self.scopes.iter().map(|s| ("scope", s.as_str())));
                let token_what = format!("GET {url}");
                let reply = request.query(&query).send().await.map_err(|e| self.transport(&token_what, &e))?;
                let status = reply.status().as_u16();
                let body = reply.bytes().await.map_err(|e| self.transport(&token_what, &e))?;
                match status {
                    200 => {}
                    401 | 403 => return Err(self.refused(&format!("{what}: a token from {url}"))),
                    _ => {
                        return Err(Error::InvalidArgument {
                            what: token_what,
                            reason: format!("the token service answered status {status}: {}", words(&body)),
                        })
                    }
                }
                let reply: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let token = reply["token"].as_str().or(reply["access_token"].as_str()).filter(|t| !t.is_empty());
                let token = token.ok_or_else(|| Error::InvalidArgument {
                    what: token_what,
                    reason: "the reply holds no token".into(),
                })?;
                Ok((RegistryAuth::Bearer(token.into()), Auth::Bearer))
            }
            Challenge::Other(header) => {
                Err(Error::Unsupported(format!("{what}: the registry's authentication {header:?}")))
            }
        }
    }

    /// The probe, then oci-client's client holding its answer.
    async fn connect(&self) -> Result<Connection> {
        let (auth, kind) = self.authorize().await?;
        let oci = self.oci()?;
        // Left without (Open), oci-client sends no credentials and asks
        // for no token.
        if kind != Auth::Open {
            oci.store_auth_if_needed(self.oci_ref.resolve_registry(), &auth).await;
        }
        // Settled: oci-client need not ping `/v2/` again to learn the
        // scheme (a Bearer token it uses as it is).
        if let RegistryAuth::Basic(user, password) = &auth {
            for op in [RegistryOperation::Pull, RegistryOperation::Push] {
                let basic = RegistryTokenType::Basic(user.clone(), password.clone());
                oci.tokens.insert(&self.oci_ref, op, basic).await;
            }
        }
        Ok(Connection { oci, auth, kind })
    }

    /// `request` with the connection's client, its error in our words
    /// (`what`: the request). A Bearer token the registry no longer takes
    /// (expired) is fetched again and the request tried once more.
    async fn call<T>(
        &self,
        conn: &mut Connection,
        what: &str,
        request: impl AsyncFn(&oci_client::Client, &RegistryAuth) -> OciResult<T>,
    ) -> Result<T> {
        match request(&conn.oci, &conn.auth).await {
            Ok(v) => Ok(v),
            Err(e) if conn.kind == Auth::Bearer && self.status(&e).is_some_and(|(s, at)| s == 401 && at) => {
                *conn = self.connect().await?;
                request(&conn.oci, &conn.auth).await.map_err(|e| self.fail(what, e, conn.kind))
            }
            Err(e) => Err(self.fail(what, e, conn.kind)),
        }
    }

    /// Whether `url` is the registry itself: its scheme, host and port (an
    /// HTTPS registry's credentials never go out over plain HTTP).
    fn is_registry(&self, url: &str) -> bool {
        url::Url::parse(url).is_ok_and(|u| {
            u.scheme() == self.base.scheme()
                && u.host() == self.base.host()
                && u.port_or_known_default() == self.base.port_or_known_default()
        })
    }

    /// The HTTP status behind an oci-client error, if one is, and whether
    /// the registry (not a host it redirected to) answered it. A 403 with
    /// an error body comes back without its status: its `DENIED` code
    /// says it.
    fn status(&self, e: &OciDistributionError) -> Option<(u16, bool)> {
        use OciDistributionError as E;
        let (status, url) = match e {
            E::UnauthorizedError { url } => (401, Some(url.clone())),
            E::ServerError { code, url, .. } => (*code, Some(url.clone())),
            E::RegistryError { envelope, url } => {
                let has = |code: OciErrorCode| envelope.errors.iter().any(|x| x.code == code);
                let status = if has(OciErrorCode::Denied) {
                    403
                } else if has(OciErrorCode::Unauthorized) {
                    401
                } else {
                    return None;
                };
                (status, Some(url.clone()))
            }
            E::RequestError(r) => (r.status()?.as_u16(), r.url().map(|u| u.to_string())),
            _ => return None,
        };
        Some((status, url.is_none_or(|u| self.is_registry(&u))))
    }

    /// An oci-client error in our words: the three refusals kept apart,
    /// a redirect's host named, a TLS failure with what to do.
    fn fail(&self, what: &str, e: OciDistributionError, kind: Auth) -> Error {
        use OciDistributionError as E;
        let invalid = |reason: String| Error::InvalidArgument { what: what.into(), reason };
        let url = match &e {
            E::UnauthorizedError { url } | E::ServerError { url, .. } | E::RegistryError { url, .. } => url.clone(),
            E::RequestError(r) => r.url().map(|u| u.to_string()).unwrap_or_default(),
            _ => String::new(),
        };
        match self.status(&e) {
            Some((401, false)) => invalid(format!(
                "redirected to {url}, which asks for credentials: the registry's go to the registry only"
            )),
            Some((403, false)) => invalid(format!("redirected to {url}, which answered status 403")),
            Some((401, true)) => match kind {
                Auth::Open => self.unasked(what),
                Auth::Basic => self.refused(what),
                // A token service grants what it may; the registry's 401
                // means the token lacks the scope.
                Auth::Bearer => self.denied(what, 401),
            },
            Some((403, true)) => self.denied(what, 403),
            _ => match e {
                E::ServerError { code, message, .. } => {
                    invalid(format!("status {code}: {}", words(message.as_bytes())))
                }
                E::RegistryError { envelope, .. } => invalid(format!(
                    "the registry answered {}",
                    envelope
                        .errors
                        .iter()
                        .map(|x| {
                            let code = serde_json::to_value(&x.code).ok();
                            format!("{}: {}", code.as_ref().and_then(|c| c.as_str()).unwrap_or("?"), x.message)
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                E::RequestError(r) => match r.status() {
                    Some(status) => invalid(format!("status {}", status.as_u16())),
                    None => self.transport(what, &r),
                },
                E::DigestError(DigestError::VerificationError { expected, actual }) => {
                    invalid(format!("the registry sent content whose digest is {actual}, not {expected}"))
                }
                e => invalid(chain(&e)),
            },
        }
    }

    /// A request that got no reply: a TLS failure says what to do about
    /// it, anything else is the network's.
    fn transport(&self, what: &str, e: &reqwest::Error) -> Error {
        if let Some(tls) = tls_cause(e) {
            let host = e.url().map_or_else(|| authority(&self.base), authority);
            return Error::InvalidArgument {
                what: format!("TLS with {host}"),
                reason: format!(
                    "{tls}; if the registry serves plain HTTP, use --plain-http; if a private CA signed its \
                     certificate, give it with --tls-ca FILE"
                ),
            };
        }
        Error::io(what, std::io::Error::other(chain(e)))
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

    fn wants(&self, what: &str) -> Error {
        Error::InvalidArgument { what: what.into(), reason: self.wants_credentials() }
    }

    /// A 401 though `/v2/` asked for nothing.
    fn unasked(&self, what: &str) -> Error {
        match &self.credentials {
            Some(c) => Error::InvalidArgument {
                what: what.into(),
                reason: format!(
                    "the registry let GET {}v2/ in without credentials but wants them here; wasmbox answers the \
                     challenge of /v2/ only, so those of {} (from {}) were not sent",
                    self.base, c.user, c.from
                ),
            },
            None => self.wants(what),
        }
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

    /// A blob the manifest names, fetched and checked against its digest.
    async fn blob(&self, conn: &mut Connection, desc: &serde_json::Value) -> Result<(String, Vec<u8>)> {
        let digest = desc["digest"].as_str().unwrap_or_default();
        // The tarball names blobs by SHA-256; the digest goes into a URL.
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::InvalidArgument {
                what: format!("blob {digest:?} of {}/{}", self.reference.host, self.reference.repository),
                reason: "only sha256 digests are supported (sha256: and 64 hex digits)".into(),
            });
        }
        let what = format!("GET {}", self.api(&format!("blobs/{digest}")));
        let data = self
            .call(conn, &what, async |oci, _| {
                let mut data = Vec::new();
                oci.pull_blob(&self.oci_ref, digest, &mut data).await.map(|()| data)
            })
            .await?;
        Ok((desc["mediaType"].as_str().unwrap_or_default().to_string(), data))
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
    // The repository the image is named after (built or pulled as), when
    // another of the same registry: the registry may have its blobs there.
    let mount_from = name
        .and_then(|n| Reference::parse(n).ok())
        .filter(|r| r.host == reference.host && r.repository != reference.repository)
        .map(|r| r.repository);
    let manifest_digest = desc["digest"].as_str().unwrap_or("");
    let manifest = layout.blob(manifest_digest)?;
    let m: serde_json::Value = serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest: {e}")))?;
    if m.get("manifests").is_some() {
        return Err(Error::Unsupported("pushing an image index (several platforms)".into()));
    }
    let media_type = m["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json");
    let content_type =
        http::HeaderValue::from_str(media_type).map_err(|e| bad(format!("manifest media type {media_type:?}: {e}")))?;
    let digests: Vec<&str> = std::iter::once(&m["config"])
        .chain(m["layers"].as_array().into_iter().flatten())
        .filter_map(|d| d["digest"].as_str())
        .collect();
    // Every blob is checked before anything is sent: a tampered image
    // leaves nothing in the registry.
    let blobs = digests.into_iter().map(|d| Ok((d, layout.blob(d)?))).collect::<Result<Vec<_>>>()?;
    let repo = &reference.repository;
    let mut scopes = vec![format!("repository:{repo}:pull,push")];
    scopes.extend(mount_from.iter().map(|from| format!("repository:{from}:pull")));
    let s = Session::new(&reference, access, scopes)?;
    let source = mount_from.as_deref().map(|from| s.sibling(from));
    let mounted = s.rt.block_on(async {
        let mut conn = s.connect().await?;
        let mut mounted = 0;
        for (d, data) in blobs {
            let what = format!("HEAD {}", s.api(&format!("blobs/{d}")));
            let there = s
                .call(&mut conn, &what, async |oci, _| match oci.blob_exists(&s.oci_ref, d).await {
                    // A HEAD refused for another reason than access (a
                    // blob store that takes only GET): upload.
                    Err(OciDistributionError::RequestError(r))
                        if r.status().is_some_and(|st| st.as_u16() != 401 && st.as_u16() != 403) =>
                    {
                        Ok(false)
                    }
                    there => there,
                })
                .await?;
            if there {
                continue;
            }
            // Not mounted (not there, or not ours to read; a registry that
            // refuses opens an upload, which is left to expire): uploaded.
            if let Some(source) = &source {
                if conn.oci.mount_blob(&s.oci_ref, source, d).await.is_ok() {
                    mounted += 1;
                    continue;
                }
            }
            let data = bytes::Bytes::copy_from_slice(data);
            let what = format!("the upload of {d} to {}/{repo}", reference.host);
            s.call(&mut conn, &what, async |oci, _| {
                let body = futures_util::stream::iter([Ok(data.clone())]);
                oci.push_blob_stream(&s.oci_ref, body, d, Some(data.len() as u64)).await
            })
            .await?;
        }
        let what = format!("PUT {}", s.api(&format!("manifests/{}", reference.tag)));
        s.call(&mut conn, &what, async |oci, _| {
            oci.push_manifest_raw(&s.oci_ref, manifest.to_vec(), content_type.clone()).await
        })
        .await?;
        Ok::<_, Error>(mounted)
    })?;
    let mut line = format!("pushed {}/{repo}:{} ({manifest_digest})", reference.host, reference.tag);
    if let (Some(from), 1..) = (&mount_from, mounted) {
        line = format!("{line}; {mounted} blob(s) mounted from {from}");
    }
    Ok(line)
}

/// Pulls `reference` (reached as `access` says) and writes it to `out` as an
/// image-layout tarball `ctr image import` (or `wasmbox image push`) takes.
/// An index gives its `wasip2/wasm`, `wasip1/wasm`, `wasi/wasm` or host
/// Linux manifest, in that order. An OCI wasm artifact is written runnable
/// ([`crate::layout::runnable_artifact`]); other images as they are. Every
/// manifest and blob is checked against its digest; nothing is written
/// unless all are. Returns a line saying what was written.
pub fn pull(reference: &str, access: &Access, out: impl std::io::Write) -> Result<String> {
    let text = reference;
    let reference = Reference::parse(reference)?;
    let repo = &reference.repository;
    let s = Session::new(&reference, access, vec![format!("repository:{repo}:pull")])?;
    let bad = |reason: String| Error::InvalidArgument { what: format!("image {text}"), reason };
    let json = |data: &[u8], what: &str| -> Result<serde_json::Value> {
        serde_json::from_slice(data).map_err(|e| bad(format!("{what} is not JSON: {e}")))
    };
    let (manifest, (config_type, config), layers) = s.rt.block_on(async {
        let mut conn = s.connect().await?;
        // Checked against the Docker-Content-Digest the registry sends.
        let what = format!("GET {}", s.api(&format!("manifests/{}", reference.tag)));
        let (mut manifest, _) = s
            .call(&mut conn, &what, async |oci, auth| oci.pull_manifest_raw(&s.oci_ref, auth, MANIFEST_TYPES).await)
            .await?;
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
            let digest =
                chosen["digest"].as_str().ok_or_else(|| bad("its index has an entry without a digest".into()))?;
            let digest = digest.to_string();
            // By digest: checked against it.
            let chosen_ref = s.oci_ref.clone_with_digest(digest.clone());
            let what = format!("GET {}", s.api(&format!("manifests/{digest}")));
            manifest = s
                .call(&mut conn, &what, async |oci, auth| {
                    oci.pull_manifest_raw(&chosen_ref, auth, MANIFEST_TYPES).await
                })
                .await?
                .0;
            m = json(&manifest, &format!("manifest {digest}"))?;
            if m.get("manifests").is_some() {
                return Err(bad(format!("manifest {digest} is an index inside an index")));
            }
        }
        let config = s.blob(&mut conn, &m["config"]).await?;
        let mut layers = Vec::new();
        for desc in m["layers"].as_array().into_iter().flatten() {
            layers.push(s.blob(&mut conn, desc).await?);
        }
        Ok::<_, Error>((manifest, config, layers))
    })?;
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
    use std::sync::atomic::{AtomicU16, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/wasmbox/p1:v1").unwrap();
        assert_eq!((r.host.as_str(), r.repository.as_str(), r.tag.as_str()), ("127.0.0.1:5000", "wasmbox/p1", "v1"));
        assert_eq!(Reference::parse("localhost/x").unwrap().tag, "latest");
        assert_eq!(Reference::parse("localhost/x:V1.0_rc-2").unwrap().tag, "V1.0_rc-2");
        for bad in
            ["p1:v1", "library/p1", "127.0.0.1:5000/Upper:v1", "127.0.0.1:5000/x:", "localhost/x:v?1", "localhost/x:.v"]
        {
            assert!(Reference::parse(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }

    #[test]
    fn docker_hub_names() {
        let r = Reference::parse("docker.io/hello:v1").unwrap();
        assert_eq!((r.host.as_str(), r.repository.as_str()), ("docker.io", "library/hello"));
        assert_eq!(Reference::parse("docker.io/me/hello").unwrap().repository, "me/hello");
        let s = Session::new(&r, &Access::default(), Vec::new()).unwrap();
        assert_eq!((s.oci_ref.resolve_registry(), s.base.as_str()), (DOCKER_HUB_API, "https://registry-1.docker.io/"));
    }

    #[test]
    fn challenges() {
        let of = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(http::header::WWW_AUTHENTICATE, v.parse().unwrap());
            }
            Challenge::of(&headers)
        };
        let bearer = Challenge::Bearer {
            realm: Some("https://auth.example.com/token".into()),
            service: Some("registry.example.com".into()),
        };
        let header = r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#;
        assert_eq!(of(&[header]), bearer);
        // Bearer is preferred, in one header or several; names are
        // case-insensitive.
        assert_eq!(of(&[&format!("Basic realm=r, {header}")]), bearer);
        assert_eq!(of(&["Basic realm=\"r\"", header]), bearer);
        assert_eq!(of(&["BEARER Realm=\"/token\""]), Challenge::Bearer { realm: Some("/token".into()), service: None });
        assert_eq!(of(&["Basic realm=wasmbox"]), Challenge::Basic);
        assert_eq!(of(&["Negotiate"]), Challenge::Other("Negotiate".into()));
        assert_eq!(of(&[]), Challenge::Other(String::new()));
    }

    #[test]
    fn urls() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        for local in ["http://localhost:5000/", "http://127.0.0.1/", "http://127.1.2.3:80/", "http://[::1]:5000/"] {
            assert!(is_loopback(&url(local)) && !exposes_passwords(&url(local)), "{local}");
        }
        assert!(exposes_passwords(&url("http://reg.example.com/token")));
        assert!(!exposes_passwords(&url("https://reg.example.com/token")));
        assert_eq!(authority(&url("https://reg.example.com:5000/v2/")), "reg.example.com:5000");
        assert_eq!(authority(&url("https://[::1]/")), "[::1]");
        assert_eq!(authority(&url("https://reg.example.com:443/")), "reg.example.com");
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
        let e = Session::new(&reference, &access, Vec::new()).err().expect("refused").to_string();
        assert!(e.contains("registry.example.com") && e.contains("plain HTTP"), "{e}");
        let local = Reference::parse("127.0.0.1:5000/a/b:v1").unwrap();
        assert!(Session::new(&local, &access, Vec::new()).is_ok());
        assert!(Session::new(&reference, &Access { user, ..Access::default() }, Vec::new()).is_ok());
    }

    #[test]
    fn bad_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let access = Access { ca_file: Some(path.clone()), ..Access::default() };
        let reference = Reference::parse("registry.example.com/a/b:v1").unwrap();
        let e = Session::new(&reference, &access, Vec::new()).err().expect("refused").to_string();
        assert!(e.contains("ca.pem") && e.contains("no PEM certificate"), "{e}");
    }

    /// An HTTP server on loopback: each connection's one request (head
    /// and body read) answered with `reply(request head, its port)`, then
    /// closed. The heads it saw, lowercased.
    fn serve(reply: fn(&str, u16) -> String) -> (u16, Arc<Mutex<Vec<String>>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heads = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                // A TLS client's hello never ends a head: answered anyway.
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(1)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                let _ = std::io::copy(&mut (&mut conn).take(length), &mut std::io::sink());
                seen.lock().unwrap().push(head.clone());
                let _ = conn.write_all(reply(&head, port).as_bytes());
            }
        });
        (port, heads)
    }

    fn reply(status: &str, headers: &str, body: &str) -> String {
        format!("HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
    }

    fn heads(seen: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        seen.lock().unwrap().clone()
    }

    fn plain(user: Option<(&str, &str)>) -> Access {
        Access { plain_http: true, user: user.map(|(u, p)| (u.into(), p.into())), ..Access::default() }
    }

    #[test]
    fn a_redirected_host_gets_no_credentials() {
        // The blob store: asks for credentials of its own.
        let (store, store_seen) = serve(|_, port| {
            reply(
                "401 Unauthorized",
                &format!("www-authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\"\r\n"),
                "",
            )
        });
        // The registry: Basic, a manifest, and its blob on the store.
        static STORE: AtomicU16 = AtomicU16::new(0);
        STORE.store(store, SeqCst);
        let (registry, registry_seen) = serve(|head, _| {
            if !head.contains("authorization: basic") {
                return reply("401 Unauthorized", "www-authenticate: Basic realm=\"r\"\r\n", "");
            }
            if head.starts_with("get /v2/a/b/manifests/v1 ") {
                let config = format!("sha256:{}", "a".repeat(64));
                let manifest = serde_json::json!({"schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
                    "layers": []});
                return reply(
                    "200 OK",
                    "content-type: application/vnd.oci.image.manifest.v1+json\r\n",
                    &manifest.to_string(),
                );
            }
            if head.starts_with("get /v2/a/b/blobs/") {
                let store = STORE.load(SeqCst);
                return reply("307 Temporary Redirect", &format!("location: http://127.0.0.1:{store}/blob\r\n"), "");
            }
            reply("200 OK", "", "{}")
        });
        let mut out = Vec::new();
        let e = pull(&format!("127.0.0.1:{registry}/a/b:v1"), &plain(Some(("alice", "pw"))), &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("redirected to http://127.0.0.1:{store}/blob")), "{e}");
        assert!(out.is_empty(), "a failed pull wrote {} bytes", out.len());
        let registry_heads = heads(&registry_seen);
        let blob = registry_heads.iter().find(|h| h.starts_with("get /v2/a/b/blobs/")).expect("the blob asked for");
        assert!(blob.contains("authorization: basic"), "{registry_heads:?}");
        let store_heads = heads(&store_seen);
        assert!(!store_heads[0].contains("authorization"), "the blob store got credentials: {store_heads:?}");
    }

    #[test]
    fn three_refusals_stay_apart() {
        // Token authentication: alice:pw earns the token "t", which may
        // not read a/b.
        let (registry, seen) = serve(|head, port| {
            if head.starts_with("get /token?") {
                return match head.contains("authorization: basic ywxpy2u6chc=") {
                    true => reply("200 OK", "", r#"{"token":"t"}"#),
                    false => reply("401 Unauthorized", "", r#"{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}"#),
                };
            }
            if !head.contains("authorization: bearer t") {
                let challenge =
                    format!("www-authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"s\"\r\n");
                return reply("401 Unauthorized", &challenge, "");
            }
            reply(
                "403 Forbidden",
                "content-type: application/json\r\n",
                r#"{"errors":[{"code":"DENIED","message":"no"}]}"#,
            )
        });
        let reference = format!("127.0.0.1:{registry}/a/b:v1");
        let refusal = |user| pull(&reference, &plain(user), Vec::new()).unwrap_err().to_string();
        let e = refusal(None);
        assert!(e.contains("wants credentials") && e.contains(&format!("127.0.0.1:{registry}")), "{e}");
        let e = refusal(Some(("alice", "wrong")));
        assert!(e.contains("refused the credentials of alice (from --user)"), "{e}");
        let e = refusal(Some(("alice", "pw")));
        assert!(e.contains("does not allow alice") && e.contains("status 403") && e.contains("manifests/v1"), "{e}");
        let token = heads(&seen).into_iter().find(|h| h.starts_with("get /token?")).unwrap();
        assert!(token.contains("service=s") && token.contains("scope=repository%3aa%2fb%3apull "), "{token}");
    }

    #[test]
    fn no_password_to_a_plain_http_realm_elsewhere() {
        let (registry, _) = serve(|_, _| {
            reply("401 Unauthorized", "www-authenticate: Bearer realm=\"http://registry.example.com/token\"\r\n", "")
        });
        let e = pull(&format!("127.0.0.1:{registry}/a/b:v1"), &plain(Some(("alice", "pw"))), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("the token service http://registry.example.com/token") && e.contains("plain HTTP"), "{e}");
    }

    #[test]
    fn tls_failure_suggests_the_flags() {
        // A plain-HTTP server, reached over HTTPS.
        let (registry, _) = serve(|_, _| reply("400 Bad Request", "", ""));
        let e = pull(&format!("127.0.0.1:{registry}/a/b:v1"), &Access::default(), Vec::new()).unwrap_err().to_string();
        let tls = format!("TLS with 127.0.0.1:{registry}");
        assert!(e.contains(&tls) && e.contains("--plain-http") && e.contains("--tls-ca"), "{e}");
    }

    /// A layout tarball named `name`: config `{}` and one layer.
    fn tarball(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let mut out = Vec::new();
        let config_type = "application/vnd.oci.image.config.v1+json";
        crate::layout::write_layout(name, config_type, b"{}", &[("application/wasm", b"\0asm\x01\0\0\0")], &mut out)
            .unwrap();
        let path = dir.join("image.tar");
        std::fs::write(&path, out).unwrap();
        path
    }

    #[test]
    fn push_mounts_from_the_named_repository() {
        // An open registry that has the config (`{}`) in src/img, not the
        // layer: that mount opens an upload (202), which the push leaves.
        static CONFIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let config = CONFIG.get_or_init(|| format!("sha256:{}", crate::layout::sha256_hex(b"{}")));
        let (registry, seen) = serve(|head, _| {
            let config = CONFIG.get().unwrap();
            let line = head.lines().next().unwrap_or_default();
            if line.starts_with("head ") {
                return reply("404 Not Found", "", "");
            }
            if line.starts_with("post /v2/dst/img/blobs/uploads/?mount=") {
                return match line.contains(&config["sha256:".len()..]) {
                    true => reply("201 Created", &format!("location: /v2/dst/img/blobs/{config}\r\n"), ""),
                    false => reply("202 Accepted", "location: /v2/dst/img/blobs/uploads/abandoned\r\n", ""),
                };
            }
            if line.starts_with("post /v2/dst/img/blobs/uploads/") {
                return reply("202 Accepted", "location: /v2/dst/img/blobs/uploads/1?state=x\r\n", "");
            }
            if line.starts_with("put ") {
                return reply("201 Created", "location: /v2/dst/img/x\r\n", "");
            }
            reply("200 OK", "", "{}")
        });
        let dir = tempfile::tempdir().unwrap();
        let tar = tarball(dir.path(), &format!("127.0.0.1:{registry}/src/img:v1"));
        let line = push(&tar, Some(&format!("127.0.0.1:{registry}/dst/img:v1")), &plain(None)).unwrap();
        assert!(line.contains("1 blob(s) mounted from src/img"), "{line}");
        let lines: Vec<String> =
            heads(&seen).iter().map(|h| h.lines().next().unwrap_or_default().to_string()).collect();
        let mount = format!("post /v2/dst/img/blobs/uploads/?mount={}&from=src%2fimg ", config.replace(':', "%3a"));
        assert!(lines.iter().any(|l| l.starts_with(&mount)), "{lines:?}");
        // The layer, uploaded: POST, then PUT to the Location with its digest.
        assert!(
            lines.iter().any(|l| l.starts_with("put /v2/dst/img/blobs/uploads/1?state=x&digest=sha256%3a")),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.starts_with("put /v2/dst/img/manifests/v1 ")), "{lines:?}");
    }

    #[test]
    fn a_malformed_upload_location_is_an_error() {
        let (registry, _) = serve(|head, _| match head.split(' ').next() {
            Some("head") => reply("404 Not Found", "", ""),
            Some("post") => reply("202 Accepted", "location: not a url\r\n", ""),
            _ => reply("200 OK", "", "{}"),
        });
        let dir = tempfile::tempdir().unwrap();
        let tar = tarball(dir.path(), &format!("127.0.0.1:{registry}/a/b:v1"));
        let e = push(&tar, None, &plain(None)).unwrap_err().to_string();
        assert!(e.contains("the upload of sha256:") && e.contains("Error parsing Url"), "{e}");
    }
}
