#!/usr/bin/env bash
# Unpacks the containerd of other Debian releases (binaries only, nothing is
# installed) so the end-to-end tier can run against each of them too:
#   trixie -> containerd 1.7.x, sid -> containerd 2.x
# (the machine's own, Debian 12's 1.6, is the one on PATH).
# Usage: containerd-versions.sh DIR SUITE...   Prints one unpacked bin dir per suite.
# Reuses what an earlier run unpacked for the same package version.
set -euo pipefail
mkdir -p "$1"
dest="$(cd "$1" && pwd)"
shift
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
for suite in "$@"; do
  index="$dest/$suite-Packages"
  curl -fsS --retry 3 "$mirror/dists/$suite/main/binary-amd64/Packages.xz" | xz -dc >"$index.tmp"
  mv "$index.tmp" "$index"
  file="$(awk '/^Package: /{p=($2=="containerd")} p&&/^Filename: /{print $2; exit}' "$index")"
  [ -n "$file" ] || { echo "no containerd package in Debian $suite" >&2; exit 1; }
  out="$dest/$(basename "$file" .deb)"
  if [ ! -x "$out/usr/bin/containerd" ]; then
    echo "==> fetching $file (Debian $suite)" >&2
    curl -fsS --retry 3 -o "$out.deb" "$mirror/$file"
    rm -rf "$out" && dpkg-deb -x "$out.deb" "$out" && rm -f "$out.deb"
  fi
  "$out/usr/bin/containerd" --version >/dev/null || { echo "$out/usr/bin/containerd does not run here" >&2; exit 1; }
  echo "$out/usr/bin"
done
