#!/usr/bin/env bash
# Coverage-guided fuzzing of the ingest parsers on the stable toolchain: cargo-fuzz
# (libFuzzer) without a sanitizer (`-s none` needs no nightly; the crates forbid unsafe
# code), with debug assertions, so an integer overflow panics.
#
#   fuzz/run.sh                 every target, FUZZ_SECONDS (default 30) each
#   fuzz/run.sh ndjson w3c      some targets
#   FUZZ_SECONDS=600 fuzz/run.sh body
#
# Targets: ndjson and w3c (any bytes through parse_body, default and tight limits), body
# (plain, gzip or zstd bodies decompressed with the collector's bounds, format given or
# sniffed). Each run starts from the checked-in seeds (fuzz/seeds/TARGET) and the corpus
# of earlier runs (~/.cache/edgelog/fuzz-corpus/TARGET). A panic, a broken invariant or an
# input slower than FUZZ_TIMEOUT seconds fails the run (exit status not 0); the input is
# saved under fuzz/artifacts/TARGET/ and printed in base64, and
#   fuzz/run.sh --repro TARGET FILE
# runs it again.
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-10}"
CACHE="${EDGELOG_FUZZ_CACHE:-$HOME/.cache/edgelog}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# Its own build directory: the instrumented build must not evict the workspace's.
TARGET_DIR="$CACHE/fuzz-target"
unset CARGO_TARGET_DIR

log() { printf 'fuzz: %s\n' "$*" >&2; }

if cargo fuzz --version 2>/dev/null | grep -q -- "$CARGO_FUZZ_VERSION"; then
  log "cargo-fuzz $CARGO_FUZZ_VERSION already installed"
else
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
  cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked \
    --target-dir "$CACHE/install-cargo-fuzz"
fi

flags=(-s none --debug-assertions --target-dir "$TARGET_DIR" --fuzz-dir .)

if [ "${1:-}" = "--repro" ]; then
  exec cargo fuzz run "${flags[@]}" "$2" "$3"
fi

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ndjson w3c body)

start=$SECONDS
cargo fuzz build "${flags[@]}"
log "built every target in $((SECONDS - start)) s"

summary=()
for t in "${targets[@]}"; do
  corpus="$CACHE/fuzz-corpus/$t"
  if [ -d "$corpus" ] && [ "$(find "$corpus" -type f | wc -l)" -gt 20000 ]; then
    log "corpus of $t past 20000 inputs: starting again from the seeds"
    rm -rf "$corpus"
  fi
  mkdir -p "$corpus"
  log "running $t for $FUZZ_SECONDS s (corpus: $corpus)"
  out="$(mktemp)"
  status=0
  cargo fuzz run "${flags[@]}" "$t" "$corpus" "seeds/$t" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" -rss_limit_mb=2048 \
    -print_final_stats=1 2>"$out" || status=$?
  stat() { sed -n "s/^stat::$1: *//p" "$out" | tail -1; }
  execs="$(stat number_of_executed_units)"
  rate="$(stat average_exec_per_sec)"
  added="$(stat new_units_added)"
  inputs="$(find "$corpus" -type f | wc -l)"
  if [ "$status" -ne 0 ]; then
    # The panic (or timeout) and where the input went, without the input's byte dump.
    grep -v -E '^\s*\[[0-9, ]+\]$' "$out" | grep -A 4 -E 'panicked at|ERROR: libFuzzer|SUMMARY' >&2 || tail -n 40 "$out" >&2
    rm -f "$out"
    for f in "artifacts/$t"/*; do
      [ -f "$f" ] || continue
      log "input $f ($(wc -c <"$f") bytes), base64 (to rerun elsewhere: base64 -d > FILE; fuzz/run.sh --repro $t FILE):"
      base64 -w 0 "$f" | head -c 65536 >&2
      echo >&2
    done
    log "$t FAILED (exit $status)"
    exit 1
  fi
  rm -f "$out"
  summary+=("$t: ${execs:-?} executions in $FUZZ_SECONDS s (${rate:-?}/s), corpus $inputs inputs (${added:-?} new)")
done
for line in "${summary[@]}"; do
  log "$line"
done
