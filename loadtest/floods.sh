#!/usr/bin/env bash
# Floods and slow consumers (issue 7): four checks against real gateways over real sockets,
# `roomcast-checks floods storm|flood|slow|room` (crates/checks). Each prints a table of
# numbers and PASS/FAIL per bound; the script fails if any bound fails.
#
#   loadtest/floods.sh [--short] [storm] [flood] [slow] [room]
#
#   storm   reconnect storm against one gateway: admission control (503 + Retry-After),
#           RSS, /readyz and an existing client's latency during the storm
#   flood   one user publishing as fast as it can through 3 gateways on Redis Cluster:
#           the per-user limit holds globally, others' latency with and without the flood
#   slow    clients that stop reading in a busy room: 4009, bounded memory, others unaffected
#   room    a huge room over 3 gateways with rapid joins/leaves: presence exact everywhere
#
# --short is the cheap version that `make test` runs; without it, the full sizes (`make
# floods`). Uses its own Redis Cluster (ports 7400-7405, FLOODS_REDIS_BASE) and gateways on
# 8281-8283; stops everything it started. FLOODS_OUT=DIR keeps the JSON results there;
# FLOODS_NO_BUILD=1 skips the build; FLOODS_PROFILE picks the build (below).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. deploy/local/lib.sh
need curl curl

SHORT=0
CHECKS=()
for a in "$@"; do
  case "$a" in
    --short) SHORT=1 ;;
    storm | flood | slow | room) CHECKS+=("$a") ;;
    *) echo "usage: $0 [--short] [storm] [flood] [slow] [room]" >&2; exit 2 ;;
  esac
done
[ ${#CHECKS[@]} -eq 0 ] && CHECKS=(storm flood slow room)

REDIS_BASE=${FLOODS_REDIS_BASE:-7400}
PORTS=(8281 8282 8283)
STATE=${TMPDIR:-/tmp}/roomcast-floods
OUT=${FLOODS_OUT:-$STATE/results}
SECRET=floods-secret
SOURCES=127.0.0.2-127.0.0.41
mkdir -p "$STATE/bin" "$OUT"

# FLOODS_PROFILE: the cargo profile of the gateways and checks: release (default; the full sizes
# measure it), quick-release (`make test`: optimised at level 1, a fraction of release's
# compile time) or debug (unoptimised: on a busy machine its clients fall behind and get cut as
# slow consumers, so the slow check sends fewer, larger frames there; not used by make test).
PROFILE=${FLOODS_PROFILE:-release}
case "$PROFILE" in
  debug | dev) PROFILE=debug BUILD=() ;;
  release) BUILD=(--release) ;;
  *) BUILD=(--profile "$PROFILE") ;;
esac
if [ "${FLOODS_NO_BUILD:-0}" != 1 ]; then
  cargo build "${BUILD[@]}" --workspace --bins || exit 1
fi
# Run copies: a rebuild of target/ during the run (another build on the machine) must not
# change the binaries halfway.
BIN_DIR=target/$PROFILE
cp "$BIN_DIR/roomcast" "$BIN_DIR/roomcast-checks" "$STATE/bin/" || exit 1
GW=$STATE/bin/roomcast
FLOODS=("$STATE/bin/roomcast-checks" floods)

stop_gateways() {
  local p pid
  for p in "${PORTS[@]}"; do
    [ -f "$STATE/gw-$p.pid" ] && kill "$(cat "$STATE/gw-$p.pid")" 2>/dev/null
  done
  for _ in $(seq 1 50); do
    local alive=0
    for p in "${PORTS[@]}"; do
      [ -f "$STATE/gw-$p.pid" ] && kill -0 "$(cat "$STATE/gw-$p.pid")" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${PORTS[@]}"; do
    if [ -f "$STATE/gw-$p.pid" ]; then
      pid=$(cat "$STATE/gw-$p.pid")
      kill -9 "$pid" 2>/dev/null
      rm -f "$STATE/gw-$p.pid"
    fi
  done
}

cleanup() {
  stop_gateways
  deploy/local/redis-cluster.sh stop "$REDIS_BASE" >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

deploy/local/redis-cluster.sh start "$REDIS_BASE" || exit 1
REDIS_URLS=$(deploy/local/redis-cluster.sh urls "$REDIS_BASE")

# start_gateways CHECK COUNT [flags...]: gateways on the first COUNT ports; prints their pids.
start_gateways() {
  local check=$1 count=$2 i p
  shift 2
  for ((i = 0; i < count; i++)); do
    p=${PORTS[$i]}
    setsid "$GW" --listen "127.0.0.1:$p" --node-id "floods-$check-$p" \
      --redis-cluster "$REDIS_URLS" --jwt-secret "$SECRET" --log warn \
      --drain-delay 0s --drain-window 1s --drain-deadline 3s "$@" \
      >"$STATE/gw-$check-$p.log" 2>&1 &
    echo $! >"$STATE/gw-$p.pid"
  done
  for ((i = 0; i < count; i++)); do
    p=${PORTS[$i]}
    for _ in $(seq 1 100); do
      curl -sf "127.0.0.1:$p/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -sf "127.0.0.1:$p/readyz" >/dev/null 2>&1 || { echo "gateway $p not ready" >&2; return 1; }
  done
}

pids() {
  local out="" i
  for ((i = 0; i < $1; i++)); do out+="${out:+,}$(cat "$STATE/gw-${PORTS[$i]}.pid")"; done
  echo "$out"
}
urls() {
  local out="" i
  for ((i = 0; i < $1; i++)); do out+="${out:+,}ws://127.0.0.1:${PORTS[$i]}"; done
  echo "$out"
}

run_storm() {
  if [ "$SHORT" = 1 ]; then
    start_gateways storm 1 --max-handshake-rate 500 || return 1
    "${FLOODS[@]}" storm --url "$(urls 1)" --pids "$(pids 1)" --source-ips "$SOURCES" \
      --jwt-secret "$SECRET" --json "$OUT/storm.json" \
      --clients 3000 --window-secs 2 --deadline-secs 60 --expect-refusals
  else
    # 20,000 clients against one node whose open-file limit (20,000) caps it at 19,744
    # connections: the last ones are refused for capacity (Retry-After: 5) until 500
    # clients leave 20 s in, after which every remaining client must get in.
    start_gateways storm 1 || return 1
    "${FLOODS[@]}" storm --url "$(urls 1)" --pids "$(pids 1)" --source-ips "$SOURCES" \
      --jwt-secret "$SECRET" --json "$OUT/storm.json" \
      --clients 20000 --window-secs 2 --workers 2 --deadline-secs 120 \
      --release 500 --release-at-secs 20 --expect-refusals
  fi
}

run_flood() {
  start_gateways flood 3 --publish-rate 20 --publish-burst 40 || return 1
  if [ "$SHORT" = 1 ]; then
    "${FLOODS[@]}" flood --url "$(urls 3)" --source-ips "$SOURCES" --jwt-secret "$SECRET" \
      --json "$OUT/flood.json" --rate 20 --burst 40 --baseline-secs 4 --flood-secs 6
  else
    "${FLOODS[@]}" flood --url "$(urls 3)" --source-ips "$SOURCES" --jwt-secret "$SECRET" \
      --json "$OUT/flood.json" --rate 20 --burst 40 --baseline-secs 10 --flood-secs 30 \
      --flood-conns-per-node 4 --window 32 --others 30 --rooms 6
  fi
}

run_slow() {
  if [ "$SHORT" = 1 ]; then
    # The unoptimised build moves the same bytes in fewer, larger frames: a debug gateway and
    # client cannot write 1,000 frames/s to 35 readers on a busy 2-core machine and still count
    # the healthy readers as healthy. 150 × 8 KiB/s for 8 s still overfills every slow
    # reader's 256 KiB queue many times over, which is what this check is about.
    local rate=1000 payload=2048 secs=6
    [ "$PROFILE" = debug ] && rate=150 payload=8192 secs=8
    start_gateways slow 1 --outbound-queue-bytes 262144 --write-timeout 8s \
      --publish-rate 1000 --publish-burst 1000 || return 1
    "${FLOODS[@]}" slow --url "$(urls 1)" --pids "$(pids 1)" --source-ips "$SOURCES" \
      --jwt-secret "$SECRET" --json "$OUT/slow.json" \
      --members 10 --publishers 4 --rate "$rate" --payload "$payload" --secs "$secs" \
      --slow 20 --pausers 5 --queue-bytes 262144 --write-timeout-secs 8
  else
    start_gateways slow 1 --publish-rate 1000 --publish-burst 1000 || return 1
    "${FLOODS[@]}" slow --url "$(urls 1)" --pids "$(pids 1)" --source-ips "$SOURCES" \
      --jwt-secret "$SECRET" --json "$OUT/slow.json" \
      --members 50 --publishers 4 --rate 2000 --payload 2048 --secs 15 \
      --slow 200 --pausers 20 --queue-bytes 1048576 --write-timeout-secs 10
  fi
}

run_room() {
  start_gateways room 3 || return 1
  if [ "$SHORT" = 1 ]; then
    "${FLOODS[@]}" room --url "$(urls 3)" --pids "$(pids 3)" --source-ips "$SOURCES" \
      --jwt-secret "$SECRET" --json "$OUT/room.json" \
      --members 2000 --churners 60 --churn-secs 8
  else
    "${FLOODS[@]}" room --url "$(urls 3)" --pids "$(pids 3)" --source-ips "$SOURCES" \
      --jwt-secret "$SECRET" --json "$OUT/room.json" \
      --members 10000 --churners 200 --churn-secs 30 --settle-secs 60
  fi
}

summary=()
failed=0
for check in "${CHECKS[@]}"; do
  began=$(date +%s)
  "run_$check"
  rc=$?
  stop_gateways
  took=$(($(date +%s) - began))
  summary+=("$check: $([ $rc -eq 0 ] && echo ok || echo "FAILED (rc $rc)") in ${took}s")
  [ $rc -ne 0 ] && failed=1
done
echo
echo "floods ($([ "$SHORT" = 1 ] && echo short || echo full)):"
printf '  %s\n' "${summary[@]}"
echo "  JSON results in $OUT; gateway logs in $STATE"
exit $failed
