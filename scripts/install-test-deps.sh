#!/usr/bin/env bash
# Installs what edgelog's tests need and is not part of the Rust workspace. Idempotent:
# what is already there at the right version is left alone, so reruns are fast.
set -euo pipefail

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

# DuckDB (Python) reads the Parquet standard logs the way users do.
DUCKDB_VERSION=1.5.5
if python3 -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  log "duckdb $DUCKDB_VERSION already installed"
else
  log "installing duckdb $DUCKDB_VERSION and its httpfs extension"
  python3 -m pip install --quiet --disable-pip-version-check \
    "duckdb==$DUCKDB_VERSION" "duckdb-extension-httpfs==$DUCKDB_VERSION"
fi
python3 -c "import duckdb; print('install-test-deps: duckdb', duckdb.__version__, 'ok')" >&2
