//! One `wasi:http/proxy` component, a route per behaviour under test:
//! - `/` and `/hello`: `hello from wasm`;
//! - `/echo`: method, path and headers as `x-echo-*` response headers, the
//!   request body as the response body;
//! - `/trap`: traps (unreachable) while handling;
//! - `/spin`: runs until the host stops it (a CPU deadline or timeout);
//! - `/sleep?ms=N`: answers `slept N ms` after N milliseconds;
//! - `/fetch?url=http://HOST:PORT/PATH`: GETs the URL through
//!   `wasi:http/outgoing-handler` and answers with its status and body, or
//!   502 and the error (a denied request: `HttpRequestDenied`);
//! - `/env?name=K`: the value of env var K, or 404;
//! - `/read?path=P`: the file at P, or 404 and the error.
//!
//! Under a Spin application's route the guest routes on `spin-path-info`
//! (the path below the route), as Spin components do.
use std::io::{Read as _, Write as _};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct Guest;

wasip2::http::proxy::export!(Guest);

fn query<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    let (_, q) = path.split_once('?')?;
    q.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &[u8])], body: &[u8]) {
    let fields = Fields::new();
    for (k, v) in headers {
        let _ = fields.append(k, v);
    }
    let resp = OutgoingResponse::new(fields);
    let _ = resp.set_status_code(status);
    let outgoing = resp.body().expect("response body");
    ResponseOutparam::set(out, Ok(resp));
    let mut w = outgoing.write().expect("body stream");
    w.write_all(body).expect("write body");
    w.flush().expect("flush body");
    drop(w);
    OutgoingBody::finish(outgoing, None).expect("finish body");
}

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}

fn read_body(req: IncomingRequest) -> Vec<u8> {
    let mut data = Vec::new();
    if let Ok(body) = req.consume() {
        if let Ok(mut s) = body.stream() {
            let _ = s.read_to_end(&mut data);
        }
        let _ = IncomingBody::finish(body);
    }
    data
}

/// GET `url` (http only); (status, body) or the error's words.
fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).map_err(|()| "method")?;
    req.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    req.set_authority(Some(authority)).map_err(|()| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let resp = match future.get() {
        Some(Ok(Ok(resp))) => resp,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        Some(Err(())) => return Err("response taken twice".into()),
        None => return Err("no response".into()),
    };
    let status = resp.status();
    let mut data = Vec::new();
    if let Ok(body) = resp.consume() {
        if let Ok(mut s) = body.stream() {
            let _ = s.read_to_end(&mut data);
        }
    }
    Ok((status, data))
}

impl wasip2::exports::http::incoming_handler::Guest for Guest {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let path = req.path_with_query().unwrap_or_else(|| "/".into());
        // Under a Spin app's route, the path below it (as a Spin
        // component routes).
        let below = req.headers().get("spin-path-info").into_iter().next().and_then(|v| String::from_utf8(v).ok());
        let route = match below {
            Some(b) if !b.is_empty() => b,
            _ => path.split('?').next().unwrap_or("/").to_string(),
        };
        match route.as_str() {
            "/" | "/hello" => respond(out, 200, &[("content-type", b"text/plain")], b"hello from wasm\n"),
            "/echo" => {
                let method = method_name(&req.method());
                let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
                for (k, v) in req.headers().entries() {
                    headers.push((format!("x-echo-h-{k}"), v));
                }
                let body = read_body(req);
                let mut all: Vec<(&str, &[u8])> =
                    vec![("x-echo-method", method.as_bytes()), ("x-echo-path", path.as_bytes())];
                all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
                respond(out, 200, &all, &body);
            }
            "/spin" => {
                // Runs until the host stops it (a CPU deadline, a timeout).
                let mut x: u64 = 1;
                loop {
                    x = core::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "/trap" => {
                // A guest bug while handling: the host answers 500.
                core::arch::wasm32::unreachable()
            }
            "/sleep" => {
                let ms: u64 = query(&path, "ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                respond(out, 200, &[], format!("slept {ms} ms\n").as_bytes());
            }
            "/fetch" => match query(&path, "url").map(fetch) {
                Some(Ok((status, body))) => {
                    let mut text = format!("upstream {status}\n").into_bytes();
                    text.extend_from_slice(&body);
                    respond(out, 200, &[], &text)
                }
                Some(Err(e)) => respond(out, 502, &[], format!("fetch failed: {e}\n").as_bytes()),
                None => respond(out, 400, &[], b"fetch needs ?url=\n"),
            },
            "/env" => {
                let name = query(&path, "name").unwrap_or("");
                match wasip2::cli::environment::get_environment().into_iter().find(|(k, _)| k == name) {
                    Some((_, v)) => respond(out, 200, &[], v.as_bytes()),
                    None => respond(out, 404, &[], b"unset\n"),
                }
            }
            "/read" => match std::fs::read(query(&path, "path").unwrap_or("")) {
                Ok(data) => respond(out, 200, &[], &data),
                Err(e) => respond(out, 404, &[], format!("{e}\n").as_bytes()),
            },
            _ => respond(out, 404, &[], b"no such route\n"),
        }
    }
}
