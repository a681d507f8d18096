#!/usr/bin/env bash
# scripts/schemathesis.sh - property-based API testing of the running server against
# its own /openapi.json (schemathesis, from PyPI, in a virtualenv this script makes).
#
#   scripts/schemathesis.sh            # SCHEMATHESIS_MAX_EXAMPLES (25) examples per operation
#
# Starts a development `nebengjek serve` (debug build) on a database, Redis prefix and
# NATS streams of its own on SCHEMATHESIS_HTTP_ADDR (127.0.0.1:8095), logs in an
# analyst and a passenger by OTP (development echoes the code), and runs every
# operation with the analyst's token, then every operation with the passenger's.
# Checks: no 5xx (not_a_server_error), status codes, content types and bodies as the
# document says (status_code_conformance, content_type_conformance,
# response_schema_conformance). Exits non-zero on any failure. Needs the services
# (scripts/services.sh) and Python 3 with venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
default_target_dir

version=4.32.5
examples=${SCHEMATHESIS_MAX_EXAMPLES:-25}
venv=${SCHEMATHESIS_VENV:-${CARGO_TARGET_DIR:-/var/cache/nebengjek/target}/schemathesis-venv}
if [[ ! -x $venv/bin/schemathesis ]] || ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  log "installing schemathesis $version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
fi

cargo build -q --locked -p nebengjek
bin=${CARGO_TARGET_DIR:-target}/debug/nebengjek

db=nebengjek_schemathesis
base=${DATABASE_URL%/*}
export DATABASE_URL=$base/$db
export HTTP_ADDR=${SCHEMATHESIS_HTTP_ADDR:-127.0.0.1:8095}
export APP_ENV=development AUTH_DEV_ECHO_OTP=true
export REDIS_KEY_PREFIX=schemathesis:
export EVENTS_STREAM=ST_EVENTS EVENTS_SUBJECT_PREFIX=stevents
export LOCATION_STREAM=ST_LOCATION COMMAND_SUBJECT_PREFIX=stcmd.
export RUST_LOG=${RUST_LOG:-warn}
psql "$base/postgres" -qXc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
redis-cli -u "$REDIS_URL" --scan --pattern 'schemathesis:*' | xargs -r -n 1000 redis-cli -u "$REDIS_URL" del >/dev/null

out=$(mktemp -d)
"$bin" serve >"$out/serve.log" 2>&1 &
serve=$!
cleanup() {
  kill "$serve" 2>/dev/null || true
  wait "$serve" 2>/dev/null || true
  psql "$base/postgres" -qXc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
url=http://$HTTP_ADDR
WAIT_SECS=60 wait_for "nebengjek serve" curl -sf "$url/readyz" -o /dev/null

# login MSISDN: a token by OTP (the development server echoes the code).
login() {
  local otp
  otp=$(curl -sf -H 'content-type: application/json' -d "{\"msisdn\":\"$1\"}" "$url/v1/auth/otp" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["dev_otp"])')
  curl -sf -H 'content-type: application/json' -d "{\"msisdn\":\"$1\",\"otp\":\"$otp\"}" "$url/v1/auth/token" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}
"$bin" user create-analyst --msisdn 081234560001 --fullname "Schema Thesis" >/dev/null
analyst=$(login 6281234560001)
passenger=$(login 6281234560002)

rc=0
for who in analyst passenger; do
  token=${!who}
  log "schemathesis as the $who: $examples examples per operation"
  "$venv/bin/schemathesis" run "$url/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$examples" --seed 13 --request-timeout 10 --no-color || rc=$?
done
if (( rc )); then
  log "server log tail:"; tail -40 "$out/serve.log"
fi
exit "$rc"
