#!/usr/bin/env bash
# Unpacks binary packages of another Debian release beside the build
# (dpkg-deb -x: nothing is installed, no maintainer scripts run), from the
# archive this machine's apt is configured with.
#   Usage: debian-unpack.sh DIR SUITE PACKAGE...
# Prints the root each package was unpacked into (DIR/PACKAGE_VERSION_ARCH),
# one per line, in order; reuses what an earlier run unpacked for the same
# package version.
set -euo pipefail
mkdir -p "$1"
dest="$(cd "$1" && pwd)"
suite="$2"
shift 2
# The Debian archive in apt's sources (deb822 or one-line), not a host of
# ours; DEBIAN_MIRROR overrides it.
apt_archive() {
  { awk '/^URIs:/{for(i=2;i<=NF;i++) print $i}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
    awk '$1=="deb"{for(i=2;i<=NF;i++) if($i ~ /^[a-z]+:\/\//){print $i; break}}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
  } | grep -v -e security -e '^$' | head -1 | sed 's:/*$::'
}
mirror="${DEBIAN_MIRROR:-$(apt_archive || true)}"
[ -n "$mirror" ] || { echo "no Debian archive in apt's sources; set DEBIAN_MIRROR" >&2; exit 1; }
index="$dest/$suite-Packages"
curl -fsS --retry 3 "$mirror/dists/$suite/main/binary-amd64/Packages.xz" | xz -dc >"$index.tmp"
mv "$index.tmp" "$index"
for pkg in "$@"; do
  file="$(awk -v want="$pkg" '/^Package: /{p=($2==want)} p&&/^Filename: /{print $2; exit}' "$index")"
  [ -n "$file" ] || { echo "no package $pkg in Debian $suite" >&2; exit 1; }
  out="$dest/$(basename "$file" .deb)"
  if [ ! -d "$out/usr" ]; then
    echo "==> fetching $file (Debian $suite)" >&2
    curl -fsS --retry 3 -o "$out.deb" "$mirror/$file"
    rm -rf "$out" && dpkg-deb -x "$out.deb" "$out" && rm -f "$out.deb"
  fi
  echo "$out"
done
