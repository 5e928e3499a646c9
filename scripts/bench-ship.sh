#!/usr/bin/env bash
# Benchmark of `edgelog ship` on this machine, against a release collector with the
# write-ahead log fsync'd and no outputs but the metrics (the collector is not what is
# measured).
#
#   scripts/bench-ship.sh             # catch-up of LINES lines in each format, then a tail
#   LINES=500000 TAIL_RATE=10000 TAIL_SECONDS=30 scripts/bench-ship.sh
#
# 1. Catch-up: a file of LINES nginx lines (JSON in the documented log_format, then
#    `combined`) written before ship starts; lines/s = LINES / the time until the
#    collector accepted all of them. Ship's CPU seconds and peak RSS (VmHWM).
# 2. Tail: a writer appends TAIL_RATE JSON lines/s for TAIL_SECONDS while ship follows the
#    file; ship's CPU (% of one core), peak RSS and the lag at the end.
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelog/target}"
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
LINES="${LINES:-1000000}"
TAIL_RATE="${TAIL_RATE:-10000}"
TAIL_SECONDS="${TAIL_SECONDS:-30}"
TOKEN=bench-token-0123456789abcdef

cargo build --release --locked -p edgelog >&2
BIN="$CARGO_TARGET_DIR/release/edgelog"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cat > "$WORK/collector.toml" <<EOF
data_dir = "$WORK/c"
[collector]
listen = "127.0.0.1:0"
tokens = ["$TOKEN"]
[sinks.standard]
enabled = false
[sinks.realtime]
enabled = false
EOF

start_collector() {
  rm -rf "$WORK/c"
  "$BIN" collector --config "$WORK/collector.toml" > "$WORK/collector.log" 2>&1 &
  COLLECTOR=$!
  for _ in $(seq 100); do
    URL=$(grep -o 'listen=[0-9.:]*' "$WORK/collector.log" | head -1 | cut -d= -f2 || true)
    [ -n "$URL" ] && break
    sleep 0.1
  done
  URL="http://$URL"
}

accepted() {
  # 0 until the first record (the counter appears then).
  curl -s "$URL/metrics" | awk '/^edgelog_records_accepted_total / {v = $2} END {printf "%d", v + 0}'
}

# cpu_seconds PID: user+system CPU seconds so far.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"
}

make_lines() { # FORMAT N FILE
  python3 - "$@" <<'EOF'
import sys, random, time
fmt, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
random.seed(1)
uas = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
       "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
       "curl/8.5.0"]
t0 = time.time() - 3600
with open(path, "w") as f:
    for i in range(n):
        t = t0 + i * 0.001
        ua = uas[i % 3]
        if fmt == "json":
            f.write('{"time":"%.3f","host":"cdn.example.com","http_host":"cdn.example.com","remote_addr":"192.0.2.%d","remote_port":"%d","request_method":"GET","request_uri":"/assets/img/%d.jpg?w=%d","server_protocol":"HTTP/1.1","scheme":"https","status":"%d","bytes_sent":"%d","request_length":"412","request_time":"0.%03d","upstream_header_time":"0.%03d","upstream_cache_status":"%s","http_referer":"https://www.example.com/page/%d","http_user_agent":"%s","http_cookie":"-","http_x_forwarded_for":"-","ssl_protocol":"TLSv1.3","ssl_cipher":"TLS_AES_128_GCM_SHA256","request_id":"%032x","server_port":"443","edge_location":"fra1","sent_http_content_type":"image/jpeg","sent_http_content_length":"%d"}\n'
                    % (t, i % 250, 1024 + i % 60000, i % 5000, i % 7, 200 if i % 50 else 404, 1000 + i % 90000, i % 1000, i % 100, "HIT" if i % 4 else "MISS", i % 300, ua, random.getrandbits(128), 900 + i % 90000))
        else:
            tm = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(t))
            f.write('192.0.2.%d - - [%s] "GET /assets/img/%d.jpg?w=%d HTTP/1.1" %d %d "https://www.example.com/page/%d" "%s"\n'
                    % (i % 250, tm, i % 5000, i % 7, 200 if i % 50 else 404, 1000 + i % 90000, i % 300, ua))
EOF
}

ship_config() { # FORMAT FILE STATE
  cat > "$WORK/ship.toml" <<EOF
collector = "$URL"
token = "$TOKEN"
state_dir = "$3"
progress_interval = "0s"
[[inputs]]
name = "bench"
paths = ["$2"]
format = "$1"
distribution = "E2BENCH"
EOF
}

printf '| run | lines | seconds | lines/s | ship CPU s | ship peak RSS |\n|---|---|---|---|---|---|\n'
for fmt in json combined; do
  file="$WORK/access-$fmt.log"
  make_lines "$fmt" "$LINES" "$file"
  start_collector
  preset=nginx_json; [ "$fmt" = combined ] && preset=nginx_combined
  ship_config "$preset" "$file" "$WORK/state-$fmt"
  t0=$(date +%s.%N)
  "$BIN" ship --config "$WORK/ship.toml" 2> "$WORK/ship-$fmt.log" &
  SHIP=$!
  while [ "$(accepted)" -lt "$LINES" ]; do
    kill -0 $SHIP 2>/dev/null || { cat "$WORK/ship-$fmt.log" >&2; exit 1; }
    sleep 0.05
  done
  t1=$(date +%s.%N)
  cpu=$(cpu_seconds $SHIP)
  rss=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$SHIP/status)
  kill $SHIP; wait $SHIP || true
  kill $COLLECTOR; wait $COLLECTOR || true
  awk -v f="nginx $fmt catch-up" -v n="$LINES" -v a="$t0" -v b="$t1" -v c="$cpu" -v r="$rss" \
    'BEGIN {printf "| %s | %d | %.1f | %.0f | %s | %d MiB |\n", f, n, b-a, n/(b-a), c, r}'
done

# Tail: append TAIL_RATE lines/s while ship follows.
start_collector
file="$WORK/tail.log"
: > "$file"
ship_config nginx_json "$file" "$WORK/state-tail"
"$BIN" ship --config "$WORK/ship.toml" 2> "$WORK/ship-tail.log" &
SHIP=$!
make_lines json "$((TAIL_RATE / 10))" "$WORK/chunk.log"
c0=$(cpu_seconds $SHIP)
for _ in $(seq $((TAIL_SECONDS * 10))); do
  cat "$WORK/chunk.log" >> "$file"
  sleep 0.1
done
c1=$(cpu_seconds $SHIP)
want=$((TAIL_RATE / 10 * TAIL_SECONDS * 10))
sleep 2
got=$(accepted)
rss=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$SHIP/status)
kill $SHIP; wait $SHIP || true
awk -v r="$TAIL_RATE" -v s="$TAIL_SECONDS" -v a="$c0" -v b="$c1" -v m="$rss" -v g="$got" -v w="$want" \
  'BEGIN {printf "| tail at %d lines/s for %d s | %d of %d delivered | | | %.1f %% of a core | %d MiB |\n", r, s, g, w, (b-a)*100/s, m}'
