#!/usr/bin/env bash
# Installs what the test suite (and the benchmark) needs beyond setup.sh:
# Debian packages for the CNI, registry and client tiers, and test tools
# built once per machine from the Go module proxy and the cargo registry
# into the tools cache ($WASMBOX_TOOLS_DIR); then builds the whole
# workspace. Sourced by test.sh and bench.sh; does nothing that is done.
set -euo pipefail
WASMBOX_EXTRA_PACKAGES=()
command -v xz >/dev/null || WASMBOX_EXTRA_PACKAGES+=(xz-utils)
# The CRI tier: CNI plugins (bridge, host-local, loopback) and `ip`.
[ -x /usr/lib/cni/bridge ] || WASMBOX_EXTRA_PACKAGES+=(containernetworking-plugins)
command -v ip >/dev/null || WASMBOX_EXTRA_PACKAGES+=(iproute2)
# The registry the image tier pushes to and pulls from.
[ -x /usr/bin/docker-registry ] || WASMBOX_EXTRA_PACKAGES+=(docker-registry)
# For that tier's secure registries: htpasswd (bcrypt) for basic
# authentication, openssl for the test CA, certificates and tokens.
command -v htpasswd >/dev/null || WASMBOX_EXTRA_PACKAGES+=(apache2-utils)
command -v openssl >/dev/null || WASMBOX_EXTRA_PACKAGES+=(openssl)
[ -x /bin/busybox ] && /bin/busybox --help 2>&1 | grep -q static || dpkg -s busybox-static >/dev/null 2>&1 || WASMBOX_EXTRA_PACKAGES+=(busybox-static)
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# crictl, for the CRI tier: a Go program from the Go module proxy, built
# once per machine into a cache outside the clone.
export WASMBOX_TOOLS_DIR="${WASMBOX_TOOLS_DIR:-/var/cache/wasmbox-tools}"
if [ ! -x "$WASMBOX_TOOLS_DIR/bin/crictl" ]; then
  command -v go >/dev/null || { echo "go not found: the CRI tier builds crictl with Go" >&2; exit 1; }
  echo "==> go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0"
  mkdir -p "$WASMBOX_TOOLS_DIR/bin"
  GOBIN="$WASMBOX_TOOLS_DIR/bin" GOFLAGS=-p=1 go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0
fi
# oras, a registry client of the ecosystem's, for the image tier.
if [ ! -x "$WASMBOX_TOOLS_DIR/bin/oras" ]; then
  command -v go >/dev/null || { echo "go not found: the image tier builds oras with Go" >&2; exit 1; }
  echo "==> go install oras.land/oras/cmd/oras@v1.3.6"
  mkdir -p "$WASMBOX_TOOLS_DIR/bin"
  GOBIN="$WASMBOX_TOOLS_DIR/bin" GOFLAGS=-p=1 go install oras.land/oras/cmd/oras@v1.3.6
fi
# nerdctl, for the client tier. v2.0.5: later releases import their test
# module (mod/tigron) through a local replace the proxy's zip lacks, so they
# do not build from the module proxy. The checksum database has no entry for
# nerdctl (GONOSUMDB for that module alone); its dependencies are checked
# against its own go.sum.
if [ ! -x "$WASMBOX_TOOLS_DIR/bin/nerdctl" ]; then
  command -v go >/dev/null || { echo "go not found: the client tier builds nerdctl with Go" >&2; exit 1; }
  echo "==> go build github.com/containerd/nerdctl/v2/cmd/nerdctl (v2.0.5)"
  src="$(GONOSUMDB=github.com/containerd/nerdctl/v2 go mod download -json github.com/containerd/nerdctl/v2@v2.0.5 |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  (cd "$src" && GOFLAGS=-p=1 go build -o "$WASMBOX_TOOLS_DIR/bin/nerdctl" ./cmd/nerdctl)
fi
# Docker, for the client tier: Debian 13's docker.io (26.1; Debian 12's
# 20.10 predates shim runtimes), unpacked beside the tools, not installed.
if [ ! -x "$WASMBOX_TOOLS_DIR/bin/dockerd" ]; then
  mkdir -p "$WASMBOX_TOOLS_DIR/bin"
  roots="$(bash "$ROOT/scripts/debian-unpack.sh" "$WASMBOX_TOOLS_DIR/debian" trixie docker-cli docker.io)"
  ln -sf "$(sed -n 1p <<<"$roots")/usr/bin/docker" "$WASMBOX_TOOLS_DIR/bin/docker"
  ln -sf "$(sed -n 2p <<<"$roots")/usr/sbin/dockerd" "$WASMBOX_TOOLS_DIR/bin/dockerd"
  "$WASMBOX_TOOLS_DIR/bin/dockerd" --version
fi
# wkg (the wasm package tools' client; it pushes OCI wasm artifacts), for
# the image tier: from the cargo registry, built once per machine.
if [ ! -x "$WASMBOX_TOOLS_DIR/wkg-0.16.1/bin/wkg" ]; then
  echo "==> cargo install wkg@0.16.1"
  cargo install --locked --quiet --root "$WASMBOX_TOOLS_DIR/wkg-0.16.1" \
    --target-dir "$WASMBOX_TOOLS_DIR/wkg-build" wkg@0.16.1
  rm -rf "$WASMBOX_TOOLS_DIR/wkg-build"
fi
ln -sf "$WASMBOX_TOOLS_DIR/wkg-0.16.1/bin/wkg" "$WASMBOX_TOOLS_DIR/bin/wkg"
# critest, cri-tools' validation suite: a Go test binary, so built with
# `go test -c` in the module's source as the module proxy serves it.
if [ ! -x "$WASMBOX_TOOLS_DIR/bin/critest" ]; then
  command -v go >/dev/null || { echo "go not found: the CRI tier builds critest with Go" >&2; exit 1; }
  echo "==> go test -c sigs.k8s.io/cri-tools/cmd/critest (v1.37.0)"
  src="$(go mod download -json sigs.k8s.io/cri-tools@v1.37.0 | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-p=1 go test -c -o "$WASMBOX_TOOLS_DIR/bin/critest" ./cmd/critest)
fi
# A standalone kubelet for the kubelet tier, from the Go module proxy.
if [ ! -x "$WASMBOX_TOOLS_DIR/bin/kubelet" ]; then
  echo "==> building kubelet v1.34.4 (scripts/kubelet-build.sh)"
  GOFLAGS=-p=2 bash "$ROOT/scripts/kubelet-build.sh"
fi
# The local cluster's binaries (scripts/cluster.sh): etcd, the control
# plane, kube-proxy, kubectl, metrics-server, CoreDNS, netns-forward.
for b in etcd etcdctl kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl metrics-server \
  coredns netns-forward; do
  if [ ! -x "$WASMBOX_TOOLS_DIR/bin/$b" ]; then
    echo "==> building the local cluster's binaries (scripts/kube-build.sh)"
    GOFLAGS=-p=2 bash "$ROOT/scripts/kube-build.sh"
    break
  fi
done
build_wasmbox
