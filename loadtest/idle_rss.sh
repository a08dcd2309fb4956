#!/usr/bin/env bash
# What idle connections cost one gateway process on its own (embedded backend, no Redis):
# RSS per connection and CPU while idle. Starts a fresh gateway (a process that carried load
# before would reuse freed memory and look cheaper), reads its RSS, opens N clients with
# `roomcast-loadtest connections` (each in one of N/10 rooms, as `make bench`'s idle shape),
# waits until all are established and the gateway has gone quiet, reads its RSS again, then
# its CPU (utime + stime) over an idle window that includes one full ping interval.
#
#   loadtest/idle_rss.sh GATEWAY_BINARY json|msgpack|socketio N [PORT]
#
# Environment: LOADTEST (the loadtest binary; target/release/roomcast-loadtest), WINDOW
# (idle window in seconds; 30), SOURCE_IPS (127.0.0.2-127.0.0.3), GATEWAY_EXTRA (more
# gateway flags). Prints one line: protocol, N, RSS before/after (KiB), KiB per connection,
# idle CPU in % of one core. Ports: use 8950-8999 on the shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$1
proto=$2
n=$3
port=${4:-8951}
lt=${LOADTEST:-target/release/roomcast-loadtest}
window=${WINDOW:-30}
sources=${SOURCE_IPS:-127.0.0.2-127.0.0.3}
secret=idle-rss-secret
hz=$(getconf CLK_TCK)
log=$(mktemp -d "${TMPDIR:-/tmp}/idle-rss.XXXXXX")

# The bench's gateway flags, minus what needs Redis: limits lifted so that only the
# connections are measured.
# shellcheck disable=SC2086
"$bin" --listen "127.0.0.1:$port" --jwt-secret "$secret" --publish-rate 1000000 \
  --publish-burst 1000000 --room-create-limit 1000000 --max-conns-per-ip 0 \
  --traffic-high 1000000 --traffic-critical 1000000 --traffic-cap 1000000 --max-handshake-rate 0 \
  ${GATEWAY_EXTRA:-} >"$log/gateway.log" 2>&1 &
gw=$!
lt_pid=
# Stops both, whatever state they are in (a step that fails here must not skip the next: no
# errexit), and waits for the gateway to be gone so that its port is free for the next run.
stop() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
  set +e
  [ -n "$lt_pid" ] && stop "$lt_pid"
  stop "$gw"
  wait 2>/dev/null
}
trap cleanup EXIT

for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
sleep 1

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$gw/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$gw/stat"; }
established() { ss -Htn state established "( sport = :$port )" | wc -l; }

rss_before=$(rss)
# Held well past the window; killed once it is measured.
"$lt" connections --url "ws://127.0.0.1:$port" --protocol "$proto" --clients "$n" \
  --rooms $(( n / 10 > 0 ? n / 10 : 1 )) --jwt-secret "$secret" --workers 1 \
  --source-ips "$sources" --setup-secs 600 --settle-secs 1 --secs $(( window + 600 )) \
  --quiet >"$log/loadtest.log" 2>&1 &
lt_pid=$!

# Connected: every client established, then the gateway quiet (at most 2 ticks in 2 s, so
# the joins are done too).
started=$(date +%s)
while [ "$(established)" -lt "$n" ]; do
  if ! kill -0 "$lt_pid" 2>/dev/null; then
    echo "loadtest ended early:" >&2
    tail -20 "$log/loadtest.log" >&2
    exit 1
  fi
  sleep 1
done
connect_secs=$(( $(date +%s) - started ))
prev=$(ticks)
while sleep 2; do
  t=$(ticks)
  [ $(( t - prev )) -le 2 ] && break
  prev=$t
done

rss_after=$(rss)
t0=$(ticks)
# The fewest clients held at any point of the window (sampled every 5 s): a client that
# dropped would make the window look cheaper than it is.
held=$n
end=$(( $(date +%s) + window ))
while [ "$(date +%s)" -lt "$end" ]; do
  sleep $(( end - $(date +%s) < 5 ? end - $(date +%s) : 5 ))
  now_held=$(established)
  [ "$now_held" -lt "$held" ] && held=$now_held
done
t1=$(ticks)
rss_end=$(rss)
if ! kill -0 "$lt_pid" 2>/dev/null; then
  echo "loadtest ended during the window:" >&2
  tail -20 "$log/loadtest.log" >&2
fi

awk -v p="$proto" -v n="$n" -v held="$held" -v b="$rss_before" -v a="$rss_after" \
  -v e="$rss_end" -v dt=$(( t1 - t0 )) -v hz="$hz" -v w="$window" -v cs="$connect_secs" 'BEGIN {
  printf "%-8s N=%d held=%d connect=%ds RSS before=%d KiB after=%d KiB (end of window %d KiB) per conn=%.2f KiB; idle CPU %.2f %% of one core over %d s\n",
    p, n, held, cs, b, a, e, (a - b) / n, 100 * dt / hz / w, w
}'
