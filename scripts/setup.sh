#!/usr/bin/env bash
# Installs what building and running wasmbox needs on a fresh Debian machine
# (as root): containerd, runc, libseccomp, protoc, the Rust targets of the guests.
# Sourced by demo.sh and by setup-tests.sh; does nothing that is done.
# Building is left to the caller (build_wasmbox below).
set -euo pipefail
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export WASMBOX_TOOLS_DIR="${WASMBOX_TOOLS_DIR:-/var/cache/wasmbox-tools}"

# Packages a caller needs beside these: setup-tests.sh sets the array
# WASMBOX_EXTRA_PACKAGES before it sources this file.
need=(${WASMBOX_EXTRA_PACKAGES[@]+"${WASMBOX_EXTRA_PACKAGES[@]}"})
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v curl >/dev/null || need+=(curl)
dpkg -s libseccomp-dev >/dev/null 2>&1 || need+=(libseccomp-dev)
# protoc: the shim's containerd-client generates containerd's gRPC API at build time.
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
installed="$(rustup target list --installed)"
for t in wasm32-wasip1 wasm32-wasip2; do
  grep -qx "$t" <<<"$installed" || { echo "==> rustup target add $t"; rustup target add "$t"; }
done

# build_wasmbox [cargo build args]: the release build (default: everything).
build_wasmbox() {
  echo "==> building wasmbox (release${1:+: $*})"
  cargo build --release --manifest-path "$ROOT/Cargo.toml" "${@:---workspace}"
}
