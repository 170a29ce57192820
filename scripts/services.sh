#!/usr/bin/env bash
# Makes sure Redis (and, for the PostgreSQL half of the test suite, PostgreSQL) answer on
# loopback. Reuses servers that are already running; otherwise starts them, installing the
# Debian packages first if they are missing. Meant to be sourced or run as root on Debian.
set -euo pipefail

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
redis_hostport="${REDIS_URL#redis://}"; redis_hostport="${redis_hostport%%/*}"; redis_hostport="${redis_hostport##*@}"
redis_host="${redis_hostport%%:*}"; redis_port="${redis_hostport##*:}"
[ "$redis_port" = "$redis_host" ] && redis_port=6379

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "services: $* not installed and apt-get is not available; install it by hand" >&2
    return 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

redis_up() {
  (exec 3<>"/dev/tcp/$redis_host/$redis_port" && printf 'PING\r\n' >&3 && IFS= read -r -t 2 reply <&3 && [[ "$reply" == +PONG* ]]) 2>/dev/null
}

wait_for() { # seconds, command...
  local n=$(( $1 * 10 )); shift
  for _ in $(seq "$n"); do "$@" && return 0; sleep 0.1; done
  return 1
}

# The chaos test starts (and restarts) a redis-server of its own, so the binary is needed even
# when a Redis is already running.
command -v redis-server >/dev/null 2>&1 || apt_install redis-server

if redis_up; then
  echo "services: using Redis at $redis_host:$redis_port"
else
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  echo "services: starting redis-server on $redis_host:$redis_port"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir /tmp --logfile /tmp/provisioner-redis.log
  wait_for 10 redis_up || { echo "services: Redis did not start" >&2; exit 1; }
fi

if [ "${WITH_POSTGRES:-1}" = "1" ]; then
  pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
  if pg_up; then
    echo "services: using PostgreSQL at 127.0.0.1:5432"
  else
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql; fi
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    if wait_for 30 pg_up; then
      su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null 2>&1 || true
      su postgres -c "createdb test" >/dev/null 2>&1 || true
    else
      echo "services: PostgreSQL unavailable; PostgreSQL tests will fail" >&2
    fi
  fi
  # The TLS tests (tests/it/tls.rs) need ssl=on, Debian's default (snakeoil certificate).
  if command -v psql >/dev/null 2>&1 &&
    [ "$(PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d test -Atc 'show ssl' 2>/dev/null)" = "off" ]; then
    echo "services: PostgreSQL runs with ssl=off; the PostgreSQL TLS tests will fail" >&2
  fi
fi
