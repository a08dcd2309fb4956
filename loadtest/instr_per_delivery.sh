#!/usr/bin/env bash
# Instructions and malloc calls per delivered message of one gateway, counted by callgrind:
# repeatable on a shared, noisy machine where wall-clock and CPU time are not (and where perf's
# hardware counters are not available).
#
#   loadtest/instr_per_delivery.sh GATEWAY_BINARY [PORT]
#
# Two runs of the same gateway under `valgrind --tool=callgrind`, each with the same clients
# (`roomcast-loadtest fanout`, ROOMS rooms of MEMBERS, PUBLISHERS publishers): one publishing
# RATE/s for SECS seconds, one publishing LOW/s (1) for as long, the "idle" run (not 0:
# `fanout --rate 0` publishes as fast as it can, a bug in the load generator). In each run
# the counters are zeroed when publishing starts (`--ready-file`) and dumped SECS + TAIL
# seconds later, so both windows hold the same connections, pings, timers and closes; then
#
#   instructions per delivery = (Ir(load) - Ir(idle)) / (deliveries(load) - deliveries(idle))
#   mallocs per delivery      = (calls to malloc/calloc/realloc, load - idle) / the same
#
# with deliveries as the load generator counted them: the marginal cost of a delivery, its
# publish's share included (a publish reaches MEMBERS deliveries). Connecting and joining fall outside both
# windows. Callgrind runs the gateway ~50x slower: keep RATE x MEMBERS a few hundred per
# second, and check that the run's `lost` is 0 and its p99 well under TAIL (a delivery that
# lands after the dump is counted as delivered but its cost is missed).
#
# Environment: REDIS (a `--redis-cluster` URL list; unset: the embedded backend), PROTOCOL
# (json | msgpack | socketio; json), ROOMS (20), MEMBERS (10), PUBLISHERS (= ROOMS), LOW (1), RATE
# (20), SECS (30), TAIL (5), PAYLOAD (64), LOADTEST (target/release/roomcast-loadtest), OUT (a
# directory for the callgrind files and reports; a fresh temporary one), GATEWAY_EXTRA (more
# gateway flags). Prints one line per run and a result line; `callgrind_annotate
# --inclusive=yes OUT/load.out` shows where the instructions went.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$1
port=${2:-9710}
lt=${LOADTEST:-target/release/roomcast-loadtest}
proto=${PROTOCOL:-json}
rooms=${ROOMS:-20}
members=${MEMBERS:-10}
publishers=${PUBLISHERS:-$rooms}
rate=${RATE:-20}
secs=${SECS:-30}
tail_secs=${TAIL:-5}
payload=${PAYLOAD:-64}
out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/instr.XXXXXX")}
secret=instr-secret
mkdir -p "$out"

gw=
lt_pid=
stop() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
  set +e
  [ -n "$lt_pid" ] && stop "$lt_pid"
  [ -n "$gw" ] && stop "$gw"
  wait 2>/dev/null
}
trap cleanup EXIT

# Total Ir and calls to the malloc family in one callgrind output file (name compression:
# `cfn=(id) name` defines an id, `cfn=(id)` reuses it; the `calls=` line after a `cfn=` line
# counts the calls to it).
count() {
  python3 - "$1" <<'EOF'
import re, sys
names, total, allocs, callee = {}, 0, 0, None
for line in open(sys.argv[1], errors="replace"):
    if line.startswith(("summary:", "totals:")):
        total = max(total, int(line.split()[1]))
    elif line.startswith("cfn="):
        m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
        if m:
            if m.group(2) is not None:
                names[m.group(1)] = m.group(2)
            callee = names.get(m.group(1), "")
        else:
            callee = line[4:].strip()
    elif line.startswith("calls=") and callee is not None:
        if callee in ("malloc", "calloc", "realloc"):
            allocs += int(line[6:].split()[0])
        callee = None
print(total, allocs)
EOF
}

# One run: rate $1, named $2. Prints "Ir allocs deliveries".
run() {
  local r=$1 name=$2 ready="$out/$2.ready"
  rm -f "$ready" "$out/$name.out"*
  local backend=()
  [ -n "${REDIS:-}" ] && backend=(--redis-cluster "$REDIS")
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --callgrind-out-file="$out/$name.out" --vgdb=yes \
    "$bin" --listen "127.0.0.1:$port" --jwt-secret "$secret" --publish-rate 1000000 \
    --publish-burst 1000000 --room-create-limit 1000000 --max-conns-per-ip 0 \
    --traffic-high 1000000 --traffic-critical 1000000 --traffic-cap 1000000 \
    "${backend[@]}" ${GATEWAY_EXTRA:-} >"$out/$name.gateway.log" 2>&1 &
  gw=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.2
  done
  "$lt" fanout --url "ws://127.0.0.1:$port" --protocol "$proto" --jwt-secret "$secret" \
    --rooms "$rooms" --members "$members" --publishers "$publishers" --rate "$r" \
    --secs "$secs" --payload "$payload" --setup-secs 300 --ready-file "$ready" \
    --json "$out/$name.json" --quiet >"$out/$name.loadtest.log" 2>&1 &
  lt_pid=$!
  while [ ! -e "$ready" ]; do
    kill -0 "$lt_pid" 2>/dev/null || { echo "loadtest ended before publishing" >&2; exit 1; }
    sleep 0.05
  done
  callgrind_control -z "$gw" >/dev/null 2>&1
  sleep $(( secs + tail_secs ))
  callgrind_control -d "$gw" >/dev/null 2>&1
  wait "$lt_pid" || true
  lt_pid=
  stop "$gw"
  wait "$gw" 2>/dev/null || true
  gw=
  # The dump taken in the window (callgrind writes `.out.1`); the file written at exit is not it.
  local ir allocs delivered
  read -r ir allocs < <(count "$out/$name.out.1")
  delivered=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["report"]; print(sum(p["delivered"] for p in r["phases"]))' "$out/$name.json")
  # A client that failed to connect changes the shape: the run does not count.
  if grep -q " [1-9][0-9]* failed to connect" "$out/$name.loadtest.log"; then
    echo "$name: some clients failed to connect (see $out/$name.loadtest.log); run again" >&2
    exit 1
  fi
  echo "$ir $allocs $delivered"
}

label=embedded
[ -n "${REDIS:-}" ] && label=redis-cluster
read -r ir_load al_load d_load < <(run "$rate" load)
echo "load: rate $rate/s, $secs s: Ir $ir_load, malloc calls $al_load, deliveries $d_load" >&2
read -r ir_idle al_idle d_idle < <(run "${LOW:-1}" idle)
echo "idle: rate ${LOW:-1}/s, $secs s: Ir $ir_idle, malloc calls $al_idle, deliveries $d_idle" >&2
python3 - "$ir_load" "$al_load" "$d_load" "$ir_idle" "$al_idle" "$d_idle" <<EOF
import sys
ir_l, al_l, d_l, ir_i, al_i, d_i = map(int, sys.argv[1:])
d = d_l - d_i
print(f"backend $label protocol $proto rooms $rooms x $members rate $rate/s secs $secs: "
      f"deliveries {d}, instructions/delivery {(ir_l - ir_i) / d:,.0f}, mallocs/delivery {(al_l - al_i) / d:.2f} (files in $out)")
EOF
