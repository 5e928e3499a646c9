#!/usr/bin/env bash
# Ingest-to-dashboard delay: `edgelog demo --no-traffic` (its collector publishes minute
# aggregates every 2 s), then, five times, one record for a new distribution is posted and
# the dashboard's series API polled every 50 ms until the record shows. A browser page
# adds its own refresh period (10 s) on top.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelog/target}"
cargo build --release --locked -p edgelog >&2
BIN="$CARGO_TARGET_DIR/release/edgelog"
TOKEN=bench-token-0123456789abcdef
dir=$(mktemp -d /tmp/edgelog-bench.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ingest=$(port); dash=$(port)
RUST_LOG=warn "$BIN" demo --no-traffic --token "$TOKEN" --data-dir "$dir" \
  --listen "127.0.0.1:$ingest" --dashboard-listen "127.0.0.1:$dash" > "$dir/demo.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$dash) 2>/dev/null && break; sleep 0.1; done
python3 - "$ingest" "$dash" "$TOKEN" <<'PY'
import json, sys, time, urllib.request
ingest, dash, token = sys.argv[1:]
delays = []
for i in range(5):
    dist = f"EDELAY{i:08d}"
    now = int(time.time() * 1000)
    rec = {"timestamp(ms)": now, "DistributionId": dist, "sc-status": 200, "cs-method": "GET",
           "sc-bytes": 1000, "x-edge-request-id": f"delay-{i}-{now}"}
    req = urllib.request.Request(f"http://127.0.0.1:{ingest}/v1/records", data=(json.dumps(rec) + "\n").encode(),
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/x-ndjson"})
    urllib.request.urlopen(req).read()
    acked = time.time()
    while True:
        try:
            points = json.load(urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/distributions/{dist}/series"))
            if points and points[-1]["requests"] >= 1:
                break
        except urllib.error.HTTPError:
            pass
        time.sleep(0.05)
    delays.append(time.time() - acked)
    time.sleep(0.7)
print("ingest acknowledged -> dashboard API: " + ", ".join(f"{d:.2f} s" for d in delays)
      + f"; max {max(delays):.2f} s (collector metrics_interval 2 s in the demo, 5 s by default)")
PY
