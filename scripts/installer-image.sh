#!/usr/bin/env bash
# The installer image (deploy/installer.yaml's): `wasmbox` and the shim,
# with the shared libraries they link (as ldd finds them on this machine)
# and nothing else; no base image. The binaries are those cargo built
# (dynamically linked against glibc, as the shim is when installed by hand).
#
#   bash scripts/installer-image.sh NAME OUT.tar [--shim FILE] [--wasmbox FILE]
#   wasmbox image push [--plain-http] OUT.tar REGISTRY/wasmbox/installer:TAG
#
# Entrypoint: wasmbox; the DaemonSet gives `node install --host ...`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/oci-tar.sh"
RELEASE="${CARGO_TARGET_DIR:-$ROOT/target}/release"

[ $# -ge 2 ] || {
  echo "usage: $0 NAME OUT.tar [--shim FILE] [--wasmbox FILE]" >&2
  exit 2
}
name="$1" out="$2"
shift 2
shim="$RELEASE/containerd-shim-wasmbox-v1" cli="$RELEASE/wasmbox"
while [ $# -gt 0 ]; do
  case "$1" in
  --shim) shim="$2" && shift 2 ;;
  --wasmbox) cli="$2" && shift 2 ;;
  *) echo "installer-image.sh: unknown argument $1" >&2 && exit 2 ;;
  esac
done
for f in "$shim" "$cli"; do
  [ -x "$f" ] || { echo "installer-image.sh: $f is not built (cargo build --release)" >&2 && exit 1; }
done

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/installer-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
cp "$cli" "$rootfs/usr/local/bin/wasmbox"
cp "$shim" "$rootfs/usr/local/bin/containerd-shim-wasmbox-v1"
# The libraries and the loader, at the paths the binaries ask for.
for lib in $(for f in "$cli" "$shim"; do ldd "$f"; done |
  sed -n -e 's|.*=> \(/[^ ]*\) .*|\1|p' -e 's|^[[:space:]]*\(/[^ ]*\) (.*|\1|p' | sort -u); do
  cp -L --parents "$lib" "$rootfs"
done
oci_tar "$name" "$out" "$rootfs" /usr/local/bin/wasmbox
