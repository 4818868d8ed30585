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
    wait_answering(addr, "/hello")
}

/// Waits (bounded) until `addr` answers `path` with a 200.
pub fn wait_answering(addr: SocketAddr, path: &str) -> Result<()> {
    let t = Instant::now();
    loop {
        match get(addr, path) {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) if t.elapsed() > Duration::from_secs(30) => anyhow::bail!("{addr}{path}: {} {}", r.status, r.body),
            Err(e) if t.elapsed() > Duration::from_secs(30) => return Err(e.context(format!("{addr} never served"))),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A port free on loopback now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Serves the test component on `addr` (host network); its pid.
pub fn serve(env: &Env, id: &str, addr: SocketAddr, extra: &[&str]) -> Result<u32> {
    let listen = format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR={addr}");
    let mut flags = vec!["--net-host", "--env", &listen];
    flags.extend_from_slice(extra);
    let pid = run_detached_image(env, id, &flags, HTTP, &[])?;
    wait_serving(addr)?;
    Ok(pid)
}

/// `clients` clients at once, each PUTting `requests` bodies of its own to
/// `/echo` on a connection each: an error unless every answer is its
/// request's body.
pub fn echo_load(addr: SocketAddr, clients: usize, requests: usize) -> Result<()> {
    let wrong: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|w| {
                s.spawn(move || {
                    let mut wrong = Vec::new();
                    for i in 0..requests {
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
    Ok(())
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
        echo_load(addr, 32, 25)?;
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

/// A loopback server that reads a request and sends `reply` to every
/// client.
fn answering(reply: &'static [u8]) -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(reply);
        }
    });
    Ok(addr)
}

/// A tiny upstream on loopback: answers every request with `upstream-ok`.
fn upstream() -> Result<SocketAddr> {
    answering(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nupstream-ok")
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
    env.expect_refused(
        HTTP,
        &["--net-host", "--annotation", "wasmbox.io/allowed-outbound-hosts=tcp://db.local:5432"],
        &[],
        &["wasmbox.io/allowed-outbound-hosts", "tcp://db.local:5432", "by address"],
    )?;
    // Exports wasi:http/incoming-handler, but as an empty instance.
    env.expect_refused(
        super::P2,
        &["--net-host"],
        &["/bad/proxy.wasm"],
        &["/bad/proxy.wasm", "cannot be served as a wasi:http/proxy", "handle"],
    )?;
    drop(busy);
    Ok(())
}

/// A component exporting `wasi:http/incoming-handler@0.2.0` as an
/// instance with nothing in it (so without `handle`).
pub const BROKEN_PROXY: &[u8] = b"\0asm\x0d\0\x01\0\
    \x05\x03\x01\x01\x00\
    \x0b\x26\x01\x00\x20wasi:http/incoming-handler@0.2.0\x05\x00\x00";

/// HTTP/2 with prior knowledge (h2c) on the same port as HTTP/1.1: curl
/// gets the hello route over HTTP/2, and an HTTP/1.1 client still works.
pub fn serve_http2(env: &Env) -> Result<()> {
    let id = env.c.id("h2");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    serve(env, &id, addr, &[])?;
    let result = (|| -> Result<()> {
        let url = format!("http://{addr}/hello");
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "-w", "\n%{http_version} %{response_code}", &url])
            .output()
            .context("running curl")?;
        let body = text(&out.stdout);
        ensure!(out.status.success() && body == "hello from wasm\n\n2 200", "curl over h2c: {}", show(&out));
        let r = get(addr, "/hello")?;
        ensure!(r.status == 200 && r.head.starts_with("HTTP/1.1"), "HTTP/1.1 beside h2: {}", r.head);
        Ok(())
    })();
    let removed = env.kill_and_remove(&id);
    result?;
    removed
}

/// `wasmbox.io/cpu-deadline` on a served component bounds each request's
/// guest: a request that spins past it gets 500 naming the annotation,
/// a short one is served, and the server keeps serving.
pub fn serve_cpu_deadline_per_request(env: &Env) -> Result<()> {
    let id = env.c.id("h-cpu");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    serve(env, &id, addr, &["--annotation", "wasmbox.io/cpu-deadline=200ms"])?;
    let result = (|| -> Result<()> {
        let started = Instant::now();
        let r = get(addr, "/spin")?;
        ensure!(
            r.status == 500 && r.body.contains("CPU deadline") && r.body.contains("wasmbox.io/cpu-deadline"),
            "/spin: {} {:?}",
            r.status,
            r.body
        );
        ensure!(started.elapsed() < Duration::from_secs(30), "the spinning request was not stopped");
        let r = get(addr, "/hello")?;
        ensure!(r.status == 200, "after a stopped request: {} {:?}", r.status, r.body);
        Ok(())
    })();
    let removed = env.kill_and_remove(&id);
    result?;
    removed
}

/// What one client can hold of the server is bounded: a head over the
/// header limit gets 431, a body over the body limit 413, a request that
/// runs past the request timeout 504, and a client that sends nothing, or
/// half a head, is disconnected after the header timeout; the server
/// answers the next client normally.
pub fn serve_limits(env: &Env) -> Result<()> {
    let id = env.c.id("limits");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let anns = [
        "wasmbox.io/http-max-header-bytes=8Ki",
        "wasmbox.io/http-max-body-bytes=1Ki",
        "wasmbox.io/http-request-timeout=300ms",
        "wasmbox.io/http-header-timeout=500ms",
    ];
    let mut flags = Vec::new();
    for a in &anns {
        flags.extend(["--annotation", *a]);
    }
    serve(env, &id, addr, &flags)?;
    let result = (|| -> Result<()> {
        let big = "x".repeat(20 << 10);
        let r = request(addr, "GET", "/hello", &[("x-big", &big)], b"")?;
        ensure!(r.status == 431, "a 20 KiB header: {} {:?}", r.status, r.body);
        let r = request(addr, "POST", "/echo", &[], &[b'y'; 4096])?;
        ensure!(
            r.status == 413 && r.body.contains("wasmbox.io/http-max-body-bytes"),
            "a 4 KiB body: {} {:?}",
            r.status,
            r.body
        );
        let r = get(addr, "/spin")?;
        ensure!(
            r.status == 504 && r.body.contains("wasmbox.io/http-request-timeout"),
            "/spin: {} {:?}",
            r.status,
            r.body
        );
        for (what, sent) in [("nothing", &b""[..]), ("half a head", &b"GET /hello HTTP/1.1\r\nhost: x\r\n"[..])] {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(sent)?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let started = Instant::now();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            let waited = started.elapsed();
            ensure!(
                waited >= Duration::from_millis(400) && waited < Duration::from_secs(15),
                "a client that sent {what} was held {waited:?} (header timeout 500ms)"
            );
        }
        let r = get(addr, "/hello")?;
        ensure!(r.status == 200, "after the limits: {} {:?}", r.status, r.body);
        Ok(())
    })();
    let removed = env.kill_and_remove(&id);
    result?;
    removed
}

/// A tiny TCP service on loopback: reads a line, answers `pong`.
fn line_server() -> Result<SocketAddr> {
    answering(b"pong\n")
}

/// A command component's network under the allow-list: TCP connect,
/// outbound HTTP and listening are each denied without a rule (the guest
/// sees the refusal, stderr names the address and the annotation) and work
/// with one; a CIDR rule admits its network and no other port.
pub fn command_network_allow_list(env: &Env) -> Result<()> {
    let (tcp, up, other) = (line_server()?, upstream()?, line_server()?);
    let run = |rules: Option<&str>, args: &[&str]| -> Result<std::process::Output> {
        let ann = rules.map(|r| format!("wasmbox.io/allowed-outbound-hosts={r}"));
        let mut flags = vec!["--net-host"];
        if let Some(a) = &ann {
            flags.extend(["--annotation", a.as_str()]);
        }
        let mut all = vec![super::WASM];
        all.extend_from_slice(args);
        env.run(super::P2, &flags, &all)
    };
    let denied = |out: &std::process::Output, what: &str| -> Result<()> {
        ensure!(out.status.code() == Some(1), "expected a refusal: {}", show(out));
        let err = text(&out.stderr);
        ensure!(
            err.contains(&format!("{what} denied")) && err.contains("wasmbox.io/allowed-outbound-hosts"),
            "no denial line for {what}: {}",
            show(out)
        );
        Ok(())
    };
    let t = tcp.to_string();
    denied(&run(None, &["connect", &t])?, &format!("tcp connect to {t}"))?;
    let out = run(Some(&format!("tcp://127.0.0.0/8:{}", tcp.port())), &["connect", &t])?;
    ensure!(out.status.success() && text(&out.stdout).contains(&format!("connected to {t}: pong")), "{}", show(&out));
    let o = other.to_string();
    denied(
        &run(Some(&format!("tcp://127.0.0.0/8:{}", tcp.port())), &["connect", &o])?,
        &format!("tcp connect to {o}"),
    )?;
    let url = format!("http://{up}/x");
    let out = run(None, &["fetch", &url])?;
    denied(&out, &format!("outbound request to http://{up}"))?;
    ensure!(text(&out.stdout).contains("HttpRequestDenied"), "{}", show(&out));
    let out = run(Some(&format!("http://127.0.0.1:{}", up.port())), &["fetch", &url])?;
    ensure!(out.status.success() && text(&out.stdout).contains("status 200: upstream-ok"), "{}", show(&out));
    // Listening: refused without a tcp-listen rule; with one, the host
    // connects and reads the guest's line.
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let l = listen.to_string();
    denied(&run(None, &["listen", &l])?, &format!("tcp bind to {l}"))?;
    let id = env.c.id("listen");
    let rule = format!("wasmbox.io/allowed-outbound-hosts=tcp-listen://{l}");
    run_detached_image(env, &id, &["--net-host", "--annotation", &rule], super::P2, &[super::WASM, "listen", &l])?;
    let result = (|| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match TcpStream::connect(listen) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(e).context("the wasm listener never listened"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        ensure!(got == "hello from a wasm listener\n", "from the wasm listener: {got:?}");
        Ok(())
    })();
    // The guest exits after its one client; kill it where it did not.
    let _ = env.c.ctr(&["task", "kill", "--signal", "SIGKILL", &id]);
    env.c.wait_status(&id, "STOPPED")?;
    ok(&env.c.ctr(&["task", "rm", &id])?, 0)?;
    ok(&env.c.ctr(&["container", "rm", &id])?, 0)?;
    result
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
