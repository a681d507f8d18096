#!/usr/bin/env bash
# scripts/services.sh - make sure PostgreSQL, Redis and NATS (JetStream) are up for
# NebengJek, installing (apt) and starting them locally if needed, and create the
# database named in DATABASE_URL. Idempotent: services already answering are left alone.
# Honours DATABASE_URL, REDIS_URL, NATS_URL (defaults: 127.0.0.1 on the standard ports).
set -euo pipefail
# shellcheck source=scripts/lib.sh source-path=SCRIPTDIR/..
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- PostgreSQL -------------------------------------------------------------
pg_host=$(url_host "$DATABASE_URL"); pg_port=$(url_port "$DATABASE_URL" 5432)
pg_user=$(url_user "$DATABASE_URL" postgres); pg_db=$(url_path "$DATABASE_URL")
admin_url=$(sed -E 's#^([a-z]+://[^/?]*)(/[^?]*)?#\1/postgres#' <<<"$DATABASE_URL")

pg_up() {
  if have pg_isready; then pg_isready -q -h "$pg_host" -p "$pg_port"; else tcp_open "$pg_host" "$pg_port"; fi
}
pg_sql() { psql "$admin_url" -w -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"; }
# "VERSION NAME" of the local cluster configured for our port (empty if none).
pg_cluster() {
  have pg_lsclusters || return 0
  pg_lsclusters -h | awk -v p="$pg_port" '$3 == p { print $1, $2; exit }'
}

postgres() {
  local state=running cluster ver name hba
  if ! pg_up; then
    is_local "$pg_host" || die "postgres: nothing answers on $pg_host:$pg_port (not local, so not starting one)"
    ensure_pkg '/usr/lib/postgresql/*/bin/postgres' postgresql
    if ! pg_up; then
      cluster=$(pg_cluster)
      if [[ -z $cluster ]]; then
        ver=$(printf '%s\n' /usr/lib/postgresql/*/ | sort -V | tail -n 1 | xargs basename); name=main
        [[ -d /etc/postgresql/$ver/main ]] && name=port$pg_port
        as_root pg_createcluster -p "$pg_port" "$ver" "$name" >/dev/null
        cluster="$ver $name"
      fi
      # shellcheck disable=SC2086 # "VERSION NAME" is meant to split
      as_root pg_ctlcluster --skip-systemctl-redirect $cluster start || true
      wait_for "postgres on $pg_host:$pg_port" pg_up
      state=started
    fi
  fi
  ensure_pkg psql postgresql-client

  if ! pg_sql 'select 1' >/dev/null 2>&1; then
    # Typically password auth on a fresh cluster: trust local TCP for our user.
    cluster=$(pg_cluster)
    if ! is_local "$pg_host" || [[ -z $cluster ]]; then
      die "postgres: cannot connect as $pg_user to $pg_host:$pg_port without a password"
    fi
    hba=/etc/postgresql/${cluster/ //}/pg_hba.conf
    log "postgres: trusting $pg_user on 127.0.0.1 and ::1 in $hba"
    as_root sed -i "1i host all $pg_user 127.0.0.1/32 trust\nhost all $pg_user ::1/128 trust" "$hba"
    # shellcheck disable=SC2086
    as_root pg_ctlcluster --skip-systemctl-redirect $cluster reload
    sleep 1
    pg_sql 'select 1' >/dev/null || die "postgres: still cannot connect as $pg_user (does the role exist?)"
  fi

  local db_note=""
  if [[ -n $pg_db ]]; then
    db_note=", database $pg_db exists"
    if [[ -z $(pg_sql "select 1 from pg_database where datname = '${pg_db//\'/\'\'}'") ]]; then
      pg_sql "create database \"${pg_db//\"/\"\"}\""
      db_note=", database $pg_db created"
    fi
  fi
  log "postgres: $state on $pg_host:$pg_port$db_note"
}

# --- Redis ------------------------------------------------------------------
r_host=$(url_host "$REDIS_URL"); r_port=$(url_port "$REDIS_URL" 6379)

redis_up() {
  if have redis-cli; then [[ $(timeout 5 redis-cli -u "$REDIS_URL" ping 2>/dev/null) == PONG ]]
  else tcp_open "$r_host" "$r_port"; fi
}

redis() {
  local state=running logfile=/var/log/redis/ci.log
  if ! redis_up; then
    is_local "$r_host" || die "redis: nothing answers on $r_host:$r_port (not local, so not starting one)"
    ensure_pkg redis-server redis-server
    if ! redis_up; then
      [[ $r_port == 6379 ]] || logfile=/var/log/redis/ci-$r_port.log
      as_root mkdir -p /var/lib/redis /var/log/redis
      as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$r_port" --save "" \
        --appendonly no --dir /var/lib/redis --logfile "$logfile"
      wait_for "redis on $r_host:$r_port (log: $logfile)" redis_up
      state=started
    fi
  fi
  log "redis: $state on $r_host:$r_port"
}

# --- NATS (JetStream) -------------------------------------------------------
n_host=$(url_host "$NATS_URL"); n_port=$(url_port "$NATS_URL" 4222)

# A NATS server greets every new connection with an "INFO {...}" line.
# shellcheck disable=SC2016 # $0/$1/$l expand in the inner bash
nats_up() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && IFS= read -r l <&3 && [[ $l == INFO* ]]' \
    "$n_host" "$n_port" 2>/dev/null
}

nats() {
  local state=running store=/var/lib/nats-server logfile=/var/log/nats-server.log bin
  if ! nats_up; then
    is_local "$n_host" || die "nats: nothing answers on $n_host:$n_port (not local, so not starting one)"
    ensure_pkg nats-server nats-server
    if ! nats_up; then
      [[ $n_port == 4222 ]] || { store+=-$n_port; logfile=/var/log/nats-server-$n_port.log; }
      bin=$(command -v nats-server || echo /usr/sbin/nats-server)
      as_root mkdir -p "$store"
      as_root start-stop-daemon --start --oknodo --background --make-pidfile \
        --pidfile "/run/nats-server-$n_port.pid" --exec "$bin" -- \
        -a "$n_host" -p "$n_port" -js -sd "$store" -l "$logfile"
      wait_for "nats on $n_host:$n_port (log: $logfile)" nats_up
      state=started
    fi
  fi
  log "nats: $state on $n_host:$n_port (JetStream)"
}

postgres
redis
nats
