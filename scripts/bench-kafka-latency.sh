#!/usr/bin/env bash
# Real-time latency benchmark: a release collector streaming every record to a local tansu
# broker (Kafka protocol, in-memory storage) while `edgelog edge` posts at fixed rates; an
# independent consumer (`kafka-latency`, librdkafka; a Python one could not keep up with
# 100,000 records/s here) notes when it sees each record.
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
cargo build --release --locked -p edgelog-tests --bin kafka-latency >&2
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
  "$CARGO_TARGET_DIR/release/kafka-latency" "$EDGELOG_TEST_KAFKA" "$topic" "$dir/latency.json" &
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
      f"logged to consumer p50 {lat['p50'] or float('nan'):.0f} ms p99 {lat['p99'] or float('nan'):.0f} ms max {lat['max'] or float('nan'):.0f} ms; "
      f"{lat['count']:,} of {report['acknowledged']:,} seen")
PY
  rm -rf "$dir"
done
