#!/usr/bin/env bash
# The demo: installs what is missing (containerd, runc, the Rust targets:
# nothing the tests alone need), builds the shim and the CLI, starts a
# private containerd with wasmbox's shim, runs a wasm container with ctr
# and serves one HTTP request from a wasi:http component.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
build_wasmbox -p containerd-shim-wasmbox-v1 -p wasmbox-cli
BIN="$CARGO_TARGET_DIR/release"
DEMO="${DEMO_DIR:-/tmp/wasmbox-demo}"

echo "==> building the demo guests: a command (wasm32-wasip1) and an HTTP component (wasm32-wasip2)"
cargo build -q --release --target wasm32-wasip1 --manifest-path "$ROOT/crates/test-guests/guests/Cargo.toml" \
  --target-dir "$CARGO_TARGET_DIR/guests"
cargo build -q --release --target wasm32-wasip2 --manifest-path "$ROOT/crates/test-guests/http/Cargo.toml" \
  --target-dir "$CARGO_TARGET_DIR/guests"
WASM="$CARGO_TARGET_DIR/guests/wasm32-wasip1/release/testguest.wasm"
HTTP_WASM="$CARGO_TARGET_DIR/guests/wasm32-wasip2/release/httpguest.wasm"

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
set -e

echo
echo "==> an HTTP service: a wasi:http/proxy component, a fresh instance per request"
"$BIN/wasmbox" image build -t docker.io/library/hello-http:latest -o "$DEMO/hello-http.tar" "$HTTP_WASM"
ctr image import "$DEMO/hello-http.tar"
PORT="${DEMO_HTTP_PORT:-18080}"
echo "\$ ctr run -d --net-host --annotation wasmbox.io/http-listen=127.0.0.1:$PORT --runtime io.containerd.wasmbox.v1 docker.io/library/hello-http:latest web"
ctr run -d --net-host --annotation "wasmbox.io/http-listen=127.0.0.1:$PORT" --runtime io.containerd.wasmbox.v1 \
  docker.io/library/hello-http:latest web
echo "\$ curl -s http://127.0.0.1:$PORT/"
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
echo "\$ ctr task kill web   # SIGTERM drains the server"
ctr task kill web
for _ in $(seq 50); do ctr task ls | grep -q "^web .*STOPPED" && break; sleep 0.1; done
ctr task ls
ctr task rm web >/dev/null && ctr container rm web
