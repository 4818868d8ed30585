//! A `wasi:cli/command@0.3.0` guest: its first argument picks what it does.
//! - `hello` (or none): writes `hello from wasi:cli@0.3.0` and its arguments
//!   to stdout through a WASI 0.3 stream;
//! - `env NAME`: writes `NAME=VALUE` (or `NAME unset`) to stdout;
//! - `read PATH`: writes the file's bytes to stdout (a preopen's file);
//! - `exit N`: exits with status N (`wasi:cli/exit.exit-with-code`);
//! - `fail`: `run` returns an error (status 1);
//! - `sleep MS`: waits MS milliseconds on the monotonic clock, then writes
//!   `slept MS ms`;
//! - `trap`: traps (unreachable).
use wasip3::cli::{environment, exit, stdout};
use wasip3::clocks::monotonic_clock;

struct Command;

wasip3::cli::command::export!(Command);

/// Writes `bytes` to the container's stdout through a WASI 0.3 stream.
async fn out(bytes: Vec<u8>) {
    let (mut tx, rx) = wasip3::wit_stream::new();
    futures::join!(
        async {
            let _ = stdout::write_via_stream(rx).await;
        },
        async {
            let rest = tx.write_all(bytes).await;
            assert!(rest.is_empty(), "stdout closed early");
            drop(tx);
        }
    );
}

impl wasip3::exports::cli::run::Guest for Command {
    async fn run() -> Result<(), ()> {
        let args = environment::get_arguments();
        let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
        match arg(1) {
            "" | "hello" => out(format!("hello from wasi:cli@0.3.0 {:?}\n", &args[1.min(args.len())..]).into_bytes()).await,
            "env" => {
                let name = arg(2);
                let line = match environment::get_environment().into_iter().find(|(k, _)| k == name) {
                    Some((k, v)) => format!("{k}={v}\n"),
                    None => format!("{name} unset\n"),
                };
                out(line.into_bytes()).await
            }
            "read" => match std::fs::read(arg(2)) {
                Ok(bytes) => out(bytes).await,
                Err(e) => {
                    eprintln!("read {}: {e}", arg(2));
                    return Err(());
                }
            },
            "exit" => exit::exit_with_code(arg(2).parse().unwrap_or(1)),
            "fail" => return Err(()),
            "sleep" => {
                let ms: u64 = arg(2).parse().unwrap_or(0);
                monotonic_clock::wait_for(ms * 1_000_000).await;
                out(format!("slept {ms} ms\n").into_bytes()).await
            }
            "trap" => core::arch::wasm32::unreachable(),
            other => {
                eprintln!("unknown verb {other:?}");
                return Err(());
            }
        }
        Ok(())
    }
}
