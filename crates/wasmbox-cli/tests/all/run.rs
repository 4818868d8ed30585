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
