#!/usr/bin/env bash
# Load benchmark: a release collector (write-ahead log with fsync on) and `edgelog edge`
# posting 1,000-record bodies as fast as they are acknowledged, on this machine.
#
#   scripts/bench-load.sh                 # every scenario, 20 s each
#   DURATION=60s SCENARIOS="parquet" scripts/bench-load.sh
#   DISTRIBUTIONS=100 SCENARIOS=parquet FORMATS=ndjson scripts/bench-load.sh   # 100 open files
#
# Scenarios: `blackhole` (metrics only: ingest + WAL + aggregation), `parquet` (standard
# logs to local Parquet + 10 % real-time in process), `s3` (standard logs to Parquet on a
# local garage + 10 % real-time to a local tansu, Kafka protocol), each with NDJSON and W3C
# bodies. Prints
# records/s, MB/s, ack latency, the collector's peak RSS, and Parquet bytes per record.
# Bodies are generated once and resent (--pregenerate), so the generator is not measured;
# request ids repeat, which flatters Parquet size: `cargo bench` reports it on distinct records.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelog/target}"
DURATION="${DURATION:-20s}"
SCENARIOS="${SCENARIOS:-blackhole parquet}"
FORMATS="${FORMATS:-ndjson w3c}"
CONCURRENCY="${CONCURRENCY:-6}"
DISTRIBUTIONS="${DISTRIBUTIONS:-8}"
TOKEN=bench-token-0123456789abcdef

cargo build --release --locked -p edgelog >&2
BIN="$CARGO_TARGET_DIR/release/edgelog"

if [[ " $SCENARIOS " == *" s3 "* ]]; then
  cargo build --locked -p edgelog-tests --bin test-servers >&2
  coproc SERVERS { "$CARGO_TARGET_DIR/debug/test-servers"; }
  while read -r line <&"${SERVERS[0]}"; do
    [ "$line" = ready ] && break
    eval "$line"
  done
  [ -n "${EDGELOG_TEST_S3_ENDPOINT:-}" ] || { echo "test servers did not start" >&2; exit 1; }
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for scenario in $SCENARIOS; do
  for format in $FORMATS; do
    dir=$(mktemp -d /tmp/edgelog-bench.XXXXXX)
    p=$(port)
    case $scenario in
      blackhole) sinks=$'[sinks.standard]\nenabled = false\n[sinks.realtime]\nenabled = false\n' ;;
      parquet) sinks=$'[sampling.default]\nrealtime = 10\n' ;;
      s3) sinks="[sampling.default]
realtime = 10
[sinks.standard]
prefix = \"bench-$format\"
[sinks.standard.s3]
bucket = \"$EDGELOG_TEST_S3_BUCKET\"
endpoint = \"$EDGELOG_TEST_S3_ENDPOINT\"
region = \"garage\"
access_key_id = \"$EDGELOG_TEST_S3_KEY_ID\"
secret_access_key = \"$EDGELOG_TEST_S3_SECRET\"
[sinks.realtime.kafka]
bootstrap_servers = \"$EDGELOG_TEST_KAFKA\"
" ;;
      *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    cat > "$dir/edgelog.toml" <<EOF
data_dir = "$dir"
$sinks
[collector]
listen = "127.0.0.1:$p"
tokens = ["$TOKEN"]
EOF
    RUST_LOG=warn "$BIN" collector --config "$dir/edgelog.toml" 2> "$dir/collector.log" &
    pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null || { cat "$dir/collector.log" >&2; exit 1; }
    report=$("$BIN" edge --to "http://127.0.0.1:$p" --token "$TOKEN" --rate 0 --pregenerate 48 \
      --duration "$DURATION" --concurrency "$CONCURRENCY" --batch 1000 --format "$format" \
      --compression none --distributions "$DISTRIBUTIONS" --progress 0s --json)
    rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill -TERM "$pid"; wait "$pid" || true
    rows=0; bytes=0
    if [ "$scenario" = parquet ]; then
      read -r rows bytes < <(python3 - "$dir" <<'PY'
import sys, duckdb, glob, os
files = glob.glob(sys.argv[1] + "/standard-logs/**/*.parquet", recursive=True)
rows = duckdb.sql(f"SELECT count(*) FROM read_parquet({files!r})").fetchone()[0] if files else 0
print(rows, sum(os.path.getsize(f) for f in files))
PY
)
    elif [ "$scenario" = s3 ]; then
      read -r rows bytes < <(python3 - "$format" <<'PY'
import sys, os, glob, duckdb, duckdb_extension_httpfs
ext = glob.glob(os.path.dirname(duckdb_extension_httpfs.__file__) + "/extensions/*/httpfs.duckdb_extension")[0]
con = duckdb.connect()
con.sql(f"LOAD '{ext}'")
e = os.environ
con.sql(f"""CREATE SECRET (TYPE s3, KEY_ID '{e["EDGELOG_TEST_S3_KEY_ID"]}', SECRET '{e["EDGELOG_TEST_S3_SECRET"]}',
    REGION 'garage', ENDPOINT '127.0.0.1:{e["EDGELOG_TEST_S3_PORT"]}', URL_STYLE 'path', USE_SSL false)""")
glob_ = f"s3://{e['EDGELOG_TEST_S3_BUCKET']}/bench-{sys.argv[1]}/**/*.parquet"
rows = con.sql(f"SELECT count(*) FROM read_parquet('{glob_}')").fetchone()[0]
files = con.sql(f"SELECT sum(size) FROM read_blob('{glob_}')").fetchone()[0]
print(rows, files)
PY
)
    fi
    python3 - "$scenario" "$format" "$report" "$rss_kb" "$rows" "$bytes" <<'PY'
import json, sys
scenario, fmt, report, rss_kb, rows, size = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
line = (f"{scenario:9} {fmt:6} {report['records_per_s']:>9,.0f} records/s  {report['mb_per_s']:6.1f} MB/s  "
        f"ack p50 {report['latency_ms']['p50']:6.1f} ms p99 {report['latency_ms']['p99']:6.1f} ms  "
        f"collector peak RSS {rss_kb/1024:6.1f} MiB  acked {report['acknowledged']:,}  given up {report['given_up']}")
if rows:
    line += f"  parquet {size/rows:.1f} B/record ({rows:,} rows)"
print(line)
PY
    rm -rf "$dir"
  done
done
