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
# TLS, with a certificate for localhost and 127.0.0.1 from a CA made here and now (never
# a committed key): the tests connect with sslmode=require and verify-full against it.
# Plain connections stay allowed, so the other tests are unchanged.
freshet_tls=$freshet_pg_dir/data
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=freshet test CA" \
  -keyout "$freshet_pg_dir/ca.key" -out "$freshet_pg_dir/ca.crt" >/dev/null 2>&1 \
  || { echo "openssl could not make the test CA" >&2; return 1 2>/dev/null || exit 1; }
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$freshet_tls/server.key" -out "$freshet_pg_dir/server.csr" >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$freshet_pg_dir/san.ext"
openssl x509 -req -in "$freshet_pg_dir/server.csr" -CA "$freshet_pg_dir/ca.crt" -CAkey "$freshet_pg_dir/ca.key" \
  -CAcreateserial -days 2 -extfile "$freshet_pg_dir/san.ext" -out "$freshet_tls/server.crt" >/dev/null 2>&1 \
  || { echo "openssl could not sign the test server's certificate" >&2; return 1 2>/dev/null || exit 1; }
rm -f "$freshet_pg_dir/ca.key"
chmod 600 "$freshet_tls/server.key"
[ "$freshet_pg_user" = "$(id -un)" ] || chown "$freshet_pg_user" "$freshet_tls/server.key" "$freshet_tls/server.crt"
chmod a+rx "$freshet_pg_dir"; chmod a+r "$freshet_pg_dir/ca.crt"
# In the config file, so that a plain `pg_ctl start` (the outage test) starts it the same way.
cat >>"$freshet_pg_dir/data/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
port = $freshet_pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$freshet_pg_dir'
max_connections = 300
CONF
# One role logs in with a password (every other is trusted), for the test of a refused
# password: the first matching line of pg_hba.conf wins.
as_pg sed -i '1i host all freshet_pw 127.0.0.1/32 scram-sha-256' "$freshet_pg_dir/data/pg_hba.conf"
as_pg "$pg_bin/pg_ctl" -D "$freshet_pg_dir/data" -l "$freshet_pg_dir/server.log" -w -t 60 start >/dev/null \
  || { cat "$freshet_pg_dir/server.log" >&2; return 1 2>/dev/null || exit 1; }
freshet_pg_stop() {
  [ -f "$freshet_pg_dir/pgbouncer.pid" ] && kill "$(cat "$freshet_pg_dir/pgbouncer.pid")" 2>/dev/null
  as_pg "$pg_bin/pg_ctl" -D "$freshet_pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$freshet_pg_dir"
}
trap freshet_pg_stop EXIT
psql -h 127.0.0.1 -p "$freshet_pg_port" -U freshet -d postgres -qc "CREATE DATABASE freshet" >/dev/null
export FRESHET_TEST_DATABASE_URL="postgres://freshet@127.0.0.1:$freshet_pg_port/freshet"
psql -h 127.0.0.1 -p "$freshet_pg_port" -U freshet -d postgres -qc \
  "CREATE ROLE freshet_pw LOGIN PASSWORD 'freshet-pw-right'" >/dev/null
export FRESHET_TEST_PG_PASSWORD_URL="postgres://freshet_pw:freshet-pw-right@127.0.0.1:$freshet_pg_port/freshet"
# Where the tests find pg_ctl to stop and start this server (the outage test).
export FRESHET_TEST_PG_DATA="$freshet_pg_dir/data"
export FRESHET_TEST_PG_CTL="$pg_bin/pg_ctl"
export FRESHET_TEST_PG_USER="$freshet_pg_user"
export FRESHET_TEST_PG_LOG="$freshet_pg_dir/server.log"
# PgBouncer (Debian's package) in transaction mode in front of the server, for the tests
# of journal.pooler = "transaction": any database name is passed through. It refuses to
# run as root, like the server.
pgbouncer_bin=$(command -v pgbouncer 2>/dev/null || echo /usr/sbin/pgbouncer)
if [ -x "$pgbouncer_bin" ]; then
  freshet_bouncer_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  echo '"freshet" ""' >"$freshet_pg_dir/userlist.txt"
  cat >"$freshet_pg_dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$freshet_pg_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $freshet_bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $freshet_pg_dir/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 20
logfile = $freshet_pg_dir/pgbouncer.log
pidfile = $freshet_pg_dir/pgbouncer.pid
INI
  [ "$freshet_pg_user" = "$(id -un)" ] || chown "$freshet_pg_user" "$freshet_pg_dir/pgbouncer.ini" "$freshet_pg_dir/userlist.txt"
  if as_pg "$pgbouncer_bin" -d "$freshet_pg_dir/pgbouncer.ini" >"$freshet_pg_dir/pgbouncer.out" 2>&1; then
    for _ in $(seq 50); do [ -f "$freshet_pg_dir/pgbouncer.pid" ] && break; sleep 0.1; done
    export FRESHET_TEST_PGBOUNCER_URL="postgres://freshet@127.0.0.1:$freshet_bouncer_port/freshet"
    echo "PgBouncer (transaction mode) for the tests: $FRESHET_TEST_PGBOUNCER_URL"
  else
    cat "$freshet_pg_dir/pgbouncer.out" >&2
  fi
fi
# The CA that signed the server's certificate (for sslrootcert=).
export FRESHET_TEST_PG_CA="$freshet_pg_dir/ca.crt"
echo "PostgreSQL for the tests: $FRESHET_TEST_DATABASE_URL"
