//! The WebAssembly proposals the engine accepts, and the annotation that
//! turns some off for one workload.
//!
//! Every engine wasmbox makes (commands and served components alike)
//! accepts the proposals of WebAssembly 3.0 and threads, as wasmtime
//! 48 enables them by default (threads: its atomic instructions; shared
//! memories stay off, as in wasmtime, whose threads support is tier 2 and
//! gets no security fixes, so a module defining one fails to start): toolchains emit them today (Rust and clang
//! use SIMD, tail calls, bulk memory and multi-value; GC and exceptions
//! come from Kotlin, Dart, OCaml and C++ builds; memory64 from large
//! heaps; shared memory from wasi-threads builds), each is implemented in
//! Cranelift on x86-64 and aarch64, and none widens what a guest can
//! reach: they change the code a guest can express, not its grants.
//! Proposals wasmtime keeps off by default (stack switching, wide
//! arithmetic, custom page sizes, shared-everything threads, the
//! component model's async) stay off.
//!
//! `wasmbox.io/disabled-wasm-proposals` takes names of [`PROPOSALS`]
//! separated by commas or spaces; a module that uses one is refused at
//! Create with the engine's reason and the annotation named. Code compiled
//! with a proposal off is cached apart (the engine's compatibility hash
//! covers its features).

use std::collections::BTreeMap;
use wasmbox_spec::{Error, Result};
use wasmtime::Config;

/// Names proposals to turn off for one workload.
pub use wasmbox_spec::annotations::DISABLED_PROPOSALS as DISABLED_PROPOSALS_ANNOTATION;

/// The proposals that can be turned off, by their names in the annotation.
pub const PROPOSALS: [&str; 9] =
    ["exceptions", "tail-call", "gc", "simd", "relaxed-simd", "multi-memory", "memory64", "threads", "extended-const"];

/// The proposals a workload turns off (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disabled(Vec<&'static str>);

impl Disabled {
    /// The workload's annotation, parsed; an unknown name is an error
    /// naming it and the known ones.
    pub fn of(annotations: &BTreeMap<String, String>) -> Result<Disabled> {
        let Some(value) = annotations.get(DISABLED_PROPOSALS_ANNOTATION) else { return Ok(Disabled::default()) };
        let mut off = Vec::new();
        for name in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|n| !n.is_empty()) {
            let known = PROPOSALS.iter().find(|p| **p == name).ok_or_else(|| Error::InvalidArgument {
                what: format!("annotation {DISABLED_PROPOSALS_ANNOTATION}={value:?}"),
                reason: format!("unknown proposal {name:?}; known: {}", PROPOSALS.join(", ")),
            })?;
            if !off.contains(known) {
                off.push(*known);
            }
        }
        // Relaxed SIMD extends SIMD: without SIMD it goes too.
        if off.contains(&"simd") && !off.contains(&"relaxed-simd") {
            off.push("relaxed-simd");
        }
        Ok(Disabled(off))
    }

    /// The proposals turned off, by name.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|n| n.to_string()).collect()
    }

    /// The proposals named (as [`Disabled::names`] gives them).
    pub fn from_names(names: &[String]) -> Result<Disabled> {
        Disabled::of(&BTreeMap::from([(DISABLED_PROPOSALS_ANNOTATION.to_string(), names.join(","))]))
    }

    /// Turns the proposals off in `config`.
    pub fn apply(&self, config: &mut Config) {
        for p in &self.0 {
            match *p {
                "exceptions" => config.wasm_exceptions(false),
                "tail-call" => config.wasm_tail_call(false),
                "gc" => config.wasm_gc(false),
                "simd" => config.wasm_simd(false),
                "relaxed-simd" => config.wasm_relaxed_simd(false),
                "multi-memory" => config.wasm_multi_memory(false),
                "memory64" => config.wasm_memory64(false),
                "threads" => config.wasm_threads(false),
                "extended-const" => config.wasm_extended_const(false),
                _ => unreachable!("checked against PROPOSALS"),
            };
        }
    }

    /// For an error about code the engine refused: which proposals the
    /// workload turned off, if any.
    pub fn hint(&self) -> Option<String> {
        (!self.0.is_empty())
            .then(|| format!("annotation {DISABLED_PROPOSALS_ANNOTATION} turns off: {}", self.0.join(", ")))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(v: &str) -> Result<Disabled> {
        Disabled::of(&BTreeMap::from([(DISABLED_PROPOSALS_ANNOTATION.to_string(), v.to_string())]))
    }

    #[test]
    fn names_are_checked_and_simd_takes_relaxed_simd_along() {
        assert_eq!(Disabled::of(&BTreeMap::new()).unwrap(), Disabled::default());
        assert_eq!(of("gc, threads gc").unwrap(), Disabled(vec!["gc", "threads"]));
        assert_eq!(of("simd").unwrap(), Disabled(vec!["simd", "relaxed-simd"]));
        let e = of("gc,bogus").unwrap_err().to_string();
        assert!(e.contains(DISABLED_PROPOSALS_ANNOTATION) && e.contains("bogus") && e.contains("tail-call"), "{e}");
        // Every name maps onto a setting the engine takes.
        let mut config = Config::new();
        Disabled(PROPOSALS.to_vec()).apply(&mut config);
        wasmtime::Engine::new(&config).unwrap();
    }
}
