#!/usr/bin/env bash
# Compaction benchmark: a release collector writes about FILES small standard-log files
# (max_rows = ROWS each) for DISTRIBUTIONS distributions over the past HOURS hours, on
# local disk; then `edgelog compact` merges them. Prints files, rows and distinct ids
# before and after (DuckDB), compaction's wall time and peak RSS, and the time of a
# DuckDB query over one hour before and after.
#
#   scripts/bench-compact.sh
#   FILES=10000 ROWS=100 DISTRIBUTIONS=2 HOURS=20 scripts/bench-compact.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelog/target}"
FILES="${FILES:-10000}"
ROWS="${ROWS:-100}"
DISTRIBUTIONS="${DISTRIBUTIONS:-2}"
HOURS="${HOURS:-20}"
TOKEN=bench-token-0123456789abcdef

cargo build --release --locked -p edgelog >&2
BIN="$CARGO_TARGET_DIR/release/edgelog"
dir=$(mktemp -d /tmp/edgelog-bench-compact.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '%s\n' "data_dir = \"$dir\"" "[collector]" "listen = \"127.0.0.1:$port\"" \
  "tokens = [\"$TOKEN\"]" "shutdown_timeout = \"300s\"" "[sinks.standard]" \
  "max_rows = $ROWS" "max_age = \"1h\"" "[sinks.realtime]" "enabled = false" > "$dir/edgelog.toml"
"$BIN" collector --config "$dir/edgelog.toml" > "$dir/collector.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
"$BIN" edge --to "http://127.0.0.1:$port" --token "$TOKEN" --rate 0 --progress 0s \
  --total $((FILES * ROWS)) --distributions "$DISTRIBUTIONS" --backfill-hours "$HOURS" \
  --pregenerate 48 > /dev/null
kill -TERM "$pid"
wait "$pid" || true

report() {
  python3 - "$dir" "$1" <<'PY'
import duckdb, glob, sys, time
d, what = sys.argv[1], sys.argv[2]
files = glob.glob(f"{d}/standard-logs/**/*.parquet", recursive=True)
rows, ids = duckdb.sql(f"SELECT count(*), count(DISTINCT x_edge_request_id) FROM read_parquet('{d}/standard-logs/**/*.parquet')").fetchone()
hours = sorted({f.rsplit('/', 1)[0] for f in files})
hour = hours[len(hours) // 2]
times = []
for _ in range(3):
    t = time.perf_counter()
    duckdb.sql(f"SELECT count(*), sum(sc_bytes), count(DISTINCT c_ip) FROM read_parquet('{hour}/*.parquet')").fetchall()
    times.append(time.perf_counter() - t)
n = len(glob.glob(f"{hour}/*.parquet"))
print(f"{what}: {len(files)} files, {rows} rows, {ids} distinct ids; a query over one hour ({n} files): {min(times):.3f} s")
PY
}
report before
/usr/bin/time -f "compaction: %e s wall, %M KiB peak RSS" "$BIN" compact --data-dir "$dir" --min-age 0s \
  > "$dir/compact.json" 2> "$dir/compact.log" || { cat "$dir/compact.log" >&2; exit 1; }
grep "^compaction:" "$dir/compact.log"
cat "$dir/compact.json"
report after
rm -rf "$dir"
