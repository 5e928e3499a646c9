#!/usr/bin/env bash
# Runs the README's demo command literally, as a new user would, in a fresh clone of this
# repository's HEAD: the first ```sh block under "## Two commands" must build, print the
# ingest URL, a token and the dashboard URL, become ready, take a record sent with that
# token, and exit 0 on SIGTERM. If README.md changes and its command no longer works,
# this fails. scripts/test.sh (CI) runs it after the tests.
#
#   README_DEMO_IN_PLACE=1   run in this checkout instead of a clone (uncommitted changes)
#   README_DEMO_TIMEOUT=S    bound on the build and start, seconds (default 2400)
#
# The build shares CARGO_TARGET_DIR with the other steps, so only the workspace's own
# crates are rebuilt (in release) when dependencies are warm. Whatever it starts is
# killed on the way out, whatever way that is.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelog/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
start_timeout=${README_DEMO_TIMEOUT:-2400}
ready_timeout=60
stop_timeout=60

log() { printf 'readme-demo: %s\n' "$*" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/edgelog-readme-demo.XXXXXX")
out=$work/demo.out
pid=""
made_demo_dir=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    # The demo runs in a session of its own: its group is cargo, rustc, and the demo.
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  [ -n "$made_demo_dir" ] && rm -rf "$made_demo_dir"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  log "FAILED: $*"
  if [ -s "$out" ]; then
    log "what it printed (last 60 lines):"
    tail -n 60 "$out" | sed 's/^/  | /' >&2
  fi
  exit 1
}

if [ "${README_DEMO_IN_PLACE:-0}" = 1 ]; then
  dir=$repo
  log "running in place in $dir"
else
  dir=$work/edgelog
  git clone --quiet "$repo" "$dir"
  log "fresh clone of $(git -C "$dir" rev-parse --short HEAD) in $dir"
fi
[ -e "$dir/edgelog-demo" ] || made_demo_dir=$dir/edgelog-demo

# The first ```sh block under "## Two commands", as the README shows it.
cmd=$(awk '
  /^## / { section = ($0 == "## Two commands"); next }
  section && !block && /^```sh[[:space:]]*$/ { block = 1; next }
  block && /^```/ { exit }
  block && NF { print }
' "$dir/README.md")
[ -n "$cmd" ] || fail "README.md has no \`\`\`sh block under \"## Two commands\""
[ "$(printf '%s\n' "$cmd" | wc -l)" -eq 1 ] || fail "expected one command in that block, got: $cmd"
log "the README's command: $cmd"

# It listens on fixed ports; say so plainly when they are taken.
for port in 8080 8081; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "127.0.0.1:$port is in use: the demo needs it"
  fi
done

started=$SECONDS
: >"$out"
# setsid: a session (and process group) of its own, so cleanup reaches cargo's children.
# `exec` all the way down: $pid is the shell, then cargo, then (cargo run execs it) the demo.
(cd "$dir" && exec setsid bash -c "exec $cmd") >"$out" 2>&1 </dev/null &
pid=$!

# Wait for the banner (after the build) and read the URLs and the token off it.
until grep -q '^ *stop with' "$out"; do
  kill -0 "$pid" 2>/dev/null || fail "the command ended before printing its URLs"
  [ $((SECONDS - started)) -lt "$start_timeout" ] || fail "no URLs after ${start_timeout}s"
  sleep 2
done
built_in=$((SECONDS - started))
field() { sed -n "s/^ *$1: *\\(http[^ ]*\\).*/\\1/p" "$out" | head -n 1; }
ingest=$(field ingest)
dashboard=$(field dashboard)
health=$(field health)
token=$(sed -n 's/.*(Authorization: Bearer \([^)]*\)).*/\1/p' "$out" | head -n 1)
[ -n "$ingest" ] && [ -n "$dashboard" ] && [ -n "$health" ] && [ -n "$token" ] ||
  fail "cannot read ingest, dashboard, health URLs and token off the banner"
log "built and started in ${built_in}s: ingest $ingest, dashboard $dashboard"

get() { curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$1" 2>/dev/null || true; }
deadline=$((SECONDS + ready_timeout))
until [ "$(get "$health")" = 200 ] && [ "$(get "$dashboard")" = 200 ]; do
  kill -0 "$pid" 2>/dev/null || fail "the demo died before it was ready"
  [ "$SECONDS" -lt "$deadline" ] || fail "not ready after ${ready_timeout}s ($health, $dashboard)"
  sleep 1
done

# One record with the printed token, as the README's ingest example sends it.
record="{\"timestamp(ms)\":$(date +%s)000,\"DistributionId\":\"E2QWRUHAPOMQZL\",\"sc-status\":200,\"cs-method\":\"GET\",\"cs-uri-stem\":\"/readme-demo.html\",\"sc-bytes\":\"1234\"}"
answer=$(curl -sS --max-time 10 -w '\n%{http_code}' \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/x-ndjson' \
  --data-binary "$record"$'\n' "$ingest") || fail "cannot post a record to $ingest"
code=${answer##*$'\n'}
body=${answer%$'\n'*}
[ "$code" = 200 ] && [[ $body == *'"accepted":1'* ]] ||
  fail "the record was not accepted: HTTP $code $body"
log "a record with the printed token: HTTP $code $body"

kill -TERM "$pid"
# A watchdog: no answer to SIGTERM in time is a failure, not a hang.
(
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  sleep "$stop_timeout" &
  nap=$!
  wait "$nap" && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; }
) >/dev/null 2>&1 &
watchdog=$!
rc=0
wait "$pid" || rc=$?
pid=""
kill "$watchdog" 2>/dev/null || true
wait "$watchdog" 2>/dev/null || true
[ "$rc" != 137 ] || fail "still running ${stop_timeout}s after SIGTERM (killed)"
[ "$rc" = 0 ] || fail "exit status $rc after SIGTERM, not 0"
grep -q 'edgelog demo stopped' "$out" || fail "no 'stopped' line after SIGTERM"
log "ok: exit 0 after SIGTERM; $((SECONDS - started))s in all"
