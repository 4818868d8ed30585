#!/usr/bin/env bash
# The benchmark: wasmbox vs runc on one private containerd; prints a table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-tests.sh"
# `wasmtime serve`, the peer of `--serve`: the CLI of the same wasmtime
# version as ours, from the cargo registry, built once per machine into the tools
# cache with only what `run` and `serve` need.
WASMTIME_VERSION="$(sed -n 's/^wasmtime = { version = "=\([0-9.]*\)".*/\1/p' "$ROOT/Cargo.toml")"
WASMTIME_ROOT="$WASMBOX_TOOLS_DIR/wasmtime-$WASMTIME_VERSION"
if [ -n "$WASMTIME_VERSION" ] && [ ! -x "$WASMTIME_ROOT/bin/wasmtime" ]; then
  echo "==> cargo install wasmtime-cli@$WASMTIME_VERSION (for the --serve comparison)"
  cargo install --locked --quiet --root "$WASMTIME_ROOT" \
    --target-dir "$WASMBOX_TOOLS_DIR/wasmtime-build" \
    --no-default-features \
    --features run,serve,component-model-async,cranelift,pooling-allocator,parallel-compilation,cache,wat,logging \
    "wasmtime-cli@$WASMTIME_VERSION"
  rm -rf "$WASMBOX_TOOLS_DIR/wasmtime-build"
fi
export WASMBOX_WASMTIME="${WASMBOX_WASMTIME:-$WASMTIME_ROOT/bin/wasmtime}"
exec "$CARGO_TARGET_DIR/release/wasmbox-bench" "$@"
