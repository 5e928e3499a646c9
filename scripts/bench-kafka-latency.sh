#!/usr/bin/env bash
# Real-time latency benchmark: a release collector streaming every record to a local tansu
# broker (Kafka protocol, in-memory storage) while `edgelog edge` posts at fixed rates; an
# independent consumer (Python confluent-kafka) notes when it sees each record.
#
#   scripts/bench-kafka-latency.sh                    # 10,000 and 100,000 records/s, 20 s each
#   RATES="50000" DURATION=30s scripts/bench-kafka-latency.sh
#
# Latency is measured from each message's Kafka timestamp, which the collector sets to the
# moment it logged the record (its write-ahead log commit, just before the acknowledgement),
# to the moment the consumer sees it. Prints p50/p99/max and counts.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelog/target}"
DURATION="${DURATION:-20s}"
RATES="${RATES:-10000 100000}"
TOKEN=bench-token-0123456789abcdef

cargo build --release --locked -p edgelog >&2
cargo build --locked -p edgelog-tests --bin test-servers >&2
BIN="$CARGO_TARGET_DIR/release/edgelog"
coproc SERVERS { "$CARGO_TARGET_DIR/debug/test-servers"; }
while read -r line <&"${SERVERS[0]}"; do
  [ "$line" = ready ] && break
  eval "$line"
done
[ -n "${EDGELOG_TEST_KAFKA:-}" ] || { echo "test servers did not start" >&2; exit 1; }
TANSU="$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

n=0
for rate in $RATES; do
  n=$((n + 1))
  topic="latency-$n"
  "$TANSU" topic create "$topic" --broker "tcp://$EDGELOG_TEST_KAFKA" --partitions 3 >/dev/null
  dir=$(mktemp -d /tmp/edgelog-bench.XXXXXX)
  p=$(port)
  cat > "$dir/edgelog.toml" <<CONF
data_dir = "$dir"
[sinks.standard]
enabled = false
[sinks.realtime.kafka]
bootstrap_servers = "$EDGELOG_TEST_KAFKA"
topic = "$topic"
[collector]
listen = "127.0.0.1:$p"
tokens = ["$TOKEN"]
CONF
  RUST_LOG=warn "$BIN" collector --config "$dir/edgelog.toml" 2> "$dir/collector.log" &
  pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
  python3 - "$EDGELOG_TEST_KAFKA" "$topic" "$dir/latency.json" <<'PY' &
import json, os, sys, time
from confluent_kafka import Consumer
bootstrap, topic, out = sys.argv[1:]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"latency-{topic}-{os.getpid()}",
              "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})
c.subscribe([topic])
lat, start, last = [], time.time(), None
# Up to 40 s for the first message, then until 8 s pass without one.
while (last is None and time.time() - start < 40) or (last is not None and time.time() - last < 8):
    # Small batches, short waits: a message is stamped as soon as it arrives.
    for m in c.consume(500, 0.01):
        if m.error():
            continue
        lat.append(time.time() * 1000 - m.timestamp()[1])
        last = time.time()
c.close()
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
json.dump({"count": len(lat), "p50": q(0.5), "p99": q(0.99), "max": lat[-1] if lat else None}, open(out, "w"))
PY
  consumer=$!
  sleep 3
  report=$("$BIN" edge --to "http://127.0.0.1:$p" --token "$TOKEN" --rate "$rate" --duration "$DURATION" \
    --batch 100 --concurrency 8 --compression none --distributions 8 --progress 0s --json)
  wait "$consumer"
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$rate" "$report" "$dir/latency.json" <<'PY'
import json, sys
rate, report, lat = int(sys.argv[1]), json.loads(sys.argv[2]), json.load(open(sys.argv[3]))
print(f"target {rate:>7,} records/s: achieved {report['records_per_s']:>9,.0f} records/s, "
      f"ack p50 {report['latency_ms']['p50']:.1f} ms p99 {report['latency_ms']['p99']:.1f} ms; "
      f"logged to consumer p50 {lat['p50']:.0f} ms p99 {lat['p99']:.0f} ms max {lat['max'] or float('nan'):.0f} ms; "
      f"{lat['count']:,} of {report['acknowledged']:,} seen")
PY
  rm -rf "$dir"
done
