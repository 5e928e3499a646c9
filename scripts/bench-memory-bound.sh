#!/usr/bin/env bash
# Memory bound under hostile bodies: a release collector with its default budgets (or the
# ones given) while SENDERS clients post gzipped NDJSON bodies as fast as they are taken,
# each decompressing to about 125 MB (just under the default 128 MiB
# `max_decompressed_bytes`): 2,600 records of three 16,000-byte values (cs(User-Agent),
# cs-uri-query, cs(Cookie); under the 16 KiB field limit) spread over DISTRIBUTIONS
# distributions. Prints the collector's peak RSS (VmHWM) while posting against the
# documented bound, max_inflight_bytes + max_open_bytes + 256 MiB, and the answers
# (200, and 503 when bodies in progress hold the budget).
#
#   scripts/bench-memory-bound.sh
#   DISTRIBUTIONS=8 DURATION=45 scripts/bench-memory-bound.sh
#   MAX_OPEN_BYTES=268435456 scripts/bench-memory-bound.sh
#   STANDARD=false scripts/bench-memory-bound.sh   # without the standard-log sink
#
# DURATION: seconds of posting (default 60). SENDERS: clients posting at once (default 6).
# DISTRIBUTIONS: default 10000. MAX_INFLIGHT_BYTES, MAX_OPEN_BYTES: the collector's
# budgets (default: its own, 512 MiB and 128 MiB; the collector refuses an in-flight
# budget too small for its largest body, about 479 MiB with the other defaults).
# EDGELOG_BIN: another build to measure.
# A benchmark, not a test: the peak moves by ±40 MiB from run to run.
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelog/target}"
for arg in "$@"; do
  case $arg in
    -h|--help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
DURATION="${DURATION:-60}"
DURATION="${DURATION%s}"
SENDERS="${SENDERS:-6}"
DISTRIBUTIONS="${DISTRIBUTIONS:-10000}"
MAX_INFLIGHT_BYTES="${MAX_INFLIGHT_BYTES:-536870912}"
MAX_OPEN_BYTES="${MAX_OPEN_BYTES:-134217728}"
STANDARD="${STANDARD:-true}"
if [ -z "${EDGELOG_BIN:-}" ]; then
  cargo build --release --locked -p edgelog >&2
fi
BIN="${EDGELOG_BIN:-$CARGO_TARGET_DIR/release/edgelog}"
TOKEN="bench-memory-bound-token"

dir=$(mktemp -d /tmp/edgelog-membound.XXXXXX)
pid=""
senders=()
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  for s in "${senders[@]}"; do
    pkill -P "$s" 2>/dev/null || true
    kill "$s" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "bench: generating 3 bodies of 2,600 records over $DISTRIBUTIONS distributions..." >&2
gens=()
for seed in 1 2 3; do
  python3 - "$seed" "$DISTRIBUTIONS" "$dir/body$seed.ndjson.gz" <<'PY' &
import gzip, json, random, string, sys
seed, dists, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rnd = random.Random(seed)
alpha = string.ascii_letters + string.digits
# A random 16-byte run repeated: the body compresses under max_body_bytes (16 MiB), the
# values are long once decompressed.
long = lambda: "".join(rnd.choices(alpha, k=16)) * 1000
with gzip.open(out, "wt", compresslevel=6) as f:
    for i in range(2600):
        f.write(json.dumps({
            "timestamp": 1764300000.0 + i / 1000, "DistributionId": f"E{rnd.randrange(dists):012d}",
            "x-edge-location": "DFW3", "sc-bytes": 1234, "c-ip": f"192.0.2.{i % 250}",
            "cs-method": "GET", "cs(Host)": "d1.cloudfront.net", "cs-uri-stem": "/x",
            "sc-status": 200, "cs(User-Agent)": long(), "cs-uri-query": long(),
            "cs(Cookie)": long(), "x-edge-request-id": f"{seed}-{i}-" + "".join(rnd.choices(alpha, k=40)),
        }) + "\n")
PY
  gens+=($!)
done
for g in "${gens[@]}"; do wait "$g"; done

p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/edgelog.toml" <<EOF
data_dir = "$dir/data"
[collector]
listen = "127.0.0.1:$p"
tokens = ["$TOKEN"]
max_inflight_bytes = $MAX_INFLIGHT_BYTES
[sinks.standard]
enabled = $STANDARD
max_open_bytes = $MAX_OPEN_BYTES
EOF
RUST_LOG=error "$BIN" collector --config "$dir/edgelog.toml" 2> "$dir/collector.log" &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null || { cat "$dir/collector.log" >&2; exit 1; }

echo "bench: $SENDERS senders for ${DURATION}s..." >&2
end=$((SECONDS + DURATION))
for s in $(seq "$SENDERS"); do
  (
    while [ $SECONDS -lt $end ]; do
      curl -s -o /dev/null -w "%{http_code}\n" --max-time 120 \
        -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/x-ndjson" \
        -H "Content-Encoding: gzip" --data-binary "@$dir/body$(( s % 3 + 1 )).ndjson.gz" \
        "http://127.0.0.1:$p/v1/records" >> "$dir/codes.$s" || true
    done
  ) &
  senders+=($!)
done
# In the background, so that a signal is handled at once (bash waits for a foreground sleep).
sleep "$DURATION" &
wait $!
kill -0 "$pid" 2>/dev/null || { echo "the collector died:" >&2; tail -20 "$dir/collector.log" >&2; exit 1; }
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
kill -TERM "$pid"
wait "$pid" || echo "the collector exited with $? after SIGTERM" >&2
pid=""
for s in "${senders[@]}"; do wait "$s" 2>/dev/null || true; done
senders=()
bound=$(( (MAX_INFLIGHT_BYTES + MAX_OPEN_BYTES) / 1048576 + 256 ))
[ "$STANDARD" = true ] || bound=$(( MAX_INFLIGHT_BYTES / 1048576 + 256 ))
answers=$(cat "$dir"/codes.* | sort | uniq -c | awk '{printf "%s%s x %s", (NR > 1 ? ", " : ""), $1, $2}')
python3 - "$hwm_kb" "$bound" "$DISTRIBUTIONS" "$MAX_OPEN_BYTES" "$STANDARD" "$answers" <<'PY'
import sys
hwm, bound, dists, open_bytes, standard, answers = sys.argv[1:]
hwm, bound = int(hwm) / 1024, int(bound)
print(f"{dists} distributions, max_open_bytes {int(open_bytes) >> 20} MiB, standard sink {standard}: "
      f"peak RSS {hwm:,.0f} MiB against a bound of {bound:,} MiB ({(hwm / bound - 1) * 100:+.0f} %); answers: {answers}")
PY
