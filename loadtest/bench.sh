#!/usr/bin/env bash
# `make bench`: roomcast's 3 gateways and the Socket.IO peer's 3 processes, on the same machine
# and the same 6-process Redis Cluster, driven by the same client (roomcast-loadtest). Writes
# docs/benchmarks.md (through loadtest/report.py) and docs/bench/.
#
# Rows (the client, and what it talks to):
#   rc-sio      roomcast's /socket.io/ endpoint, Socket.IO v5   (--protocol socketio)
#   peer-sio    the Node peer (socket.io 4.8 + sharded Redis adapter), Socket.IO v5
#   rc-json     roomcast's native protocol, JSON                 (--protocol json)
#   rc-msgpack  roomcast's native protocol, MessagePack          (--protocol msgpack)
# Shapes: chat (rooms of 10), dm (5,000 rooms of 2), broadcast (one room of 1,000), each a
# `max` run (steps of rising publish rate, stopped after the first step that surely missed
# p99 <= 50 ms); idle (19k connections per gateway process, `connections`).
# Pinned runs: gateways or peer processes and all 6 redis-server processes on one CPU
# (taskset -a -pc), the load generator on the other (taskset -c). Unpinned runs: no affinity.
# Then a steady run of every row at the highest chat step all rows sustained, and a perf
# profile of roomcast's gateways at that rate.
#
# Environment: BENCH_QUICK=1 (a tiny smoke version, a few minutes; figures not meaningful),
# BENCH_REPEATS (pinned chat repeats, 3; the other shapes run once), BENCH_UNPINNED (shapes
# that also run unpinned, "chat"), BENCH_SUT_CPU (0), BENCH_GEN_CPU (1); CLUSTER_BIN=path
# benchmarks that roomcast binary instead of building one (deploy/local/cluster.sh). For a
# partial run: BENCH_ROWS ("rc-sio peer-sio rc-json rc-msgpack"), BENCH_SHAPES ("chat dm
# broadcast"; the steady runs and the profile need chat), BENCH_IDLE (1; 0 skips idle).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=docs/bench        # summaries, plots and the profile, committed
raw=target/bench      # full JSON reports (per-second histograms, /proc samples), not committed
quick=${BENCH_QUICK:-0}
LT=target/release/roomcast-loadtest
SECRET=bench-secret
SUT_CPU=${BENCH_SUT_CPU:-0}
GEN_CPU=${BENCH_GEN_CPU:-1}
UNPINNED=${BENCH_UNPINNED-chat}
read -r -a ROWS <<<"${BENCH_ROWS:-rc-sio peer-sio rc-json rc-msgpack}"
read -r -a SHAPES <<<"${BENCH_SHAPES:-chat dm broadcast}"
RC_PORTS=(8081 8082 8083)
RC_URLS=ws://127.0.0.1:8081,ws://127.0.0.1:8082,ws://127.0.0.1:8083
PEER_URLS=ws://127.0.0.1:3001,ws://127.0.0.1:3002,ws://127.0.0.1:3003
# Per-user limits lifted for the load; --worker-threads 1 asks for one runtime thread (the
# page reports the threads each gateway actually had).
GATEWAY_ARGS="--jwt-secret $SECRET --publish-rate 1000000 --publish-burst 1000000 --room-create-limit 1000000 --max-conns-per-ip 0 --traffic-high 1000000 --traffic-critical 1000000 --traffic-cap 1000000 --worker-threads 1"
export GATEWAY_ARGS
JUDGE=(--stop-after-failed 1 --p99-bound-ms 50 --min-delivered 0.999)

# --setup-secs is a deadline: with one load generator process, publishing starts 2 s after
# the last client is in.
if [ "$quick" = 1 ]; then
  REPEATS=${BENCH_REPEATS:-1}
  CHAT=(--rooms 4 --members 10 --publishers 4 --start-rate 50 --factor 2 --steps 3 --step-secs 1.5 --warmup-secs 1 --setup-secs 20)
  DM=(--rooms 100 --members 2 --publishers 100 --start-rate 50 --factor 2 --steps 2 --step-secs 1.5 --warmup-secs 1 --setup-secs 20)
  BROADCAST=(--rooms 1 --members 50 --publishers 2 --start-rate 5 --factor 2 --steps 2 --step-secs 1.5 --warmup-secs 1 --setup-secs 20)
  IDLE=(--clients 600 --rooms 60 --secs 3 --settle-secs 1 --workers 2 --source-ips 127.0.0.2-127.0.0.3 --setup-secs 60)
  STEADY_SECS=4
else
  REPEATS=${BENCH_REPEATS:-3}
  # Steps x1.5 from the first rate, up to 195x (14 steps); a run stops after its first failed
  # step, so the step count only bounds the top (chat: 1,000 to 195,000 deliveries/s asked).
  CHAT=(--rooms 100 --members 10 --publishers 100 --start-rate 100 --factor 1.5 --steps 14 --step-secs 6 --setup-secs 60)
  DM=(--rooms 5000 --members 2 --publishers 5000 --start-rate 200 --factor 1.5 --steps 14 --step-secs 6 --setup-secs 120)
  BROADCAST=(--rooms 1 --members 1000 --publishers 10 --start-rate 2 --factor 1.5 --steps 14 --step-secs 6 --setup-secs 60)
  # 19k per gateway process (3 of them): 4 load generator processes (20k descriptors each),
  # 19 source addresses (ephemeral ports). The hold covers one 25 s ping interval.
  IDLE=(--clients 57000 --rooms 5700 --secs 30 --settle-secs 3 --workers 4 --source-ips 127.0.0.2-127.0.0.20 --setup-secs 400)
  STEADY_SECS=20
fi

# The gateway as it ships: the `dist` profile (release with LTO, see the root Cargo.toml).
cargo build --release -q -p roomcast-loadtest
if [ -z "${CLUSTER_BIN:-}" ]; then
  cargo build --profile dist -q -p gateway --bin roomcast
  export CLUSTER_BIN=target/dist/roomcast
fi
started=$(date +%s)
mkdir -p "$out" "$raw"
# Only this script's own outputs: the hand-run benchmarks' files (archive-*, hooks-*, …) stay.
rm -f "$out"/max-*.svg "$out"/max-*.txt "$out"/steady-*.txt "$out"/idle-*.txt "$out"/profile-*.txt \
  "$raw"/*.json "$raw"/runs.jsonl "$raw"/perf.data*
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)

redis_pids() { cat "${TMPDIR:-/tmp}"/roomcast-redis-7000/700?/redis.pid 2>/dev/null | tr '\n' ' '; }
rc_pids() { deploy/local/cluster.sh pids | tr '\n' ' '; }
peer_pids() { loadtest/peers/socketio-node/run.sh pids 2>/dev/null | tr '\n' ' '; }
csv() { echo "$*" | xargs | tr ' ' ','; }

# Appends one record (key value ...) to runs.jsonl, for report.py.
record() {
  python3 -c 'import json,sys; a=sys.argv[1:]; print(json.dumps(dict(zip(a[::2], a[1::2]))))' "$@" >>"$raw/runs.jsonl"
}

# CPU ticks (1/100 s) used so far by the given pids.
ticks() {
  local t=0
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] && t=$(( t + $(awk '{print $14 + $15}' "/proc/$pid/stat") ))
  done
  echo "$t"
}

# What both systems and Redis use with no clients, in ticks per 0.5 s (settle's yardstick).
QUIET=2
# Waits until the systems under test are back to their quiet level (within 2 ticks per 0.5 s
# for 2 s, at most 60 s), so that one run's teardown (thousands of leaves) does not load the
# next one.
settle() {
  local pids prev=0 quiet=0 t
  pids="$(rc_pids) $(peer_pids) $(redis_pids)"
  for _ in $(seq 1 120); do
    # shellcheck disable=SC2086
    t=$(ticks $pids)
    if [ "$prev" -gt 0 ] && [ $(( t - prev )) -le $(( QUIET + 2 )) ]; then
      quiet=$((quiet + 1))
      [ "$quiet" -ge 4 ] && return 0
    else
      quiet=0
    fi
    prev=$t
    sleep 0.5
  done
  echo "(still busy after 60 s)" >&2
}

# Waits until nothing listens on the given ports (a killed process may still hold one).
ports_free() {
  for p in "$@"; do
    for _ in $(seq 1 100); do
      ss -Htln "sport = :$p" | grep -q . || break
      sleep 0.1
    done
  done
}

# Fresh roomcast gateways (same flags), and a check that all three answer.
restart_gateways() {
  deploy/local/cluster.sh stop-gateways
  ports_free "${RC_PORTS[@]}"
  for p in "${RC_PORTS[@]}"; do deploy/local/cluster.sh start-gateway "$p"; done
  for p in "${RC_PORTS[@]}"; do
    for _ in $(seq 1 100); do curl -sf "127.0.0.1:$p/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -sf "127.0.0.1:$p/readyz" >/dev/null || { echo "gateway $p did not start" >&2; exit 1; }
  done
}

# Fresh peer processes, and a check that all three answer.
restart_peer() {
  loadtest/peers/socketio-node/run.sh down 2>/dev/null || true
  ports_free 3001 3002 3003
  loadtest/peers/socketio-node/run.sh up "$(deploy/local/redis-cluster.sh urls 7000)"
  for p in 3001 3002 3003; do
    curl -sf "127.0.0.1:$p/healthz" >/dev/null || { echo "peer $p did not start" >&2; exit 1; }
  done
}

# Pins (or unpins) every process of both systems and Redis, every thread: `pinned` puts them
# on $SUT_CPU, `unpinned` lets them run anywhere.
pin() {
  local cpus
  cpus=$([ "$1" = pinned ] && echo "$SUT_CPU" || echo "0-$(( $(nproc) - 1 ))")
  for pid in $(rc_pids) $(peer_pids) $(redis_pids); do
    taskset -a -pc "$cpus" "$pid" >/dev/null 2>&1 || true
  done
}

# The load generator's command prefix for a mode.
gen() { if [ "$1" = pinned ]; then echo "taskset -c $GEN_CPU"; fi; }

# Arguments of a row: URLs, protocol, token secret, and the pids to sample.
row_args() {
  case $1 in
    rc-sio) echo "--url $RC_URLS --protocol socketio --jwt-secret $SECRET --gateway-pids $(csv "$(rc_pids)") --pids $(csv "$(redis_pids)")" ;;
    rc-json) echo "--url $RC_URLS --protocol json --jwt-secret $SECRET --gateway-pids $(csv "$(rc_pids)") --pids $(csv "$(redis_pids)")" ;;
    rc-msgpack) echo "--url $RC_URLS --protocol msgpack --jwt-secret $SECRET --gateway-pids $(csv "$(rc_pids)") --pids $(csv "$(redis_pids)")" ;;
    peer-sio) echo "--url $PEER_URLS --protocol socketio --gateway-pids $(csv "$(peer_pids)") --pids $(csv "$(redis_pids)")" ;;
  esac
}

shape_args() {
  case $1 in
    chat) echo "${CHAT[*]}" ;;
    dm) echo "${DM[*]}" ;;
    broadcast) echo "${BROADCAST[*]}" ;;
  esac
}

# One `max` run: row, shape, mode (pinned|unpinned), repeat.
run_max() {
  local row=$1 shape=$2 mode=$3 rep=$4 name plot=()
  name="max-$shape-$row-$mode-$rep"
  # Plots of the first pinned repeat only.
  [ "$mode" = pinned ] && [ "$rep" = 1 ] && plot=(--plot "$out/$name.svg")
  echo "== $name" >&2
  pin "$mode"
  # shellcheck disable=SC2046
  $(gen "$mode") "$LT" max $(row_args "$row") $(shape_args "$shape") "${JUDGE[@]}" --quiet \
    --json "$raw/$name.json" "${plot[@]}" | tee "$out/$name.txt" >&2 || echo "== $name failed" >&2
  record kind max row "$row" shape "$shape" mode "$mode" rep "$rep" file "$name.json" \
    cmd "roomcast-loadtest max --url <3 processes> --protocol <row> $(shape_args "$shape") ${JUDGE[*]}"
  settle
}

cleanup() {
  loadtest/peers/socketio-node/run.sh down 2>/dev/null || true
  deploy/local/cluster.sh down 2>/dev/null || true
}
trap cleanup EXIT

# Both systems stay up for the whole run, on the same Redis Cluster, so that repeats can
# alternate between them; the one not measured is idle (no clients).
deploy/local/cluster.sh up >&2
restart_peer
sleep 3
# shellcheck disable=SC2046
{
  a=($(ticks $(rc_pids)) $(ticks $(peer_pids)) $(ticks $(redis_pids)))
  sleep 5
  b=($(ticks $(rc_pids)) $(ticks $(peer_pids)) $(ticks $(redis_pids)))
}
baseline="gateways $(( (b[0] - a[0]) / 5 ))%, peer processes $(( (b[1] - a[1]) / 5 ))%, Redis $(( (b[2] - a[2]) / 5 ))%"
QUIET=$(( (b[0] + b[1] + b[2] - a[0] - a[1] - a[2]) / 10 ))
echo "== no clients: $baseline of one core" >&2

# 1. Highest sustainable rate, every shape and row: pinned (chat: $REPEATS times, the rows
#    alternating), then unpinned for the shapes in $UNPINNED.
for shape in "${SHAPES[@]}"; do
  reps=$([ "$shape" = chat ] && echo "$REPEATS" || echo 1)
  for rep in $(seq 1 "$reps"); do
    for row in "${ROWS[@]}"; do run_max "$row" "$shape" pinned "$rep"; done
  done
  if [[ " $UNPINNED " == *" $shape "* ]]; then
    for row in "${ROWS[@]}"; do run_max "$row" "$shape" unpinned 1; done
  fi
done

# 2. A steady run of every row at the highest chat step all rows sustained (pinned): CPU per
#    delivered message and latency at one rate for all; then roomcast's gateways profiled
#    at that rate (rc-sio), in a run of its own so that perf does not weigh on the figures.
common_rate=0 common_note="no chat runs" perf_status="not run" STEADY=()
if [[ " ${SHAPES[*]} " == *" chat "* ]]; then
  read -r common_rate common_note < <(python3 loadtest/report.py common-rate "$raw" chat)
  echo "== steady runs at $common_rate publishes/s ($common_note)" >&2
  read -r -a chat_rooms < <(python3 -c 'import sys; a=sys.argv[1:]; keep=("--rooms","--members","--publishers","--setup-secs"); print(" ".join(x for i in range(0,len(a),2) if a[i] in keep for x in a[i:i+2]))' "${CHAT[@]}")
  STEADY=("${chat_rooms[@]}" --rate "$common_rate" --secs "$STEADY_SECS")
  for row in "${ROWS[@]}"; do
    name="steady-chat-$row"
    echo "== $name" >&2
    pin pinned
    # shellcheck disable=SC2046
    $(gen pinned) "$LT" fanout $(row_args "$row") "${STEADY[@]}" --quiet --json "$raw/$name.json" \
      | tee "$out/$name.txt" >&2 || echo "== $name failed" >&2
    record kind steady row "$row" shape chat mode pinned rep 1 file "$name.json" note "$common_note" \
      cmd "roomcast-loadtest fanout --url <3 processes> --protocol <row> ${STEADY[*]}"
    settle
  done

  if ! command -v perf >/dev/null 2>&1; then
    echo "installing linux-perf" >&2
    (export DEBIAN_FRONTEND=noninteractive; apt-get install -y linux-perf >/dev/null 2>&1 \
      || { apt-get update >/dev/null && apt-get install -y linux-perf >/dev/null 2>&1; }) || true
  fi
  perf_status="not run"
  profile_secs=$(( STEADY_SECS > 4 ? STEADY_SECS - 3 : 2 ))
  if command -v perf >/dev/null 2>&1; then
    echo "== profile: rc-sio at $common_rate publishes/s" >&2
    pin pinned
    gw=$(csv "$(rc_pids)")
    # perf starts when publishing does (the load generator creates the ready file) and stops
    # before the end.
    rm -f "$raw/ready"
    (for _ in $(seq 1 1200); do [ -e "$raw/ready" ] && break; sleep 0.1; done
     sleep 1
     exec taskset -c "$GEN_CPU" perf record -e cpu-clock -F 499 -g -p "$gw" -o "$raw/perf.data" \
       -- sleep "$profile_secs") >"$raw/perf-record.log" 2>&1 &
    perf_pid=$!
    # shellcheck disable=SC2046
    $(gen pinned) "$LT" fanout $(row_args rc-sio) "${STEADY[@]}" --ready-file "$raw/ready" --quiet \
      --json "$raw/profile-run.json" >"$out/profile-run.txt" || echo "== profile run failed" >&2
    wait "$perf_pid" || true
    report() { perf report -i "$raw/perf.data" --stdio --no-children "$@" 2>>"$raw/perf-report.log"; }
    trim() { grep -v '^$' | sed 's/[[:space:]]*$//'; }
    if [ -s "$raw/perf.data" ] && report -F overhead,dso,sym -g none --percent-limit 0.3 >"$raw/perf-report.txt"; then
      trim <"$raw/perf-report.txt" >"$raw/perf-top.txt"
      head -n 70 "$raw/perf-top.txt" >"$out/profile-roomcast.txt"
      report -F overhead,dso -g none >"$raw/perf-dso.txt" || true
      grep -v '^#' "$raw/perf-dso.txt" | trim >"$out/profile-roomcast-dso.txt" || true
      # Where the biggest symbols are called from (kernel stacks are whole; Rust frames may
      # be missing without frame pointers).
      report -F overhead,dso,sym -g graph,0.5,caller,function,percent --percent-limit 2 \
        >"$raw/perf-callers.txt" || true
      trim <"$raw/perf-callers.txt" >"$raw/perf-callers-trimmed.txt" || true
      head -n 250 "$raw/perf-callers-trimmed.txt" >"$out/profile-roomcast-callers.txt"
      perf_status="ok"
    else
      perf_status="perf could not record or report: $(tail -c 300 "$raw/perf-record.log" "$raw/perf-report.log" 2>/dev/null | tr '\n' ' ')"
    fi
    record kind profile row rc-sio shape chat mode pinned rep 1 file profile-run.json status "$perf_status" \
      cmd "perf record -e cpu-clock -F 499 -g -p <3 gateways> -- sleep $profile_secs (during roomcast-loadtest fanout ${STEADY[*]}); perf report --stdio --no-children -F overhead,dso,sym -g none --percent-limit 0.3"
    settle
  else
    record kind profile row rc-sio status "perf is not installed and could not be installed" file ""
  fi
fi

# 3. Idle connections, pinned: each row on freshly started processes (a process that carried
#    load before would reuse freed memory and look cheaper per connection). The peer first:
#    roomcast's gateways are restarted before each of their rows, which also ends the previous
#    row's teardown; the wait for quiet comes after each restart.
IDLE_ROWS=()
for row in peer-sio rc-sio rc-json rc-msgpack; do
  [[ " ${ROWS[*]} " == *" $row "* ]] && IDLE_ROWS+=("$row")
done
for row in "${IDLE_ROWS[@]}"; do
  [ "${BENCH_IDLE:-1}" = 1 ] || break
  name="idle-$row"
  echo "== $name" >&2
  if [ "$row" = peer-sio ]; then restart_peer; else restart_gateways; fi
  settle
  pin pinned
  # shellcheck disable=SC2046
  $(gen pinned) "$LT" connections $(row_args "$row") "${IDLE[@]}" --quiet --json "$raw/$name.json" \
    | tee "$out/$name.txt" >&2 || echo "== $name failed" >&2
  record kind idle row "$row" shape idle mode pinned rep 1 file "$name.json" \
    cmd "roomcast-loadtest connections --url <3 processes> --protocol <row> ${IDLE[*]}"
done

loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)
record kind meta quick "$quick" seconds "$(( $(date +%s) - started ))" gateway_args "$GATEWAY_ARGS" \
  binary "${CLUSTER_BIN:-target/release/roomcast}" \
  sut_cpu "$SUT_CPU" gen_cpu "$GEN_CPU" repeats "$REPEATS" unpinned "$UNPINNED" \
  common_rate "$common_rate" common_note "$common_note" perf "$perf_status" \
  loadavg_start "$loadavg_start" loadavg_end "$loadavg_end" judge "${JUDGE[*]}" baseline "$baseline" \
  chat "${CHAT[*]}" dm "${DM[*]}" broadcast "${BROADCAST[*]}" idle "${IDLE[*]}" steady "${STEADY[*]}"
python3 loadtest/report.py page "$raw" "$out" >docs/benchmarks.md
echo "wrote docs/benchmarks.md" >&2
