//! A workload's engine settings beyond its compiler: stack, fuel, the
//! linear memories' reservation and guard, and the pooling allocator.
//!
//! Each comes from an annotation (see the table in
//! `wasmbox_spec::annotations`), which a node's defaults file may set for
//! every container (`wasmbox_spec::defaults`). Those that change code
//! (fuel metering, the reservation and guard, which decide where the code
//! checks bounds) are part of wasmtime's tunables and so of the engine's
//! compatibility hash: the compile cache keeps their code apart.

use std::collections::BTreeMap;
use wasmbox_spec::annotations::{
    find, parse_bytes, FUEL, MEMORY_GUARD_SIZE, MEMORY_RESERVATION, POOLING, POOL_INSTANCES, POOL_MAX_MEMORY,
    POOL_TABLES, STACK_SIZE,
};
use wasmbox_spec::{Error, Result};
use wasmtime::Config;

/// Whether instances come from the pooling allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Pooling {
    /// A served component's instances are pooled; a command's are not.
    #[default]
    Auto,
    On,
    Off,
}

/// The settings, as the annotations give them (None: wasmtime's default,
/// or ours where the table says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Tuning {
    pub stack_size: Option<usize>,
    pub fuel: Option<u64>,
    pub memory_reservation: Option<u64>,
    pub memory_guard: Option<u64>,
    pub pooling: Pooling,
    pub pool_instances: Option<u32>,
    pub pool_max_memory: Option<u64>,
    pub pool_tables: Option<u32>,
}

/// wasmtime's default stack for async calls (served components run on
/// them); a wasm stack asked for beyond it gets this much more, for the
/// host functions it calls.
const ASYNC_STACK: usize = 2 << 20;
const HOST_STACK: usize = 1 << 20;

impl Tuning {
    /// The settings `annotations` ask for; a bad value (or a pool limit
    /// with `pooling=off`) is an error naming the annotation.
    pub fn of(annotations: &BTreeMap<String, String>) -> Result<Tuning> {
        let get = |name: &str| annotations.get(name).map(|v| v.trim());
        let bad = |name: &str, v: &str| {
            let expected = find(name).map(|a| a.value.expected()).unwrap_or_default();
            wasmbox_spec::annotations::bad_value(name, v, &expected)
        };
        let bytes = |name: &str, zero: bool| -> Result<Option<u64>> {
            match get(name) {
                None => Ok(None),
                Some(v) => parse_bytes(v).filter(|&b| zero || b > 0).map(Some).ok_or_else(|| bad(name, v)),
            }
        };
        let count = |name: &str| -> Result<Option<u32>> {
            match get(name) {
                None => Ok(None),
                Some(v) => v.parse::<u32>().ok().filter(|&n| n > 0).map(Some).ok_or_else(|| bad(name, v)),
            }
        };
        let pooling = match get(POOLING) {
            None | Some("auto") => Pooling::Auto,
            Some("on") => Pooling::On,
            Some("off") => Pooling::Off,
            Some(v) => return Err(bad(POOLING, v)),
        };
        let fuel = match get(FUEL) {
            None => None,
            Some(v) => Some(v.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| bad(FUEL, v))?),
        };
        let stack_size = match bytes(STACK_SIZE, false)? {
            Some(b) if b > (256 << 20) => {
                return Err(Error::InvalidArgument {
                    what: format!("annotation {STACK_SIZE}={:?}", get(STACK_SIZE).unwrap_or_default()),
                    reason: "at most 256Mi".into(),
                })
            }
            b => b.map(|b| b as usize),
        };
        let tuning = Tuning {
            stack_size,
            fuel,
            memory_reservation: bytes(MEMORY_RESERVATION, false)?,
            memory_guard: bytes(MEMORY_GUARD_SIZE, true)?,
            pooling,
            pool_instances: count(POOL_INSTANCES)?,
            pool_max_memory: bytes(POOL_MAX_MEMORY, false)?,
            pool_tables: count(POOL_TABLES)?,
        };
        if pooling == Pooling::Off {
            for name in [POOL_INSTANCES, POOL_MAX_MEMORY, POOL_TABLES] {
                if annotations.contains_key(name) {
                    return Err(Error::InvalidArgument {
                        what: format!("annotation {name}"),
                        reason: format!("it sizes the pooling allocator, and annotation {POOLING} is off"),
                    });
                }
            }
        }
        Ok(tuning)
    }

    /// Whether a workload's instances are pooled (`served`: a served
    /// component).
    pub fn pooled(&self, served: bool) -> bool {
        match self.pooling {
            Pooling::Auto => served,
            Pooling::On => true,
            Pooling::Off => false,
        }
    }

    /// Applies the settings that are not the pool's to `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(stack) = self.stack_size {
            config.max_wasm_stack(stack);
            // wasmtime wants the async stacks (a served component's calls
            // run on them) to hold the wasm stack, whether or not the
            // engine runs async calls.
            if stack + HOST_STACK > ASYNC_STACK {
                config.async_stack_size(stack + HOST_STACK);
            }
        }
        if self.fuel.is_some() {
            config.consume_fuel(true);
        }
        if let Some(r) = self.memory_reservation {
            config.memory_reservation(r);
        }
        if let Some(g) = self.memory_guard {
            config.memory_guard_size(g);
        }
    }

    /// The pooling allocator's configuration for a workload whose pool
    /// holds `slots` instances unless `wasmbox.io/pool-instances` says.
    pub fn pool(&self, slots: u32) -> wasmtime::PoolingAllocationConfig {
        let slots = self.pool_instances.unwrap_or(slots);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots.saturating_mul(2))
            .total_tables(self.pool_tables.unwrap_or(slots.saturating_mul(4)))
            .total_stacks(slots);
        if let Some(m) = self.pool_max_memory.or(self.memory_reservation) {
            pool.max_memory_size(m as usize);
        }
        pool
    }

    /// The annotations behind the settings given, for an error that the
    /// engine refused them.
    pub fn named(&self) -> String {
        let set = [
            (STACK_SIZE, self.stack_size.is_some()),
            (FUEL, self.fuel.is_some()),
            (MEMORY_RESERVATION, self.memory_reservation.is_some()),
            (MEMORY_GUARD_SIZE, self.memory_guard.is_some()),
            (POOLING, self.pooling != Pooling::Auto),
            (POOL_INSTANCES, self.pool_instances.is_some()),
            (POOL_MAX_MEMORY, self.pool_max_memory.is_some()),
            (POOL_TABLES, self.pool_tables.is_some()),
        ];
        let names: Vec<&str> = set.iter().filter(|(_, given)| *given).map(|(n, _)| *n).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(kv: &[(&str, &str)]) -> Result<Tuning> {
        Tuning::of(&kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(of(&[]).unwrap(), Tuning::default());
        let t = of(&[
            (STACK_SIZE, "1Mi"),
            (FUEL, "5000000000"),
            (MEMORY_RESERVATION, "64Mi"),
            (MEMORY_GUARD_SIZE, "0"),
            (POOLING, "on"),
            (POOL_INSTANCES, "4"),
        ])
        .unwrap();
        assert_eq!(t.stack_size, Some(1 << 20));
        assert_eq!(t.fuel, Some(5_000_000_000));
        assert_eq!(t.memory_reservation, Some(64 << 20));
        assert_eq!(t.memory_guard, Some(0));
        assert!(t.pooled(false));
        assert!(!of(&[]).unwrap().pooled(false) && of(&[]).unwrap().pooled(true));
        assert!(!of(&[(POOLING, "off")]).unwrap().pooled(true));
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (name, v) in [
            (STACK_SIZE, "0"),
            (STACK_SIZE, "1Gi"),
            (FUEL, "-1"),
            (FUEL, "lots"),
            (MEMORY_RESERVATION, "0"),
            (MEMORY_GUARD_SIZE, "big"),
            (POOLING, "maybe"),
            (POOL_INSTANCES, "0"),
        ] {
            let e = of(&[(name, v)]).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
        let e = of(&[(POOLING, "off"), (POOL_INSTANCES, "3")]).unwrap_err().to_string();
        assert!(e.contains(POOL_INSTANCES) && e.contains("off"), "{e}");
    }

    /// Settings that change code change the engine's compatibility hash
    /// (so the cache keeps them apart); the stack size does not.
    #[test]
    fn code_settings_change_the_hash() {
        use std::hash::{Hash, Hasher};
        let hash = |t: Tuning| {
            let mut c = Config::new();
            t.apply(&mut c);
            let e = wasmtime::Engine::new(&c).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            e.precompile_compatibility_hash().hash(&mut h);
            h.finish()
        };
        let base = hash(Tuning::default());
        assert_ne!(base, hash(Tuning { fuel: Some(1), ..Default::default() }));
        assert_ne!(base, hash(Tuning { memory_reservation: Some(64 << 20), ..Default::default() }));
        assert_ne!(base, hash(Tuning { memory_guard: Some(0), ..Default::default() }));
        assert_eq!(base, hash(Tuning { stack_size: Some(1 << 20), ..Default::default() }));
    }
}
