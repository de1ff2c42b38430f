#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for tests (tests/common/postgres.rs and
# the SDK compatibility suites) and prints its URL (database `batchd`). The
# cluster lives as long as process WATCH_PID: a watchdog stops the server and
# removes its directory once that process is gone. Debian's server binaries
# (the `postgresql` package, which scripts/setup.sh installs) or
# $BATCHD_PG_BIN, run as `nobody` when called as root (initdb and postgres
# refuse root), trust auth on 127.0.0.1, no fsync, and room for the many
# pools of tests that run side by side (max_connections).
# Usage: scripts/pg-test-cluster.sh WATCH_PID
set -euo pipefail
watch_pid="${1:?usage: pg-test-cluster.sh WATCH_PID}"

bin="${BATCHD_PG_BIN:-}"
if [ -z "$bin" ]; then
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
fi
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ] || [ ! -x "$bin/postgres" ]; then
  echo "pg-test-cluster: PostgreSQL server binaries not found; install the postgresql package (scripts/setup.sh does) or set BATCHD_PG_BIN" >&2
  exit 1
fi

dir=$(mktemp -d /tmp/batchd-compat-pg-XXXXXX)
as=()
if [ "$(id -u)" = 0 ]; then
  chown nobody:nogroup "$dir"
  as=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
fi
"${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-locale --encoding=UTF8 --no-sync >"$dir/initdb.log" 2>&1 || {
  cat "$dir/initdb.log" >&2
  rm -rf "$dir"
  exit 1
}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# The watchdog, detached from this script (which exits once the server is up).
setsid bash -c '
  "${@:4}" "$1/postgres" -D "$2/data" -k "$2" -p "$3" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
    >"$2/postgres.log" 2>&1 &
  pg=$!
  while kill -0 "$0" 2>/dev/null && kill -0 "$pg" 2>/dev/null; do sleep 1; done
  kill -INT "$pg" 2>/dev/null
  wait "$pg"
  rm -rf "$2"
' "$watch_pid" "$bin" "$dir" "$port" "${as[@]}" </dev/null >/dev/null 2>&1 &

for _ in $(seq 1 100); do
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" 2>/dev/null; then
    psql_bin="$bin/psql"
    "$psql_bin" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE batchd" >/dev/null
    echo "postgres://postgres@127.0.0.1:$port/batchd"
    exit 0
  fi
  sleep 0.1
done
echo "pg-test-cluster: the server did not accept connections; log:" >&2
cat "$dir/postgres.log" >&2 || true
exit 1
