#!/usr/bin/env bash
# Load benchmark: a release collector (write-ahead log with fsync on) and `edgelog edge`
# posting 1,000-record bodies as fast as they are acknowledged, on this machine.
#
#   scripts/bench-load.sh                 # every scenario and format, 60 s each
#   scripts/bench-load.sh --markdown      # the same, as a Markdown table
#   scripts/bench-load.sh --readme        # the README's table: its six rows, as Markdown
#   DURATION=10s SCENARIOS="blackhole parquet" FORMATS=ndjson scripts/bench-load.sh
#   DISTRIBUTIONS="8 100 10000" SCENARIOS=parquet FORMATS=ndjson scripts/bench-load.sh
#
# Scenarios: `blackhole` (metrics only: ingest + WAL + aggregation), `parquet` (standard
# logs to local Parquet + 10 % real-time in process), `s3` (standard logs to Parquet on a
# local garage + 10 % real-time to a local tansu, Kafka protocol, both started here by the
# test-servers binary), each with NDJSON and W3C bodies and each number of distributions
# in DISTRIBUTIONS (a space-separated list). ROWS lists runs as scenario:format:distributions
# instead (e.g. "parquet:ndjson:100 s3:w3c:8"); --readme runs the README's rows: blackhole,
# parquet and s3 with NDJSON and 8 distributions, parquet with 100 and 10,000, and W3C into
# the blackhole.
#
# Bodies are generated once and resent (--pregenerate), so the generator is not measured;
# each send gets fresh request ids, so every record of a run is distinct by id (its other
# fields repeat among the 48 pooled bodies).
#
# For each run: records/s acknowledged (edge's report), records/s sustained, MB/s
# (uncompressed bodies), ack p50/p99, the collector's peak RSS (VmHWM), the drain time,
# Parquet bytes per record, Parquet files written, records found in Parquet (duckdb) and,
# for s3, records found on the Kafka topic (its high watermarks, before and after).
# Sustained: when the load ends the collector gets SIGTERM, and its shutdown delivers what
# the sinks still hold or lag behind (every open file closes; the budget is DRAIN_TIMEOUT
# seconds); the drain is the time until it exits. Sustained is the records found in the
# outputs (Parquet; for blackhole, which writes none, the acknowledged records) over the
# load's time plus the drain: a sink that fell behind pays for it there. MAX_AGE sets the
# standard-log files' max_age (default: the sink's, 60 s), MAX_OPEN_BYTES their rows
# waiting in memory (default: the sink's, 134217728), ROW_GROUP_BYTES where a row group
# ends (default: the sink's, 4194304). REPORTS=false turns the report
# summaries off (their cost is the difference). RATE offers that many records/s instead
# of as many as are acknowledged (ack latency at a fraction of the maximum).
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelog/target}"
MARKDOWN=0
README=0
for arg in "$@"; do
  case $arg in
    --markdown) MARKDOWN=1 ;;
    --readme) MARKDOWN=1 README=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
if [ "$README" = 1 ] && [ -n "${ROWS:-}${SCENARIOS:-}${FORMATS:-}${DISTRIBUTIONS:-}" ]; then
  echo "--readme runs the README's six rows: ROWS, SCENARIOS, FORMATS and DISTRIBUTIONS are ignored" >&2
fi
DURATION="${DURATION:-60s}"
SCENARIOS="${SCENARIOS:-blackhole parquet s3}"
FORMATS="${FORMATS:-ndjson w3c}"
CONCURRENCY="${CONCURRENCY:-6}"
DISTRIBUTIONS="${DISTRIBUTIONS:-8}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-300}"
REPORTS="${REPORTS:-true}"  # false: the collector counts no report summaries ([collector] reports)
MAX_AGE="${MAX_AGE:-}"  # e.g. 5s: the standard-log files' max_age (default: the sink's, 60 s)
MAX_OPEN_BYTES="${MAX_OPEN_BYTES:-}"  # rows waiting in memory (default: the sink's, 128 MiB)
ROW_GROUP_BYTES="${ROW_GROUP_BYTES:-}"  # bytes of rows where a row group ends (default: the sink's, 4 MiB)
RATE="${RATE:-0}"  # records/s offered; 0: as many as are acknowledged
ROWS="${ROWS:-}"  # runs as scenario:format:distributions; empty: every combination above
if [ "$README" = 1 ]; then
  ROWS="blackhole:ndjson:8 parquet:ndjson:8 s3:ndjson:8 parquet:ndjson:100 parquet:ndjson:10000 blackhole:w3c:8"
fi
COMMAND="DURATION=$DURATION SCENARIOS=\"$SCENARIOS\" FORMATS=\"$FORMATS\" DISTRIBUTIONS=\"$DISTRIBUTIONS\""
if [ "$README" = 1 ]; then
  COMMAND="DURATION=$DURATION"
elif [ -n "$ROWS" ]; then
  COMMAND="DURATION=$DURATION ROWS=\"$(tr -s '[:space:]' ' ' <<< "$ROWS" | sed 's/^ //; s/ $//')\""
else
  for scenario in $SCENARIOS; do
    for dists in $DISTRIBUTIONS; do
      for format in $FORMATS; do ROWS+="$scenario:$format:$dists "; done
    done
  done
fi
# The runs, split on any whitespace and never globbed.
read -ra RUNS <<< "$(tr -s '[:space:]' ' ' <<< "$ROWS")"
[ "${#RUNS[@]}" -gt 0 ] || { echo "no runs: ROWS, SCENARIOS, FORMATS or DISTRIBUTIONS is empty" >&2; exit 2; }
NEED_S3=0
HAS_BLACKHOLE=0
for row in "${RUNS[@]}"; do
  IFS=: read -r scenario format dists <<< "$row"
  case "$scenario:$format" in
    blackhole:ndjson|blackhole:w3c) HAS_BLACKHOLE=1 ;;
    parquet:ndjson|parquet:w3c) ;;
    s3:ndjson|s3:w3c) NEED_S3=1 ;;
    *) echo "unknown run $row (scenario:format:distributions): scenario blackhole, parquet or s3, format ndjson or w3c" >&2; exit 2 ;;
  esac
  [[ "$dists" =~ ^[1-9][0-9]*$ ]] || { echo "unknown run $row (scenario:format:distributions): distributions must be a whole number from 1" >&2; exit 2; }
done
TOPIC=edgelog-realtime  # the real-time sink's default topic, made by test-servers
TOKEN=bench-token-0123456789abcdef

# EDGELOG_BIN: another build of edgelog to measure (an A/B against an older commit).
if [ -z "${EDGELOG_BIN:-}" ]; then
  cargo build --release --locked -p edgelog >&2
fi
BIN="${EDGELOG_BIN:-$CARGO_TARGET_DIR/release/edgelog}"

if [ "$NEED_S3" = 1 ]; then
  cargo build --locked -p edgelog-tests --bin test-servers >&2
  coproc SERVERS { "$CARGO_TARGET_DIR/debug/test-servers"; }
  while read -r line <&"${SERVERS[0]}"; do
    [ "$line" = ready ] && break
    eval "$line"
  done
  [ -n "${EDGELOG_TEST_S3_ENDPOINT:-}" ] || { echo "test servers did not start" >&2; exit 1; }
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Messages on the real-time topic: the sum of its partitions' high watermarks.
kafka_messages() {
  python3 - "$EDGELOG_TEST_KAFKA" "$TOPIC" <<'PY'
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "edgelog-bench", "enable.auto.commit": False})
parts = c.list_topics(sys.argv[2], timeout=10).topics[sys.argv[2]].partitions
print(sum(c.get_watermark_offsets(TopicPartition(sys.argv[2], p), timeout=10)[1] for p in parts))
c.close()
PY
}

# Stops collector $1 with SIGTERM (its shutdown flushes every sink, with DRAIN_TIMEOUT as
# its budget) and waits for it to exit; prints the seconds it took ("timeout" after them
# when the budget ran out: what was left stays in its write-ahead log, not in the outputs),
# and sets rss_kb to its peak RSS as last seen.
drain() {
  local pid=$1 t0 hwm
  t0=$(date +%s.%N)
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$hwm" ] && rss_kb=$hwm
    sleep 0.1
  done
  wait "$pid" || true
  drain_s=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
  drain_note=""
  grep -q "drain timed out" "$2" && drain_note=timeout
  return 0
}

if [ "$MARKDOWN" = 1 ]; then
  echo "$(date +%F), \`$COMMAND CONCURRENCY=$CONCURRENCY ${MAX_AGE:+MAX_AGE=$MAX_AGE }${MAX_OPEN_BYTES:+MAX_OPEN_BYTES=$MAX_OPEN_BYTES }${ROW_GROUP_BYTES:+ROW_GROUP_BYTES=$ROW_GROUP_BYTES }$([ "$RATE" = 0 ] || printf 'RATE=%s ' "$RATE")scripts/bench-load.sh $([ "$README" = 1 ] && echo --readme || echo --markdown)\`, $(nproc) cores:"
  echo
  echo "| scenario | format | distributions | records/s acknowledged | records/s sustained | MB/s | ack p50 / p99 | collector peak RSS | drain | Parquet B/record | Parquet files | records in Parquet | records on Kafka |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
fi

run=0
for row in "${RUNS[@]}"; do
  IFS=: read -r scenario format dists <<< "$row"
  run=$((run + 1))
    dir=$(mktemp -d /tmp/edgelog-bench.XXXXXX)
    p=$(port)
    prefix="bench-$format-$dists-$$-$run"
    std_extra=""
    [ -n "$MAX_AGE" ] && std_extra="max_age = \"$MAX_AGE\""
    [ -n "$MAX_OPEN_BYTES" ] && std_extra+=$'\n'"max_open_bytes = $MAX_OPEN_BYTES"
    [ -n "$ROW_GROUP_BYTES" ] && std_extra+=$'\n'"row_group_bytes = $ROW_GROUP_BYTES"
    case $scenario in
      blackhole) sinks=$'[sinks.standard]\nenabled = false\n[sinks.realtime]\nenabled = false\n' ;;
      parquet) sinks=$'[sampling.default]\nrealtime = 10\n'
        [ -n "$std_extra" ] && sinks+=$'[sinks.standard]\n'"$std_extra"$'\n' ;;
      s3) sinks="[sampling.default]
realtime = 10
[sinks.standard]
prefix = \"$prefix\"
$std_extra
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
shutdown_timeout = "${DRAIN_TIMEOUT}s"
reports = $REPORTS
EOF
    echo "bench: $scenario $format $dists distributions, $DURATION..." >&2
    RUST_LOG="${COLLECTOR_LOG:-warn}" "$BIN" collector --config "$dir/edgelog.toml" 2> "$dir/collector.log" &
    pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null || { cat "$dir/collector.log" >&2; exit 1; }
    kafka_before=0
    [ "$scenario" = s3 ] && kafka_before=$(kafka_messages)
    report=$("$BIN" edge --to "http://127.0.0.1:$p" --token "$TOKEN" --rate "$RATE" --pregenerate 48 \
      --duration "$DURATION" --concurrency "$CONCURRENCY" --batch 1000 --format "$format" \
      --compression none --distributions "$dists" --progress 0s --json)
    rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    drain "$pid" "$dir/collector.log"
    # rows, distinct request ids, files, bytes of the Parquet written; messages on Kafka.
    parquet="0 0 0 0"
    if [ "$scenario" = parquet ]; then
      parquet=$(python3 - "$dir" <<'PY'
import sys, duckdb, glob, os
files = glob.glob(sys.argv[1] + "/standard-logs/**/*.parquet", recursive=True)
rows, ids = duckdb.sql(f"SELECT count(*), count(DISTINCT x_edge_request_id) FROM read_parquet({files!r})").fetchone() if files else (0, 0)
print(rows, ids, len(files), sum(os.path.getsize(f) for f in files))
PY
)
    elif [ "$scenario" = s3 ]; then
      parquet=$(python3 - "$prefix" <<'PY'
import sys, os, glob, duckdb, duckdb_extension_httpfs
ext = glob.glob(os.path.dirname(duckdb_extension_httpfs.__file__) + "/extensions/*/httpfs.duckdb_extension")[0]
con = duckdb.connect()
con.sql(f"LOAD '{ext}'")
e = os.environ
con.sql(f"""CREATE SECRET (TYPE s3, KEY_ID '{e["EDGELOG_TEST_S3_KEY_ID"]}', SECRET '{e["EDGELOG_TEST_S3_SECRET"]}',
    REGION 'garage', ENDPOINT '127.0.0.1:{e["EDGELOG_TEST_S3_PORT"]}', URL_STYLE 'path', USE_SSL false)""")
glob_ = f"s3://{e['EDGELOG_TEST_S3_BUCKET']}/{sys.argv[1]}/**/*.parquet"
files, size = con.sql(f"SELECT count(*), coalesce(sum(size), 0) FROM read_blob('{glob_}')").fetchone()
rows, ids = con.sql(f"SELECT count(*), count(DISTINCT x_edge_request_id) FROM read_parquet('{glob_}')").fetchone() if files else (0, 0)
print(rows, ids, files, size)
PY
)
    fi
    kafka=-1
    [ "$scenario" = s3 ] && kafka=$(( $(kafka_messages) - kafka_before ))
    python3 - "$scenario" "$format" "$dists" "$report" "$rss_kb" "$drain_s" "${drain_note:-}" \
      "$MARKDOWN" "$kafka" $parquet <<'PY'
import json, sys
(scenario, fmt, dists, report, rss_kb, drain_s, drain_note, markdown, kafka,
 rows, ids, files, size) = sys.argv[1:]
r = json.loads(report)
rss, drain_s, kafka = int(rss_kb) / 1024, float(drain_s), int(kafka)
rows, ids, files, size = int(rows), int(ids), int(files), int(size)
found = r["acknowledged"] if scenario == "blackhole" else rows
sustained = found / (r["elapsed_s"] + drain_s)
timed_out = drain_note == "timeout"
drain = f"{drain_s:.0f} s" + (" (timed out)" if timed_out else "")
lat = r["latency_ms"]
bpr = f"{size / rows:.1f}" if rows else "-"
if markdown == "1":
    k = lambda x: f"{x / 1000:,.0f}k"
    cells = [scenario, fmt.upper() if fmt == "w3c" else "NDJSON", dists, k(r["records_per_s"]),
             k(sustained) + ("*" if scenario == "blackhole" else "") + (" (drain timed out)" if timed_out else ""),
             f"{r['mb_per_s']:.0f}", f"{lat['p50']:.0f} / {lat['p99']:.0f} ms", f"{rss:.0f} MiB",
             f"{drain_s:.0f} s", bpr, f"{files:,}" if scenario != "blackhole" else "-",
             f"{rows:,}" if scenario != "blackhole" else "-", f"{kafka:,}" if kafka >= 0 else "-"]
    print("| " + " | ".join(cells) + " |")
else:
    line = (f"{scenario:9} {fmt:6} {dists:>5} dist  {r['records_per_s']:>9,.0f} records/s acked  "
            f"{sustained:>9,.0f} sustained{'*' if scenario == 'blackhole' else ' '}  "
            f"{r['mb_per_s']:6.1f} MB/s  ack p50 {lat['p50']:6.1f} ms p99 {lat['p99']:6.1f} ms  "
            f"peak RSS {rss:6.1f} MiB  drain {drain}  acked {r['acknowledged']:,}  given up {r['given_up']}")
    if scenario != "blackhole":
        line += f"  parquet {bpr} B/record, {files:,} files, {rows:,} records ({ids:,} distinct ids)"
    if kafka >= 0:
        line += f"  kafka {kafka:,} records"
    print(line)
PY
    rm -rf "$dir"
done
if [ "$MARKDOWN" = 1 ] && [ "$HAS_BLACKHOLE" = 1 ]; then
  echo
  echo "\\* blackhole writes no output to count: its sustained rate counts the acknowledged records."
fi
