//! Spin applications under a real containerd: an image holding a
//! `spin.toml` (manifest version 2) and its components' wasm, run with
//! `ctr run IMAGE ID /app` as the Spin shim's images are. Routes (a
//! trailing wildcard, a `:name` segment, a static response, the runtime's
//! reserved `/.well-known/spin/`), the headers Spin gives a component, each
//! component's own environment and files, variables from the container's
//! environment; manifests wasmbox cannot honour refused at Create, naming
//! the field.

use super::isolation::run_detached_image;
use super::serve::{free_port, get, request, wait_answering};
use super::{ok, Env};
use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;

pub const APP: &str = "docker.io/library/wasmbox-test-spin:latest";
/// An app packaged by `wasmbox image build --spin` (its library call).
pub const PACKAGED: &str = "docker.io/library/wasmbox-test-spin-packaged:latest";

/// The packaged app: the spin-sdk component, its variable a template.
pub const PACKAGED_MANIFEST: &str = r#"spin_manifest_version = 2
[application]
name = "packaged"
[variables]
greeting = { default = "hello" }
[[trigger.http]]
route = "/sdk/..."
component = "sdk"
[component.sdk]
source = "sdk.wasm"
[component.sdk.variables]
message = "{{ greeting }}, world"
"#;

/// The app the image carries at /app (the HTTP test guest twice).
pub const MANIFEST: &str = r#"spin_manifest_version = 2

[application]
name = "wasmbox-e2e-app"

[variables]
greeting = { default = "hello" }

[[trigger.http]]
route = "/..."
component = "front"

[[trigger.http]]
route = "/api/:thing/..."
component = "api"

[[trigger.http]]
route = "/moved"
static_response = { status_code = 301, headers = { location = "/hello" } }

[component.front]
source = "hello.wasm"
environment = { WHO = "front" }
files = [{ source = "static", destination = "/static" }]

[component.api]
source = "/app/hello.wasm"
environment = { WHO = "api" }

[[trigger.http]]
route = "/sdk/..."
component = "sdk"

[component.sdk]
source = "sdk.wasm"
[component.sdk.variables]
message = "{{ greeting }}, world"
"#;

/// Manifests wasmbox refuses, each with what its error must name.
pub const REFUSED: &[(&str, &str, &[&str])] = &[
    (
        "kv",
        "[component.c]\nsource = \"/app/hello.wasm\"\nkey_value_stores = [\"default\"]\n",
        &["/bad/kv/spin.toml", "component.c.key_value_stores", "not supported"],
    ),
    (
        "typo",
        "[component.c]\nsource = \"/app/hello.wasm\"\nallowed_outbund_hosts = []\n",
        &["component.c.allowed_outbund_hosts", "unknown field", "allowed_outbound_hosts"],
    ),
    ("missing", "[component.c]\nsource = \"/app/nope.wasm\"\n", &["component.c.source", "/app/nope.wasm"]),
    (
        "required",
        "[variables]\ntoken = { required = true, secret = true }\n[component.c]\nsource = \"/app/hello.wasm\"\n",
        &["token", "SPIN_VARIABLE_TOKEN"],
    ),
];

/// A refused manifest: a catch-all route to component `c`, then `rest`.
pub fn refused_manifest(rest: &str) -> String {
    format!("spin_manifest_version = 2\n[application]\nname = \"bad\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n{rest}")
}

/// Waits (bounded) until the app answers its health route.
fn wait_app(addr: SocketAddr) -> Result<()> {
    wait_answering(addr, "/.well-known/spin/health")
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub fn spin_app(env: &Env) -> Result<()> {
    let id = env.c.id("spin");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let listen = format!("SPIN_HTTP_LISTEN_ADDR={addr}");
    run_detached_image(env, &id, &["--net-host", "--env", &listen], APP, &["/app"])?;
    let result = (|| -> Result<()> {
        wait_app(addr)?;
        // The catch-all route: the guest routes on spin-path-info.
        let r = get(addr, "/hello")?;
        ensure!(r.status == 200 && r.body == "hello from wasm\n", "/hello: {} {:?}", r.status, r.body);
        // Each component has its own environment.
        let r = get(addr, "/env?name=WHO")?;
        ensure!(r.status == 200 && r.body == "front", "front's WHO: {} {:?}", r.status, r.body);
        let r = get(addr, "/api/x/env?name=WHO")?;
        ensure!(r.status == 200 && r.body == "api", "api's WHO: {} {:?}", r.status, r.body);
        // The listen variable is the runtime's, not the guest's.
        let r = get(addr, "/env?name=SPIN_HTTP_LISTEN_ADDR")?;
        ensure!(r.status == 404, "the listen variable reached the guest: {} {:?}", r.status, r.body);
        // The headers Spin gives a component; a client's own spin-* header
        // does not get through.
        let r = request(addr, "GET", "/api/thing1/echo?q=1", &[("spin-path-info", "/forged")], b"")?;
        ensure!(r.status == 200, "/api/thing1/echo: {} {}", r.status, r.head);
        let h = |name: &str| header(&r.head, &format!("x-echo-h-{name}")).map(str::to_string);
        ensure!(h("spin-path-info").as_deref() == Some("/echo"), "spin-path-info: {}", r.head);
        ensure!(h("spin-matched-route").as_deref() == Some("/api/:thing/..."), "{}", r.head);
        ensure!(h("spin-raw-component-route").as_deref() == Some("/api/:thing/..."), "{}", r.head);
        ensure!(h("spin-component-route").as_deref() == Some("/api/:thing"), "{}", r.head);
        ensure!(h("spin-path-match-thing").as_deref() == Some("thing1"), "{}", r.head);
        ensure!(h("spin-base-path").as_deref() == Some("/"), "{}", r.head);
        let full = format!("http://{addr}/api/thing1/echo?q=1");
        ensure!(h("spin-full-url").as_deref() == Some(full.as_str()), "spin-full-url: {}", r.head);
        ensure!(h("spin-client-addr").is_some_and(|a| a.starts_with("127.0.0.1:")), "spin-client-addr: {}", r.head);
        // Files: the front component's own directory, read-only; the api
        // component was granted none, and neither sees the image's root.
        let r = get(addr, "/read?path=/static/index.html")?;
        ensure!(r.status == 200 && r.body == "<h1>static</h1>\n", "front's file: {} {:?}", r.status, r.body);
        let r = get(addr, "/api/x/read?path=/static/index.html")?;
        ensure!(r.status == 404, "api read front's file: {} {:?}", r.status, r.body);
        let r = get(addr, "/read?path=/app/spin.toml")?;
        ensure!(r.status == 404, "front read the manifest: {} {:?}", r.status, r.body);
        // A component built with spin-sdk: its variables through
        // fermyon:spin/variables, from the app's default.
        let r = get(addr, "/sdk/hello")?;
        ensure!(r.status == 200 && r.body == "hello from spin-sdk\n", "/sdk/hello: {} {:?}", r.status, r.body);
        let r = get(addr, "/sdk/var?name=message")?;
        ensure!(r.status == 200 && r.body == "hello, world", "/sdk/var message: {} {:?}", r.status, r.body);
        let r = get(addr, "/sdk/var?name=greeting")?;
        ensure!(
            r.status == 404 && r.body.starts_with("undefined"),
            "an app variable the component did not take: {} {:?}",
            r.status,
            r.body
        );
        let r = get(addr, "/sdk/var?name=Bad-Name")?;
        ensure!(r.status == 400 && r.body.starts_with("invalid name"), "/sdk/var Bad-Name: {} {:?}", r.status, r.body);
        let r = get(addr, "/sdk/route")?;
        ensure!(
            r.body.contains("spin-matched-route: /sdk/...") && r.body.contains("spin-path-info: /route"),
            "/sdk/route: {:?}",
            r.body
        );
        // A static response, and the reserved routes.
        let r = get(addr, "/moved")?;
        ensure!(r.status == 301 && header(&r.head, "location") == Some("/hello"), "/moved: {} {}", r.status, r.head);
        let r = get(addr, "/.well-known/spin/info")?;
        ensure!(r.status == 200 && r.body.contains("wasmbox-e2e-app"), "info: {} {:?}", r.status, r.body);
        ensure!(get(addr, "/.well-known/spin/other")?.status == 404, "an unknown reserved route answered");
        // Many clients at once on both components.
        let failures: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|w| {
                    s.spawn(move || {
                        let path = if w % 2 == 0 { "/env?name=WHO" } else { "/api/y/env?name=WHO" };
                        let want = if w % 2 == 0 { "front" } else { "api" };
                        (0..20)
                            .filter(|_| !matches!(get(addr, path), Ok(r) if r.status == 200 && r.body == want))
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or(20)).sum()
        });
        ensure!(failures == 0, "{failures} of 160 requests to the two components failed");
        // SIGTERM drains and exits 0.
        ok(&env.c.ctr(&["task", "kill", "--signal", "SIGTERM", &id])?, 0)?;
        env.c.wait_status(&id, "STOPPED")?;
        Ok(())
    })();
    let removed = env.remove_stopped_or_not(&id);
    result?;
    removed
}

/// The packaged app, run by its own entrypoint (`/`): a variable set in
/// the container's environment (`SPIN_VARIABLE_*`) overrides the
/// manifest's default.
pub fn spin_app_variables(env: &Env) -> Result<()> {
    let id = env.c.id("spinenv");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let listen = format!("SPIN_HTTP_LISTEN_ADDR={addr}");
    run_detached_image(
        env,
        &id,
        &["--net-host", "--env", &listen, "--env", "SPIN_VARIABLE_GREETING=bonjour"],
        PACKAGED,
        &[],
    )?;
    let result = (|| -> Result<()> {
        wait_app(addr)?;
        let r = get(addr, "/sdk/var?name=message")?;
        ensure!(r.status == 200 && r.body == "bonjour, world", "/sdk/var message: {} {:?}", r.status, r.body);
        Ok(())
    })();
    env.kill_and_remove(&id)?;
    result
}

pub fn spin_app_refused(env: &Env) -> Result<()> {
    for (name, _, needles) in REFUSED {
        let manifest = format!("/bad/{name}/spin.toml");
        env.expect_refused(APP, &[], &[&manifest], needles).with_context(|| format!("manifest {name}"))?;
    }
    // A required variable given in the container's environment.
    let id = env.c.id("spinvar");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let listen = format!("SPIN_HTTP_LISTEN_ADDR={addr}");
    run_detached_image(
        env,
        &id,
        &["--net-host", "--env", &listen, "--env", "SPIN_VARIABLE_TOKEN=s3cret"],
        APP,
        &["/bad/required/spin.toml"],
    )?;
    let result = (|| -> Result<()> {
        wait_app(addr)?;
        // Variables are the runtime's: the guest's environment has no SPIN_VARIABLE_*.
        let r = get(addr, "/env?name=SPIN_VARIABLE_TOKEN")?;
        ensure!(r.status == 404, "SPIN_VARIABLE_TOKEN reached the guest: {} {:?}", r.status, r.body);
        Ok(())
    })();
    env.kill_and_remove(&id)?;
    result
}
