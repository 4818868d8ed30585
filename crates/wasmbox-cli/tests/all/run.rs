use crate::{text, tmpdir, wasmbox};
use test_guests::{P1, P2};

#[test]
fn hello_and_exit_codes() {
    let cache = tmpdir("run-cache");
    for g in [P1, P2] {
        let out = wasmbox(&["run", "--env", "GREETING=hi", g, "hello", "x"], &cache);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("hello from wasm\nargs: [\"hello\", \"x\"]\nGREETING=hi"),
            "{}",
            text(&out.stdout)
        );
        assert!(text(&out.stderr).contains("hello on stderr"));
        let trap = wasmbox(&["run", g, "trap"], &cache);
        assert_eq!(trap.status.code(), Some(134));
        assert!(text(&trap.stderr).contains("unreachable"), "{}", text(&trap.stderr));
    }
    assert_eq!(wasmbox(&["run", P1, "exit", "42"], &cache).status.code(), Some(42));
    let greet = wasmbox(&["run", &format!("{P1}#greet")], &cache);
    assert_eq!(text(&greet.stdout), "greet was called\n");
}

#[test]
fn dirs_are_granted_only_as_asked() {
    let cache = tmpdir("dirs-cache");
    let d = tmpdir("dirs");
    std::fs::write(d.join("in.txt"), "inside\n").unwrap();
    let rw = format!("{}::/work", d.display());
    let ro = format!("{}::/work:ro", d.display());
    let out = wasmbox(&["run", "--dir", &rw, P1, "read", "/work/in.txt"], &cache);
    assert_eq!(text(&out.stdout), "inside\n");
    let out = wasmbox(&["run", "--dir", &ro, P2, "write", "/work/out.txt"], &cache);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(!d.join("out.txt").exists());
    let out = wasmbox(&["run", "--dir", &rw, P2, "write", "/work/out.txt"], &cache);
    assert_eq!(out.status.code(), Some(0));
    assert!(d.join("out.txt").exists());
    // Nothing granted: no file is reachable.
    let out = wasmbox(&["run", P1, "read", "/etc/hostname"], &cache);
    assert_eq!(out.status.code(), Some(1));
    let out = wasmbox(&["run", "--dir", &rw, P1, "read", "/work/../../etc/hostname"], &cache);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_files_name_the_file() {
    let cache = tmpdir("bad-cache");
    let d = tmpdir("bad");
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty.wasm", b"", "empty (0 bytes)"),
        ("text.wasm", b"hello world", "magic bytes"),
        ("corrupt.wasm", b"\0asm\x01\0\0\0\x01\x05\x01\x60", "not a valid WebAssembly module"),
    ];
    for (name, bytes, why) in cases {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        let out = wasmbox(&["run", p.to_str().unwrap()], &cache);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains(name) && err.contains(why), "{err}");
    }
    let out = wasmbox(&["run", &format!("{P1}#missing")], &cache);
    assert!(text(&out.stderr).contains("no exported function \"missing\""));
    // Nothing half-written is left in the cache by failed compiles.
    let entries: Vec<String> = std::fs::read_dir(cache.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(entries.iter().all(|e| !e.starts_with(".tmp")), "{entries:?}");
}

#[test]
fn cache_is_used_and_survives_a_corrupt_entry() {
    use wasmbox_engine::{cache::Cache, engine::Prepared};
    use wasmbox_spec::Plan;
    let dir = tmpdir("cache");
    let dir = dir.join("c");
    let cache = Cache::new(&dir).unwrap();
    let plan = Plan::for_file(P1, &["exit".into(), "0".into()], &[], &[]).unwrap();
    assert!(!Prepared::new(plan.clone(), Some(&cache)).unwrap().cache_hit);
    assert!(Prepared::new(plan.clone(), Some(&cache)).unwrap().cache_hit);
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1);
    std::fs::write(&entries[0], b"garbage").unwrap();
    let p = Prepared::new(plan, Some(&cache)).unwrap();
    assert!(!p.cache_hit, "a corrupt entry must be recompiled, not trusted");
    assert_eq!(p.run().unwrap(), 0);
}

#[test]
fn cache_commands_warm_list_and_prune() {
    let scratch = tmpdir("cache-cmd");
    let dir = scratch.join("c");
    let d = dir.to_str().unwrap();
    let cmd = |args: &[&str]| {
        let mut all = vec!["cache", "--dir", d];
        all.extend_from_slice(args);
        let out = wasmbox(&all, &scratch);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    assert!(cmd(&["warm", P1]).contains("compiled in"));
    assert!(cmd(&["warm", P1]).contains("code from cache entry"));
    // Another engine setting is another entry.
    assert!(cmd(&["warm", "--annotation", "wasmbox.io/disabled-wasm-proposals=gc", P1]).contains("compiled in"));
    let ls = cmd(&["ls"]);
    assert!(ls.contains("2 entries") && ls.matches(" ok ").count() == 2, "{ls}");
    assert!(cmd(&["prune", "--older-than", "1h"]).contains("removed 0 entries"));
    assert!(cmd(&["prune"]).contains("removed 2 entries"));
    assert!(cmd(&["ls"]).contains("0 entries"));
    let out = wasmbox(&["cache", "--dir", d, "warm", "/no/such.wasm"], &scratch);
    assert!(!out.status.success() && text(&out.stderr).contains("/no/such.wasm"), "{}", text(&out.stderr));
}

/// A WASI 0.3 command (the async ABI) on each compiler: its stream
/// output, exit code and failed run.
#[test]
fn wasi_0_3_command_on_every_compiler() {
    let cache = tmpdir("run-p3");
    for compiler in ["auto", "cranelift", "winch", "pulley"] {
        let ann = format!("wasmbox.io/compiler={compiler}");
        let out = wasmbox(&["run", "-a", &ann, test_guests::P3_CLI, "hello", compiler], &cache);
        assert_eq!(out.status.code(), Some(0), "{compiler}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("hello from wasi:cli@0.3.0 [\"hello\", \"{compiler}\"]\n"));
        let exit = wasmbox(&["run", "-a", &ann, test_guests::P3_CLI, "exit", "9"], &cache);
        assert_eq!(exit.status.code(), Some(9), "{compiler}: {}", text(&exit.stderr));
    }
    assert_eq!(wasmbox(&["run", test_guests::P3_CLI, "fail"], &cache).status.code(), Some(1));
}

/// A component built against a WASI release candidate is refused before
/// it is compiled, naming the interface and what to build against.
#[test]
fn a_wasi_prerelease_is_refused_naming_it() {
    let d = tmpdir("rc");
    let path = d.join("rc.wasm");
    let component = wat::parse_str(
        r#"(component
             (import "wasi:cli/environment@0.3.0-rc-2025-09-16" (instance))
           )"#,
    )
    .unwrap();
    std::fs::write(&path, component).unwrap();
    let out = wasmbox(&["run", path.to_str().unwrap()], &d);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("rc.wasm")
            && err.contains("wasi:cli/environment@0.3.0-rc-2025-09-16")
            && err.contains("pre-release of WASI"),
        "{err}"
    );
}

fn uleb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n == 0 { b } else { b | 0x80 });
        if n == 0 {
            break;
        }
    }
}

/// A module of `funcs` empty functions, the first exported as `_start`,
/// with `memory` (limits flags, minimum pages) if given.
fn module(funcs: u64, memory: Option<(u8, u64)>) -> Vec<u8> {
    let section = |m: &mut Vec<u8>, id: u8, payload: &[u8]| {
        m.push(id);
        uleb(payload.len() as u64, m);
        m.extend_from_slice(payload);
    };
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(&mut m, 1, &[1, 0x60, 0, 0]);
    let mut f = Vec::new();
    uleb(funcs, &mut f);
    f.extend(std::iter::repeat_n(0u8, funcs as usize));
    section(&mut m, 3, &f);
    if let Some((flags, min)) = memory {
        let mut mem = vec![1, flags];
        uleb(min, &mut mem);
        section(&mut m, 5, &mem);
    }
    section(&mut m, 7, b"\x01\x06_start\x00\x00");
    let mut code = Vec::new();
    uleb(funcs, &mut code);
    for _ in 0..funcs {
        code.extend_from_slice(&[2, 0, 0x0b]);
    }
    section(&mut m, 10, &code);
    m
}

/// Hostile modules and paths: more functions than a module may have is
/// refused before anything is compiled, naming the limit; a linear memory
/// of 64 GiB is held to the guest's memory limit (and, without one, costs
/// address space only); a path of 4096 bytes is an error naming it.
#[test]
fn hostile_modules_are_refused_or_contained() {
    let d = tmpdir("hostile");
    let million = d.join("million.wasm");
    std::fs::write(&million, module(1_000_001, None)).unwrap();
    let out = wasmbox(&["run", million.to_str().unwrap()], &d);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("million.wasm") && err.contains("exceeds limit of 1000000"), "{err}");
    // memory64 (limits flag 4) with a minimum of 2^20 pages of 64 KiB.
    let huge = d.join("mem64g.wasm");
    std::fs::write(&huge, module(1, Some((4, 1 << 20)))).unwrap();
    let out = wasmbox(&["run", "-a", "wasmbox.io/memory-limit=64Mi", huge.to_str().unwrap()], &d);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("wasmbox.io/memory-limit"), "{:?}: {err}", out.status);
    let long = format!("/{}.wasm", "a".repeat(4096));
    let out = wasmbox(&["run", &long], &d);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("/aaaa") && err.contains("too long"), "{err}");
}
