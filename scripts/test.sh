#!/usr/bin/env bash
# The whole test suite: formatting, the layering check, unit and
# integration tests, and the end-to-end tier against a real containerd.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy -q --release --workspace --all-targets -- -D warnings

echo "==> the core must not depend on containerd"
if cargo tree -q -e normal -p wasmbox-core | grep -E "containerd|ttrpc"; then
  echo "wasmbox-core depends on a containerd crate" >&2
  exit 1
fi

echo "==> cargo test (unit, integration, end-to-end)"
cargo test --release --workspace --no-fail-fast

# The same end-to-end and CRI tiers against containerd 1.7 (Debian 13) and 2.x
# (Debian unstable), unpacked beside the build, not installed.
for dir in $(bash "$ROOT/scripts/containerd-versions.sh" "$CARGO_TARGET_DIR/containerd-versions" trixie sid); do
  echo "==> end-to-end tier against $("$dir/containerd" --version)"
  # --workspace: the same feature set, so the same build, as the run above.
  WASMBOX_E2E_CONTAINERD="$dir" cargo test -q --release --workspace --test e2e --test cri
done
