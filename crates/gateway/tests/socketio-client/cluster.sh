#!/usr/bin/env bash
# No sticky sessions (issue 13 part 2): three gateways on one Redis Cluster behind nginx with
# plain round-robin (deploy/nginx/roomcast.conf.template: no ip_hash, hash or sticky; checked
# below), and a stock socket.io-client 4.8 through nginx, with default options (polling, then
# the upgrade) and polling only. Every polling request may land on any gateway; the one that
# gets it relays it to the session's owner. Last, the owner of a session is killed (SIGKILL,
# twice: default options, then polling only): another gateway answers its sid with 400
# "Session ID unknown", and the client reconnects through nginx and rejoins with `since`.
# First, emitter.test.mjs: a stock @socket.io/redis-emitter on the same cluster (the
# gateways serve /admin for it), while every gateway is alive.
#
# Ports (override with the variables): Redis Cluster 7900-7905, nginx 9110, gateways
# 9111-9113. Everything started here is stopped on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
REDIS_BASE=${REDIS_BASE:-7900}
NGINX_PORT=${NGINX_PORT:-9110}
GATEWAY_PORTS=${GATEWAY_PORTS:-"9111 9112 9113"}
state=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -f "$state/nginx.pid" ] && kill "$(cat "$state/nginx.pid")" 2>/dev/null || true
  "$root/deploy/local/redis-cluster.sh" stop "$REDIS_BASE" "$state/redis" >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT

cd "$here"
# Installed again when the lock file is newer than what npm installed.
[ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund >/dev/null
cd "$root"
cargo build -q --workspace --bins
deploy/local/redis-cluster.sh start "$REDIS_BASE" "$state/redis" >/dev/null
urls=$(deploy/local/redis-cluster.sh urls "$REDIS_BASE")
declare -A pid_of
for p in $GATEWAY_PORTS; do
  target/debug/roomcast --listen "127.0.0.1:$p" --node-id "poll-$p" --redis-cluster "$urls" \
    --jwt-secret sio-secret --socketio-namespaces /admin --traffic-interval 250ms --node-ttl 2s --log warn \
    --drain-delay 0s --drain-window 100ms --drain-deadline 1s \
    >"$state/gateway-$p.log" 2>&1 &
  pids+=($!)
  pid_of[$p]=$!
done
for p in $GATEWAY_PORTS; do
  for _ in $(seq 1 150); do curl -sf "127.0.0.1:$p/readyz" >/dev/null && break; sleep 0.1; done
done

servers=""
for p in $GATEWAY_PORTS; do servers+="server 127.0.0.1:$p;"$'\n'"        "; done
sed -e "s#@PREFIX@#$state#g" -e "s#@LISTEN@#127.0.0.1:$NGINX_PORT#" \
  -e "s#@UPSTREAMS@#${servers//$'\n'/\\n}#" deploy/nginx/roomcast.conf.template >"$state/nginx.conf"
if grep -Eq '^\s*(ip_hash|hash|sticky)\b' "$state/nginx.conf"; then
  echo "nginx.conf pins clients to a gateway; this test needs plain round-robin" >&2
  exit 1
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)
"$nginx" -p "$state" -c "$state/nginx.conf"
for _ in $(seq 1 50); do curl -s "127.0.0.1:$NGINX_PORT/healthz" >/dev/null && break; sleep 0.1; done

cd "$here"
# @socket.io/redis-emitter (issue 13 part 4): a Node service's emitter on the same Redis
# Cluster, clients on each gateway directly. Before cluster.test.mjs, which kills gateways.
ROOMCAST_JWT_SECRET=sio-secret ROOMCAST_REDIS_URLS="$urls" \
  ROOMCAST_GATEWAYS=$(for p in $GATEWAY_PORTS; do printf 'http://127.0.0.1:%s ' "$p"; done) \
  timeout 120 node --no-warnings --test --test-force-exit emitter.test.mjs

ROOMCAST_URL="http://127.0.0.1:$NGINX_PORT" ROOMCAST_JWT_SECRET=sio-secret \
  ROOMCAST_GATEWAYS=$(for p in $GATEWAY_PORTS; do printf 'http://127.0.0.1:%s ' "$p"; done) \
  ROOMCAST_GATEWAY_PIDS=$(for p in $GATEWAY_PORTS; do printf 'poll-%s=%s ' "$p" "${pid_of[$p]}"; done) \
  timeout 300 node --no-warnings --test --test-force-exit cluster.test.mjs
# --test-force-exit and the timeout: a failed assertion leaves that test's clients connected,
# and node's test runner would otherwise wait for them forever (CI hung there once).
