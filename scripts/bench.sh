#!/usr/bin/env bash
# The benchmark: wasmbox vs runc on one private containerd; prints a table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$CARGO_TARGET_DIR/release/wasmbox-bench" "$@"
