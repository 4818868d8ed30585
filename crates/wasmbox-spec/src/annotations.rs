//! Every annotation wasmbox reads, in one table: its name, the kind of
//! value it takes (and so its parser), its default and what it changes.
//!
//! [`check`] runs at Create for every container (wasm and Linux alike): an
//! annotation in our own `wasmbox.io/` namespace that the table does not
//! know is refused, naming the nearest known name, so a typo in a manifest
//! never passes unnoticed; a known one whose value its parser refuses is
//! refused naming the annotation, the value and what was expected. Names of
//! other projects that we accept for drop-in migration (runwasi's, crun's)
//! are in the table too, but their namespaces are not ours to police.
//!
//! docs/reference.md lists the same names with the same defaults; a test
//! checks the two agree.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Our namespace: every annotation under it must be in [`TABLE`].
pub const PREFIX: &str = "wasmbox.io/";

pub const HANDLER: &str = "wasmbox.io/handler";
/// crun's handler annotation (`wasm`, `wasm-smart`).
pub const CRUN_HANDLER: &str = "run.oci.handler";
/// The wasm image variant annotation runwasi's and crun's images carry.
pub const WASM_VARIANT: &str = "module.wasm.image/variant";
pub const MEMORY_LIMIT: &str = "wasmbox.io/memory-limit";
pub const CPU_DEADLINE: &str = "wasmbox.io/cpu-deadline";
pub const COMPILE_CACHE: &str = "wasmbox.io/compile-cache";
pub const DISABLED_PROPOSALS: &str = "wasmbox.io/disabled-wasm-proposals";
pub const PREPARE_TIMEOUT: &str = "wasmbox.io/prepare-timeout";
pub const COMPILER: &str = "wasmbox.io/compiler";
pub const CRANELIFT_OPT_LEVEL: &str = "wasmbox.io/cranelift-opt-level";
pub const STACK_SIZE: &str = "wasmbox.io/stack-size";
pub const FUEL: &str = "wasmbox.io/fuel";
pub const MEMORY_RESERVATION: &str = "wasmbox.io/memory-reservation";
pub const MEMORY_GUARD_SIZE: &str = "wasmbox.io/memory-guard-size";
pub const POOLING: &str = "wasmbox.io/pooling";
pub const POOL_INSTANCES: &str = "wasmbox.io/pool-instances";
pub const POOL_MAX_MEMORY: &str = "wasmbox.io/pool-max-memory";
pub const POOL_TABLES: &str = "wasmbox.io/pool-tables";
pub const HTTP_LISTEN: &str = "wasmbox.io/http-listen";
pub const HTTP_BACKLOG: &str = "wasmbox.io/http-backlog";
pub const HTTP_MAX_CONCURRENCY: &str = "wasmbox.io/http-max-concurrency";
pub const HTTP_REQUEST_TIMEOUT: &str = "wasmbox.io/http-request-timeout";
pub const HTTP_HEADER_TIMEOUT: &str = "wasmbox.io/http-header-timeout";
pub const HTTP_MAX_HEADER_BYTES: &str = "wasmbox.io/http-max-header-bytes";
pub const HTTP_MAX_BODY_BYTES: &str = "wasmbox.io/http-max-body-bytes";
pub const HTTP_DRAIN_TIMEOUT: &str = "wasmbox.io/http-drain-timeout";
pub const HTTP_REQUEST_LOG: &str = "wasmbox.io/http-request-log";
pub const METRICS_LISTEN: &str = "wasmbox.io/metrics-listen";
pub const ALLOWED_OUTBOUND_HOSTS: &str = "wasmbox.io/allowed-outbound-hosts";

/// The kind of value an annotation takes: its parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// One of the listed words.
    OneOf(&'static [&'static str]),
    /// A size in bytes (`65536`, `64Ki`, `16Mi`, `1G`), more than zero.
    Bytes,
    /// A duration (`500ms`, `30s`, `2m`, `1h`), more than zero.
    Duration,
    /// A size in bytes, which may be zero.
    BytesOrZero,
    /// A positive whole number.
    Count,
    /// A positive whole number up to 2^64-1.
    Amount,
    /// `true` or `false`.
    Bool,
    /// A socket address (`0.0.0.0:8080`, `[::]:80`).
    SocketAddr,
    /// A list whose items the engine checks at Create against what it
    /// knows (proposal names, allow-list rules), naming the bad item.
    CheckedByEngine(&'static str),
}

impl Value {
    /// What a value of this kind looks like, for error messages.
    pub fn expected(self) -> String {
        match self {
            Value::OneOf(words) => words.join(" or "),
            Value::Bytes => "a size in bytes such as 67108864, 64Mi or 1G".into(),
            Value::Duration => "a duration such as 500ms, 30s or 2m".into(),
            Value::BytesOrZero => "a size in bytes such as 0, 64Ki or 2Mi".into(),
            Value::Count => "a positive number".into(),
            Value::Amount => "a positive number such as 1000000000".into(),
            Value::Bool => "true or false".into(),
            Value::SocketAddr => "a socket address such as 0.0.0.0:8080 or [::]:80".into(),
            Value::CheckedByEngine(what) => what.into(),
        }
    }

    /// Whether `value` parses as this kind.
    pub fn accepts(self, value: &str) -> bool {
        let v = value.trim();
        match self {
            Value::OneOf(words) => words.contains(&v),
            Value::Bytes => parse_bytes(v).is_some_and(|b| b > 0),
            Value::Duration => parse_duration(v).is_some(),
            Value::BytesOrZero => parse_bytes(v).is_some(),
            Value::Count => v.parse::<u32>().is_ok_and(|n| n > 0),
            Value::Amount => v.parse::<u64>().is_ok_and(|n| n > 0),
            Value::Bool => v == "true" || v == "false",
            Value::SocketAddr => v.parse::<std::net::SocketAddr>().is_ok(),
            Value::CheckedByEngine(_) => true,
        }
    }
}

/// One annotation wasmbox reads.
#[derive(Debug, Clone, Copy)]
pub struct Annotation {
    pub name: &'static str,
    pub value: Value,
    /// The default as the reference page writes it.
    pub default: &'static str,
    /// What it changes, in a line.
    pub what: &'static str,
}

/// Every annotation wasmbox reads.
pub const TABLE: &[Annotation] = &[
    Annotation {
        name: HANDLER,
        value: Value::OneOf(&["wasm", "linux"]),
        default: "detected",
        what: "the backend that runs the container",
    },
    Annotation {
        name: CRUN_HANDLER,
        value: Value::OneOf(&["wasm", "wasm-smart"]),
        default: "-",
        what: "crun's name for the same choice",
    },
    Annotation {
        name: WASM_VARIANT,
        value: Value::OneOf(&["compat", "compat-smart"]),
        default: "-",
        what: "the wasm image variant of runwasi's and crun's images",
    },
    Annotation {
        name: MEMORY_LIMIT,
        value: Value::Bytes,
        default: "the container's memory limit less the runtime's own use",
        what: "caps the guest's linear memories and tables",
    },
    Annotation {
        name: CPU_DEADLINE,
        value: Value::Duration,
        default: "none",
        what: "CPU time after which the guest (or a served request) is stopped",
    },
    Annotation {
        name: COMPILE_CACHE,
        value: Value::OneOf(&["on", "off"]),
        default: "on",
        what: "whether compiled code is read from and written to the cache",
    },
    Annotation {
        name: DISABLED_PROPOSALS,
        value: Value::CheckedByEngine("wasm proposal names separated by commas or spaces"),
        default: "none",
        what: "wasm proposals turned off for this workload",
    },
    Annotation {
        name: PREPARE_TIMEOUT,
        value: Value::Duration,
        default: "60s",
        what: "how long preparing the instance may take",
    },
    Annotation {
        name: COMPILER,
        value: Value::OneOf(&["auto", "cranelift", "winch", "pulley"]),
        default: "auto",
        what: "which compiler makes the code; auto starts an uncached module on the baseline tier",
    },
    Annotation {
        name: CRANELIFT_OPT_LEVEL,
        value: Value::OneOf(&["speed", "speed-and-size", "none"]),
        default: "speed",
        what: "Cranelift's optimization level",
    },
    Annotation {
        name: STACK_SIZE,
        value: Value::Bytes,
        default: "512Ki",
        what: "the most stack the guest's wasm may use; deeper calls trap (call stack exhausted)",
    },
    Annotation {
        name: FUEL,
        value: Value::Amount,
        default: "none (unmetered)",
        what:
            "fuel (about one unit per wasm instruction) a run, or a served request, may burn; metering changes the code",
    },
    Annotation {
        name: MEMORY_RESERVATION,
        value: Value::Bytes,
        default: "4Gi",
        what: "address space reserved for each linear memory; below 4Gi the code checks bounds explicitly",
    },
    Annotation {
        name: MEMORY_GUARD_SIZE,
        value: Value::BytesOrZero,
        default: "32Mi",
        what: "unmapped guard after each linear memory; smaller means more explicit bounds checks",
    },
    Annotation {
        name: POOLING,
        value: Value::OneOf(&["auto", "on", "off"]),
        default: "auto",
        what: "the pooling instance allocator; auto pools a served component's instances only",
    },
    Annotation {
        name: POOL_INSTANCES,
        value: Value::Count,
        default: "http-max-concurrency + 8 (max 1008)",
        what: "instances the pool holds at once (its memories, tables and stacks follow)",
    },
    Annotation {
        name: POOL_MAX_MEMORY,
        value: Value::Bytes,
        default: "the memory reservation",
        what: "the largest a pooled linear memory may grow",
    },
    Annotation {
        name: POOL_TABLES,
        value: Value::Count,
        default: "4 per instance",
        what: "tables the pool holds in all",
    },
    Annotation {
        name: HTTP_LISTEN,
        value: Value::SocketAddr,
        default: "0.0.0.0:8080",
        what: "where a served component listens",
    },
    Annotation { name: HTTP_BACKLOG, value: Value::Count, default: "1024", what: "listen(2) backlog" },
    Annotation { name: HTTP_MAX_CONCURRENCY, value: Value::Count, default: "1000", what: "requests handled at once" },
    Annotation {
        name: HTTP_REQUEST_TIMEOUT,
        value: Value::Duration,
        default: "60s",
        what: "a request's whole handling",
    },
    Annotation {
        name: HTTP_HEADER_TIMEOUT,
        value: Value::Duration,
        default: "10s",
        what: "time a client has to send its request head",
    },
    Annotation {
        name: HTTP_MAX_HEADER_BYTES,
        value: Value::Bytes,
        default: "64Ki",
        what: "bytes a request head may take",
    },
    Annotation {
        name: HTTP_MAX_BODY_BYTES,
        value: Value::Bytes,
        default: "16Mi",
        what: "bytes a request body may have",
    },
    Annotation {
        name: HTTP_DRAIN_TIMEOUT,
        value: Value::Duration,
        default: "30s",
        what: "how long SIGTERM waits for requests in flight",
    },
    Annotation { name: HTTP_REQUEST_LOG, value: Value::Bool, default: "false", what: "one line per request on stderr" },
    Annotation {
        name: METRICS_LISTEN,
        value: Value::SocketAddr,
        default: "off",
        what: "where Prometheus text is served",
    },
    Annotation {
        name: ALLOWED_OUTBOUND_HOSTS,
        value: Value::CheckedByEngine("allow-list rules such as https://api.example.com or tcp://10.0.0.0/8:5432"),
        default: "nothing allowed",
        what: "the guest's outbound HTTP and sockets",
    },
];

/// The table's entry for `name`.
pub fn find(name: &str) -> Option<&'static Annotation> {
    TABLE.iter().find(|a| a.name == name)
}

/// The error for an annotation whose value is not of its kind.
pub fn bad_value(name: &str, value: &str, expected: &str) -> Error {
    Error::InvalidArgument { what: format!("annotation {name}={value:?}"), reason: format!("expected {expected}") }
}

/// Checks every annotation of a container: ours must be known, and every
/// known one's value must parse. Run at Create.
pub fn check(all: Option<&HashMap<String, String>>) -> Result<()> {
    let mut names: Vec<&String> = all.into_iter().flatten().map(|(k, _)| k).collect();
    names.sort();
    for name in names {
        let value = &all.expect("non-empty")[name];
        match find(name) {
            Some(a) if !a.value.accepts(value) => {
                return Err(match a.value {
                    // As the serving code words it when it parses the address.
                    Value::SocketAddr => Error::InvalidArgument {
                        what: format!("annotation {name}={value:?}"),
                        reason: format!("not {}", a.value.expected()),
                    },
                    _ => bad_value(name, value, &a.value.expected()),
                })
            }
            Some(_) => {}
            None if name.starts_with(PREFIX) => {
                return Err(Error::InvalidArgument {
                    what: format!("annotation {name}"),
                    reason: format!(
                        "wasmbox knows no such annotation; did you mean {}? (every annotation is listed in docs/reference.md)",
                        nearest(name)
                    ),
                })
            }
            None => {}
        }
    }
    Ok(())
}

/// The annotations of our namespace, checked (see [`check`]).
pub fn ours(all: Option<&HashMap<String, String>>) -> Result<BTreeMap<String, String>> {
    check(all)?;
    Ok(all.into_iter().flatten().filter(|(k, _)| k.starts_with(PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// The known name of our namespace closest to `name` (edit distance).
fn nearest(name: &str) -> &'static str {
    TABLE
        .iter()
        .filter(|a| a.name.starts_with(PREFIX))
        .min_by_key(|a| edit_distance(a.name, name))
        .map(|a| a.name)
        .expect("the table has names of our namespace")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `64Mi`, `1G`, `1048576` -> bytes.
pub fn parse_bytes(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" | "KB" => 1000,
        "M" | "MB" => 1000 * 1000,
        "G" | "GB" => 1000 * 1000 * 1000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `250ms`, `30s`, `2m`, `1h` -> a duration (more than zero).
pub fn parse_duration(value: &str) -> Option<Duration> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    // Past `Duration`'s range (about 584 billion years) is no duration.
    Duration::try_from_secs_f64(secs).ok().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn unknown_names_of_ours_are_refused_with_the_nearest() {
        let e = check(Some(&map(&[("wasmbox.io/compiler-cache", "off")]))).unwrap_err().to_string();
        assert!(e.contains("wasmbox.io/compiler-cache") && e.contains("did you mean wasmbox.io/compile-cache"), "{e}");
        let e = check(Some(&map(&[("wasmbox.io/memory-limt", "64Mi")]))).unwrap_err().to_string();
        assert!(e.contains("wasmbox.io/memory-limit"), "{e}");
        // Other namespaces are not ours to police.
        check(Some(&map(&[("io.kubernetes.cri.sandbox-id", "x"), ("example.com/whatever", "y")]))).unwrap();
        check(None).unwrap();
    }

    #[test]
    fn values_are_parsed_by_their_kind() {
        for (name, good, bad) in [
            (HANDLER, "linux", "native"),
            (MEMORY_LIMIT, "64Mi", "lots"),
            (CPU_DEADLINE, "500ms", "soon"),
            (COMPILE_CACHE, "off", "bogus"),
            (HTTP_BACKLOG, "16", "-1"),
            (HTTP_REQUEST_LOG, "true", "yes"),
            (HTTP_LISTEN, "[::]:80", "localhost"),
            (CRUN_HANDLER, "wasm-smart", "krun"),
        ] {
            check(Some(&map(&[(name, good)]))).unwrap();
            let e = check(Some(&map(&[(name, bad)]))).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_bytes("64Mi"), Some(64 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("12x"), None);
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), None);
        // Found by the `annotations` fuzz target: past Duration's range
        // this panicked (Duration::from_secs_f64), in the shim's Create.
        assert_eq!(parse_duration("18446744073709551615s"), None);
        assert_eq!(parse_duration("1e400h"), None);
        assert_eq!(parse_duration("0.0000000001ms"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    /// The reference page lists every annotation of the table, with its
    /// default, and its tables name no annotation of ours the table does
    /// not know.
    #[test]
    fn the_reference_lists_the_table() {
        let reference = include_str!("../../../docs/reference.md");
        let rows: Vec<&str> = reference.lines().filter(|l| l.starts_with('|')).collect();
        for a in TABLE {
            let row =
                rows.iter().find(|r| r.contains(&format!("`{}`", a.name)) && r.contains(a.default)).unwrap_or_else(
                    || panic!("docs/reference.md has no table row for `{}` with default {:?}", a.name, a.default),
                );
            assert!(row.contains(a.default));
        }
        for word in rows.iter().flat_map(|r| r.split(|c: char| c == '`' || c.is_whitespace())) {
            if let Some(rest) = word.strip_prefix(PREFIX) {
                let name = format!("{PREFIX}{}", rest.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()));
                if rest.is_empty() || rest.starts_with('*') || name == PREFIX {
                    continue;
                }
                assert!(find(&name).is_some(), "docs/reference.md names {name}, which the table does not know");
            }
        }
    }
}
