#!/usr/bin/env bash
# The demo: installs what is missing, builds, starts a private containerd
# with wasmbox's shim, and runs a wasm container with ctr.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
BIN="$CARGO_TARGET_DIR/release"
DEMO="${DEMO_DIR:-/tmp/wasmbox-demo}"

echo "==> building the demo guest for wasm32-wasip1"
cargo build -q --release --target wasm32-wasip1 --manifest-path "$ROOT/crates/test-guests/guests/Cargo.toml" \
  --target-dir "$CARGO_TARGET_DIR/guests"
WASM="$CARGO_TARGET_DIR/guests/wasm32-wasip1/release/testguest.wasm"

rm -rf "$DEMO" && mkdir -p "$DEMO"
cat >"$DEMO/config.toml" <<TOML
version = 2
root = "$DEMO/root"
state = "$DEMO/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$DEMO/containerd.sock"
TOML
echo "==> starting a private containerd in $DEMO (shim: $BIN/containerd-shim-wasmbox-v1)"
PATH="$BIN:$PATH" containerd --config "$DEMO/config.toml" >"$DEMO/containerd.log" 2>&1 &
CTRD=$!
cleanup() {
  ctr -a "$DEMO/containerd.sock" task ls -q 2>/dev/null | xargs -r -n1 ctr -a "$DEMO/containerd.sock" task kill -s SIGKILL 2>/dev/null || true
  kill "$CTRD" 2>/dev/null || true
  wait "$CTRD" 2>/dev/null || true
  pkill -9 -f "containerd-shim-wasmbox-v1.*$DEMO" 2>/dev/null || true
  grep " $DEMO" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
trap cleanup EXIT
ctr() { command ctr -a "$DEMO/containerd.sock" "$@"; }
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done

echo "==> wasmbox image build -> ctr image import"
"$BIN/wasmbox" image build -t docker.io/library/hello-wasm:latest -o "$DEMO/hello-wasm.tar" --wasm-path /hello.wasm "$WASM" hello
ctr image import "$DEMO/hello-wasm.tar"

echo
echo "\$ ctr run --rm --runtime io.containerd.wasmbox.v1 docker.io/library/hello-wasm:latest hello1"
ctr run --rm --runtime io.containerd.wasmbox.v1 docker.io/library/hello-wasm:latest hello1
echo "(exit status $?)"
echo
echo "\$ ctr run --rm --runtime io.containerd.wasmbox.v1 docker.io/library/hello-wasm:latest hello2 /hello.wasm exit 42"
set +e
ctr run --rm --runtime io.containerd.wasmbox.v1 docker.io/library/hello-wasm:latest hello2 /hello.wasm exit 42
echo "(exit status $?)"
echo
echo "\$ ctr run --rm --runtime io.containerd.wasmbox.v1 docker.io/library/hello-wasm:latest hello3 /nothere.wasm"
ctr run --rm --runtime io.containerd.wasmbox.v1 docker.io/library/hello-wasm:latest hello3 /nothere.wasm
echo "(exit status $?)"
