//! Replays each fuzz target's corpus (`fuzz/corpus/NAME/`: its seeds and
//! every input that once made it fail) through the target, as CI's check
//! that no parser of untrusted input panics on any of them; and checks
//! that `fuzz/` and [`wasmbox_fuzz::TARGETS`] name the same targets.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn names_in(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(suffix).map(str::to_string))
        .collect();
    names.sort();
    names
}

#[test]
fn fuzz_targets_and_corpora_match_the_list() {
    let mut listed: Vec<String> = wasmbox_fuzz::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(names_in(&fuzz_dir().join("fuzz_targets"), ".rs"), listed, "fuzz/fuzz_targets/*.rs");
    assert_eq!(names_in(&fuzz_dir().join("corpus"), ""), listed, "fuzz/corpus/*/");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &listed {
        let body = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs"))).unwrap();
        assert!(body.contains(&format!("wasmbox_fuzz::{name}(data)")), "fuzz_targets/{name}.rs runs another target");
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
    }
}

#[test]
fn every_corpus_input_is_handled_without_a_panic() {
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (name, target) in wasmbox_fuzz::TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let inputs = names_in(&dir, "");
        assert!(!inputs.is_empty(), "{} has no seed", dir.display());
        for input in inputs {
            let path = dir.join(&input);
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                failed.push(path.display().to_string());
            }
            replayed += 1;
        }
    }
    wasmbox_fuzz::remove_scratch();
    assert!(failed.is_empty(), "{} of {replayed} corpus inputs panic: {failed:?}", failed.len());
}
