#!/usr/bin/env bash
# Runs wasmbox's fuzz targets (fuzz/, cargo-fuzz's layout; their bodies are
# crates/wasmbox-fuzz) under libFuzzer for a given time each, then prints a
# table: target, executions, coverage, findings. Exits 1 if anything was
# found; a finding is left in fuzz/artifacts/TARGET/ (reproduce it with
# `cargo fuzz run -s none TARGET FILE` in fuzz/; once fixed, copy it into
# fuzz/corpus/TARGET/, which CI replays).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 60, all)
#
# Stable Rust: libFuzzer's coverage instrumentation without a sanitizer
# (`-s none`); panics, aborts, timeouts (10 s an input) and inputs that take
# more than 2 GiB are what it finds. New inputs go to a work corpus in the
# build directory, seeded from fuzz/corpus/, not into the repository.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
SECONDS_EACH="${1:-60}"
shift || true

# cargo-fuzz from the cargo registry, built once per machine into the
# tools cache; libFuzzer (built by libfuzzer-sys) needs a C++ compiler.
CARGO_FUZZ_VERSION=0.13.2
FUZZ_ROOT="$WASMBOX_TOOLS_DIR/cargo-fuzz-$CARGO_FUZZ_VERSION"
if [ ! -x "$FUZZ_ROOT/bin/cargo-fuzz" ]; then
  echo "==> cargo install cargo-fuzz@$CARGO_FUZZ_VERSION"
  cargo install --locked --quiet --root "$FUZZ_ROOT" --target-dir "$WASMBOX_TOOLS_DIR/cargo-fuzz-build" \
    "cargo-fuzz@$CARGO_FUZZ_VERSION"
  rm -rf "$WASMBOX_TOOLS_DIR/cargo-fuzz-build"
fi
if ! command -v c++ >/dev/null; then
  echo "==> installing g++ (libFuzzer is C++)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi

cd "$ROOT/fuzz"
# Instrumented, so a build of its own, beside the workspace's.
export CARGO_TARGET_DIR="$ROOT/fuzz/target"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
echo "==> building the fuzz targets (instrumented, release with debug assertions)"
"$FUZZ_ROOT/bin/cargo-fuzz" build -s none --debug-assertions

rows=()
found=0
for t in "${targets[@]}"; do
  work="$CARGO_TARGET_DIR/corpus-work/$t"
  mkdir -p "$work" "artifacts/$t"
  before="$(find "artifacts/$t" -type f | wc -l)"
  log="$CARGO_TARGET_DIR/fuzz-$t.log"
  echo "==> fuzzing $t for ${SECONDS_EACH}s"
  # The work corpus first: libFuzzer adds what it finds there.
  "$FUZZ_ROOT/bin/cargo-fuzz" run -s none --debug-assertions "$t" "$work" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || true
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)"
  ft="$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)"
  corpus="$(find "$work" -type f | wc -l)"
  new="$(( $(find "artifacts/$t" -type f | wc -l) - before ))"
  [ "$new" -eq 0 ] || found=1
  rows+=("$(printf '| %-17s | %12s | %8s | %8s | %7s | %8s |' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$corpus" "$new")")
done
rm -rf /dev/shm/wasmbox-fuzz-*

echo
printf '| %-17s | %12s | %8s | %8s | %7s | %8s |\n' target executions coverage features corpus findings
printf '|%s|%s|%s|%s|%s|%s|\n' "-------------------" "--------------" "----------" "----------" "---------" "----------"
printf '%s\n' "${rows[@]}"
echo "(${SECONDS_EACH}s each; coverage: libFuzzer's covered edges, features: its feature count; findings: new files in fuzz/artifacts/TARGET/)"
exit "$found"
