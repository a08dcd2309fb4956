#!/usr/bin/env bash
# The local cluster: a 6-process Redis Cluster (ports 7000-7005), three roomcast gateways
# (8081-8083) and nginx as the WebSocket load balancer on 127.0.0.1:8080.
#
#   cluster.sh up     build, start everything, print the URLs
#   cluster.sh down   stop everything; nothing is left running
#   cluster.sh stop-gateways   stop the gateways and nginx, keep Redis (benchmarks)
#   cluster.sh pids   pids of the gateways and the Redis processes
#   cluster.sh start-gateway PORT   (re)start one gateway of a running cluster, as `up` did
#
# GATEWAY_ARGS adds flags to every gateway (the benchmark lifts the per-user limits).
# A second cluster can run beside this one (deploy/local/chaos.sh does): CLUSTER_REDIS_BASE
# (7000), CLUSTER_GATEWAYS ("8081 8082 8083"), CLUSTER_LB (127.0.0.1:8080) and CLUSTER_STATE
# move it; CLUSTER_PROFILE=debug runs the debug build; CLUSTER_UID_GATEWAY=PORT runs that
# gateway as uid CLUSTER_UID (default 64000), so that firewall rules can single it out;
# CLUSTER_BIN runs a given roomcast binary instead of building one.
#
# Installs redis-server and nginx with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

STATE=${CLUSTER_STATE:-${TMPDIR:-/tmp}/roomcast-local}
REDIS_BASE=${CLUSTER_REDIS_BASE:-7000}
read -r -a GATEWAYS <<<"${CLUSTER_GATEWAYS:-8081 8082 8083}"
LB=${CLUSTER_LB:-127.0.0.1:8080}
PROFILE=${CLUSTER_PROFILE:-release}
BIN=${CLUSTER_BIN:-./target/$PROFILE/roomcast}

need() {
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ]; then
    echo "installing $2" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; }
  fi
}

down() {
  if [ -f "$STATE/nginx.pid" ]; then kill "$(cat "$STATE/nginx.pid")" 2>/dev/null || true; fi
  for p in "${GATEWAYS[@]}"; do
    if [ -f "$STATE/gateway-$p.pid" ]; then kill "$(cat "$STATE/gateway-$p.pid")" 2>/dev/null || true; fi
  done
  # Gateways drain on SIGTERM; give them their deadline, then make sure.
  for _ in $(seq 1 60); do
    alive=0
    for p in "${GATEWAYS[@]}"; do
      [ -f "$STATE/gateway-$p.pid" ] && kill -0 "$(cat "$STATE/gateway-$p.pid")" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for p in "${GATEWAYS[@]}"; do
    if [ -f "$STATE/gateway-$p.pid" ]; then kill -9 "$(cat "$STATE/gateway-$p.pid")" 2>/dev/null || true; fi
  done
  deploy/local/redis-cluster.sh stop "$REDIS_BASE" 2>/dev/null || true
  rm -rf "$STATE"
  echo "local cluster stopped" >&2
}

# Starts the gateway on port $1 in the background (its log is appended to, across restarts).
start_gateway() {
  local p=$1 as=()
  # A gateway still listening on the port (one killed a moment ago, or one this script lost
  # track of) would make the new one fail to bind, and the pid file would then name a dead
  # process while the old one lives on: wait for the port, then refuse.
  for _ in $(seq 1 50); do
    ss -Htln "sport = :$p" | grep -q . || break
    sleep 0.1
  done
  if ss -Htln "sport = :$p" | grep -q .; then
    echo "port $p is still in use: no gateway started there" >&2
    return 1
  fi
  if [ "${CLUSTER_UID_GATEWAY:-}" = "$p" ]; then
    as=(setpriv --reuid="${CLUSTER_UID:-64000}" --regid="${CLUSTER_UID:-64000}" --clear-groups)
  fi
  ROOMCAST_REDIS_CLUSTER=$(deploy/local/redis-cluster.sh urls "$REDIS_BASE") setsid "${as[@]}" "$BIN" \
    --listen "127.0.0.1:$p" --node-id "local-$p" --allow-anonymous --api-key dev-api-key \
    --drain-delay 1s --drain-window 2s --drain-deadline 5s --trusted-proxy 127.0.0.1/32 \
    ${GATEWAY_ARGS:-} \
    >>"$STATE/gateway-$p.log" 2>&1 &
  echo $! >"$STATE/gateway-$p.pid"
}

up() {
  need redis-server redis-server
  need nginx nginx
  down 2>/dev/null || true
  mkdir -p "$STATE"
  if [ -n "${CLUSTER_BIN:-}" ]; then
    echo "using $CLUSTER_BIN" >&2
  elif [ "$PROFILE" = release ]; then
    cargo build --release --workspace --bins
  else
    cargo build --workspace --bins
  fi
  deploy/local/redis-cluster.sh start "$REDIS_BASE"
  upstreams=""
  for p in "${GATEWAYS[@]}"; do
    start_gateway "$p"
    upstreams+="server 127.0.0.1:$p max_fails=1 fail_timeout=5s; "
  done
  sed -e "s#@PREFIX@#$STATE#g" -e "s#@LISTEN@#$LB#g" -e "s#@UPSTREAMS@#$upstreams#g" \
    deploy/nginx/roomcast.conf.template >"$STATE/nginx.conf"
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
  "$nginx" -p "$STATE" -c "$STATE/nginx.conf"
  for p in "${GATEWAYS[@]}"; do
    for _ in $(seq 1 100); do
      curl -sf "127.0.0.1:$p/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  cat <<MSG

roomcast local cluster is up (anonymous clients allowed; server API key: dev-api-key)
  load balancer   ws://$LB/ws      http://$LB/status
  gateways        $(for p in "${GATEWAYS[@]}"; do printf 'http://127.0.0.1:%s ' "$p"; done)
  redis cluster   $(deploy/local/redis-cluster.sh urls "$REDIS_BASE")
  logs            $STATE/gateway-*.log
stop it with: make cluster-down
MSG
}

stop_gateways() {
  if [ -f "$STATE/nginx.pid" ]; then kill "$(cat "$STATE/nginx.pid")" 2>/dev/null || true; fi
  for p in "${GATEWAYS[@]}"; do
    if [ -f "$STATE/gateway-$p.pid" ]; then kill -9 "$(cat "$STATE/gateway-$p.pid")" 2>/dev/null || true; fi
  done
}

pids() {
  for p in "${GATEWAYS[@]}"; do cat "$STATE/gateway-$p.pid" 2>/dev/null || true; done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  stop-gateways) stop_gateways ;;
  pids) pids ;;
  start-gateway) start_gateway "${2:?port}" ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
