//! Paths of the test guests, compiled by this crate's build script.
//!
//! `P1` is a core module (wasm32-wasip1, exports `greet`), `P2` a component
//! (wasm32-wasip2, `wasi:cli/command`). Both take a subcommand as argv[1]:
//! `hello`, `exit N`, `trap`, `loop`, `sleep S`, `cat`, `read P`, `write P`,
//! `pwd`, `cpu N`, `sieve M R`, `recurse N`, `connect ADDR`, `listen ADDR`,
//! `fetch URL` (the last three need the component's wasi:sockets and
//! wasi:http).
include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The guest's source directory (the benchmark builds it natively too).
pub const SOURCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/guests");
