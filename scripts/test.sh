#!/usr/bin/env bash
# The whole test suite: formatting, the layering check, unit and
# integration tests, and the end-to-end tier against a real containerd.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-tests.sh"
cd "$ROOT"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy -q --release --workspace --all-targets -- -D warnings

echo "==> layering: what each crate must not depend on (its lib.rs says why)"
# crate: a regex of the crates it must not reach, through any path.
layering=(
  "wasmbox-spec:^(wasmtime|cranelift|containerd|ttrpc|cgroups-rs|libseccomp|caps|wasmbox-)"
  "wasmbox-spin:^(wasmtime|cranelift|containerd|ttrpc|cgroups-rs|libseccomp|caps|wasmbox-(sandbox|engine|instance|image|node))"
  "wasmbox-sandbox:^(wasmtime|cranelift|containerd|ttrpc|wasmbox-(engine|instance|image|node))"
  "wasmbox-engine:^(containerd|ttrpc|cgroups-rs|libseccomp|caps|wasmbox-(sandbox|instance|image|node))"
  "wasmbox-instance:^(containerd|ttrpc|wasmbox-(image|node))"
  "wasmbox-image:^(wasmtime|cranelift|containerd|ttrpc|cgroups-rs|libseccomp|wasmbox-(sandbox|engine|instance|node))"
  "wasmbox-node:^(wasmtime|cranelift|containerd|ttrpc|cgroups-rs|libseccomp|wasmbox-)"
)
for rule in "${layering[@]}"; do
  crate="${rule%%:*}" banned="${rule#*:}"
  if bad="$(cargo tree -q -e normal -p "$crate" --prefix none | sed 1d | grep -E "$banned")"; then
    echo "$crate depends on what it must not: $(sort -u <<<"$bad" | tr '\n' ' ')" >&2
    exit 1
  fi
done

echo "==> no module cycles within a crate"
python3 "$ROOT/scripts/module-cycles.py" "$ROOT/crates"

echo "==> cargo test (unit, integration, end-to-end)"
cargo test --release --workspace --no-fail-fast

# The same end-to-end and CRI tiers against containerd 1.7 (Debian 13) and 2.x
# (Debian unstable), unpacked beside the build, not installed.
for dir in $(bash "$ROOT/scripts/containerd-versions.sh" "$CARGO_TARGET_DIR/containerd-versions" trixie sid); do
  echo "==> end-to-end tier against $("$dir/containerd" --version)"
  # --workspace: the same feature set, so the same build, as the run above.
  WASMBOX_E2E_CONTAINERD="$dir" cargo test -q --release --workspace --test e2e --test cri
done
# The manifest tier (tests/cluster.rs, on scripts/cluster.sh's two-node
# cluster) ran above against the installed containerd; again on the newest,
# whose binaries the cluster takes from PATH.
echo "==> manifest tier against $("$dir/containerd" --version)"
PATH="$dir:$PATH" cargo test -q --release --workspace --test cluster
