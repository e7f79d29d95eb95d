#!/usr/bin/env bash
# Makes sure RabbitMQ and PostgreSQL answer where Bouncer's tests and demo look for them:
# uses what is running; otherwise starts the installed Debian server; otherwise, as root, installs
# it from Debian packages and starts it; otherwise says exactly what is missing.
# The console's browser tests need Debian's Chromium and ChromeDriver (/usr/bin/chromium,
# /usr/bin/chromedriver); as root they are installed when missing. `--no-browser` skips them
# (the demo needs no browser).
# The pooler tests go through PgBouncer in transaction mode (Debian's `pgbouncer`) in front of
# that PostgreSQL; as root it is installed when missing and started with a configuration of ours
# (every database, user postgres, pool_mode = transaction). `--no-pooler` skips it.
#
# Addresses come from BOUNCER_TEST_AMQP / BOUNCER_TEST_PG / BOUNCER_TEST_PGBOUNCER (URLs) and
# default to amqp://guest:guest@127.0.0.1:5672/%2f, postgres://postgres@127.0.0.1:5432/postgres
# and postgres://postgres@127.0.0.1:6432/postgres. A server on another host is only checked,
# never started.
set -euo pipefail

AMQP_URL=${BOUNCER_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
PG_URL=${BOUNCER_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
PGB_URL=${BOUNCER_TEST_PGBOUNCER:-postgres://postgres@127.0.0.1:6432/postgres}

# host and port of a URL: scheme://[user[:pass]@]host[:port]/...
host_of() { local r=${1#*://}; r=${r%%/*}; r=${r##*@}; echo "${r%%:*}"; }
port_of() { local r=${1#*://}; r=${r%%/*}; r=${r##*@}; [[ $r == *:* ]] && echo "${r##*:}" || echo "$2"; }

AMQP_HOST=$(host_of "$AMQP_URL"); AMQP_PORT=$(port_of "$AMQP_URL" 5672)
PG_HOST=$(host_of "$PG_URL"); PG_PORT=$(port_of "$PG_URL" 5432)
PGB_HOST=$(host_of "$PGB_URL"); PGB_PORT=$(port_of "$PGB_URL" 6432)

say() { echo "services: $*"; }
reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_for() {
  local i
  for i in $(seq 1 "${3:-60}"); do reachable "$1" "$2" && return 0; sleep 1; done
  return 1
}
is_local() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }
is_root() { [[ $(id -u) == 0 ]]; }
apt_updated=
apt_install() {
  if [[ -z $apt_updated ]]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_postgres() {
  if reachable "$PG_HOST" "$PG_PORT"; then say "PostgreSQL answers at $PG_HOST:$PG_PORT"; return 0; fi
  if ! is_local "$PG_HOST"; then
    say "PostgreSQL at $PG_HOST:$PG_PORT does not answer; start it there (or unset BOUNCER_TEST_PG)"; return 1
  fi
  local installed_now=
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ -z $(ls /etc/postgresql 2>/dev/null) ]]; then
    if ! is_root; then
      say "PostgreSQL is not running and not installed. As root run: apt-get install postgresql"
      say "then run this script again (or point BOUNCER_TEST_PG at a server where user postgres may connect)."
      return 1
    fi
    say "installing PostgreSQL from Debian packages"
    apt_install postgresql
    installed_now=1
  fi
  local version; version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [[ -n $installed_now ]]; then
    # A server we just installed for local use: let user postgres in over TCP from this machine
    # without a password, as the tests and demo expect. An existing server is left as it is.
    local hba=/etc/postgresql/$version/main/pg_hba.conf
    sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
  fi
  say "starting PostgreSQL $version"
  if is_root; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  else
    pg_ctlcluster "$version" main start || true
  fi
  if wait_for "$PG_HOST" "$PG_PORT" 30; then say "PostgreSQL is up"; else
    say "PostgreSQL did not start; see /var/log/postgresql/"; return 1
  fi
}

ensure_rabbitmq() {
  if reachable "$AMQP_HOST" "$AMQP_PORT"; then say "RabbitMQ answers at $AMQP_HOST:$AMQP_PORT"; return 0; fi
  if ! is_local "$AMQP_HOST"; then
    say "RabbitMQ at $AMQP_HOST:$AMQP_PORT does not answer; start it there (or unset BOUNCER_TEST_AMQP)"; return 1
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if ! is_root; then
      say "RabbitMQ is not running and not installed. As root run: apt-get install rabbitmq-server"
      say "then run this script again (or point BOUNCER_TEST_AMQP at a broker with a guest/guest user)."
      return 1
    fi
    say "installing RabbitMQ from Debian packages"
    apt_install rabbitmq-server
  fi
  if ! reachable "$AMQP_HOST" "$AMQP_PORT"; then
    say "starting RabbitMQ"
    if is_root; then rabbitmq-server -detached >/dev/null 2>&1 || true; else
      say "RabbitMQ is installed but not running; as root run: rabbitmq-server -detached"; return 1
    fi
  fi
  if wait_for "$AMQP_HOST" "$AMQP_PORT" 90; then say "RabbitMQ is up"; else
    say "RabbitMQ did not start; see /var/log/rabbitmq/"; return 1
  fi
}

ensure_chromium() {
  local chromium=${BOUNCER_TEST_CHROMIUM:-/usr/bin/chromium}
  local driver=${BOUNCER_TEST_CHROMEDRIVER:-/usr/bin/chromedriver}
  if [[ -x $chromium && -x $driver ]]; then say "Chromium and ChromeDriver found ($chromium, $driver)"; return 0; fi
  if ! is_root; then
    say "Chromium or ChromeDriver is missing ($chromium, $driver). As root run: apt-get install chromium chromium-driver"
    say "(or point BOUNCER_TEST_CHROMIUM / BOUNCER_TEST_CHROMEDRIVER at them)."
    return 1
  fi
  say "installing Chromium and ChromeDriver from Debian packages"
  apt_install chromium chromium-driver
  if [[ -x $chromium && -x $driver ]]; then say "Chromium and ChromeDriver installed"; else
    say "Chromium or ChromeDriver still missing after apt-get install chromium chromium-driver"; return 1
  fi
}

ensure_pgbouncer() {
  if reachable "$PGB_HOST" "$PGB_PORT"; then say "PgBouncer answers at $PGB_HOST:$PGB_PORT"; return 0; fi
  if ! is_local "$PGB_HOST"; then
    say "PgBouncer at $PGB_HOST:$PGB_PORT does not answer; start it there (or unset BOUNCER_TEST_PGBOUNCER)"; return 1
  fi
  local bin=/usr/sbin/pgbouncer
  if [[ ! -x $bin ]]; then
    if ! is_root; then
      say "PgBouncer is not running and not installed. As root run: apt-get install pgbouncer"
      say "then run this script again (or point BOUNCER_TEST_PGBOUNCER at a PgBouncer in transaction mode)."
      return 1
    fi
    say "installing PgBouncer from Debian packages"
    apt_install pgbouncer
  fi
  # A configuration of our own (the package's /etc/pgbouncer is left alone): transaction pooling
  # in front of the test server, any database, user postgres let in as that server lets it in.
  # `extra_float_digits` and other unknown startup parameters stay refused, as PgBouncer's default
  # is: Bouncer must not send them in pooler mode, and the tests would notice if it did.
  local dir=${BOUNCER_PGBOUNCER_DIR:-/tmp/bouncer-pgbouncer}
  mkdir -p "$dir"
  cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=$PG_HOST port=$PG_PORT
[pgbouncer]
listen_addr = $PGB_HOST
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 4000
default_pool_size = 40
reserve_pool_size = 10
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
admin_users = postgres
INI
  echo '"postgres" ""' >"$dir/userlist.txt"
  say "starting PgBouncer (transaction pooling) at $PGB_HOST:$PGB_PORT"
  if is_root; then
    # PgBouncer refuses to run as root.
    chown -R postgres "$dir"
    $bin -d -u postgres "$dir/pgbouncer.ini" >/dev/null 2>&1 || true
  else
    $bin -d "$dir/pgbouncer.ini" >/dev/null 2>&1 || true
  fi
  if wait_for "$PGB_HOST" "$PGB_PORT" 15; then say "PgBouncer is up"; else
    say "PgBouncer did not start; see $dir/pgbouncer.log"; return 1
  fi
}

browser=1
pooler=1
for arg in "$@"; do
  case $arg in
    --no-browser) browser= ;;
    --no-pooler) pooler= ;;
    *) say "unknown argument: $arg (known: --no-browser, --no-pooler)"; exit 2 ;;
  esac
done

status=0
ensure_postgres || status=1
ensure_rabbitmq || status=1
if [[ -n $pooler && $status == 0 ]]; then ensure_pgbouncer || status=1; fi
if [[ -n $browser ]]; then ensure_chromium || status=1; fi
exit $status
