//! A Spin component as a Spin user writes one, with spin-sdk:
//! - `/hello`: `hello from spin-sdk`;
//! - `/var?name=N`: the component variable N (`fermyon:spin/variables`):
//!   200 and its value, 404 `undefined: ...`, 400 `invalid name: ...`, or
//!   500 and the error;
//! - `/route`: the route headers Spin gave it, one `name: value` per line.
use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

fn query<'a>(uri: &'a str, key: &str) -> Option<&'a str> {
    let (_, q) = uri.split_once('?')?;
    q.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let below = req.header("spin-path-info").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let uri = req.uri().to_string();
    Ok(match below.as_str() {
        "/hello" => Response::new(200, "hello from spin-sdk\n"),
        "/var" => match spin_sdk::variables::get(query(&uri, "name").unwrap_or("")) {
            Ok(v) => Response::new(200, v),
            Err(spin_sdk::variables::Error::Undefined(m)) => Response::new(404, format!("undefined: {m}")),
            Err(spin_sdk::variables::Error::InvalidName(m)) => Response::new(400, format!("invalid name: {m}")),
            Err(e) => Response::new(500, format!("{e:?}")),
        },
        "/route" => {
            let mut text = String::new();
            for name in ["spin-path-info", "spin-matched-route", "spin-component-route", "spin-full-url"] {
                let v = req.header(name).and_then(|v| v.as_str()).unwrap_or("-");
                text.push_str(&format!("{name}: {v}\n"));
            }
            Response::new(200, text)
        }
        other => Response::new(404, format!("no route {other}\n")),
    })
}
