# Shared by bench/run and bench/compare (sourced, not run). Expects $work (a temp dir) and
# the repository root as the current directory.

BENCH_SECRET=bench-secret

# Events still waiting for evaluation (open evaluate jobs), for sqlite3. Spelled as the
# `jobs_open` index's condition so that it reads that index, not every job ever queued.
OPEN_EVALUATIONS_SQL="SELECT COUNT(*) FROM jobs WHERE queue = 'evaluate' AND (status = 'pending' OR status = 'retrying' OR status = 'running')"

# wrk (and sqlite3, to read the evaluate backlog), installed when missing.
ensure_wrk() {
  local missing=()
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Signed bodies for wrk: one eventId per request, signatures precomputed (wrk's Lua has no
# HMAC). Exports what bench/intake.lua reads. $1: how many ids (400,000 unless given).
make_signed_bodies() {
  local count=${1:-400000}
  python3 - "$work" "$BENCH_SECRET" "$count" <<'PY'
import hashlib, hmac, json, sys
work, secret, count = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
body = json.load(open('tests/fixtures/samples/dbt-job-run-completed.json'))
body['eventId'] = 'EVENT_ID'
template = json.dumps(body)
open(f'{work}/template.json', 'w').write(template)
with open(f'{work}/sigs_{count}.txt', 'w') as out:
    for i in range(count):
        out.write(hmac.new(secret, template.replace('EVENT_ID', 'wev_bench_%09d' % i).encode(), hashlib.sha256).hexdigest() + '\n')
PY
  export FRESHET_BENCH_SIGS=$work/sigs_$count.txt FRESHET_BENCH_TEMPLATE=$work/template.json
}

# Runs wrk against $1 with $2 connections for $DURATION s; prints "req_per_s p50 p99".
run_wrk() {
  local threads=$(( $2 < 2 ? 1 : 2 ))
  FRESHET_BENCH_THREADS=$threads wrk -t"$threads" -c"$2" -d"${DURATION}s" --latency -s bench/intake.lua "$1" > "$work/wrk.out"
  if grep -q "Non-2xx" "$work/wrk.out"; then echo "non-2xx answers during the run:" >&2; cat "$work/wrk.out" >&2; exit 1; fi
  awk '/Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {print r, p50, p99}' "$work/wrk.out"
}

# Runs two wrk at once, $3 connections each, against $1 and $2 (two instances on one
# journal), on disjoint event ids; prints "total_req_per_s worst_p50 worst_p99".
run_wrk_pair() {
  local half=$3
  FRESHET_BENCH_THREADS=2 FRESHET_BENCH_STRIDE=4 FRESHET_BENCH_OFFSET=0 \
    wrk -t2 -c"$half" -d"${DURATION}s" --latency -s bench/intake.lua "$1" > "$work/wrk1.out" &
  local first=$!
  FRESHET_BENCH_THREADS=2 FRESHET_BENCH_STRIDE=4 FRESHET_BENCH_OFFSET=2 \
    wrk -t2 -c"$half" -d"${DURATION}s" --latency -s bench/intake.lua "$2" > "$work/wrk2.out"
  wait "$first"
  for out in "$work/wrk1.out" "$work/wrk2.out"; do
    if grep -q "Non-2xx" "$out"; then echo "non-2xx answers during the run:" >&2; cat "$out" >&2; exit 1; fi
  done
  awk '/Requests\/sec/ {r+=$2} /^ +50%/ {p50=($2>p50?$2:p50)} /^ +99%/ {p99[++n]=$2} END {print r, p50, p99[1] "/" p99[2]}' "$work/wrk1.out" "$work/wrk2.out"
}

# Starts freshet binary $1 in $work/$2 with no rules, on the journal that $3 sets (a
# `[journal]` line; a fresh SQLite file unless given), and waits until it listens. Sets
# freshet_pid and freshet_addr (call it directly, not in $(...), so that the caller can
# wait for the process after killing it).
start_freshet() {
  local dir=$work/$2 journal=${3:-'path = "journal.db"'}
  mkdir -p "$dir/rules"
  printf '[server]\nlisten = "127.0.0.1:0"\n[journal]\n%s\n[rules]\ndir = "rules"\n[dbt]\nwebhook_secrets = ["%s"]\n' "$journal" "$BENCH_SECRET" > "$dir/freshet.toml"
  RUST_LOG=warn,freshet=info "$1" serve --config "$dir/freshet.toml" > "$dir/stdout" 2> "$dir/log" &
  freshet_pid=$!
  freshet_addr=$(wait_for_addr "$dir/log")
}

# A new empty database on the benchmark's PostgreSQL server; prints its URL.
fresh_pg_database() {
  local name="freshet_bench_$RANDOM$RANDOM"
  psql "$FRESHET_TEST_DATABASE_URL" -qc "CREATE DATABASE $name" >/dev/null
  echo "${FRESHET_TEST_DATABASE_URL%/*}/$name"
}

# Prints the address a server logged ("addr=..."), waiting (up to a minute: a start on a
# large journal checks it first) for it to start.
wait_for_addr() {
  for _ in $(seq 1 1200); do
    addr=$(sed -n 's/.*addr=\([0-9.:]*\).*/\1/p' "$1" | head -1)
    [ -n "$addr" ] && { echo "$addr"; return; }
    sleep 0.05
  done
  echo "server did not start" >&2; cat "$1" >&2; exit 1
}

# Starts freshet binary $1 on a fresh journal in $work/$2 (no rules) and runs wrk with $3
# connections against it; prints run_wrk's line and, when sqlite3 is installed, how many
# events were still waiting for evaluation when wrk stopped: intake that outruns the
# evaluate stage is a backlog, not throughput.
bench_freshet() {
  local dir=$work/$2
  start_freshet "$1" "$2"
  local pid=$freshet_pid result status=0 backlog=unknown
  result=$(run_wrk "http://$freshet_addr" "$3") || status=$?
  if command -v sqlite3 >/dev/null 2>&1; then
    backlog=$(sqlite3 "$dir/journal.db" "$OPEN_EVALUATIONS_SQL")
  fi
  kill "$pid"; wait "$pid" || true
  [ "$status" -eq 0 ] || exit "$status"
  echo "$result $backlog"
}

# Intake on a grown journal: starts freshet binary $1 on a fresh journal in $work/$2, fills
# it through freshet itself with $3 events (wrk at 32 connections, in 30 s rounds, until
# the journal holds them, then until the evaluate stage has evaluated them all), and runs
# the usual wrk with $4 connections on ids not used yet. Needs sqlite3, and signatures for
# more than $3 ids (make_signed_bodies). Prints run_wrk's line, the backlog, and how many
# events the journal held before the measured run, and freshet's RSS (MiB) after it.
bench_grown() {
  local dir=$work/$2 target=$3
  start_freshet "$1" "$2"
  local pid=$freshet_pid addr=$freshet_addr held=0 next=0 open_jobs result status=0
  local query="sqlite3 $dir/journal.db"
  while [ "$held" -lt "$target" ]; do
    DURATION=${GROW_ROUND:-30} FRESHET_BENCH_OFFSET=$next run_wrk "http://$addr" 32 >/dev/null
    held=$($query "SELECT COUNT(*) FROM events")
    # Ids are zero-padded: the largest is the last one used.
    next=$(( 10#$($query "SELECT substr(MAX(id), 15) FROM events") + 1 ))
    echo "grown journal: $held events" >&2
  done
  for _ in $(seq 1 600); do
    open_jobs=$($query "$OPEN_EVALUATIONS_SQL")
    [ "$open_jobs" -eq 0 ] && break
    sleep 1
  done
  held=$($query "SELECT COUNT(*) FROM events")
  result=$(FRESHET_BENCH_OFFSET=$next run_wrk "http://$addr" "$4") || status=$?
  local backlog added requests
  backlog=$($query "$OPEN_EVALUATIONS_SQL")
  # Every measured request must have been a new event: ids past the signatures wrap.
  added=$(( $($query "SELECT COUNT(*) FROM events") - held ))
  requests=$(awk '/requests in/ {print $1}' "$work/wrk.out")
  if [ "$added" -lt "$requests" ]; then
    echo "only $added of $requests measured requests were new events: more signatures needed" >&2
    status=1
  fi
  local rss
  rss=$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" || true
  [ "$status" -eq 0 ] || exit "$status"
  # Starting again on the grown journal: with the file in the page cache, and (root only)
  # after the cache is dropped, as after a reboot, when the start's `quick_check` reads it.
  local warm cold=-
  warm=$(seconds_to_listen "$1" "$2")
  if [ -w /proc/sys/vm/drop_caches ]; then
    sync; echo 3 > /proc/sys/vm/drop_caches
    cold=$(seconds_to_listen "$1" "$2")
  fi
  echo "$result $backlog $held $rss $warm $cold"
}

# Starts a baseline server (the command and arguments after $1) with its log in
# $work/$1.log and waits until it listens. Sets server_pid and server_addr.
start_server() {
  local name=$1
  shift
  "$@" 2> "$work/$name.log" &
  server_pid=$!
  server_addr=$(wait_for_addr "$work/$name.log")
}

# Seconds from starting freshet binary $1 on the journal in $work/$2 until it listens.
seconds_to_listen() {
  local started
  started=$(date +%s.%N)
  start_freshet "$1" "$2"
  awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'
  kill "$freshet_pid"; wait "$freshet_pid" || true
}
