#!/usr/bin/env bash
# scripts/test.sh - the one test command: make sure PostgreSQL/Redis/NATS are up
# (scripts/services.sh, silent unless it fails), then `cargo test --workspace --locked "$@"`.
# Tests create their own fresh databases on DATABASE_URL's server.
#   scripts/test.sh                      # everything
#   scripts/test.sh -p domain -- --nocapture
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh    # exports DATABASE_URL, REDIS_URL, NATS_URL defaults
default_target_dir       # CARGO_TARGET_DIR=/var/cache/nebengjek/target unless set

if ! out=$(scripts/services.sh 2>&1); then
  printf '%s\n' "$out" >&2
  die "scripts/services.sh failed; PostgreSQL, Redis and NATS are needed for the tests"
fi

# Each test makes its own database; drop the ones earlier runs left behind.
admin_url="${DATABASE_URL%/*}/postgres"
psql "$admin_url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'nebengjek\_test\_%'" |
  while read -r db; do psql "$admin_url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"; done

export RUST_BACKTRACE=1
exec cargo test --workspace --locked "$@"
