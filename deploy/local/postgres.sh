#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, for the archive's tests (crates/archive).
#
#   postgres.sh start [PORT] [DIR]   initdb into DIR, start on 127.0.0.1:PORT, create the database
#   postgres.sh stop  [PORT] [DIR]   stop the server and remove DIR
#   postgres.sh url   [PORT]         print the connection URL (what ROOMCAST_TEST_POSTGRES takes)
#   postgres.sh restart [PORT] [DIR] stop (fast: clients are disconnected) and start again, data kept
#
# Installs Debian's `postgresql` with apt-get when it is missing. The server refuses to run as
# root, so it runs as the system user `roomcast-pg` (created when missing), which owns DIR. The
# unix socket lives in DIR too, so nothing outside DIR is touched (not Debian's own cluster, not
# /var/run/postgresql). Trust authentication, on loopback only. Leaves nothing running after
# `stop`.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

cmd=${1:-}
port=${2:-55432}
dir=${3:-${TMPDIR:-/tmp}/roomcast-postgres-$port}
user=roomcast-pg
db=roomcast

url() {
  echo "postgres://$user@127.0.0.1:$port/$db"
}

# The newest installed server's binaries (Debian keeps them off the PATH).
bindir() {
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$newest" ] && [ -x "$newest/initdb" ] || { echo "no PostgreSQL server binaries in /usr/lib/postgresql" >&2; return 1; }
  echo "$newest"
}

as_user() {
  runuser -u "$user" -- "$@"
}

start() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    # Debian keeps initdb off the PATH (/usr/lib/postgresql/<ver>/bin), so `need` installs.
    need initdb postgresql
    # The package creates Debian's own cluster `main` (port 5432) and starts it where the init
    # system lets it: the install is ours, so is that server; stop it, the tests never use it.
    if command -v pg_lsclusters >/dev/null; then
      pg_lsclusters --no-header 2>/dev/null | awk '$4 == "online" { print $1, $2 }' |
        while read -r ver name; do pg_ctlcluster "$ver" "$name" stop || true; done
    fi
  fi
  local bin
  bin=$(bindir)
  if ! id "$user" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
  fi
  stop_quiet
  mkdir -p "$dir"
  chown "$user" "$dir"
  chmod 700 "$dir"
  as_user "$bin/initdb" -D "$dir/data" -U "$user" --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  # Durability stays on (fsync): the archive's tests restart the server and count rows.
  as_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=200" \
    >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  as_user "$bin/createdb" -h 127.0.0.1 -p "$port" -U "$user" "$db"
  echo "postgres up: $(url)" >&2
}

restart() {
  [ -f "$dir/data/postmaster.pid" ] || { echo "no server in $dir" >&2; exit 1; }
  as_user "$(bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 30 restart \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=200" \
    >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
}

stop_quiet() {
  if [ -f "$dir/data/postmaster.pid" ]; then
    local bin
    bin=$(bindir) && as_user "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    # Whatever survived (a SIGSTOPped server) goes too: the pid is the file's first line.
    local pid
    pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -CONT "$pid" 2>/dev/null || true
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$dir"
}

case "$cmd" in
  start) start ;;
  stop) stop_quiet; echo "postgres on $port stopped" >&2 ;;
  url) url ;;
  restart) restart ;;
  *) echo "usage: $0 start|stop|url|restart [PORT] [DIR]" >&2; exit 2 ;;
esac
