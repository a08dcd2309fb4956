#!/usr/bin/env bash
# Three peer processes (ports 3001-3003) behind nginx on 127.0.0.1:8090, on a Redis Cluster.
#   run.sh up REDIS_URLS     install (npm ci, pinned by package-lock.json) and start
#   run.sh down              stop everything it started
#   run.sh pids              the peer processes' pids
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
STATE=${TMPDIR:-/tmp}/roomcast-peer
PORTS=(3001 3002 3003)
LB=127.0.0.1:8090

up() {
  local urls=$1
  down 2>/dev/null || true
  mkdir -p "$STATE"
  (cd "$here" && [ -d node_modules ] || npm ci --no-audit --no-fund >/dev/null)
  upstreams=""
  for p in "${PORTS[@]}"; do
    PORT=$p REDIS_CLUSTER=$urls setsid node "$here/server.js" >"$STATE/peer-$p.log" 2>&1 &
    echo $! >"$STATE/peer-$p.pid"
    upstreams+="server 127.0.0.1:$p max_fails=1 fail_timeout=5s; "
  done
  sed -e "s#@PREFIX@#$STATE#g" -e "s#@LISTEN@#$LB#g" -e "s#@UPSTREAMS@#$upstreams#g" \
    "$root/deploy/nginx/roomcast.conf.template" >"$STATE/nginx.conf"
  "$(command -v nginx || echo /usr/sbin/nginx)" -p "$STATE" -c "$STATE/nginx.conf"
  for p in "${PORTS[@]}"; do
    for _ in $(seq 1 100); do curl -sf "127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
  done
  echo "socket.io peer up: ws://$LB (3 processes)" >&2
}

down() {
  [ -f "$STATE/nginx.pid" ] && kill "$(cat "$STATE/nginx.pid")" 2>/dev/null || true
  for p in "${PORTS[@]}"; do
    [ -f "$STATE/peer-$p.pid" ] && kill "$(cat "$STATE/peer-$p.pid")" 2>/dev/null || true
  done
  sleep 0.5
  rm -rf "$STATE"
}

pids() {
  for p in "${PORTS[@]}"; do cat "$STATE/peer-$p.pid"; done
}

case "${1:-}" in
  up) up "${2:?redis urls}" ;;
  down) down ;;
  pids) pids ;;
  *) echo "usage: $0 up REDIS_URLS | down | pids" >&2; exit 2 ;;
esac
