#!/usr/bin/env bash
# Builds the local cluster's binaries (scripts/cluster.sh) from the Go
# module proxy into the tools cache outside the clone, beside the kubelet
# (scripts/kubelet-build.sh): netns-forward (ours), etcd and etcdctl (v3.6), kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy and kubectl
# (Kubernetes v1.34.4, one `go build` so they share compilation),
# metrics-server (v0.8.0) and CoreDNS. Each part is built only when its
# binaries are missing; each build's time is printed. scripts/setup-tests.sh
# runs it once per machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WASMBOX_TOOLS_DIR="${WASMBOX_TOOLS_DIR:-/var/cache/wasmbox-tools}"
BIN="$WASMBOX_TOOLS_DIR/bin"
mkdir -p "$BIN"
command -v go >/dev/null || { echo "go not found: the local cluster's binaries are built with Go" >&2; exit 1; }
export CGO_ENABLED=0
timed() { # NAME COMMAND...: runs COMMAND, then says how long it took.
  local name="$1" start=$SECONDS
  shift
  echo "==> building $name"
  "$@"
  echo "==> $name built in $((SECONDS - start)) s"
}

if [ ! -x "$BIN/netns-forward" ]; then
  # Ours (tools/netns-forward): the host reaches the cluster's API server
  # and registry over loopback through it.
  (cd "$ROOT/tools/netns-forward" && timed netns-forward go build -o "$BIN/netns-forward" .)
fi

kube=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)
missing=0
for b in "${kube[@]}"; do [ -x "$BIN/$b" ] || missing=1; done
if [ "$missing" = 1 ]; then
  # The version the binaries report (kubectl version, the API's /version).
  ldflags="-X k8s.io/component-base/version.gitVersion=v1.34.4 -X k8s.io/component-base/version.gitMajor=1"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=34"
  (cd "$ROOT/tools/kube" && timed "Kubernetes v1.34.4 (${kube[*]})" \
    go build -ldflags "$ldflags" -o "$BIN/" "${kube[@]/#/k8s.io/kubernetes/cmd/}")
fi

if [ ! -x "$BIN/etcd" ] || [ ! -x "$BIN/etcdctl" ]; then
  # Two builds: both main packages end in /v3, which would be both names.
  (cd "$ROOT/tools/etcd" && timed "etcd v3.6.17" \
    sh -c "go build -o '$BIN/etcd' go.etcd.io/etcd/server/v3 && go build -o '$BIN/etcdctl' go.etcd.io/etcd/etcdctl/v3")
fi

if [ ! -x "$BIN/metrics-server" ]; then
  timed "metrics-server v0.8.0" env GOBIN="$BIN" go install sigs.k8s.io/metrics-server/cmd/metrics-server@v0.8.0
fi

if [ ! -x "$BIN/coredns" ]; then
  # Every in-tree plugin, as released; no replace directives, so
  # `go install` works. The cluster runs without it (pods then find
  # Services by their environment variables only), so a failed build is
  # a warning.
  timed "CoreDNS v1.12.4" env GOBIN="$BIN" go install github.com/coredns/coredns@v1.12.4 ||
    echo "warning: CoreDNS did not build; scripts/cluster.sh runs without cluster DNS" >&2
fi
