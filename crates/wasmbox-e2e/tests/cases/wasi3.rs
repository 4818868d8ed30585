//! WASI 0.3 guests (the component model's async ABI) under a real
//! containerd: a `wasi:cli/command@0.3.0` run with `ctr run` (its output
//! through 0.3 streams, env, files of the image, exit codes, a failed run,
//! a trap, a kill while it waits on the 0.3 clock), and a
//! `wasi:http/service@0.3.0` served on the host's network (routes, a body
//! the guest writes after it returned the response, a trap, concurrent
//! clients, SIGTERM).

use super::serve::{echo_load, free_port, get, request, wait_serving};
use super::{ok, show, text, Env};
use anyhow::{ensure, Result};
use std::net::SocketAddr;

pub const P3_CLI: &str = "docker.io/library/wasmbox-test-p3cli:latest";
pub const P3_HTTP: &str = "docker.io/library/wasmbox-test-p3http:latest";
/// Where the images put their wasm.
const CLI_WASM: &str = "/p3cli.wasm";

pub fn wasi_0_3_command(env: &Env) -> Result<()> {
    let out = env.run(P3_CLI, &[], &[CLI_WASM, "hello", "a b", "c"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout) == "hello from wasi:cli@0.3.0 [\"hello\", \"a b\", \"c\"]\n", "{}", show(&out));
    // The image's own Cmd.
    let out = env.run(P3_CLI, &[], &[])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout).starts_with("hello from wasi:cli@0.3.0"), "{}", show(&out));
    let out = env.run(P3_CLI, &["--env", "GREETING=bonjour"], &[CLI_WASM, "env", "GREETING"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout) == "GREETING=bonjour\n", "{}", show(&out));
    let out = env.run(P3_CLI, &[], &[CLI_WASM, "read", "/data/msg.txt"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout) == "a file in the image\n", "{}", show(&out));
    let out = env.run(P3_CLI, &[], &[CLI_WASM, "sleep", "30"])?;
    ok(&out, 0)?;
    ensure!(text(&out.stdout) == "slept 30 ms\n", "{}", show(&out));
    ok(&env.run(P3_CLI, &[], &[CLI_WASM, "exit", "42"])?, 42)?;
    ok(&env.run(P3_CLI, &[], &[CLI_WASM, "fail"])?, 1)?;
    let out = env.run(P3_CLI, &[], &[CLI_WASM, "trap"])?;
    ok(&out, 134)?;
    let err = text(&out.stderr);
    ensure!(err.contains("unreachable") && err.contains("wasi:cli/run@0.3.0"), "{}", show(&out));
    // A guest waiting on the 0.3 clock is ended by a kill, and removed.
    let id = env.c.id("p3sleep");
    super::isolation::run_detached_image(env, &id, &[], P3_CLI, &[CLI_WASM, "sleep", "600000"])?;
    env.kill_and_remove(&id)
}

pub fn wasi_0_3_serve(env: &Env) -> Result<()> {
    let id = env.c.id("p3serve");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let listen = format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR={addr}");
    super::isolation::run_detached_image(
        env,
        &id,
        &["--net-host", "--env", &listen, "--env", "GREETING=hey"],
        P3_HTTP,
        &[],
    )?;
    let result = (|| -> Result<()> {
        wait_serving(addr)?;
        let r = get(addr, "/hello?x=1")?;
        ensure!(
            r.status == 200 && r.body == "hello from wasi:http@0.3.0 Method::Get /hello?x=1\n",
            "{} {:?}",
            r.status,
            r.body
        );
        let r = request(addr, "POST", "/echo", &[], b"the body")?;
        ensure!(r.status == 200 && r.body == "the body", "/echo: {} {:?}", r.status, r.body);
        ensure!(r.head.to_ascii_lowercase().contains("x-echo-method: method::post"), "/echo head: {}", r.head);
        // The body is written by a guest task after `handle` returned.
        let r = get(addr, "/stream?n=3000")?;
        let lines: Vec<&str> = r.body.lines().collect();
        ensure!(
            r.status == 200 && lines.len() == 3000 && lines[2999] == "line 2999",
            "/stream: {} {} lines",
            r.status,
            lines.len()
        );
        let r = get(addr, "/env?name=GREETING")?;
        ensure!(r.status == 200 && r.body == "hey", "/env: {} {:?}", r.status, r.body);
        let r = get(addr, "/env?name=WASMTIME_HTTP_PROXY_SOCKET_ADDR")?;
        ensure!(r.status == 404, "the listen variable reached the guest: {} {:?}", r.status, r.body);
        let r = get(addr, "/trap")?;
        ensure!(r.status == 500 && r.body.contains("unreachable"), "/trap: {} {:?}", r.status, r.body);
        ensure!(get(addr, "/hello")?.status == 200, "no answer after a trap");
        // 16 clients, 20 requests each, every answer right.
        echo_load(addr, 16, 20)?;
        // SIGTERM drains and exits 0.
        ok(&env.c.ctr(&["task", "kill", "--signal", "SIGTERM", &id])?, 0)?;
        env.c.wait_status(&id, "STOPPED")?;
        let tasks = env.c.ctr(&["task", "ls"])?;
        ensure!(text(&tasks.stdout).lines().any(|l| l.starts_with(&id) && l.contains("STOPPED")), "{}", show(&tasks));
        Ok(())
    })();
    let removed = env.remove_stopped_or_not(&id);
    result?;
    removed
}
