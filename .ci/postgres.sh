# Sourced by .ci/run (and by developers: `source .ci/postgres.sh`): starts a throwaway
# PostgreSQL 15 on 127.0.0.1, on a free port, in a temp dir, and exports
# FRESHET_TEST_DATABASE_URL for the tests. It is stopped (and its dir removed) when the
# shell that sourced this exits. PostgreSQL refuses to run as root: as root, the server
# runs as the `postgres` user (created by Debian's package) or `nobody`.
pg_bin=$(dirname "$(command -v initdb 2>/dev/null || echo /usr/lib/postgresql/15/bin/initdb)")
if [ ! -x "$pg_bin/initdb" ]; then
  echo "PostgreSQL's initdb is missing: install postgresql-15" >&2
  return 1 2>/dev/null || exit 1
fi
freshet_pg_dir=$(mktemp -d)
freshet_pg_user=$(id -un)
as_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  if id postgres >/dev/null 2>&1; then freshet_pg_user=postgres; else freshet_pg_user=nobody; fi
  chown "$freshet_pg_user" "$freshet_pg_dir"
  as_pg() { runuser -u "$freshet_pg_user" -- "$@"; }
fi
freshet_pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$pg_bin/initdb" -D "$freshet_pg_dir/data" -A trust -U freshet --no-sync >"$freshet_pg_dir/initdb.log" 2>&1 \
  || { cat "$freshet_pg_dir/initdb.log" >&2; return 1 2>/dev/null || exit 1; }
# In the config file, so that a plain `pg_ctl start` (the outage test) starts it the same way.
cat >>"$freshet_pg_dir/data/postgresql.conf" <<CONF
port = $freshet_pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$freshet_pg_dir'
max_connections = 300
CONF
as_pg "$pg_bin/pg_ctl" -D "$freshet_pg_dir/data" -l "$freshet_pg_dir/server.log" -w -t 60 start >/dev/null \
  || { cat "$freshet_pg_dir/server.log" >&2; return 1 2>/dev/null || exit 1; }
freshet_pg_stop() {
  as_pg "$pg_bin/pg_ctl" -D "$freshet_pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$freshet_pg_dir"
}
trap freshet_pg_stop EXIT
psql -h 127.0.0.1 -p "$freshet_pg_port" -U freshet -d postgres -qc "CREATE DATABASE freshet" >/dev/null
export FRESHET_TEST_DATABASE_URL="postgres://freshet@127.0.0.1:$freshet_pg_port/freshet"
# Where the tests find pg_ctl to stop and start this server (the outage test).
export FRESHET_TEST_PG_DATA="$freshet_pg_dir/data"
export FRESHET_TEST_PG_CTL="$pg_bin/pg_ctl"
export FRESHET_TEST_PG_USER="$freshet_pg_user"
export FRESHET_TEST_PG_LOG="$freshet_pg_dir/server.log"
echo "PostgreSQL for the tests: $FRESHET_TEST_DATABASE_URL"
