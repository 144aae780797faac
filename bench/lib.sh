# bench/lib.sh: what the bench scripts share. Source it after setting BENCH_NAME and PG_BIN;
# it checks the tools, makes $TMP (removed at exit, with every pid in PIDS stopped and the
# PostgreSQL it started stopped), and defines the helpers below.
set -euo pipefail

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

[ -x "$PG_BIN/postgres" ] || die "no PostgreSQL server binaries (set PG_BIN, or apt-get install postgresql)"
for tool in curl python3; do command -v $tool >/dev/null || die "$tool is required"; done

TMP=$(mktemp -d /tmp/walhook-bench.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.2
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [ -f "$TMP/data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ $rc -ne 0 ] && [ -f "$TMP/postgres.log" ]; then
    echo "--- last lines of the postgres log:" >&2; tail -n 20 "$TMP/postgres.log" >&2
  fi
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PostgreSQL refuses to run as root.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_us() { python3 -c 'import time; print(time.time_ns() // 1000)'; }
json() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# stop_pid PID: SIGTERM, up to 15 s, then SIGKILL.
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# start_postgres: a throwaway cluster in $TMP/data on a free port, database `bench`; exports
# PGHOST, PGPORT, PGUSER for the client tools and defines sql().
start_postgres() {
  say "starting a throwaway PostgreSQL in $TMP"
  PGPORT=$(free_port)
  if [ "$(id -u)" = 0 ]; then chown postgres "$TMP"; fi
  as_pg "$PG_BIN/initdb" -D "$TMP/data" -U postgres --auth=trust --no-sync -E UTF8 >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
  cat >>"$TMP/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$TMP'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
shared_buffers = 256MB
max_wal_size = 8GB
checkpoint_timeout = 30min
EOF
  as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 start >/dev/null \
    || die "PostgreSQL did not start (see the log above)"
  export PGHOST=127.0.0.1 PGPORT PGUSER=postgres
  "$PG_BIN/createdb" bench
  sql() { "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d bench -c "$1"; }
}
