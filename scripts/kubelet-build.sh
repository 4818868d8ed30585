#!/usr/bin/env bash
# Builds a standalone kubelet (Kubernetes v1.34.4) from the Go module proxy
# into the tools cache outside the clone, for the kubelet tier (static pods,
# no API server). scripts/setup.sh runs it once per machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WASMBOX_TOOLS_DIR="${WASMBOX_TOOLS_DIR:-/var/cache/wasmbox-tools}"
mkdir -p "$WASMBOX_TOOLS_DIR/bin"
cd "$ROOT/tools/kubelet"
CGO_ENABLED=0 go build -ldflags "-X k8s.io/component-base/version.gitVersion=v1.34.4" \
  -o "$WASMBOX_TOOLS_DIR/bin/kubelet" k8s.io/kubernetes/cmd/kubelet
"$WASMBOX_TOOLS_DIR/bin/kubelet" --version
