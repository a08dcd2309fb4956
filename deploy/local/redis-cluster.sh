#!/usr/bin/env bash
# A 6-process Redis Cluster on loopback: 3 primaries, 3 replicas, short cluster-node-timeout.
#
#   redis-cluster.sh start [BASE_PORT] [DIR]   start (ports BASE..BASE+5), wait for cluster_state:ok
#   redis-cluster.sh stop  [BASE_PORT] [DIR]   stop every process and remove DIR
#   redis-cluster.sh urls  [BASE_PORT]         print the seed URLs, comma separated
#   redis-cluster.sh revive PORT [BASE_PORT] [DIR]  restart one killed node with its old config
#
# Installs redis-server with apt-get when it is missing. Leaves nothing running after `stop`.
set -euo pipefail

cmd=${1:-}
base=${2:-7000}
dir=${3:-${TMPDIR:-/tmp}/roomcast-redis-$base}
node_timeout=${REDIS_NODE_TIMEOUT:-2000}
# A primary refuses writes (NOREPLICAS) unless a replica acknowledged within this many seconds.
# A primary cut off from its replica (paused, partitioned) thus stops accepting writes that the
# promoted replica would never have: replicas acknowledge every second, the failover takes
# cluster-node-timeout (2 s) plus the election, so 3 s stops a cut-off primary about when its
# replica takes over, and a primary paused longer (a 6 s SIGSTOP) refuses from its first command
# after SIGCONT, while one late acknowledgement under load does not refuse healthy writes.
# The cost: after a primary dies its shard refuses writes until the promoted replica has a
# replica again (`revive` brings the old primary back as one).
# cluster-require-full-coverage no: while a failed primary's slots have no owner yet, the
# other shards keep serving (by default every node answers CLUSTERDOWN until the promotion).
min_replicas_max_lag=${REDIS_MIN_REPLICAS_MAX_LAG:-3}
ports=$(seq "$base" $((base + 5)))

need_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "installing redis-server" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y redis-server >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; }
  fi
}

urls() {
  local out=""
  for p in $ports; do out+="${out:+,}redis://127.0.0.1:$p"; done
  echo "$out"
}

start() {
  need_redis
  stop_quiet
  mkdir -p "$dir"
  for p in $ports; do
    mkdir -p "$dir/$p"
    cat >"$dir/$p/start.sh" <<START
exec redis-server --port "$p" --bind 127.0.0.1 --daemonize yes \\
  --dir "$dir/$p" --pidfile "$dir/$p/redis.pid" --logfile "$dir/$p/redis.log" \\
  --cluster-enabled yes --cluster-config-file "$dir/$p/nodes.conf" \\
  --cluster-node-timeout "$node_timeout" --cluster-replica-validity-factor 0 \\
  --appendonly no --save "" --protected-mode no --repl-diskless-sync-delay 0 \\
  --min-replicas-to-write 1 --min-replicas-max-lag "$min_replicas_max_lag" \\
  --cluster-require-full-coverage no
START
    bash "$dir/$p/start.sh"
  done
  for p in $ports; do
    for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
  done
  local hosts=()
  for p in $ports; do hosts+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${hosts[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
    || { cat "$dir/create.log" >&2; exit 1; }
  for _ in $(seq 1 200); do
    ok=1
    for p in $ports; do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "cluster did not become ok" >&2; exit 1; }
  # Every replica must be attached before tests count on failover.
  for _ in $(seq 1 200); do
    n=$(redis-cli -p "$base" cluster nodes | grep -c 'slave' || true)
    [ "$n" -ge 3 ] && break
    sleep 0.1
  done
  echo "redis cluster up: $(urls)" >&2
}

stop_quiet() {
  for p in $ports; do
    redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
    if [ -f "$dir/$p/redis.pid" ]; then kill -9 "$(cat "$dir/$p/redis.pid")" 2>/dev/null || true; fi
  done
  # Anything still bound to our ports (a SIGSTOPped or orphaned process) goes too.
  for p in $ports; do
    pids=$(pgrep -f "redis-server 127.0.0.1:$p " || true)
    [ -n "$pids" ] && kill -CONT $pids 2>/dev/null && kill -9 $pids 2>/dev/null || true
  done
  rm -rf "$dir"
}

revive() {
  local port=$1
  redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
  bash "$dir/$port/start.sh"
  for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
}

case "$cmd" in
  start) start ;;
  revive)
    port=$2; base=${3:-7000}; dir=${4:-${TMPDIR:-/tmp}/roomcast-redis-$base}
    revive "$port" ;;
  stop) stop_quiet; echo "redis cluster on $base stopped" >&2 ;;
  urls) urls ;;
  *) echo "usage: $0 start|stop|urls [BASE_PORT] [DIR]" >&2; exit 2 ;;
esac
