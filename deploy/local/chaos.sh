#!/usr/bin/env bash
# `make chaos`: fault injection under a steady fan-out load, on a local cluster of its own
# (Redis Cluster on 7300-7305, gateways on 8181-8183, nginx on 127.0.0.1:8180, so it never
# collides with `make cluster-up` or the clusters of `make test`).
#
# While `roomcast-checks chaos` keeps rooms × members clients publishing (each message with
# its own msgId, retried with it on `unavailable`/`timeout`) and checking every delivery (they
# reconnect through nginx and re-join with `since`), this script injects, one at a time, with
# load before and after each:
#   1. kill -9 of gateway 8181, restarted 2 s later
#   2. SIGTERM of gateway 8182 (a drain), restarted once it exited
#   3. CLUSTER FAILOVER on the replica of one shard (graceful primary switch)
#   4. kill -9 of another shard's primary, revived 4 s later (it rejoins as a replica)
#   5. SIGSTOP of the third shard's primary, longer than cluster-node-timeout, then SIGCONT
#   6. gateway 8183 cut off from Redis (iptables, see below), then restored
# and writes every fault's start and end to a log. deploy/local/chaos_report.py then sets the
# load's record against that log: a table per fault (delivery pause, loss silent or behind an
# epoch change, duplicates, order, divergences, publish answers and retries, reconnects,
# whether /readyz told the truth), printed and, for the full run, written to
# docs/reliability.md.
#
# The cut: gateway 8183 runs as its own uid (CLUSTER_UID_GATEWAY in cluster.sh). A mangle rule
# marks every connection that uid opens to a Redis port (CONNMARK); during the cut, filter
# rules drop marked packets both ways (OUTPUT and INPUT), so the gateway neither reaches Redis
# nor hears it, while its clients (through nginx) and every other process are untouched. The
# rules live in chains of their own (ROOMCAST_CHAOS*) that cleanup removes.
#
#   CHAOS_QUICK=1     the short version run by `make test` (debug build, ~90 s, default mode)
#   CHAOS_DURABLE=0|1 one run, without or with --durable-publish. Unset: the quick run is
#                     without; the full run runs both, one after the other, each writing its
#                     own section of docs/reliability.md
#   CHAOS_SEED=N      0 (default): faults 1-6 in that order, fixed timings; any other N
#                     shuffles the order, picks the shards of faults 3-5 and moves the pauses
#                     between faults and the SIGSTOP's length (reproducibly for one N)
#   CHAOS_PROFILE     release (default for the full run) or debug (default for the quick one)
#   CHAOS_GATEWAY_BIN a roomcast binary to test instead of building this tree's
#   CHAOS_ALLOW_STUCK=1  report, but do not fail on, clients left connected yet receiving
#                     nothing (see docs/reliability.md: a gateway reaped as dead by its peers)
#
# Every run fails (exit 1) on an acknowledged message lost without an epoch change that its
# member saw (with --durable-publish: lost at all), a divergence (two messages at one room,
# epoch and offset, or an ack at the wrong offset), a duplicate or out-of-order delivery, a
# publish answered only `unavailable` (not applied) yet delivered, or a client that does not
# get back in (chaos_report.py).
#
# Installs redis-server, nginx and iptables with apt-get when missing. Needs root (iptables,
# setpriv). Leaves nothing running: every process, rule and temporary file it made goes in
# cleanup; the record stays in target/chaos/ (the load's JSON and log, fault log, gateway logs).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

QUICK=${CHAOS_QUICK:-0}
if [ "$QUICK" != 1 ] && [ -z "${CHAOS_DURABLE:-}" ]; then
  # The full run: both modes, each on a cluster of its own.
  CHAOS_DURABLE=0 deploy/local/chaos.sh; rc0=$?
  CHAOS_DURABLE=1 deploy/local/chaos.sh; rc1=$?
  echo "make chaos: default mode $([ $rc0 = 0 ] && echo passed || echo FAILED), --durable-publish $([ $rc1 = 0 ] && echo passed || echo FAILED)" >&2
  exit $(( rc0 != 0 || rc1 != 0 ))
fi
DURABLE=${CHAOS_DURABLE:-0}
SEED=${CHAOS_SEED:-0}
if [ "$QUICK" = 1 ]; then PROFILE=${CHAOS_PROFILE:-debug}; else PROFILE=${CHAOS_PROFILE:-release}; fi
if [ "$DURABLE" = 1 ]; then MODE=durable; else MODE=default; fi
REDIS_BASE=7300
GW=(8181 8182 8183)
LB=127.0.0.1:8180
CUT_UID=64000
STATE=${TMPDIR:-/tmp}/roomcast-chaos
RAW=target/chaos/$MODE
REDIS_DIR=${TMPDIR:-/tmp}/roomcast-redis-$REDIS_BASE
SECRET=chaos-secret

if [ "$QUICK" = 1 ]; then
  LOAD=(--rooms 10 --members 6 --publishers 20 --rate 100)
  # TAIL: extra load after the last fault, so that a client counts as stuck (nothing in the
  # last 5 s, chaos_report.py) only if it stayed silent for 7 s after the restore.
  WARM=3 AFTER=6 PAUSE=5 CUT=8 REVIVE=4 TAIL=6
else
  LOAD=(--rooms 20 --members 10 --publishers 40 --rate 200)
  WARM=5 AFTER=12 PAUSE=6 CUT=10 REVIVE=4 TAIL=0
fi

# The seed: the order of the faults, the shards of faults 3-5, the load between faults and the
# SIGSTOP's length. Seed 0 is the fixed schedule.
ORDER=(1 2 3 4 5 6)
SHARD_SLOT=(0 5461 10923)
GAPS=("$AFTER" "$AFTER" "$AFTER" "$AFTER" "$AFTER" "$AFTER")
if [ "$SEED" != 0 ]; then
  RANDOM=$SEED
  for ((i = ${#ORDER[@]} - 1; i > 0; i--)); do
    j=$(( RANDOM % (i + 1) ))
    tmp=${ORDER[$i]} ORDER[$i]=${ORDER[$j]} ORDER[$j]=$tmp
  done
  r=$(( RANDOM % 3 ))
  SHARD_SLOT=("${SHARD_SLOT[@]:$r}" "${SHARD_SLOT[@]:0:$r}")
  for i in "${!GAPS[@]}"; do GAPS[$i]=$(( AFTER - 1 + RANDOM % 4 )); done
  WARM=$(( WARM + RANDOM % 3 ))
  PAUSE=$(( PAUSE + RANDOM % 3 ))
fi

. deploy/local/lib.sh
need redis-server redis-server
need nginx nginx
need iptables iptables
need setpriv util-linux
need python3 python3

export CLUSTER_REDIS_BASE=$REDIS_BASE CLUSTER_GATEWAYS="${GW[*]}" CLUSTER_LB=$LB
export CLUSTER_STATE=$STATE/cluster CLUSTER_PROFILE=$PROFILE
export CLUSTER_UID_GATEWAY=${GW[2]} CLUSTER_UID=$CUT_UID
if [ -n "${CHAOS_GATEWAY_BIN:-}" ]; then export CLUSTER_BIN=$CHAOS_GATEWAY_BIN; fi
GATEWAY_ARGS="--jwt-secret $SECRET --publish-rate 1000 --publish-burst 1000 --max-conns-per-ip 0"
[ "$DURABLE" = 1 ] && GATEWAY_ARGS+=" --durable-publish"
export GATEWAY_ARGS
CHECKS=target/$PROFILE/roomcast-checks
FAULTS=$STATE/faults.log

load_pid=""
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null; wait "$load_pid" 2>/dev/null; fi
  uncut
  iptables -t mangle -D OUTPUT -j ROOMCAST_CHAOS_MARK 2>/dev/null
  iptables -t mangle -F ROOMCAST_CHAOS_MARK 2>/dev/null
  iptables -t mangle -X ROOMCAST_CHAOS_MARK 2>/dev/null
  iptables -D OUTPUT -j ROOMCAST_CHAOS_CUT 2>/dev/null
  iptables -D INPUT -j ROOMCAST_CHAOS_CUT 2>/dev/null
  iptables -X ROOMCAST_CHAOS_CUT 2>/dev/null
  # A paused primary is resumed before it is stopped (redis-cluster.sh stop does both).
  deploy/local/cluster.sh down >/dev/null 2>&1
  deploy/local/redis-cluster.sh stop "$REDIS_BASE" >/dev/null 2>&1
  rm -rf "$STATE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ms() { date +%s%3N; }
T0=$(ms)
say() { printf '[%6.1fs] %s\n' "$(( $(ms) - T0 ))e-3" "$*" >&2; }
# event FAULT_NUMBER WHAT [key=value...]: one line of the fault log.
event() {
  local n=$1 what=$2
  shift 2
  echo "$(ms) $n $what $*" >>"$FAULTS"
  say "fault $n: $what $*"
}
# Sleeps until Unix ms $1.
until_ms() {
  local left=$(( $1 - $(ms) ))
  [ "$left" -gt 0 ] && sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"
  return 0
}
rcli() { timeout 2 redis-cli -p "$@" 2>/dev/null; }
gw_pid() { cat "$STATE/cluster/gateway-$1.pid"; }
wait_ready() {
  for _ in $(seq 1 150); do
    curl -sf -m 1 "127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "gateway $1 not ready after 15 s"
  return 1
}
restart_gw() {
  local n=$1 p=$2
  deploy/local/cluster.sh start-gateway "$p"
  event "$n" restarted "port=$p"
  wait_ready "$p" && event "$n" ready "port=$p"
}
# A node that answers (a paused one does not).
live_node() {
  for p in $(seq "$REDIS_BASE" $((REDIS_BASE + 5))); do
    rcli "$p" ping | grep -q PONG && { echo "$p"; return; }
  done
}
# "PRIMARY_PORT REPLICA_PORT FIRST-LAST" of the shard that serves slot $1, as the cluster sees
# it now.
shard_of_slot() {
  rcli "$(live_node)" cluster nodes | awk -v slot="$1" '
    { split($2, a, "@"); n = split(a[1], b, ":"); port[$1] = b[n] }
    $3 ~ /master/ && $3 !~ /fail/ {
      for (i = 9; i <= NF; i++) {
        split($i, r, "-"); if (r[2] == "") r[2] = r[1]
        if (slot >= r[1] && slot <= r[2]) { primary = $1; range = $i }
      }
    }
    $3 ~ /slave/ && $3 !~ /fail/ { master_of[$1] = $4 }
    END {
      for (id in master_of) if (master_of[id] == primary) replica = port[id]
      print port[primary], replica, range
    }'
}
role() { rcli "$1" role | head -1; }
# Every node answers, agrees the cluster is ok, three replicas are attached and synced.
settled() {
  local synced=0
  for p in $(seq "$REDIS_BASE" $((REDIS_BASE + 5))); do
    rcli "$p" cluster info | grep -q 'cluster_state:ok' || return 1
    if [ "$(role "$p")" = slave ]; then
      rcli "$p" info replication | grep -q 'master_link_status:up' && synced=$((synced + 1))
    fi
  done
  [ "$synced" = 3 ]
}
wait_settled() {
  for _ in $(seq 1 300); do settled && return 0; sleep 0.1; done
  say "redis cluster did not settle in 30 s"
  return 1
}

# The cut (see the header). The marking rule is in place before gateway 8183 first connects.
mark_rules() {
  iptables -t mangle -N ROOMCAST_CHAOS_MARK 2>/dev/null || iptables -t mangle -F ROOMCAST_CHAOS_MARK
  iptables -t mangle -A ROOMCAST_CHAOS_MARK -p tcp -m owner --uid-owner "$CUT_UID" \
    -m multiport --dports "$REDIS_BASE:$((REDIS_BASE + 5))" -j CONNMARK --set-mark 0x7c
  iptables -t mangle -C OUTPUT -j ROOMCAST_CHAOS_MARK 2>/dev/null || iptables -t mangle -A OUTPUT -j ROOMCAST_CHAOS_MARK
  iptables -N ROOMCAST_CHAOS_CUT 2>/dev/null || iptables -F ROOMCAST_CHAOS_CUT
  iptables -C OUTPUT -j ROOMCAST_CHAOS_CUT 2>/dev/null || iptables -I OUTPUT -j ROOMCAST_CHAOS_CUT
  iptables -C INPUT -j ROOMCAST_CHAOS_CUT 2>/dev/null || iptables -I INPUT -j ROOMCAST_CHAOS_CUT
}
cut() { iptables -A ROOMCAST_CHAOS_CUT -m connmark --mark 0x7c -j DROP; }
uncut() { iptables -F ROOMCAST_CHAOS_CUT 2>/dev/null; }

# ---- the cluster and the load --------------------------------------------------------------
rm -rf "$STATE" && mkdir -p "$STATE" "$RAW"
say "building ($PROFILE)"
# The whole workspace, like every script: one feature set, so no script rebuilds for another.
if [ "$PROFILE" = release ]; then
  cargo build --release -q --workspace --bins || exit 1
else
  cargo build -q --workspace --bins || exit 1
fi
mark_rules || { echo "iptables failed (root and netfilter needed)" >&2; exit 1; }
say "starting the cluster"
deploy/local/cluster.sh up >"$STATE/cluster-up.log" 2>&1 || { cat "$STATE/cluster-up.log" >&2; exit 1; }
for p in "${GW[@]}"; do wait_ready "$p" || exit 1; done
wait_settled || exit 1
# The uid rule must see gateway 8183's Redis connections (it marks them).
[ "$(stat -c %u "/proc/$(gw_pid "${GW[2]}")")" = "$CUT_UID" ] || { echo "gateway ${GW[2]} is not running as uid $CUT_UID" >&2; exit 1; }

SETUP=4
readyz=$(printf 'http://127.0.0.1:%s,' "${GW[@]}")
LOAD_CMD=("$CHECKS" chaos --url "ws://$LB" "${LOAD[@]}" --secs 900 --jwt-secret "$SECRET" --setup-secs "$SETUP"
  --readyz "${readyz%,}" --stop-file "$STATE/stop" --json "$RAW/chaos.json")
say "load: ${LOAD_CMD[*]}"
"${LOAD_CMD[@]}" >"$STATE/load.log" 2>&1 &
load_pid=$!
echo "$(ms) 0 load-start" >>"$FAULTS"
until_ms $(( $(ms) + (SETUP + WARM) * 1000 ))

# ---- the faults ----------------------------------------------------------------------------
# Each fault_N injects fault N, waits until it is over, and sets AFTER_FROM: the load then runs
# $AFTER s more from there before the next fault.

# 1. kill -9 a gateway; a supervisor restarts it 2 s later.
fault_1() {
  local t
  t=$(ms)
  event 1 kill-gateway "gateway=local-${GW[0]} port=${GW[0]}"
  kill -9 "$(gw_pid "${GW[0]}")"
  sleep 2
  restart_gw 1 "${GW[0]}"
  AFTER_FROM=$(( t + 2000 ))
}

# 2. SIGTERM another (a drain); restart it once it has exited.
fault_2() {
  local pid
  pid=$(gw_pid "${GW[1]}")
  event 2 drain-gateway "gateway=local-${GW[1]} port=${GW[1]}"
  kill -TERM "$pid"
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then say "gateway ${GW[1]} still running 15 s after SIGTERM"; kill -9 "$pid"; fi
  event 2 exited "port=${GW[1]}"
  restart_gw 2 "${GW[1]}"
  AFTER_FROM=$(ms)
}

# 3. CLUSTER FAILOVER on the replica of one shard (slot 0 with seed 0).
fault_3() {
  local primary replica range out
  wait_settled
  read -r primary replica range < <(shard_of_slot "${SHARD_SLOT[0]}")
  event 3 cluster-failover "primary=$primary replica=$replica slots=$range"
  out=$(rcli "$replica" cluster failover)
  [ "$out" = OK ] || say "CLUSTER FAILOVER answered: $out"
  for _ in $(seq 1 100); do [ "$(role "$replica")" = master ] && break; sleep 0.1; done
  event 3 promoted "port=$replica role=$(role "$replica")"
  wait_settled && event 3 settled
  AFTER_FROM=$(ms)
}

# 4. kill -9 the primary of another shard (slot 5461 with seed 0); revive it 4 s later as a
#    supervisor would: it rejoins as a replica of the node that replaced it.
fault_4() {
  local primary replica range t
  wait_settled
  read -r primary replica range < <(shard_of_slot "${SHARD_SLOT[1]}")
  t=$(ms)
  event 4 kill-primary "primary=$primary replica=$replica slots=$range"
  kill -9 "$(cat "$REDIS_DIR/$primary/redis.pid")"
  for _ in $(seq 1 100); do [ "$(role "$replica")" = master ] && { event 4 promoted "port=$replica"; break; }; sleep 0.1; done
  until_ms $(( t + REVIVE * 1000 ))
  deploy/local/redis-cluster.sh revive "$primary" "$REDIS_BASE" "$REDIS_DIR"
  event 4 revived "port=$primary"
  wait_settled && event 4 settled
  AFTER_FROM=$(ms)
}

# 5. SIGSTOP the primary of the third shard (slot 10923 with seed 0) for longer than
#    cluster-node-timeout, then SIGCONT: it wakes up still a primary for a moment.
fault_5() {
  local primary replica range pid t promoted=0
  wait_settled
  read -r primary replica range < <(shard_of_slot "${SHARD_SLOT[2]}")
  pid=$(cat "$REDIS_DIR/$primary/redis.pid")
  t=$(ms)
  event 5 pause-primary "primary=$primary replica=$replica slots=$range pause=${PAUSE}s"
  kill -STOP "$pid"
  while [ "$(ms)" -lt $(( t + PAUSE * 1000 )) ]; do
    if [ "$promoted" = 0 ] && [ "$(role "$replica")" = master ]; then event 5 promoted "port=$replica"; promoted=1; fi
    sleep 0.1
  done
  kill -CONT "$pid"
  event 5 resumed "port=$primary"
  wait_settled && event 5 settled
  AFTER_FROM=$(ms)
}

# 6. Cut gateway 8183 off from Redis, then restore it.
fault_6() {
  local t
  t=$(ms)
  event 6 cut-gateway "gateway=local-${GW[2]} port=${GW[2]} for=${CUT}s"
  cut
  until_ms $(( t + CUT * 1000 ))
  uncut
  event 6 restored "port=${GW[2]}"
  AFTER_FROM=$(ms)
}

say "seed $SEED: faults ${ORDER[*]}, shards of faults 3-5 by slots ${SHARD_SLOT[*]}, pauses between faults ${GAPS[*]} s, SIGSTOP ${PAUSE} s"
for i in "${!ORDER[@]}"; do
  "fault_${ORDER[$i]}"
  after=${GAPS[$i]}
  [ "$i" = $(( ${#ORDER[@]} - 1 )) ] && after=$(( after + TAIL ))
  until_ms $(( AFTER_FROM + after * 1000 ))
done

# ---- the report ----------------------------------------------------------------------------
echo "$(ms) 0 load-stop" >>"$FAULTS"
touch "$STATE/stop"
say "stopping the load (it listens 6 s more for late deliveries)"
wait "$load_pid"
load_rc=$?
load_pid=""
cat "$STATE/load.log"
[ "$load_rc" = 0 ] || { echo "roomcast-checks chaos failed ($load_rc)" >&2; exit 1; }
cp "$FAULTS" "$RAW/faults.log"
cp "$STATE/load.log" "$RAW/load.log"
for p in "${GW[@]}"; do cp "$STATE/cluster/gateway-$p.log" "$RAW/gateway-$p.log" 2>/dev/null; done
elapsed=$(( ($(ms) - T0) / 1000 ))
report=(python3 deploy/local/chaos_report.py --load "$RAW/chaos.json" --faults "$FAULTS"
  --elapsed "$elapsed" --durable "$DURABLE" --seed "$SEED" --command "${LOAD_CMD[*]}" --gateway-args "$GATEWAY_ARGS"
  --gateway "${CHAOS_GATEWAY_BIN:-target/$PROFILE/roomcast built from $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' plus uncommitted changes')}")
if [ "$QUICK" = 1 ]; then
  "${report[@]}" --quick
else
  "${report[@]}" --out docs/reliability.md
fi
