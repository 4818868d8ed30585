//! Serving wasi:http/proxy components under a real containerd: on the
//! host's network and in a network namespace the test made; routes of the
//! test component (hello, echo, trap, sleep, fetch, env); many clients at
//! once; SIGTERM draining a slow request; outbound HTTP by allow-list;
//! errors at Create; counters.

use super::isolation::run_detached_image;
use super::{ok, show, text, Env};
use anyhow::{ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub const HTTP: &str = "docker.io/library/wasmbox-test-http:latest";

/// A response as the test client reads it.
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).with_context(|| format!("reading the response to {method} {path}"))?;
    let raw = text(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").with_context(|| format!("no response head: {raw:?}"))?;
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("no status: {head}"))?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok(Response { status, head: head.to_string(), body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    request(addr, "GET", path, &[], b"")
}

/// Waits (bounded) until `addr` answers `/hello`.
pub fn wait_serving(addr: SocketAddr) -> Result<()> {
    let t = Instant::now();
    loop {
        match get(addr, "/hello") {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) if t.elapsed() > Duration::from_secs(20) => anyhow::bail!("{addr}/hello: {} {}", r.status, r.body),
            Err(e) if t.elapsed() > Duration::from_secs(20) => return Err(e.context(format!("{addr} never served"))),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A port free on loopback now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Serves the test component on `addr` (host network); its pid.
fn serve(env: &Env, id: &str, addr: SocketAddr, extra: &[&str]) -> Result<u32> {
    let listen = format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR={addr}");
    let mut flags = vec!["--net-host", "--env", &listen];
    flags.extend_from_slice(extra);
    let pid = run_detached_image(env, id, &flags, HTTP, &[])?;
    wait_serving(addr)?;
    Ok(pid)
}

/// Routes on the host's network: hello, echo (method, path, headers,
/// body), the listen variable taken out of the guest's env, a trap giving
/// 500 with the trap named and the next request served, many concurrent
/// clients answered correctly, counters on the metrics port, and no
/// wake-up of the server once nobody talks to it.
pub fn serve_routes_traps_and_load(env: &Env) -> Result<()> {
    let id = env.c.id("serve");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let ann = format!("wasmbox.io/metrics-listen={metrics}");
    let pid = serve(env, &id, addr, &["--annotation", &ann])?;
    let result = (|| -> Result<()> {
        let r = get(addr, "/hello")?;
        ensure!(r.status == 200 && r.body == "hello from wasm\n", "/hello: {} {:?}", r.status, r.body);
        let r = request(addr, "POST", "/echo?x=1", &[("x-test", "yes")], b"the body")?;
        let head = r.head.to_ascii_lowercase();
        ensure!(r.status == 200 && r.body == "the body", "/echo: {} {:?}", r.status, r.body);
        ensure!(
            head.contains("x-echo-method: post")
                && head.contains("x-echo-path: /echo?x=1")
                && head.contains("x-echo-h-x-test: yes"),
            "/echo head: {}",
            r.head
        );
        let r = get(addr, "/env?name=WASMTIME_HTTP_PROXY_SOCKET_ADDR")?;
        ensure!(r.status == 404, "the listen variable reached the guest: {} {:?}", r.status, r.body);
        let r = get(addr, "/trap")?;
        ensure!(r.status == 500 && r.body.contains("unreachable"), "/trap: {} {:?}", r.status, r.body);
        let r = get(addr, "/hello")?;
        ensure!(r.status == 200, "after a trap: {} {:?}", r.status, r.body);
        // 32 clients, 25 requests each, every answer right.
        let wrong: Vec<String> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..32)
                .map(|w| {
                    s.spawn(move || {
                        let mut wrong = Vec::new();
                        for i in 0..25 {
                            let body = format!("client {w} request {i}");
                            match request(addr, "PUT", "/echo", &[], body.as_bytes()) {
                                Ok(r) if r.status == 200 && r.body == body => {}
                                Ok(r) => wrong.push(format!("{body}: {} {:?}", r.status, r.body)),
                                Err(e) => wrong.push(format!("{body}: {e:#}")),
                            }
                        }
                        wrong
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
        });
        ensure!(wrong.is_empty(), "{} wrong answers under load, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(3)]);
        let m = get(metrics, "/metrics")?;
        let count =
            |name: &str| -> Option<f64> { m.body.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()) };
        ensure!(count("wasmbox_http_requests_total ").is_some_and(|n| n >= 805.0), "metrics: {}", m.body);
        ensure!(count("wasmbox_http_errors_total ").is_some_and(|n| n >= 1.0), "metrics: {}", m.body);
        // Idle: no thread of the server is scheduled (the request-timeout
        // ticker sleeps while no request is in flight).
        std::thread::sleep(Duration::from_millis(500));
        let before = super::shim::switches(pid);
        std::thread::sleep(Duration::from_secs(2));
        let woke = super::shim::switches(pid) - before;
        ensure!(woke <= 2, "an idle server woke {woke} times in 2 s");
        Ok(())
    })();
    let removed = env.kill_and_remove(&id);
    result?;
    removed
}

/// SIGTERM while a slow request runs: the request finishes, the server
/// exits 0, and no new connection is accepted meanwhile.
pub fn serve_sigterm_drains(env: &Env) -> Result<()> {
    let id = env.c.id("drain");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    serve(env, &id, addr, &[])?;
    let slow = std::thread::spawn(move || get(addr, "/sleep?ms=1500"));
    std::thread::sleep(Duration::from_millis(400));
    ok(&env.c.ctr(&["task", "kill", "--signal", "SIGTERM", &id])?, 0)?;
    let r = slow.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    ensure!(r.status == 200 && r.body == "slept 1500 ms\n", "the slow request: {} {:?}", r.status, r.body);
    env.c.wait_status(&id, "STOPPED")?;
    let rm = env.c.ctr(&["task", "rm", &id])?;
    ok(&rm, 0)?;
    ensure!(!text(&rm.stderr).contains("exit status") || text(&rm.stderr).contains("status 0"), "{}", show(&rm));
    ok(&env.c.ctr(&["container", "rm", &id])?, 0)
}

/// A tiny upstream on loopback: answers every request with `upstream-ok`.
fn upstream() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nupstream-ok");
        }
    });
    Ok(addr)
}

/// Outbound HTTP: allowed to a URL the annotation names, denied without
/// it and to an address outside the list (the guest sees HttpRequestDenied).
pub fn serve_outbound_allow_list(env: &Env) -> Result<()> {
    let up = upstream()?;
    let (open, closed) = (env.c.id("out-allowed"), env.c.id("out-denied"));
    let a1: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let a2: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let rule = format!("wasmbox.io/allowed-outbound-hosts=http://127.0.0.1:{}", up.port());
    serve(env, &open, a1, &["--annotation", &rule])?;
    let result = (|| -> Result<()> {
        serve(env, &closed, a2, &[])?;
        let r = get(a1, &format!("/fetch?url=http://{up}/x"))?;
        ensure!(r.status == 200 && r.body == "upstream 200\nupstream-ok", "allowed fetch: {} {:?}", r.status, r.body);
        let r = get(a1, &format!("/fetch?url=http://127.0.0.2:{}/x", up.port()))?;
        ensure!(
            r.status == 502 && r.body.contains("HttpRequestDenied"),
            "fetch outside the list: {} {:?}",
            r.status,
            r.body
        );
        let r = get(a2, &format!("/fetch?url=http://{up}/x"))?;
        ensure!(
            r.status == 502 && r.body.contains("HttpRequestDenied"),
            "fetch without a rule: {} {:?}",
            r.status,
            r.body
        );
        Ok(())
    })();
    let _ = env.kill_and_remove(&closed);
    let removed = env.kill_and_remove(&open);
    result?;
    removed
}

/// A busy port, an unparsable address and a bad allow-list rule each fail
/// `ctr run` at Create with the address or annotation named.
pub fn serve_errors_at_create(env: &Env) -> Result<()> {
    let busy = TcpListener::bind("127.0.0.1:0")?;
    let port = busy.local_addr()?.port();
    let listen = format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR=127.0.0.1:{port}");
    env.expect_refused(HTTP, &["--net-host", "--env", &listen], &[], &[&format!("127.0.0.1:{port}"), "in use"])?;
    env.expect_refused(
        HTTP,
        &["--net-host", "--annotation", "wasmbox.io/http-listen=localhost"],
        &[],
        &["wasmbox.io/http-listen", "not a socket address"],
    )?;
    env.expect_refused(
        HTTP,
        &["--net-host", "--annotation", "wasmbox.io/allowed-outbound-hosts=api.example.com"],
        &[],
        &["wasmbox.io/allowed-outbound-hosts", "no scheme"],
    )?;
    drop(busy);
    Ok(())
}

/// Serving in a network namespace the test made (`ctr run --with-ns`):
/// reached from a thread that joined that namespace, not from the host.
pub fn serve_in_a_netns(env: &Env) -> Result<()> {
    let name = format!("wbserve{}", std::process::id());
    ok(&std::process::Command::new("ip").args(["netns", "add", &name]).output()?, 0)?;
    let result = (|| -> Result<()> {
        ok(&std::process::Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).output()?, 0)?;
        let id = env.c.id("serve-ns");
        let ns = format!("network:/var/run/netns/{name}");
        let addr: SocketAddr = "127.0.0.1:8080".parse()?;
        run_detached_image(env, &id, &["--with-ns", &ns], HTTP, &[])?;
        let inside = (|| -> Result<()> {
            let path = format!("/var/run/netns/{name}");
            let r = std::thread::spawn(move || -> Result<Response> {
                let f = std::fs::File::open(&path)?;
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) on an fd we hold; only this thread moves.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                wait_serving(addr)?;
                get(addr, "/hello")
            })
            .join()
            .map_err(|_| anyhow::anyhow!("netns client panicked"))??;
            ensure!(r.status == 200 && r.body == "hello from wasm\n", "in the netns: {} {:?}", r.status, r.body);
            Ok(())
        })();
        let removed = env.kill_and_remove(&id);
        inside?;
        removed
    })();
    let _ = std::process::Command::new("ip").args(["netns", "delete", &name]).output();
    result
}
