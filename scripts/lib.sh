# scripts/lib.sh - shared helpers for the NebengJek dev/CI scripts (sourced, not run).
# shellcheck shell=bash

: "${DATABASE_URL:=postgres://postgres@127.0.0.1:5432/nebengjek}"
: "${REDIS_URL:=redis://127.0.0.1:6379}"
: "${NATS_URL:=nats://127.0.0.1:4222}"
# The scripts run on a developer's machine or in CI: development, said explicitly (an
# unset APP_ENV is production, which refuses the development secret).
: "${APP_ENV:=development}"
export DATABASE_URL REDIS_URL NATS_URL APP_ENV

log() { echo "$*"; }
die() { echo "error: $*" >&2; exit 1; }

# Run a command as root (sudo when we are not root).
as_root() { if (( EUID == 0 )); then "$@"; else sudo "$@"; fi; }

# url_host URL / url_port URL DEFAULT / url_user URL DEFAULT / url_path URL
# Parse scheme://[user[:pass]@]host[:port][/path][?query] (first URL of a list).
url_authority() { sed -E 's#^[a-z]+://##; s#[/?,].*$##; s#^.*@##' <<<"$1"; }
url_host() { local a; a=$(url_authority "$1"); echo "${a%%:*}"; }
url_port() { local a; a=$(url_authority "$1"); [[ $a == *:* ]] && echo "${a##*:}" || echo "$2"; }
url_user() { local u; u=$(sed -nE 's#^[a-z]+://([^:@/]+)(:[^@/]*)?@.*#\1#p' <<<"$1"); echo "${u:-$2}"; }
url_path() { sed -nE 's#^[a-z]+://[^/?]*/([^?]*).*#\1#p' <<<"$1"; }

is_local() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }

# tcp_open HOST PORT: does something accept connections there (2 s limit)?
# shellcheck disable=SC2016 # $0/$1 expand in the inner bash
tcp_open() { timeout 2 bash -c ': <>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

# wait_for NAME CMD...: retry CMD for up to $WAIT_SECS (30) seconds.
wait_for() {
  local name=$1 i; shift
  for (( i = 0; i < ${WAIT_SECS:-30}; i++ )); do
    "$@" && return 0
    sleep 1
  done
  die "$name did not come up within ${WAIT_SECS:-30}s"
}

# have BINARY|GLOB: BINARY on PATH or in /usr/sbin (not on a user's PATH), or GLOB matches.
have() {
  if [[ $1 == */* ]]; then compgen -G "$1" >/dev/null; else command -v "$1" >/dev/null || [[ -x /usr/sbin/$1 ]]; fi
}

# ensure_pkg BINARY|GLOB PACKAGE: apt-get install PACKAGE unless we `have` it already.
APT_UPDATED=
ensure_pkg() {
  have "$1" && return 0
  command -v apt-get >/dev/null || die "$1 is missing and apt-get is not available; install $2 yourself"
  if [[ -z $APT_UPDATED ]]; then
    log "running apt-get update"; as_root apt-get update -qq >/dev/null; APT_UPDATED=1
  fi
  apt-cache policy "$2" 2>/dev/null | grep -qE 'Candidate: [0-9]' \
    || die "package $2 is not available from apt on this system; install $1 another way"
  log "installing $2"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
  have "$1" || die "installed $2 but $1 is still not on PATH"
}

# Export CARGO_TARGET_DIR (default /var/cache/nebengjek/target) if we can create it.
default_target_dir() {
  if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
    mkdir -p /var/cache/nebengjek/target 2>/dev/null && export CARGO_TARGET_DIR=/var/cache/nebengjek/target
  else
    mkdir -p "$CARGO_TARGET_DIR"
  fi
  return 0
}
