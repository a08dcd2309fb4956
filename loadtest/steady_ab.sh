#!/usr/bin/env bash
# Interleaved A/B of gateway builds at one steady rate: the comparison behind the per-change
# figures in docs/bench/findings.md. On a shared, noisy machine a single run of each build
# says little; rounds that alternate the builds under the same background say more.
#
#   loadtest/steady_ab.sh ROUNDS RATE SECS BINARY...
#
# For each round, for each binary: the local cluster's 3 gateways (deploy/local/cluster.sh,
# ports 8081-8083, Redis Cluster 7000-7005, brought up if it is not) restarted on that binary
# with the bench's flags, gateways and the 6 redis-server processes pinned to BENCH_SUT_CPU
# (0), `roomcast-loadtest fanout` pinned to BENCH_GEN_CPU (1): PROTO (socketio) clients in 100
# rooms of 10, 100 publishers, RATE publishes/s for SECS seconds. Over the run's last SECS-5
# seconds it reads the CPU (utime + stime) and context switches of the gateways and of Redis
# from /proc, and prints per run: CPU-µs per delivery of each, context switches per publish,
# and the load tool's own line (delivered, lost, p50/p99). Redis is flushed between runs.
#
# Environment: PROTO (socketio|json|msgpack), LOADTEST (target/release/roomcast-loadtest).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=$1 rate=$2 secs=$3
shift 3
bins=("$@")
proto=${PROTO:-socketio}
lt=${LOADTEST:-target/release/roomcast-loadtest}
sut=${BENCH_SUT_CPU:-0}
gen=${BENCH_GEN_CPU:-1}
hz=$(getconf CLK_TCK)
out=$(mktemp -d "${TMPDIR:-/tmp}/steady-ab.XXXXXX")
ports=(8081 8082 8083)
redis_ports=(7000 7001 7002 7003 7004 7005)
export GATEWAY_ARGS="--jwt-secret bench-secret --publish-rate 1000000 --publish-burst 1000000 \
--room-create-limit 1000000 --max-conns-per-ip 0 --traffic-high 1000000 --traffic-critical 1000000 \
--traffic-cap 1000000 --worker-threads 1"

pid_on() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
cpu_ticks() {
  local t=0 p u s
  for p in "$@"; do
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat")
    t=$((t + u + s))
  done
  echo "$t"
}
switches() {
  local t=0 p task v
  for p in "$@"; do
    for task in /proc/"$p"/task/*; do
      v=$(awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$task/status" 2>/dev/null || echo 0)
      t=$((t + v))
    done
  done
  echo "$t"
}

run_one() {
  local label=$1 bin=$2
  CLUSTER_BIN=$bin deploy/local/cluster.sh stop-gateways >/dev/null 2>&1 || true
  if ! redis-cli -p 7000 ping >/dev/null 2>&1; then
    CLUSTER_BIN=$bin deploy/local/cluster.sh up >/dev/null 2>&1
    CLUSTER_BIN=$bin deploy/local/cluster.sh stop-gateways >/dev/null 2>&1 || true
  fi
  local p
  for p in "${redis_ports[@]}"; do
    redis-cli -p "$p" flushall >/dev/null 2>&1 || true
  done
  for p in "${ports[@]}"; do CLUSTER_BIN=$bin deploy/local/cluster.sh start-gateway "$p" >/dev/null; done
  local gw=() rd=()
  for p in "${ports[@]}"; do gw+=("$(pid_on "$p")"); done
  for p in "${redis_ports[@]}"; do rd+=("$(pid_on "$p")"); done
  for p in "${gw[@]}"; do
    # The build asked for, not a gateway left over from an earlier run.
    if [ "$(readlink "/proc/$p/exe")" != "$(readlink -f "$bin")" ]; then
      echo "gateway $p runs $(readlink "/proc/$p/exe"), not $bin" >&2
      exit 1
    fi
  done
  for p in "${gw[@]}" "${rd[@]}"; do taskset -a -pc "$sut" "$p" >/dev/null; done
  local csv_gw csv_rd
  csv_gw=$(IFS=,; echo "${gw[*]}")
  csv_rd=$(IFS=,; echo "${rd[*]}")
  taskset -c "$gen" "$lt" fanout --url ws://127.0.0.1:8081,ws://127.0.0.1:8082,ws://127.0.0.1:8083 \
    --protocol "$proto" --jwt-secret bench-secret --gateway-pids "$csv_gw" --pids "$csv_rd" \
    --rooms 100 --members 10 --publishers 100 --rate "$rate" --secs "$secs" --setup-secs 60 \
    --quiet >"$out/$label.txt" 2>&1 &
  local load=$!
  # Publishing has started once the publish script has run.
  for _ in $(seq 900); do
    redis-cli -p 7000 info commandstats 2>/dev/null | grep -q evalsha && break
    sleep 0.1
  done
  sleep 2
  local g0 r0 cg0 cr0 t0 g1 r1 cg1 cr1 t1
  g0=$(cpu_ticks "${gw[@]}"); r0=$(cpu_ticks "${rd[@]}")
  cg0=$(switches "${gw[@]}"); cr0=$(switches "${rd[@]}"); t0=$(date +%s.%N)
  sleep $((secs - 5))
  g1=$(cpu_ticks "${gw[@]}"); r1=$(cpu_ticks "${rd[@]}")
  cg1=$(switches "${gw[@]}"); cr1=$(switches "${rd[@]}"); t1=$(date +%s.%N)
  wait "$load" || true
  python3 - "$label" "$rate" "$hz" "$t0" "$t1" "$g0" "$g1" "$r0" "$r1" "$cg0" "$cg1" "$cr0" "$cr1" <<'PY'
import sys
label, rate, hz, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
g0, g1, r0, r1, cg0, cg1, cr0, cr1 = map(int, sys.argv[6:])
dt = t1 - t0
deliveries = rate * 10 * dt
g = (g1 - g0) / hz * 1e6 / deliveries
r = (r1 - r0) / hz * 1e6 / deliveries
print(f"{label}: gateways {g:.1f} + redis {r:.1f} = {g + r:.1f} CPU-µs per delivery; "
      f"context switches per publish: gateways {(cg1 - cg0) / (rate * dt):.1f}, redis {(cr1 - cr0) / (rate * dt):.1f}")
PY
  grep -E "rate +[0-9]+/s" "$out/$label.txt" | sed 's/^ */  /' || true
}

for round in $(seq "$rounds"); do
  for i in "${!bins[@]}"; do
    run_one "r$round-b$((i + 1))-$(basename "${bins[$i]}")" "${bins[$i]}"
  done
done
CLUSTER_BIN=${bins[0]} deploy/local/cluster.sh stop-gateways >/dev/null 2>&1 || true
echo "load tool output in $out"
