#!/usr/bin/env bash
# Private MariaDB and PostgreSQL instances on loopback for the tests.
# Installs the servers with apt-get when they are missing, keeps their data
# under ${WAO_DB_DIR:-/tmp/wao-databases} and listens on fixed non-default
# ports so it never touches a system instance.
# Both also accept TLS with a certificate from a private CA ($WAO_DB_SSL_CA).
# Usage: hack/databases.sh up|down|env|status
set -euo pipefail

DIR="${WAO_DB_DIR:-/tmp/wao-databases}"
MYSQL_PORT="${WAO_MYSQL_PORT:-13306}"
PG_PORT="${WAO_POSTGRES_PORT:-15432}"
DB_USER="${WAO_DB_USER:-wao}"
DB_PASSWORD="${WAO_DB_PASSWORD:-wao-Passw0rd}"
WAIT_SECONDS="${WAO_DB_WAIT_SECONDS:-60}"

MY_DIR="$DIR/mariadb"
PG_DIR="$DIR/postgres"
TLS_DIR="$DIR/tls"

log() { echo "[databases] $*" >&2; }
die() { log "$*"; exit 1; }

as_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  as_root || die "$* missing and not root: install it first"
  log "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "$@" >&2
}

mariadb_bin() { command -v mariadbd || command -v mysqld || ls /usr/sbin/mariadbd /usr/sbin/mysqld 2>/dev/null | head -1; }
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

ensure_packages() {
  [ -n "$(mariadb_bin)" ] && command -v mariadb-admin >/dev/null || apt_install mariadb-server mariadb-client
  [ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/postgres" ] || apt_install postgresql
  command -v openssl >/dev/null || apt_install openssl
}

# A private CA and a server certificate, so both servers also accept TLS and
# clients can verify them against $TLS_DIR/ca.pem.
tls_up() {
  [ -f "$TLS_DIR/server.pem" ] && return
  log "creating a test CA and server certificate in $TLS_DIR"
  mkdir -p "$TLS_DIR"
  chmod 755 "$TLS_DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=wao test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$TLS_DIR/server.ext"
  openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" -CAcreateserial \
    -days 3650 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/server.pem" 2>/dev/null
  chmod 644 "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem"
  # Each server reads its own copy of the key, owned by its service user.
  for u in mysql postgres; do
    cp "$TLS_DIR/server.key" "$TLS_DIR/server-$u.key"
    chmod 600 "$TLS_DIR/server-$u.key"
    as_root && chown "$(service_user "$u")" "$TLS_DIR/server-$u.key"
  done
  rm -f "$TLS_DIR/server.csr" "$TLS_DIR/server.ext"
}

# Runs a command as the unprivileged service user when we are root (both
# servers refuse to run as root).
as_user() {
  local user="$1"; shift
  if as_root; then runuser -u "$user" -- "$@"; else "$@"; fi
}

service_user() {
  if ! as_root; then id -un; return; fi
  if id "$1" >/dev/null 2>&1; then echo "$1"; else echo nobody; fi
}

wait_for() {
  local what="$1"; shift
  local deadline=$((SECONDS + WAIT_SECONDS))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what did not come up within ${WAIT_SECONDS}s"
    sleep 0.5
  done
}

mariadb_ping() { mariadb-admin --no-defaults --socket="$MY_DIR/mysqld.sock" -uroot ping; }
pg_ping() { "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

mariadb_up() {
  if mariadb_ping >/dev/null 2>&1; then log "MariaDB already running on $MYSQL_PORT"; return; fi
  local user; user="$(service_user mysql)"
  mkdir -p "$MY_DIR"
  chmod 755 "$DIR" "$MY_DIR"
  as_root && chown "$user" "$MY_DIR"
  if [ ! -d "$MY_DIR/data/mysql" ]; then
    log "initialising MariaDB in $MY_DIR/data"
    as_user "$user" mariadb-install-db --no-defaults --datadir="$MY_DIR/data" --auth-root-authentication-method=normal \
      --skip-test-db >"$MY_DIR/install.log" 2>&1 || { cat "$MY_DIR/install.log" >&2; die "mariadb-install-db failed"; }
  fi
  log "starting MariaDB on 127.0.0.1:$MYSQL_PORT"
  as_user "$user" setsid "$(mariadb_bin)" --no-defaults --datadir="$MY_DIR/data" --socket="$MY_DIR/mysqld.sock" \
    --pid-file="$MY_DIR/mysqld.pid" --port="$MYSQL_PORT" --bind-address=127.0.0.1 --log-error="$MY_DIR/error.log" \
    --max-connections=500 --skip-name-resolve \
    --ssl-ca="$TLS_DIR/ca.pem" --ssl-cert="$TLS_DIR/server.pem" --ssl-key="$TLS_DIR/server-mysql.key" </dev/null >/dev/null 2>&1 &
  wait_for "MariaDB" mariadb_ping || true
  mariadb_ping >/dev/null 2>&1 || { tail -20 "$MY_DIR/error.log" >&2 || true; die "MariaDB is not answering"; }
  mariadb --no-defaults --socket="$MY_DIR/mysqld.sock" -uroot <<SQL
DELETE FROM mysql.global_priv WHERE User = '';
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'%' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
}

pg_up() {
  if pg_ping; then log "PostgreSQL already running on $PG_PORT"; return; fi
  local user bin; user="$(service_user postgres)"; bin="$(pg_bindir)"
  mkdir -p "$PG_DIR"
  chmod 755 "$DIR"
  as_root && chown "$user" "$PG_DIR"
  chmod 700 "$PG_DIR"
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    log "initialising PostgreSQL in $PG_DIR/data"
    as_user "$user" "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_user "$user" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t "$WAIT_SECONDS" \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=500 -c ssl=on -c ssl_cert_file=$TLS_DIR/server.pem -c ssl_key_file=$TLS_DIR/server-postgres.key" start >&2 \
    || { tail -20 "$PG_DIR/postgres.log" >&2 || true; die "PostgreSQL did not start"; }
  wait_for "PostgreSQL" pg_ping
  as_user "$user" "$bin/psql" -q -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE "$DB_USER" LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
  END IF;
END \$\$;
SQL
}

mariadb_down() {
  if [ -f "$MY_DIR/mysqld.pid" ]; then
    local pid; pid="$(cat "$MY_DIR/mysqld.pid")"
    log "stopping MariaDB (pid $pid)"
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + WAIT_SECONDS))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
}

pg_down() {
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    log "stopping PostgreSQL"
    as_user "$(service_user postgres)" "$(pg_bindir)/pg_ctl" -D "$PG_DIR/data" -m fast -w -t "$WAIT_SECONDS" stop >&2 || true
  fi
}

print_env() {
  cat <<EOF
export WAO_MYSQL_HOST=127.0.0.1
export WAO_MYSQL_PORT=$MYSQL_PORT
export WAO_MYSQL_USER=$DB_USER
export WAO_MYSQL_PASSWORD=$DB_PASSWORD
export WAO_POSTGRES_HOST=127.0.0.1
export WAO_POSTGRES_PORT=$PG_PORT
export WAO_POSTGRES_USER=$DB_USER
export WAO_POSTGRES_PASSWORD=$DB_PASSWORD
export WAO_DB_SSL_CA=$TLS_DIR/ca.pem
EOF
}

case "${1:-}" in
  up)
    ensure_packages
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    tls_up
    mariadb_up
    pg_up
    log "ready; eval \"\$(hack/databases.sh env)\" to use them"
    ;;
  down)
    mariadb_down
    pg_down
    rm -rf "$DIR"
    log "stopped and removed $DIR"
    ;;
  env) print_env ;;
  status)
    mariadb_ping >/dev/null 2>&1 && echo "mariadb: up ($MYSQL_PORT)" || echo "mariadb: down"
    pg_ping && echo "postgres: up ($PG_PORT)" || echo "postgres: down"
    ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
