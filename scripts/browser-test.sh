#!/usr/bin/env bash
# scripts/browser-test.sh - the console (/console) in a real browser: Debian's Chromium
# driven by Playwright (npm playwright-core, no browser download), against a
# development `nebengjek serve` on a database, Redis prefix and NATS streams of its own
# while `nebengjek load` simulates a small city. Then `replay-tools verify` records a
# run, and 10,000 more drivers are put in the geo index to time the map.
#
#   scripts/browser-test.sh            # screenshots and results.json in $OUT
#
# Installs chromium (and chromium-driver, node, npm) with apt-get when missing. OUT
# defaults to $CARGO_TARGET_DIR/browser-test; BROWSER_TEST_ADDR to 127.0.0.1:14790.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
default_target_dir
started=$SECONDS

ensure_pkg chromium chromium
ensure_pkg chromedriver chromium-driver
ensure_pkg node nodejs
ensure_pkg npm npm
(cd scripts/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

cargo build --locked -q -p nebengjek -p replay-tools
bin=${CARGO_TARGET_DIR:-target}/debug
out=${OUT:-${CARGO_TARGET_DIR:-target}/browser-test}
rm -rf "$out" && mkdir -p "$out"

# Everything of its own, so the run neither sees nor disturbs a test or a demo.
db=nebengjek_browser
base=${DATABASE_URL%/*}
export DATABASE_URL=$base/$db
export HTTP_ADDR=${BROWSER_TEST_ADDR:-127.0.0.1:14790}
export AUTH_DEV_ECHO_OTP=true APP_ENV=development
export REDIS_KEY_PREFIX=browser:
export EVENTS_STREAM=BROWSER_EVENTS EVENTS_SUBJECT_PREFIX=browserevents
export LOCATION_STREAM=BROWSER_LOCATION COMMAND_SUBJECT_PREFIX=browser.
export RUST_LOG=${RUST_LOG:-info,sqlx=warn}
psql "$base/postgres" -qXc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
redis-cli -u "$REDIS_URL" --scan --pattern 'browser:*' | xargs -r -n 1000 redis-cli -u "$REDIS_URL" del >/dev/null

"$bin/nebengjek" migrate >"$out/migrate.log" 2>&1
analyst=0812-7000-0001
passenger=0812-7000-0002
"$bin/nebengjek" user create-analyst --msisdn "$analyst" --fullname "Console test" >"$out/analyst.json"

"$bin/nebengjek" serve >"$out/serve.log" 2>&1 &
serve=$!
pids=("$serve")
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap cleanup EXIT
WAIT_SECS=60 wait_for "nebengjek serve" curl -sf "http://$HTTP_ADDR/readyz" -o /dev/null
log "browser test: server on http://$HTTP_ADDR/console"

CONSOLE_URL=http://$HTTP_ADDR ANALYST_MSISDN=$analyst PASSENGER_MSISDN=$passenger OUT_DIR=$out \
  BIG_DRIVERS=10000 node scripts/browser/console.test.mjs &
browser=$!
pids+=("$browser")

# The city: a few drivers and passengers for a short while (rides in flight finish).
"$bin/nebengjek" load --url "http://$HTTP_ADDR" --clients 30 --drivers 12 --passengers 10 --duration 15 \
  --report "$out/load.json" >"$out/load.log" 2>&1 || { tail -20 "$out/load.log"; die "the simulated city failed"; }
log "browser test: city done ($(grep -m1 -oE '[0-9]+ rides? completed' "$out/load.log" || echo 'see load.log'))"
# The projectors may still be a batch behind the last command: verify again if so.
for attempt in 1 2 3 4 5; do
  "$bin/replay-tools" verify >"$out/verify.log" 2>&1 && break
  (( attempt < 5 )) || { cat "$out/verify.log"; die "verify failed"; }
  sleep 2
done

# 10,000 more online, available drivers around Jakarta, straight into the geo index
# (score and position now, so the sweep keeps them for a minute): the live feed and
# the map carry them like real ones.
store_id=$(psql "$DATABASE_URL" -qtAXc "SELECT store_id FROM event_store")
keys="${REDIS_KEY_PREFIX}nebengjek:$store_id"
# shellcheck disable=SC2016 # Lua, not shell
redis-cli -u "$REDIS_URL" EVAL '
  local now, n, seed = tonumber(ARGV[1]), tonumber(ARGV[2]), 12345
  for i = 1, n do
    seed = (seed * 1103515245 + 12345) % 2147483648
    local lat = -6.45 + (seed % 40000) / 100000
    seed = (seed * 1103515245 + 12345) % 2147483648
    local lon = 106.65 + (seed % 45000) / 100000
    local id = string.format("00000000-0000-7000-8000-%012d", i)
    redis.call("ZADD", KEYS[1], now, id)
    redis.call("HSET", KEYS[2], id, string.format("%.5f,%.5f,%d", lat, lon, now))
    redis.call("GEOADD", KEYS[3], lon, lat, id)
  end
  return n' 3 "$keys:drivers:online" "$keys:positions" "$keys:drivers:available" \
  "$(date +%s%3N)" 10000 >/dev/null

rc=0
wait "$browser" || rc=$?
log "browser test: screenshots in $out ($(cd "$out" && ls ./*.png | tr '\n' ' ')), $((SECONDS - started)) s"
[[ -f $out/results.json ]] && cat "$out/results.json"
exit "$rc"
