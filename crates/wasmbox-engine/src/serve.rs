//! Serving a `wasi:http/proxy` component (one that exports WASI 0.2's
//! `wasi:http/incoming-handler`) or a `wasi:http/service` (WASI 0.3's
//! `wasi:http/handler`, on the async ABI): the instance process listens on the
//! container's network (bound while preparing, so a busy port or a bad
//! address fails Create) and handles each request in a fresh instance of
//! the pre-linked component, from the pooling allocator, over hyper.
//!
//! Knobs come from annotations, else from runwasi's environment variables
//! (taken out of the guest's environment): see [`ServeOptions`]. SIGTERM
//! (or SIGINT) stops accepting, lets requests in flight finish up to the
//! drain deadline and exits 0. A request whose guest traps gets a 500 and
//! a line on stderr with the trap. Outbound HTTP is denied unless the
//! annotation [`OUTBOUND_ANNOTATION`] allows the URL.

use crate::net::{Outbound, Policy};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmbox_spec::annotations::{
    self, parse_bytes, parse_duration, HTTP_BACKLOG as BACKLOG_ANNOTATION, HTTP_DRAIN_TIMEOUT as DRAIN_ANNOTATION,
    HTTP_HEADER_TIMEOUT as HEADER_TIMEOUT_ANNOTATION, HTTP_LISTEN as LISTEN_ANNOTATION,
    HTTP_MAX_BODY_BYTES as MAX_BODY_ANNOTATION, HTTP_MAX_CONCURRENCY as CONCURRENCY_ANNOTATION,
    HTTP_MAX_HEADER_BYTES as MAX_HEADER_ANNOTATION, HTTP_REQUEST_LOG as REQUEST_LOG_ANNOTATION,
    HTTP_REQUEST_TIMEOUT as REQUEST_TIMEOUT_ANNOTATION, METRICS_LISTEN as METRICS_ANNOTATION,
};
use wasmbox_spec::Plan;
use wasmbox_spec::{Error, Result};
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// runwasi's (and `wasmtime serve`'s) listen address variable.
pub const LISTEN_ENV: &str = "WASMTIME_HTTP_PROXY_SOCKET_ADDR";
/// runwasi's listen backlog variable.
pub const BACKLOG_ENV: &str = "WASMTIME_HTTP_BACKLOG";

/// Exit status of a server that drained and stopped.
const DRAINED_EXIT: i32 = 0;

/// How a proxy component is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Where to listen: annotation, else `WASMTIME_HTTP_PROXY_SOCKET_ADDR`,
    /// else `0.0.0.0:8080`. Where it came from, for messages.
    pub addr: SocketAddr,
    pub addr_source: String,
    /// listen(2) backlog: annotation, else `WASMTIME_HTTP_BACKLOG`, else 1024.
    pub backlog: i32,
    /// Requests handled at once; more wait for a slot (default 1000).
    pub max_concurrency: usize,
    /// A request's whole handling, guest included (default 60 s): past it
    /// the client gets 504 and the instance is dropped.
    pub request_timeout: Duration,
    /// Time a client has to send its request head (default 10 s).
    pub header_timeout: Duration,
    /// Bytes a request head may take (default 64 KiB; hyper's floor 8 KiB).
    pub max_header_bytes: usize,
    /// Bytes a request body may have (default 16 MiB): 413 past it.
    pub max_body_bytes: u64,
    /// How long SIGTERM waits for requests in flight (default 30 s).
    pub drain_timeout: Duration,
    /// One line per request on stderr.
    pub request_log: bool,
    /// Prometheus text on `http://ADDR/metrics`, when given.
    pub metrics: Option<SocketAddr>,
}

use annotations::bad_value as bad;

fn parse_addr(value: &str, source: &str) -> Result<SocketAddr> {
    value.trim().parse::<SocketAddr>().map_err(|e| Error::InvalidArgument {
        what: format!("{source}={value:?}"),
        reason: format!("not a socket address such as 0.0.0.0:8080 or [::]:80 ({e})"),
    })
}

impl ServeOptions {
    /// The options for `plan`, read from its annotations and environment;
    /// runwasi's variables are removed from the guest's environment.
    pub fn take(plan: &mut Plan) -> Result<ServeOptions> {
        ServeOptions::take_for(plan, LISTEN_ENV, "0.0.0.0:8080")
    }

    /// The same, where the listen address comes from `listen_env` (after
    /// the annotation) and is `default` without either: a Spin
    /// application's are `SPIN_HTTP_LISTEN_ADDR` and `0.0.0.0:80`.
    pub fn take_for(plan: &mut Plan, listen_env: &str, default: &str) -> Result<ServeOptions> {
        let take_env = |plan: &mut Plan, name: &str| {
            let v = plan.env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            plan.env.retain(|(k, _)| k != name);
            v
        };
        let env_addr = take_env(plan, listen_env);
        let env_backlog = take_env(plan, BACKLOG_ENV);
        let a = &plan.annotations;
        let (addr, addr_source) = match (a.get(LISTEN_ANNOTATION), env_addr) {
            (Some(v), _) => (parse_addr(v, &format!("annotation {LISTEN_ANNOTATION}"))?, LISTEN_ANNOTATION.to_string()),
            (None, Some(v)) => (parse_addr(&v, &format!("env {listen_env}"))?, format!("env {listen_env}")),
            (None, None) => (parse_addr(default, "the default")?, "the default".to_string()),
        };
        let backlog = match (a.get(BACKLOG_ANNOTATION), env_backlog) {
            (Some(v), _) => v
                .trim()
                .parse::<i32>()
                .ok()
                .filter(|b| *b > 0)
                .ok_or_else(|| bad(BACKLOG_ANNOTATION, v, "a positive number"))?,
            (None, Some(v)) => {
                v.trim().parse::<i32>().ok().filter(|b| *b > 0).ok_or_else(|| Error::InvalidArgument {
                    what: format!("env {BACKLOG_ENV}={v:?}"),
                    reason: "expected a positive number".into(),
                })?
            }
            (None, None) => 1024,
        };
        let duration = |name: &str, default: Duration| -> Result<Duration> {
            match a.get(name) {
                None => Ok(default),
                Some(v) => parse_duration(v)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| bad(name, v, "a duration such as 500ms, 30s or 2m")),
            }
        };
        let bytes = |name: &str, default: u64| -> Result<u64> {
            match a.get(name) {
                None => Ok(default),
                Some(v) => parse_bytes(v).ok_or_else(|| bad(name, v, "a size such as 65536, 64Ki or 16Mi")),
            }
        };
        let max_concurrency = match a.get(CONCURRENCY_ANNOTATION) {
            None => 1000,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(CONCURRENCY_ANNOTATION, v, "a positive number"))?,
        };
        let request_log = match a.get(REQUEST_LOG_ANNOTATION).map(|v| v.trim()) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return Err(bad(REQUEST_LOG_ANNOTATION, v, "true or false")),
        };
        let metrics = match a.get(METRICS_ANNOTATION) {
            None => None,
            Some(v) => Some(parse_addr(v, &format!("annotation {METRICS_ANNOTATION}"))?),
        };
        Ok(ServeOptions {
            addr,
            addr_source,
            backlog,
            max_concurrency,
            request_timeout: duration(REQUEST_TIMEOUT_ANNOTATION, Duration::from_secs(60))?,
            header_timeout: duration(HEADER_TIMEOUT_ANNOTATION, Duration::from_secs(10))?,
            max_header_bytes: bytes(MAX_HEADER_ANNOTATION, 64 << 10)?.max(8192) as usize,
            max_body_bytes: bytes(MAX_BODY_ANNOTATION, 16 << 20)?,
            drain_timeout: duration(DRAIN_ANNOTATION, Duration::from_secs(30))?,
            request_log,
            metrics,
        })
    }
}

/// Binds `opts.addr` with its backlog; the error names the address, where
/// it came from, and the reason (address in use, not available here).
pub fn bind(opts: &ServeOptions) -> Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(opts.addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    );
    let listening = socket.and_then(|s| {
        s.set_cloexec(true)?;
        s.set_nonblocking(true)?;
        s.set_reuse_address(true)?;
        if opts.addr.is_ipv6() {
            let _ = s.set_only_v6(false);
        }
        s.bind(&opts.addr.into())?;
        s.listen(opts.backlog)?;
        Ok(s)
    });
    listening.map(Into::into).map_err(|e| {
        Error::io(format!("listening on {} ({}) for the wasi:http/proxy component", opts.addr, opts.addr_source), e)
    })
}

/// What the server counts, readable as Prometheus text.
#[derive(Default)]
pub struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    instance_ns: AtomicU64,
    instantiate_ns: AtomicU64,
    /// Outbound HTTP requests and socket uses the allow-list refused.
    denied_outbound: Arc<AtomicU64>,
    /// Times the served code was replaced by a higher tier's.
    upgrades: Arc<AtomicU64>,
}

impl Counters {
    fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP wasmbox_http_requests_total Requests handled.\n# TYPE wasmbox_http_requests_total counter\nwasmbox_http_requests_total {}\n\
             # HELP wasmbox_http_errors_total Requests answered with a 5xx by the host (trap, timeout, no response).\n# TYPE wasmbox_http_errors_total counter\nwasmbox_http_errors_total {}\n\
             # HELP wasmbox_http_in_flight Requests being handled.\n# TYPE wasmbox_http_in_flight gauge\nwasmbox_http_in_flight {}\n\
             # HELP wasmbox_http_instance_seconds_total Time spent instantiating and running the guest.\n# TYPE wasmbox_http_instance_seconds_total counter\nwasmbox_http_instance_seconds_total {:.6}\n\
             # HELP wasmbox_http_instantiate_seconds_total Time spent instantiating the guest (part of instance time).\n# TYPE wasmbox_http_instantiate_seconds_total counter\nwasmbox_http_instantiate_seconds_total {:.6}\n\
             # HELP wasmbox_http_outbound_denied_total Outbound requests and socket uses the allow-list refused.\n# TYPE wasmbox_http_outbound_denied_total counter\nwasmbox_http_outbound_denied_total {}\n\
             # HELP wasmbox_http_code_upgrades_total Times the served code was replaced by the optimized tier's while serving.\n# TYPE wasmbox_http_code_upgrades_total counter\nwasmbox_http_code_upgrades_total {}\n",
            g(&self.requests),
            g(&self.errors),
            g(&self.in_flight),
            g(&self.instance_ns) as f64 / 1e9,
            g(&self.instantiate_ns) as f64 / 1e9,
            g(&self.denied_outbound),
            g(&self.upgrades),
        )
    }
}

/// Store data of one request's instance.
pub struct HttpState {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: Outbound,
    limiter: crate::guest::GuestLimiter,
    /// Epoch ticks the guest has been running for.
    ticks: u64,
    /// A Spin app component's variables (see [`crate::app_host`]).
    pub(crate) variables: Arc<wasmbox_spin::Variables>,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// A served component, linked: a `wasi:http/proxy` (WASI 0.2's
/// `incoming-handler`) or a `wasi:http/service` (WASI 0.3's `handler`).
#[derive(Clone)]
pub enum Linked {
    Proxy(ProxyPre<HttpState>),
    Service0_3(ServicePre<HttpState>),
}

/// One tier's code of the served component: an engine and the component
/// linked in it.
pub struct Generation {
    pub engine: Engine,
    pub pre: Linked,
    /// The tier's name, for reports.
    pub tier: &'static str,
}

/// The code new requests are served with. An upgrade (the optimized code,
/// compiled in the background while the server ran on a lower tier)
/// replaces it between two requests: requests in flight finish on the code
/// they started with, which is dropped (its engine and pool with it) once
/// the last of them is done. No request is refused or retried for it.
#[derive(Clone)]
pub struct CodeSlot {
    current: Arc<std::sync::RwLock<Arc<Generation>>>,
    /// Earlier generations, ticked while requests still run on them.
    retired: Arc<std::sync::Mutex<Vec<std::sync::Weak<Generation>>>>,
    upgrades: Arc<AtomicU64>,
}

impl CodeSlot {
    pub fn new(generation: Generation) -> CodeSlot {
        CodeSlot {
            current: Arc::new(std::sync::RwLock::new(Arc::new(generation))),
            retired: Arc::default(),
            upgrades: Arc::default(),
        }
    }

    /// The generation a request starting now runs on.
    pub fn current(&self) -> Arc<Generation> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// New requests run on `generation` from now on.
    pub fn replace(&self, generation: Generation) {
        let old =
            std::mem::replace(&mut *self.current.write().unwrap_or_else(|e| e.into_inner()), Arc::new(generation));
        self.retired.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&old));
        self.upgrades.fetch_add(1, Ordering::Relaxed);
    }

    /// One epoch tick for every generation a request may be running on.
    fn tick(&self) {
        self.current().engine.increment_epoch();
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|g| match g.upgrade() {
            Some(g) => {
                g.engine.increment_epoch();
                true
            }
            None => false,
        });
    }
}

/// One component a server runs requests in: its code, and what each of
/// its instances is given.
pub struct Served {
    /// The code requests are served with, which an upgrade replaces.
    pub code: CodeSlot,
    /// Its args, env, grants and annotations.
    pub plan: Plan,
    /// Its outbound HTTP and sockets.
    pub net: Policy,
    /// Its id in a Spin application (empty for a lone component).
    pub id: String,
    /// Its variables in a Spin application (none for a lone component).
    pub variables: Arc<wasmbox_spin::Variables>,
}

/// A Spin application's HTTP trigger: which component a request goes to.
pub struct AppRoutes {
    pub name: String,
    pub router: wasmbox_spin::Router,
}

/// A proxy component, or a Spin application's components, linked and
/// ready to serve.
pub struct Server {
    /// The one component, or the app's (in the order the routes name them
    /// by id).
    pub served: Vec<Served>,
    /// An app's routes; with none, every request goes to the one component.
    pub routes: Option<AppRoutes>,
    pub listener: std::net::TcpListener,
    pub opts: ServeOptions,
    /// Each request instance's memory limiter starts as a copy of this.
    pub limiter: crate::guest::GuestLimiter,
    /// Each request's guest may run this long (annotation
    /// `wasmbox.io/cpu-deadline`, which for a command is the whole run's).
    pub cpu_deadline: Option<Duration>,
    /// Fuel each request's guest may burn (annotation `wasmbox.io/fuel`).
    pub fuel: Option<u64>,
}

/// The epoch tick: how often a running request's guest yields (and its
/// timeouts and run time are looked at).
const TICK: Duration = Duration::from_millis(10);

/// The error a request's guest is ended with past its run time.
#[derive(Debug)]
struct RunTimeExceeded(Duration);

impl std::fmt::Display for RunTimeExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU deadline reached: the request's guest ran for {:?} (annotation {})",
            self.0,
            annotations::CPU_DEADLINE
        )
    }
}

impl std::error::Error for RunTimeExceeded {}

struct Shared {
    served: Vec<Served>,
    routes: Option<AppRoutes>,
    opts: ServeOptions,
    limiter: crate::guest::GuestLimiter,
    counters: Arc<Counters>,
    /// Each request's guest run time, in epoch ticks (annotation
    /// `wasmbox.io/cpu-deadline`).
    cpu_ticks: Option<u64>,
    fuel: Option<u64>,
    slots: tokio::sync::Semaphore,
    drained: tokio::sync::Notify,
    /// The epoch thread, woken when a request starts.
    ticker: Option<std::thread::Thread>,
}

fn text_response(status: u16, body: &str) -> hyper::Response<HyperOutgoingBody> {
    let body = http_body_util::Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed_unsync();
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(body)
        .expect("a valid response")
}

/// A request's WASI context: the component's (args, env, cwd, grants,
/// stdout and stderr), with no stdin (requests do not share the
/// container's).
fn request_wasi(served: &Served) -> std::result::Result<WasiCtx, (u16, String)> {
    crate::guest::wasi(&served.plan, &served.net)
        .map(|mut b| b.stdin(std::io::empty()).build())
        .map_err(|e| (500, e.to_string()))
}

/// The headers of a request that Spin sets: a client's own are dropped.
fn is_spin_header(name: &http::HeaderName) -> bool {
    name.as_str().starts_with("spin-")
}

/// Where a request goes.
enum Routed {
    /// To `served[index]`, with these headers added.
    Component(usize, Vec<(String, String)>),
    /// Answered by the host (an app's static response, its reserved
    /// routes, or no route).
    Host(hyper::Response<HyperOutgoingBody>),
}

impl Shared {
    /// Where `req` goes: the one component, or the app's route for its path.
    fn route(&self, req: &hyper::Request<hyper::body::Incoming>, client: SocketAddr) -> Routed {
        let Some(app) = &self.routes else { return Routed::Component(0, Vec::new()) };
        let path = req.uri().path();
        if let Some(what) = path.strip_prefix(wasmbox_spin::route::WELL_KNOWN) {
            return Routed::Host(match what {
                "health" => text_response(200, "OK"),
                "info" => text_response(200, &format!("{{\"name\":{:?},\"runtime\":\"wasmbox\"}}", app.name)),
                _ => text_response(404, "not found"),
            });
        }
        let Some(m) = app.router.route(path) else {
            return Routed::Host(text_response(
                404,
                &format!("no route of application {:?} matches {path}\n", app.name),
            ));
        };
        match m.target {
            wasmbox_spin::route::Target::Static { status, headers, body } => {
                let mut resp = text_response(*status, body);
                for (k, v) in headers {
                    if let (Ok(k), Ok(v)) =
                        (http::HeaderName::try_from(k.as_str()), http::HeaderValue::try_from(v.as_str()))
                    {
                        resp.headers_mut().insert(k, v);
                    }
                }
                Routed::Host(resp)
            }
            wasmbox_spin::route::Target::Component(id) => {
                let index = self.served.iter().position(|s| s.id == *id).expect("every routed component is served");
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| req.uri().authority().map(|a| a.to_string()))
                    .unwrap_or_else(|| self.opts.addr.to_string());
                let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(path);
                let url = format!("http://{host}{path_and_query}");
                Routed::Component(index, m.headers(&url, Some(client)))
            }
        }
    }

    /// Runs one request in a fresh instance: the guest's response, or the
    /// host's 500 (trap, no response), 504 (timeout) or 413.
    async fn handle(
        self: Arc<Self>,
        mut req: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> hyper::Response<HyperOutgoingBody> {
        let received = Instant::now();
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let index = match self.route(&req, client) {
            Routed::Host(resp) => {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                return resp;
            }
            Routed::Component(index, headers) => {
                if self.routes.is_some() {
                    let h = req.headers_mut();
                    let theirs: Vec<http::HeaderName> = h.keys().filter(|n| is_spin_header(n)).cloned().collect();
                    for n in theirs {
                        h.remove(n);
                    }
                    for (k, v) in headers {
                        if let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k), http::HeaderValue::try_from(v)) {
                            h.insert(k, v);
                        }
                    }
                }
                index
            }
        };
        let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
        // Instance time starts once the request has a slot.
        let started = Instant::now();
        if self.counters.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(t) = &self.ticker {
                t.unpark();
            }
        }
        let resp = self.clone().run_guest(req, index).await;
        let resp = match resp {
            Ok(r) => r,
            Err((status, why)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let _ = writeln!(std::io::stderr(), "wasmbox: {method} {path}: {status}: {why}");
                text_response(status, &format!("{why}\n"))
            }
        };
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters.instance_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if self.counters.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.drained.notify_waiters();
        }
        if self.opts.request_log {
            let _ = writeln!(
                std::io::stderr(),
                "wasmbox: {method} {path} {} {:.3} ms",
                resp.status().as_u16(),
                received.elapsed().as_secs_f64() * 1e3
            );
        }
        resp
    }

    async fn run_guest(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
        index: usize,
    ) -> std::result::Result<hyper::Response<HyperOutgoingBody>, (u16, String)> {
        let served = &self.served[index];
        let max = self.opts.max_body_bytes;
        let declared =
            req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err((413, format!("request body over {max} bytes (annotation {MAX_BODY_ANNOTATION})")));
        }
        let req = req.map(move |b| {
            http_body_util::Limited::new(b, max as usize).map_err(move |e| match e.downcast::<hyper::Error>() {
                Ok(h) => wasmtime_wasi_http::Error::Hyper(*h),
                Err(_) => wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max)),
            })
        });
        let state = HttpState {
            ctx: request_wasi(served)?,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: served.net.outbound(),
            limiter: self.limiter.clone(),
            ticks: 0,
            variables: Arc::clone(&served.variables),
        };
        let generation = served.code.current();
        let mut store = Store::new(&generation.engine, state);
        store.limiter(|s| &mut s.limiter);
        if let Some(fuel) = self.fuel {
            store.set_fuel(fuel).map_err(|e| (500, format!("{e:#}")))?;
        }
        // The guest yields at each epoch tick, so a timeout fires even
        // while it spins; a tick that finds the guest running counts
        // towards its run time.
        store.set_epoch_deadline(1);
        let allowed = self.cpu_ticks;
        store.epoch_deadline_callback(move |mut s| {
            let ticks = &mut s.data_mut().ticks;
            *ticks += 1;
            match allowed {
                Some(max) if *ticks > max => Err(wasmtime::Error::new(RunTimeExceeded(TICK * max as u32))),
                _ => Ok(wasmtime::UpdateDeadline::Yield(1)),
            }
        });
        let shared = Arc::clone(&self);
        let (answer, task) = match generation.pre.clone() {
            Linked::Proxy(pre) => {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                let (wreq, out) = {
                    let mut http = store.data_mut().http();
                    let wreq = http
                        .new_incoming_request(wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http, req)
                        .map_err(|e| (500, format!("{e:#}")))?;
                    let out = http.new_response_outparam(sender).map_err(|e| (500, format!("{e:#}")))?;
                    (wreq, out)
                };
                let task = tokio::task::spawn(async move {
                    let t = Instant::now();
                    let proxy = pre.instantiate_async(&mut store).await?;
                    shared.counters.instantiate_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    proxy.wasi_http_incoming_handler().call_handle(&mut store, wreq, out).await
                });
                let answer: Answer =
                    Box::pin(async move { receiver.await.map(|r| r.map_err(|code| format!("{code:?}"))) });
                (answer, task)
            }
            Linked::Service0_3(pre) => {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                let task = tokio::task::spawn(async move {
                    let t = Instant::now();
                    let service = pre.instantiate_async(&mut store).await?;
                    shared.counters.instantiate_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    store.run_concurrent(async move |guest| handle_0_3(guest, &service, req, sender).await).await?
                });
                let answer: Answer = Box::pin(receiver);
                (answer, task)
            }
        };
        let timeout = self.opts.request_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(code))) => Err((500, format!("the guest answered with an error: {code}"))),
            Ok(Err(_)) => {
                let why = match task.await {
                    Ok(Ok(())) => "the guest returned without setting a response".to_string(),
                    Ok(Err(e)) => guest_error(&self.served[index].plan, &e),
                    Err(e) => format!("the request's task failed: {e}"),
                };
                Err((500, why))
            }
            Err(_) => {
                task.abort();
                Err((504, format!("the guest took longer than {timeout:?} (annotation {REQUEST_TIMEOUT_ANNOTATION})")))
            }
        }
    }
}

/// What a request's guest answers: its response, or the error code it
/// answered with instead; dropped unsent if the guest failed first.
type Answer = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::result::Result<
                    std::result::Result<hyper::Response<HyperOutgoingBody>, String>,
                    tokio::sync::oneshot::error::RecvError,
                >,
            > + Send,
    >,
>;

/// One request to a WASI 0.3 handler, inside its store's event loop: the
/// guest's response is sent on `answer` as soon as `handle` returns it,
/// and the loop goes on until hyper has sent (or dropped) its body, which
/// the guest may still be writing from a task of its own.
async fn handle_0_3<B>(
    guest: &wasmtime::component::Accessor<HttpState>,
    service: &wasmtime_wasi_http::p3::bindings::Service,
    req: hyper::Request<B>,
    answer: tokio::sync::oneshot::Sender<std::result::Result<hyper::Response<HyperOutgoingBody>, String>>,
) -> wasmtime::Result<()>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type RequestIo =
        std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<(), wasmtime_wasi_http::Error>> + Send>>;
    let (request, request_io) = guest.with(|mut store| {
        let (request, io) = wasmtime_wasi_http::p3::Request::from_http(store.get().http().hooks, req);
        // Boxed as the `'static` future it is, apart from the store's borrow.
        (request, Box::pin(io) as RequestIo)
    });
    let response = match service.handle(guest, request).await? {
        Ok(response) => response,
        Err(code) => {
            let _ = answer.send(Err(format!("{code:?}")));
            return Ok(());
        }
    };
    let response = guest.with(|mut store| response.into_http(&mut store, request_io))?;
    let (sent, body_done) = tokio::sync::oneshot::channel::<()>();
    // `sent` lives as long as the body: dropped once hyper is done with it.
    let response = response.map(|body| {
        body.map_err(move |e| {
            let _body_alive = &sent;
            e
        })
        .boxed_unsync()
    });
    if answer.send(Ok(response)).is_ok() {
        let _ = body_done.await;
    }
    Ok(())
}

/// A trap or host error as one line: the wasm, the cause, the backtrace's
/// first frames.
fn guest_error(plan: &Plan, e: &wasmtime::Error) -> String {
    let file = plan.args.first().map(String::as_str).unwrap_or("guest");
    let cause = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => format!("{} (annotation {})", wasmtime::Trap::OutOfFuel, annotations::FUEL),
        Some(t) => t.to_string(),
        None => format!("{}", e.root_cause()),
    };
    match e.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(bt) => format!("{file}: trap: {cause}; {}", bt.to_string().replace('\n', "; ")),
        None => format!("{file}: trap: {cause}"),
    }
}

impl Server {
    /// Serves until SIGTERM or SIGINT, then drains; the exit status.
    pub fn run(self) -> Result<i32> {
        // The instance's own handlers (a pid namespace's init exits at
        // once on SIGTERM) give way to the server's, which drain.
        for sig in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: resets a signal's disposition; no handler runs meanwhile
            // that touches memory.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the HTTP server's runtime", e))?;
        let Some(first) = self.served.first() else {
            return Err(Error::InvalidArgument {
                what: "the server".into(),
                reason: "it has no component to serve".into(),
            });
        };
        // An app's components share one count of refusals (see
        // `Prepared::app`); only a lone component is upgraded.
        let counters = Arc::new(Counters {
            denied_outbound: Arc::clone(&first.net.denied),
            upgrades: Arc::clone(&first.code.upgrades),
            ..Counters::default()
        });
        // Epoch ticks drive request timeouts (a yield per tick), only while
        // requests are in flight: an idle server makes no wake-ups.
        let ticking: Vec<CodeSlot> = self.served.iter().map(|s| s.code.clone()).collect();
        let watched = Arc::clone(&counters);
        let ticker = std::thread::Builder::new()
            .name("epoch".into())
            .stack_size(64 * 1024)
            .spawn(move || loop {
                if watched.in_flight.load(Ordering::SeqCst) == 0 {
                    std::thread::park();
                    continue;
                }
                std::thread::sleep(TICK);
                for code in &ticking {
                    code.tick();
                }
            })
            .map(|h| h.thread().clone())
            .ok();
        let shared = Arc::new(Shared {
            served: self.served,
            routes: self.routes,
            slots: tokio::sync::Semaphore::new(self.opts.max_concurrency),
            counters,
            fuel: self.fuel,
            cpu_ticks: self.cpu_deadline.map(|d| (d.as_millis() as u64).div_ceil(TICK.as_millis() as u64).max(1)),
            opts: self.opts,
            limiter: self.limiter,
            drained: tokio::sync::Notify::new(),
            ticker,
        });
        let listener = self.listener;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| Error::io("registering the listening socket", e))?;
            if let Some(addr) = shared.opts.metrics {
                serve_metrics(addr, Arc::clone(&shared.counters)).await?;
            }
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| Error::io("handling SIGTERM", e))?;
            let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| Error::io("handling SIGINT", e))?;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, client)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(serve_connection(Arc::clone(&shared), stream, client));
                    }
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
            }
            drop(listener);
            // Drain: wait for requests in flight, up to the deadline.
            let deadline = tokio::time::Instant::now() + shared.opts.drain_timeout;
            loop {
                let waiting = shared.drained.notified();
                if shared.counters.in_flight.load(Ordering::Relaxed) == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, waiting).await.is_err() {
                    let _ = writeln!(
                        std::io::stderr(),
                        "wasmbox: {} request(s) still in flight after the drain timeout of {:?} (annotation {DRAIN_ANNOTATION})",
                        shared.counters.in_flight.load(Ordering::Relaxed),
                        shared.opts.drain_timeout
                    );
                    break;
                }
            }
            Ok(DRAINED_EXIT)
        })
    }
}

/// The client preface of HTTP/2 over cleartext ("prior knowledge").
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the connection speaks HTTP/2 (its first bytes are the
/// preface), waiting at most the header timeout for them; `None` when the
/// client sent nothing in time.
async fn speaks_h2(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // Part of the preface: wait for the rest (peek returns at once
        // while the bytes it saw are unread).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: tokio::net::TcpStream, client: SocketAddr) {
    let Some(h2) = speaks_h2(&stream, shared.opts.header_timeout).await else { return };
    let io = hyper_util::rt::TokioIo::new(stream);
    let svc = {
        let shared = Arc::clone(&shared);
        hyper::service::service_fn(move |req| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, std::convert::Infallible>(shared.handle(req, client).await) }
        })
    };
    let opts = &shared.opts;
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .max_header_list_size(opts.max_header_bytes as u32)
            .max_concurrent_streams(opts.max_concurrency.min(1000) as u32)
            .keep_alive_interval(opts.header_timeout)
            .keep_alive_timeout(opts.header_timeout);
        let _ = builder.serve_connection(io, svc).await;
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .keep_alive(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(opts.header_timeout)
            .max_buf_size(opts.max_header_bytes);
        let _ = builder.serve_connection(io, svc).await;
    }
}

/// Prometheus text on `addr` (any path), in the container's network.
async fn serve_metrics(addr: SocketAddr, counters: Arc<Counters>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("listening on {addr} (annotation {METRICS_ANNOTATION})"), e))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let counters = Arc::clone(&counters);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = counters.render();
                    async move {
                        let resp = hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(http_body_util::Full::new(Bytes::from(body)))
                            .expect("a valid response");
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}
