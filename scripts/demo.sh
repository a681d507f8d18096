#!/usr/bin/env bash
# scripts/demo.sh - README's first command: start PostgreSQL, NATS and Redis if needed
# (scripts/services.sh), then build and run `nebengjek demo`, which starts the system in
# one process, simulates a city of drivers and passengers over WebSocket and verifies.
# It lasts about --duration (30 s) plus the ramp and the last rides: no ride starts in
# the last third, searches still open at the end are cancelled.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
default_target_dir
scripts/services.sh
exec cargo run --release --locked -q -p nebengjek -- demo "$@"
