//! A `wasi:http/service@0.3.0` guest (exports `wasi:http/handler@0.3.0`):
//! - `/` and `/hello`: `hello from wasi:http@0.3.0 METHOD PATH`;
//! - `/echo`: the request body back, its method as `x-echo-method`;
//! - `/stream?n=N`: N lines `line I`, written one at a time into the body
//!   after the response has been returned (the host must go on running the
//!   guest while it sends the body);
//! - `/trap`: traps while handling;
//! - `/env?name=K`: the value of env var K (from `wasi:cli/environment@0.3.0`),
//!   or 404.
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

struct Service;

wasip3::http::service::export!(Service);

fn query<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    let (_, q) = path.split_once('?')?;
    q.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// A response whose body is `chunks`, written by a task that runs after
/// `handle` has returned.
fn respond(status: u16, headers: &[(&str, &str)], chunks: Vec<Vec<u8>>) -> Response {
    let fields = Fields::new();
    for (k, v) in headers {
        fields.append(k, v.as_bytes()).expect("a valid header");
    }
    let (mut body_tx, body_rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(fields, Some(body_rx), trailers_rx);
    response.set_status_code(status).expect("a valid status");
    wit_bindgen::spawn_local(async move {
        for chunk in chunks {
            let rest = body_tx.write_all(chunk).await;
            if !rest.is_empty() {
                return;
            }
        }
        drop(body_tx);
        drop(trailers_tx);
    });
    response
}

impl wasip3::exports::http::handler::Guest for Service {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        let route = path.split('?').next().unwrap_or("");
        let method = format!("{:?}", request.get_method());
        Ok(match route {
            "/" | "/hello" => respond(200, &[], vec![format!("hello from wasi:http@0.3.0 {method} {path}\n").into_bytes()]),
            "/echo" => {
                let (done_tx, done_rx) = wit_future::new(|| Ok(()));
                let (mut body, _trailers) = Request::consume_body(request, done_rx);
                drop(done_tx);
                let mut all = Vec::new();
                loop {
                    let (status, chunk) = body.read(Vec::with_capacity(16 << 10)).await;
                    all.extend(chunk);
                    if !matches!(status, wit_bindgen::StreamResult::Complete(_)) {
                        break;
                    }
                }
                respond(200, &[("x-echo-method", &method)], vec![all])
            }
            "/stream" => {
                let n: usize = query(&path, "n").and_then(|n| n.parse().ok()).unwrap_or(10);
                respond(200, &[], (0..n).map(|i| format!("line {i}\n").into_bytes()).collect())
            }
            "/trap" => core::arch::wasm32::unreachable(),
            "/env" => {
                let name = query(&path, "name").unwrap_or("");
                match wasip3::cli::environment::get_environment().into_iter().find(|(k, _)| k == name) {
                    Some((_, v)) => respond(200, &[], vec![v.into_bytes()]),
                    None => respond(404, &[], vec![format!("{name} unset\n").into_bytes()]),
                }
            }
            _ => respond(404, &[], vec![b"no such route\n".to_vec()]),
        })
    }
}
