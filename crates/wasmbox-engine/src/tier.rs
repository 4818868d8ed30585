//! Which compiler makes a workload's code, and the tiers of a first start.
//!
//! `wasmbox.io/compiler` chooses:
//! - `auto` (the default): a start whose optimized code is cached loads it.
//!   On a miss the guest starts on code from wasmtime's baseline compiler
//!   (Winch), which compiles in a fraction of Cranelift's time, while the
//!   optimized code is compiled in the background into the cache (by a
//!   process the instance's parent starts: see [`Background`]); the next
//!   start loads it. A module Winch cannot compile (a proposal it lacks,
//!   such as exceptions or GC) starts on Cranelift without optimizations
//!   instead, and the report says why. Without a cache (or with
//!   `wasmbox.io/compile-cache=off`) there is nowhere to put background
//!   code: the optimized code is compiled before the start, as with
//!   `cranelift`.
//! - `cranelift`: the optimizing compiler only, at
//!   `wasmbox.io/cranelift-opt-level` (`speed`, `speed-and-size` or
//!   `none`). A compile that outlives the prepare timeout goes on in the
//!   background into the cache, so a retry finds it.
//! - `winch`: the baseline compiler only (x86-64 and aarch64).
//! - `pulley`: wasmtime's portable interpreter, Pulley: no native code is
//!   made or mapped executable (for hosts and policies that forbid JIT
//!   code); slower by an order of magnitude.
//!
//! Each tier's code is cached apart: the entry's key covers the tier's
//! name as well as the engine's compatibility hash.

use std::collections::BTreeMap;
use wasmbox_spec::annotations::{COMPILER, CRANELIFT_OPT_LEVEL};
use wasmbox_spec::{Error, Result};
use wasmtime::{Config, OptLevel, Strategy};

/// The compiler a workload asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Compiler {
    #[default]
    Auto,
    Cranelift,
    Winch,
    Pulley,
}

impl Compiler {
    /// The annotation's value that chooses it.
    pub fn name(self) -> &'static str {
        match self {
            Compiler::Auto => "auto",
            Compiler::Cranelift => "cranelift",
            Compiler::Winch => "winch",
            Compiler::Pulley => "pulley",
        }
    }
}

/// Code of one kind: what a compiler at some setting makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Cranelift at the workload's optimization level.
    Optimized,
    /// Winch.
    Baseline,
    /// Cranelift without optimizations: the fallback where Winch cannot
    /// compile a module.
    Unoptimized,
    /// Pulley bytecode, interpreted.
    Interpreted,
}

impl Tier {
    /// The tier's name, in reports and cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Optimized => "optimized (cranelift)",
            Tier::Baseline => "baseline (winch)",
            Tier::Unoptimized => "unoptimized (cranelift, opt-level none)",
            Tier::Interpreted => "interpreted (pulley)",
        }
    }
}

/// A workload's compiler settings, from its annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub compiler: Compiler,
    pub opt_level: Level,
}

/// Cranelift's optimization level (serializable, unlike wasmtime's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Level {
    None,
    #[default]
    Speed,
    SpeedAndSize,
}

impl Settings {
    /// The settings the annotations ask for; a bad value is an error naming
    /// the annotation and the value.
    pub fn of(annotations: &BTreeMap<String, String>) -> Result<Settings> {
        let bad = |name: &str, v: &str, expected: &str| Error::InvalidArgument {
            what: format!("annotation {name}={v:?}"),
            reason: format!("expected {expected}"),
        };
        let compiler = match annotations.get(COMPILER).map(|v| v.trim()) {
            None | Some("auto") => Compiler::Auto,
            Some("cranelift") => Compiler::Cranelift,
            Some("winch") => Compiler::Winch,
            Some("pulley") => Compiler::Pulley,
            Some(v) => return Err(bad(COMPILER, v, "auto, cranelift, winch or pulley")),
        };
        let opt_level = match annotations.get(CRANELIFT_OPT_LEVEL).map(|v| v.trim()) {
            None | Some("speed") => Level::Speed,
            Some("speed-and-size") => Level::SpeedAndSize,
            Some("none") => Level::None,
            Some(v) => return Err(bad(CRANELIFT_OPT_LEVEL, v, "speed, speed-and-size or none")),
        };
        if compiler != Compiler::Auto
            && compiler != Compiler::Cranelift
            && annotations.contains_key(CRANELIFT_OPT_LEVEL)
        {
            return Err(Error::InvalidArgument {
                what: format!("annotation {CRANELIFT_OPT_LEVEL}"),
                reason: format!("it sets Cranelift's level, and annotation {COMPILER} chooses another compiler"),
            });
        }
        Ok(Settings { compiler, opt_level })
    }

    /// The tier a start without cached optimized code runs on first, and
    /// the one it falls back to when that compiler refuses the module.
    pub fn first_tiers(&self) -> &'static [Tier] {
        match self.compiler {
            Compiler::Auto => &[Tier::Baseline, Tier::Unoptimized],
            Compiler::Cranelift => &[Tier::Optimized],
            Compiler::Winch => &[Tier::Baseline],
            Compiler::Pulley => &[Tier::Interpreted],
        }
    }

    /// Applies `tier`'s compiler settings to `config`.
    pub fn apply(&self, tier: Tier, config: &mut Config) -> Result<()> {
        match tier {
            Tier::Optimized => {
                config.strategy(Strategy::Cranelift).cranelift_opt_level(match self.opt_level {
                    Level::None => OptLevel::None,
                    Level::Speed => OptLevel::Speed,
                    Level::SpeedAndSize => OptLevel::SpeedAndSize,
                });
            }
            Tier::Baseline => {
                config.strategy(Strategy::Winch);
            }
            Tier::Unoptimized => {
                config.strategy(Strategy::Cranelift).cranelift_opt_level(OptLevel::None);
            }
            Tier::Interpreted => {
                config.strategy(Strategy::Cranelift);
                let target = if cfg!(target_pointer_width = "64") { "pulley64" } else { "pulley32" };
                config
                    .target(target)
                    .map_err(|e| Error::Unsupported(format!("annotation {COMPILER}=pulley: {e:#}")))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Result<Settings> {
        Settings::of(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn annotations_choose_the_compiler_and_bad_values_are_named() {
        assert_eq!(of(&[]).unwrap(), Settings::default());
        assert_eq!(of(&[(COMPILER, "winch")]).unwrap().compiler, Compiler::Winch);
        let s = of(&[(COMPILER, "cranelift"), (CRANELIFT_OPT_LEVEL, "none")]).unwrap();
        assert_eq!((s.compiler, s.opt_level), (Compiler::Cranelift, Level::None));
        let e = of(&[(COMPILER, "v8")]).unwrap_err().to_string();
        assert!(e.contains(COMPILER) && e.contains("\"v8\"") && e.contains("pulley"), "{e}");
        let e = of(&[(CRANELIFT_OPT_LEVEL, "fast")]).unwrap_err().to_string();
        assert!(e.contains(CRANELIFT_OPT_LEVEL) && e.contains("speed-and-size"), "{e}");
        let e = of(&[(COMPILER, "winch"), (CRANELIFT_OPT_LEVEL, "none")]).unwrap_err().to_string();
        assert!(e.contains(CRANELIFT_OPT_LEVEL) && e.contains(COMPILER), "{e}");
    }

    #[test]
    fn every_tier_makes_an_engine_that_runs_code() {
        let wasm = wat_module();
        let s = Settings::default();
        for tier in [Tier::Optimized, Tier::Baseline, Tier::Unoptimized, Tier::Interpreted] {
            let mut config = Config::new();
            s.apply(tier, &mut config).unwrap();
            let engine = wasmtime::Engine::new(&config).unwrap_or_else(|e| panic!("{}: {e:#}", tier.name()));
            let module = wasmtime::Module::new(&engine, &wasm).unwrap_or_else(|e| panic!("{}: {e:#}", tier.name()));
            let mut store = wasmtime::Store::new(&engine, ());
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let f = instance.get_typed_func::<i32, i32>(&mut store, "double").unwrap();
            assert_eq!(f.call(&mut store, 21).unwrap(), 42, "{}", tier.name());
        }
    }

    fn wat_module() -> Vec<u8> {
        wat::parse_str(r#"(module (func (export "double") (param i32) (result i32) local.get 0 local.get 0 i32.add))"#)
            .unwrap()
    }
}
