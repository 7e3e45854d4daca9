#!/usr/bin/env bash
# Start (installing if needed) a throwaway PostgreSQL for the storage tests and print its SQLAlchemy URL.
# Used by `make test` and CI: the PostgreSQL leg must run everywhere, never be skipped.
set -euo pipefail
PORT="${RAGLOOP_PG_PORT:-54329}"
DATA="${RAGLOOP_PG_DATA:-/tmp/ragloop-pg-$PORT}"
pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pgbin)" ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  else
    echo "PostgreSQL is not installed: sudo apt-get install postgresql" >&2; exit 1
  fi
fi
BIN="$(pgbin)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  mkdir -p "$DATA"
  [ "$(id -u)" = 0 ] && chown postgres "$DATA"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    as_pg "$BIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
  fi
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
    -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
fi
"$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='ragloop_test'" | grep -q 1 \
  || "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres ragloop_test
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/ragloop_test"
