//! One guest program with a subcommand per behaviour under test, so that the
//! test suite compiles one crate per WASI target.
use std::io::{Read, Write};

/// Called by name through `testguest.wasm#greet` (exported by the p1 build).
#[no_mangle]
pub extern "C" fn greet() {
    println!("greet was called");
}

/// The CPU-bound kernel of the benchmark: a xorshift walk folded into a
/// checksum, `rounds` million steps. Same source natively and in wasm.
fn cpu(rounds: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut acc: u64 = 0;
    for i in 0..rounds * 1_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc = acc.wrapping_add(x.rotate_left((i & 63) as u32));
    }
    acc
}

/// The memory-bound kernel of the benchmark: a sieve of Eratosthenes up
/// to `millions` million, `rounds` times; the count of primes. Same source
/// natively and in wasm.
fn sieve(millions: usize, rounds: usize) -> usize {
    let n = millions * 1_000_000;
    let mut count = 0;
    for _ in 0..rounds {
        let mut composite = vec![false; n + 1];
        let mut i = 2;
        while i * i <= n {
            if !composite[i] {
                let mut j = i * i;
                while j <= n {
                    composite[j] = true;
                    j += i;
                }
            }
            i += 1;
        }
        count = composite[2..].iter().filter(|c| !**c).count();
        std::hint::black_box(&composite);
    }
    count
}

/// Calls itself `n` deep (no tail call: each frame adds to the result the
/// optimizer cannot see through), for the stack-size tests.
#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    std::hint::black_box(recurse(std::hint::black_box(n - 1))) ^ n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("hello");
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match cmd {
        "hello" => {
            println!("hello from wasm");
            eprintln!("hello on stderr");
            println!("args: {:?}", &args[1..]);
            if let Ok(v) = std::env::var("GREETING") {
                println!("GREETING={v}");
            }
        }
        "exit" => std::process::exit(arg(2).parse().unwrap_or(1)),
        "trap" => {
            println!("about to trap");
            std::io::stdout().flush().ok();
            #[cfg(target_family = "wasm")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_family = "wasm"))]
            std::process::abort();
        }
        "loop" => {
            println!("looping");
            std::io::stdout().flush().ok();
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "alloc" => {
            // Grows the heap 1 MiB at a time, touching every page.
            let mib: usize = arg(2).parse().unwrap_or(1024);
            let mut held: Vec<Vec<u8>> = Vec::new();
            for i in 1..=mib {
                held.push(vec![1u8; 1 << 20]);
                if i % 16 == 0 {
                    println!("allocated {i} MiB");
                    std::io::stdout().flush().ok();
                }
            }
            println!("allocated all {mib} MiB ({} blocks)", held.len());
        }
        "sleep" => {
            println!("sleeping");
            std::io::stdout().flush().ok();
            let secs: u64 = arg(2).parse().unwrap_or(3600);
            std::thread::sleep(std::time::Duration::from_secs(secs));
        }
        "cat" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).expect("read stdin");
            print!("stdin: {}", String::from_utf8_lossy(&buf));
        }
        "read" => match std::fs::read_to_string(arg(2)) {
            Ok(s) => print!("{s}"),
            Err(e) => {
                println!("read {} failed: {e}", arg(2));
                std::process::exit(1);
            }
        },
        "write" => match std::fs::write(arg(2), b"written by wasm\n") {
            Ok(()) => println!("write {} ok", arg(2)),
            Err(e) => {
                println!("write {} failed: {e}", arg(2));
                std::process::exit(1);
            }
        },
        // A hostile guest: moves /etc away and puts in its place a symlink
        // to `target` (relative, climbing out of the rootfs on the host).
        "plant" => {
            let moved = std::fs::rename("/etc", "/etc.moved");
            #[allow(deprecated)]
            let linked = std::fs::soft_link(arg(2), "/etc");
            println!("rename: {moved:?}, symlink: {linked:?}");
        }
        "pwd" => println!("cwd: {}", std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|e| e.to_string())),
        "recurse" => println!("recursed: {}", recurse(arg(2).parse().unwrap_or(1000))),
        "sieve" => println!("primes: {}", sieve(arg(2).parse().unwrap_or(10), arg(3).parse().unwrap_or(1))),
        "cpu" => println!("cpu checksum: {}", cpu(arg(2).parse().unwrap_or(100))),
        "tty" => {
            // Whether stdio is a terminal, then one line read back; exits 7.
            use std::io::IsTerminal;
            println!("stdin tty: {}, stdout tty: {}", std::io::stdin().is_terminal(), std::io::stdout().is_terminal());
            std::io::stdout().flush().ok();
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            println!("line: {}", line.trim_end());
            std::process::exit(7);
        }
        "connect" => {
            // A TCP connection to ADDR (wasi:sockets in the component):
            // sends a line, prints the first line back; exit 1 on refusal.
            let addr = arg(2);
            match std::net::TcpStream::connect(&addr) {
                Ok(mut s) => {
                    let _ = s.write_all(b"ping from wasm\n");
                    let mut line = String::new();
                    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut s), &mut line);
                    println!("connected to {addr}: {}", line.trim_end());
                }
                Err(e) => {
                    println!("connect {addr} failed: {e}");
                    std::process::exit(1);
                }
            }
        }
        "listen" => {
            // Listens on ADDR, answers one client with a line; exit 1 on
            // refusal.
            let addr = arg(2);
            match std::net::TcpListener::bind(&addr) {
                Ok(l) => {
                    println!("listening on {addr}");
                    std::io::stdout().flush().ok();
                    if let Ok((mut s, _)) = l.accept() {
                        let _ = s.write_all(b"hello from a wasm listener\n");
                    }
                }
                Err(e) => {
                    println!("listen {addr} failed: {e}");
                    std::process::exit(1);
                }
            }
        }
        "fetch" => fetch(&arg(2)),
        other => {
            eprintln!("testguest: unknown command {other:?}");
            std::process::exit(2);
        }
    }
}

/// GETs an http:// URL through wasi:http/outgoing-handler and prints the
/// status and body; exit 1 with the error (a denied request:
/// `HttpRequestDenied`).
#[cfg(all(target_os = "wasi", target_env = "p2"))]
fn fetch(url: &str) {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};
    let fail = |why: String| -> ! {
        println!("fetch {url} failed: {why}");
        std::process::exit(1)
    };
    let rest = url.strip_prefix("http://").unwrap_or_else(|| fail("only http:// URLs".into()));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    let _ = req.set_method(&Method::Get);
    let _ = req.set_scheme(Some(&Scheme::Http));
    let _ = req.set_authority(Some(authority));
    let _ = req.set_path_with_query(Some(path));
    let future = outgoing_handler::handle(req, None).unwrap_or_else(|e| fail(format!("{e:?}")));
    future.subscribe().block();
    let resp = match future.get() {
        Some(Ok(Ok(resp))) => resp,
        Some(Ok(Err(e))) => fail(format!("{e:?}")),
        _ => fail("no response".into()),
    };
    let mut data = Vec::new();
    if let Ok(body) = resp.consume() {
        if let Ok(mut s) = body.stream() {
            let _ = s.read_to_end(&mut data);
        }
    }
    println!("status {}: {}", resp.status(), String::from_utf8_lossy(&data).trim_end());
}

/// Preview 1 has no outbound HTTP.
#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn fetch(url: &str) {
    println!("fetch {url} failed: no wasi:http in this build");
    std::process::exit(1);
}
