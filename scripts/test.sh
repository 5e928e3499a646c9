#!/usr/bin/env bash
# Installs what the tests need, then builds and runs every test. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds outside the clone stay warm between runs and clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelog/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*" >&2; }

step "installing test dependencies"
scripts/install-test-deps.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building the edgelog binary the end-to-end tests run"
cargo build --locked -p edgelog

step "running every test"
# Two test binaries at a time: the end-to-end tests start real collectors.
cargo test --workspace --locked -- --test-threads 2

step "the README's demo command, literally, in a fresh clone"
scripts/readme-demo.sh

step "fuzzing the NDJSON, W3C and body parsers (FUZZ_SECONDS=${FUZZ_SECONDS:-30} s each)"
fuzz/run.sh
