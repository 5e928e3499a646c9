#!/usr/bin/env bash
# Installs what edgelog's tests need and is not part of the Rust workspace: a real S3 server
# (garage), a real Kafka-protocol broker (tansu), DuckDB and a Kafka client for Python.
# Idempotent: what is already there at the right version is left alone, so reruns are fast.
# The first run on an empty machine builds garage and tansu from crates.io (about an hour
# on 2 cores); their build directory is kept in ~/.cache/edgelog for later upgrades.
set -euo pipefail

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

GARAGE_VERSION=2.5.0
TANSU_VERSION=0.6.0
DUCKDB_VERSION=1.5.5
CONFLUENT_KAFKA_VERSION=2.16.1
PROMETHEUS_CLIENT_VERSION=0.26.0

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
INSTALL_TARGET="${EDGELOG_INSTALL_TARGET:-$HOME/.cache/edgelog/install-target}"

# cargo_install NAME VERSION VERSION-PATTERN [cargo install flags...]
cargo_install() {
  local name=$1 version=$2 pattern=$3
  shift 3
  if command -v "$name" >/dev/null && "$name" --version 2>/dev/null | grep -q -- "$pattern"; then
    log "$name $version already installed"
    return
  fi
  log "building $name $version from crates.io (long on a fresh machine)"
  cargo install "$name" --version "=$version" --locked --target-dir "$INSTALL_TARGET" "$@"
}

# S3: garage, single node on loopback (the tests start their own).
cargo_install garage "$GARAGE_VERSION" "cargo:$GARAGE_VERSION"
# Kafka: tansu (no topic auto-creation; the tests create theirs).
cargo_install tansu "$TANSU_VERSION" "tansu $TANSU_VERSION" --features dynostore,libsql

# Debian packages (apt-get install's arguments after the first two), installed only when
# the shell test `have` fails.
apt_install() {
  local what=$1 have=$2
  shift 2
  if eval "$have" >/dev/null 2>&1; then
    log "$what already installed"
    return
  fi
  log "installing Debian's $what"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# Browser: the dashboard is checked in Debian's headless Chromium.
apt_install chromium "command -v chromium" chromium
# Web server: `edgelog ship` is tested against Debian's nginx (the tests start their own on
# loopback; the package's service is not needed).
apt_install nginx-light "command -v nginx || [ -x /usr/sbin/nginx ]" nginx-light
# Monitoring: Debian's Prometheus scrapes a collector and a dashboard, and its
# Alertmanager gets their alarms (the tests start their own on loopback).
apt_install "prometheus and prometheus-alertmanager" \
  "command -v prometheus && command -v prometheus-alertmanager" \
  --no-install-recommends prometheus prometheus-alertmanager

# Python: DuckDB reads the Parquet standard logs the way users do, from disk and over S3;
# confluent-kafka is the independent consumer of the real-time topic; prometheus-client's
# parser reads the dashboard's /metrics.
if python3 -c "
import sys, duckdb, duckdb_extension_httpfs, confluent_kafka
from importlib.metadata import version
from prometheus_client.parser import text_string_to_metric_families
ok = (duckdb.__version__ == '$DUCKDB_VERSION'
      and confluent_kafka.__version__ == '$CONFLUENT_KAFKA_VERSION'
      and version('prometheus-client') == '$PROMETHEUS_CLIENT_VERSION')
sys.exit(0 if ok else 1)" 2>/dev/null; then
  log "duckdb $DUCKDB_VERSION, httpfs, confluent-kafka $CONFLUENT_KAFKA_VERSION and prometheus-client $PROMETHEUS_CLIENT_VERSION already installed"
else
  log "installing duckdb $DUCKDB_VERSION with httpfs, confluent-kafka $CONFLUENT_KAFKA_VERSION and prometheus-client $PROMETHEUS_CLIENT_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check \
    "duckdb==$DUCKDB_VERSION" "duckdb-extension-httpfs==$DUCKDB_VERSION" \
    "confluent-kafka==$CONFLUENT_KAFKA_VERSION" \
    "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
fi
python3 -c "
import duckdb, confluent_kafka
from importlib.metadata import version
from prometheus_client.parser import text_string_to_metric_families
print('install-test-deps: duckdb', duckdb.__version__, 'confluent-kafka', confluent_kafka.__version__, 'prometheus-client', version('prometheus-client'), 'ok')" >&2
garage --version | head -1 >&2
tansu --version >&2
chromium --version >&2
"$(command -v nginx || echo /usr/sbin/nginx)" -v
prometheus --version 2>&1 | head -1 >&2
prometheus-alertmanager --version 2>&1 | head -1 >&2
