#!/usr/bin/env bash
# `make bench`: roomcast's 3 nodes and the Socket.IO peer's 3 processes, on the same machine and
# the same Redis Cluster, with the same scenarios and parameters. Writes docs/benchmarks.md.
# BENCH_QUICK=1 runs a small smoke version (minutes shorter, figures not meaningful).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=docs/bench        # plots and summaries, committed
raw=target/bench      # full JSON reports (per-second histograms), not committed
mkdir -p "$out" "$raw"
quick=${BENCH_QUICK:-0}
LT=target/release/roomcast-loadtest
SECRET=bench-secret

if [ "$quick" = 1 ]; then
  CONN=(--clients 1500 --rooms 30 --secs 4 --workers 1)
  FAN=(--rooms 10 --members 10 --publishers 10 --rate 1000 --secs 4)
  MAX=(--rooms 10 --members 10 --publishers 10 --start-rate 1000 --factor 2 --steps 3 --step-secs 3)
else
  # Rooms of 10: a join's presence event goes to 9 others, not to hundreds.
  CONN=(--clients 30000 --rooms 3000 --secs 15 --workers 3 --source-ips 127.0.0.2-127.0.0.20)
  FAN=(--rooms 50 --members 20 --publishers 50 --rate 5000 --secs 20)
  MAX=(--rooms 50 --members 20 --publishers 50 --start-rate 500 --factor 1.6 --steps 8 --step-secs 6)
fi

cargo build --release -q -p gateway -p roomcast-loadtest
started=$(date +%s)

redis_pids() { cat "${TMPDIR:-/tmp}"/roomcast-redis-7000/700?/redis.pid 2>/dev/null | tr '\n' ','; }

# Waits until the system under test is quiet (under 5% of a core for 2 s, at most 60 s), so
# that one scenario's teardown (thousands of leaves) does not load the next one.
settle() {
  local pids=$1 prev=0 quiet=0
  for _ in $(seq 1 120); do
    local ticks=0
    for pid in ${pids//,/ }; do
      [ -r "/proc/$pid/stat" ] || continue
      ticks=$(( ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat") ))
    done
    if [ "$prev" -gt 0 ] && [ $(( ticks - prev )) -le 2 ]; then
      quiet=$((quiet + 1))
      [ "$quiet" -ge 4 ] && return 0
    else
      quiet=0
    fi
    prev=$ticks
    sleep 0.5
  done
}

run_suite() {
  local name=$1 proto=$2 urls=$3 pids=$4
  local common=(--url "$urls" --protocol "$proto" --pids "$pids" --quiet)
  [ "$name" = roomcast ] && common+=(--jwt-secret "$SECRET")
  echo "== $name: connections" >&2
  $LT connections "${common[@]}" "${CONN[@]}" --json "$raw/$name-connections.json" | tee "$out/$name-connections.txt"
  settle "$pids"
  echo "== $name: fanout" >&2
  $LT fanout "${common[@]}" "${FAN[@]}" --json "$raw/$name-fanout.json" --plot "$out/$name-fanout.svg" | tee "$out/$name-fanout.txt"
  settle "$pids"
  echo "== $name: max" >&2
  $LT max "${common[@]}" "${MAX[@]}" --json "$raw/$name-max.json" --plot "$out/$name-max.svg" | tee "$out/$name-max.txt"
}

cleanup() {
  loadtest/peers/socketio-node/run.sh down 2>/dev/null || true
  deploy/local/cluster.sh down 2>/dev/null || true
}
trap cleanup EXIT

# roomcast: 3 gateways on the local Redis Cluster, per-user limits lifted for the load.
GATEWAY_ARGS="--jwt-secret $SECRET --publish-rate 1000000 --publish-burst 1000000 --room-create-limit 1000000 --max-conns-per-ip 0 --traffic-high 1000000 --traffic-critical 1000000 --traffic-cap 1000000 --worker-threads 1" \
  deploy/local/cluster.sh up >&2
urls=ws://127.0.0.1:8081,ws://127.0.0.1:8082,ws://127.0.0.1:8083
run_suite roomcast json "$urls" "$(deploy/local/cluster.sh pids | tr '\n' ',')$(redis_pids)"
deploy/local/cluster.sh stop-gateways

# The peer: 3 Socket.IO processes with the sharded Redis adapter, same Redis Cluster.
loadtest/peers/socketio-node/run.sh up "$(deploy/local/redis-cluster.sh urls 7000)"
urls=ws://127.0.0.1:3001,ws://127.0.0.1:3002,ws://127.0.0.1:3003
run_suite peer socketio "$urls" "$(loadtest/peers/socketio-node/run.sh pids | tr '\n' ',')$(redis_pids)"

python3 loadtest/report.py "$raw" "$quick" "$(( $(date +%s) - started ))" "${CONN[*]}" "${FAN[*]}" "${MAX[*]}" > docs/benchmarks.md
echo "wrote docs/benchmarks.md" >&2
