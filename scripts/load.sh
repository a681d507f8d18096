#!/usr/bin/env bash
# scripts/load.sh - one measured load run: a release `nebengjek serve` on a database,
# Redis prefix and NATS streams of its own, then `nebengjek load` against it.
#
#   flock /tmp/nebengjek-measure.lock scripts/load.sh CLIENTS DURATION [OUT_DIR]
#
# CLIENTS sockets are opened (about 10% active drivers and passengers, the rest idle),
# then DURATION seconds are measured once every client is connected. OUT_DIR
# (default /tmp/nebengjek-load-<CLIENTS>) receives report.json, report.md, serve.log,
# load.log and cpu.txt (CPU seconds per process name over the run).
# Needs the release binary (cargo build --release -p nebengjek) and the services
# (scripts/services.sh). Extra `nebengjek load` flags may follow in LOAD_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
source scripts/lib.sh

clients=${1:?usage: scripts/load.sh CLIENTS DURATION [OUT_DIR]}
duration=${2:?usage: scripts/load.sh CLIENTS DURATION [OUT_DIR]}
out=${3:-/tmp/nebengjek-load-$clients}
mkdir -p "$out"
bin=${NEBENGJEK_BIN:-${CARGO_TARGET_DIR:-/var/cache/nebengjek/target}/release/nebengjek}
[[ -x $bin ]] || die "no release binary at $bin: cargo build --release -p nebengjek"

# Everything of its own, so the run neither sees nor disturbs a test or a demo.
db=${LOAD_DATABASE:-nebengjek_load}
base=${DATABASE_URL%/*}
export DATABASE_URL=$base/$db
export HTTP_ADDR=${LOAD_HTTP_ADDR:-127.0.0.1:8090}
export AUTH_DEV_ECHO_OTP=true
export REDIS_KEY_PREFIX=load:
export EVENTS_STREAM=LOAD_EVENTS EVENTS_SUBJECT_PREFIX=loadevents
export LOCATION_STREAM=LOAD_LOCATION COMMAND_SUBJECT_PREFIX=load.
export RUST_LOG=${RUST_LOG:-info,sqlx=warn}

# File descriptors: a socket each, on both sides (the hard limit may be lower).
ulimit -n "$(ulimit -Hn)"
psql "$base/postgres" -qXc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
redis-cli --scan --pattern 'load:*' | xargs -r -n 1000 redis-cli del >/dev/null

cpu() { ps -eo comm=,times= | awk '{s[$1]+=$2} END {for (c in s) print c, s[c]}' | sort; }
cpu >"$out/cpu.before"

"$bin" serve >"$out/serve.log" 2>&1 &
serve=$!
trap 'kill "$serve" 2>/dev/null; wait "$serve" 2>/dev/null || true' EXIT
WAIT_SECS=60 wait_for "nebengjek serve" curl -sf "http://$HTTP_ADDR/readyz" -o /dev/null

vmstat -n 5 >"$out/vmstat.txt" &
vmstat=$!
# The busiest processes every 2 s: a build or a query of someone else's on the same
# cores shows here (the lock only keeps other measurements out).
while sleep 2; do echo "$(date +%T) $(ps -eo comm=,pcpu= --sort=-pcpu | head -6 | tr -s ' ' | tr '\n' ';')"; done >"$out/top.txt" &
top=$!
trap 'kill "$serve" "$vmstat" "$top" 2>/dev/null; wait "$serve" 2>/dev/null || true' EXIT
log "load: $clients clients, $duration s measured, ulimit -n $(ulimit -n), $(nproc) cores"
# shellcheck disable=SC2086 # LOAD_ARGS is a list of flags
/usr/bin/time -f "nebengjek-load %U %S" -o "$out/load.time" \
  "$bin" load --url "http://$HTTP_ADDR" --clients "$clients" --duration "$duration" \
  --report "$out/report.json" ${LOAD_ARGS:-} 2>&1 | tr '\r' '\n' | tee "$out/load.log" | grep -v '^ ' || true

curl -s "http://$HTTP_ADDR/metrics" >"$out/metrics.txt" || true
cpu >"$out/cpu.after"
join -a 2 "$out/cpu.before" "$out/cpu.after" \
  | awk 'NF == 3 {d = $3 - $2} NF == 2 {d = $2} d > 0.5 {printf "%-20s %8.1f s\n", $1, d}' \
  | sed 's/^nebengjek /nebengjek-serve /' >"$out/cpu.txt"
awk '{printf "%-20s %8.1f s\n", $1, $2 + $3}' "$out/load.time" >>"$out/cpu.txt"
sort -k2 -nr -o "$out/cpu.txt" "$out/cpu.txt"
log "CPU seconds during the run:"; cat "$out/cpu.txt"
others=$(grep -oE '(rustc|cargo|cc|ld|bench|psql|ld.lld|clippy-driver)[^;]*' "$out/top.txt" | sort | uniq -c | sort -rn | head -5 || true)
[[ -z $others ]] || log "WARNING: other work ran on these cores during the run (samples): $others"
log "serve log: $(grep -c ' WARN ' "$out/serve.log" || true) warnings, $(grep -c ' ERROR ' "$out/serve.log" || true) errors"
