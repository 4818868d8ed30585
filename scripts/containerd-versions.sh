#!/usr/bin/env bash
# Unpacks the containerd of other Debian releases (binaries only, nothing is
# installed) so the end-to-end tier can run against each of them too:
#   trixie -> containerd 1.7.x, sid -> containerd 2.x
# (the machine's own, Debian 12's 1.6, is the one on PATH).
# Usage: containerd-versions.sh DIR SUITE...   Prints one unpacked bin dir per suite.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
for suite in "${@:2}"; do
  root="$(bash "$here/debian-unpack.sh" "$1" "$suite" containerd)"
  "$root/usr/bin/containerd" --version >/dev/null || { echo "$root/usr/bin/containerd does not run here" >&2; exit 1; }
  echo "$root/usr/bin"
done
