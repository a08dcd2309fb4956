#!/usr/bin/env bash
# What webhooks cost and how fast they go (docs/benchmarks.md, "Webhooks"), on 3 gateways and
# a 6-process Redis Cluster of this machine, driven by roomcast-loadtest:
#
#   churn    clients create, join, publish, leave and reconnect at RATE ops/s in all (each
#            client waits for its answer, then 1/rate-per-client): ops/s answered without
#            error, with and without --webhook-url. (Asking far more than the gateways answer
#            makes reconnects fail and the runs measure errors, not ops.) Every
#            op but publish makes events (joins, leaves, online/offline on reconnects).
#   publish  the `max` chat shape (rooms of 10), steps x1.5: the highest publish rate whose
#            step kept p99 <= 50 ms and 99.9% delivered, with and without --webhook-url
#            (publishes make no events: this is the background cost of delivery).
#   lag      during each churn run with webhooks, roomcast_webhook_lag_seconds (max over the
#            nodes) sampled every second, and the app's received events/s.
#   drain    once: the app answers 503 during a churn run; then fresh gateways deliver the
#            backlog to the app answering 204: events/s until the queue is empty (16 shards,
#            one batch of 100 in flight each).
#
# Each (shape, mode) runs REPEATS times, alternating modes so that the machine's noise falls
# on both; the page reports medians and the on/off ratio. Gateways restart fresh per run.
#
#   loadtest/webhooks.sh [GATEWAY_BINARY]
#
# Environment: LOADTEST (target/release/roomcast-loadtest), REPEATS (3), BASE (Redis ports
# BASE..BASE+5, 9800; gateways BASE+11..BASE+13; the recording app BASE+30), SECS (churn
# seconds, 15), CLIENTS (churn clients, 200), RATE (churn ops/s asked, 3000), SHAPES ("churn publish"), DRAIN (1).
# Prints one line per run and the medians; raw lines go to target/bench/webhooks.txt.
# Keep --setup-secs of churn under the gateways' ping interval (25 s): churners do not read
# while they wait for the start, so a longer wait gets them closed and every op fails `io`.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-target/release/roomcast}
lt=${LOADTEST:-target/release/roomcast-loadtest}
repeats=${REPEATS:-3}
base=${BASE:-9800}
secs=${SECS:-15}
clients=${CLIENTS:-200}
rate=${RATE:-3000}
read -r -a shapes <<<"${SHAPES:-churn publish}"
ports=($((base + 11)) $((base + 12)) $((base + 13)))
urls=ws://127.0.0.1:${ports[0]},ws://127.0.0.1:${ports[1]},ws://127.0.0.1:${ports[2]}
app_port=$((base + 30))
secret=wh-bench-secret
out=target/bench/webhooks.txt
work=$(mktemp -d "${TMPDIR:-/tmp}/wh-bench.XXXXXX")
mkdir -p target/bench
: >"$out"

# The recording app: counts the events of every POST (a JSON array); answers 503 while
# $work/down exists, else 204. Writes "total" to $work/count after each POST.
cat >"$work/app.py" <<'EOF'
import http.server, json, os, sys, threading
work, port = sys.argv[1], int(sys.argv[2])
lock, total = threading.Lock(), [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if os.path.exists(work + "/down"):
            self.send_response(503); self.send_header("content-length", "0"); self.end_headers(); return
        n = len(json.loads(body))
        with lock:
            total[0] += n
            with open(work + "/count.tmp", "w") as f: f.write(str(total[0]))
            os.replace(work + "/count.tmp", work + "/count")
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
EOF

gw_pids=()
app_pid=
cleanup() {
  set +e
  stop_gateways
  [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null
  deploy/local/redis-cluster.sh stop "$base" >/dev/null 2>&1
  wait 2>/dev/null
  # The gateways' logs stay for a look when KEEP=1.
  [ "${KEEP:-0}" = 1 ] && echo "logs: $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

stop_gateways() {
  local p
  for p in "${gw_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${gw_pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  gw_pids=()
}

# start_gateways on|off: fresh gateways (make bench's limits lifted), webhooks as asked.
start_gateways() {
  local p extra=()
  [ "$1" = on ] && extra=(--webhook-url "http://127.0.0.1:$app_port/hooks")
  for p in "${ports[@]}"; do
    ROOMCAST_REDIS_CLUSTER=$(deploy/local/redis-cluster.sh urls "$base") "$bin" \
      --listen "127.0.0.1:$p" --node-id "whb-$p" --jwt-secret "$secret" \
      --publish-rate 1000000 --publish-burst 1000000 --room-create-limit 1000000 \
      --max-conns-per-ip 0 --traffic-high 1000000 --traffic-critical 1000000 \
      --traffic-cap 1000000 --worker-threads 1 --drain-delay 1s --drain-window 2s --drain-deadline 5s \
      "${extra[@]}" >>"$work/gateway-$p.log" 2>&1 &
    gw_pids+=($!)
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 1 200); do
      curl -sf "http://127.0.0.1:$p/readyz" >/dev/null && break
      sleep 0.1
    done
  done
}

# A metric summed (or, with max, maxed) over the gateways.
metric() {
  local name=$1 how=${2:-sum} p
  for p in "${ports[@]}"; do curl -s "http://127.0.0.1:$p/metrics" || true; done |
    awk -v n="$name" -v how="$how" '$1 == n { v = $2 + 0; if (how == "max") { if (v > r) r = v } else r += v } END { printf "%.3f\n", r + 0 }'
}
count() { cat "$work/count" 2>/dev/null || echo 0; }

# Waits until the app has received (since it had $1) every event these gateways queued (at
# most 120 s); prints the seconds.
drained() {
  local t0 q
  t0=$(date +%s.%N)
  for _ in $(seq 1 1200); do
    q=$(metric 'roomcast_webhook_events_total{result="queued"}')
    [ $(($(count) - $1)) -ge "${q%.*}" ] && break
    sleep 0.1
  done
  echo "$(date +%s.%N) - $t0" | bc
}

churn() {
  "$lt" churn --url "$urls" --protocol json --jwt-secret "$secret" --clients "$clients" \
    --rooms 50 --rate "$rate" --secs "$secs" --setup-secs 20 --quiet --json "$work/lt.json" >/dev/null
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["report"]; ok = sum(r["ops"].values()) - sum(r["errors"].values()); print("%.0f" % (ok / r["elapsed_seconds"]), end=" "); print(",".join("%s:%d" % e for e in r["errors"].items()) or "-")' "$work/lt.json"
}

publish() {
  "$lt" max --url "$urls" --protocol json --jwt-secret "$secret" --rooms 100 --members 10 \
    --publishers 100 --start-rate 1000 --factor 1.5 --steps 8 --step-secs 3 --warmup-secs 2 \
    --setup-secs 60 --stop-after-failed 1 --p99-bound-ms 50 --min-delivered 0.999 \
    --quiet --json "$work/lt.json" >/dev/null
  # The highest step rate (publishes/s) that kept p99 <= 50 ms with 99.9% delivered.
  python3 - "$work/lt.json" <<'EOF'
import json, sys
best = 0
for ph in json.load(open(sys.argv[1]))["report"]["phases"]:
    hist = ph["latency"]
    n = sum(c for _, c in hist)
    seen, p99 = 0, 0
    for v, c in hist:
        seen += c
        if seen >= 0.99 * n:
            p99 = v
            break
    ok = ph["expected"] and ph["delivered"] >= 0.999 * ph["expected"] and p99 <= 50_000
    if ok:
        best = max(best, ph["rate"])
print("%.0f" % best)
EOF
}

deploy/local/redis-cluster.sh start "$base" >/dev/null
python3 "$work/app.py" "$work" "$app_port" &
app_pid=$!

record() { echo "$*" | tee -a "$out"; }
for rep in $(seq 1 "$repeats"); do
  for shape in "${shapes[@]}"; do
    # Alternate which mode goes first, so a drift of the machine's load hits both.
    modes=(off on)
    [ $((rep % 2)) = 0 ] && modes=(on off)
    for mode in "${modes[@]}"; do
      start_gateways "$mode"
      if [ "$shape" = churn ] && [ "$mode" = on ]; then
        c0=$(count)
        ( for _ in $(seq 1 "$secs"); do metric roomcast_webhook_lag_seconds max; sleep 1; done ) >"$work/lag" &
        sampler=$!
        read -r ops errs < <(churn)
        wait "$sampler" || true
        c1=$(count)
        tail_s=$(drained "$c0")
        lag=$(sort -g "$work/lag" | awk '{a[NR]=$1} END {printf "%s %s", a[int((NR+1)/2)], a[NR]}')
        record "churn on rep=$rep ops_per_s=$ops errors=$errs delivered_per_s=$(((c1 - c0) / secs)) lag_median_s=${lag% *} lag_max_s=${lag#* } backlog_drained_in_s=$tail_s"
      elif [ "$shape" = churn ]; then
        read -r ops errs < <(churn)
        record "churn off rep=$rep ops_per_s=$ops errors=$errs"
      else
        record "publish $mode rep=$rep max_rate=$(publish)"
      fi
      stop_gateways
    done
  done
done

# Drain: a backlog made while the app was down (503), delivered by fresh gateways (no backoff
# carried over from the failures) to the app back up: events/s from their start to an empty
# queue (sum of XLEN over the 16 streams).
backlog() {
  local k n=0
  for k in $(seq 0 15); do
    n=$((n + $(redis-cli -c -p "$base" XLEN "rc:{q:wh:$k}")))
  done
  echo "$n"
}
if [ "${DRAIN:-1}" = 1 ]; then
  start_gateways on
  touch "$work/down"
  churn >/dev/null
  stop_gateways
  rm -f "$work/down"
  t0=$(date +%s.%N)
  start_gateways on
  n=$(backlog)
  for _ in $(seq 1 1200); do [ "$(backlog)" = 0 ] && break; sleep 0.1; done
  s=$(echo "$(date +%s.%N) - $t0" | bc)
  record "drain backlog=$n seconds=$s events_per_s=$(echo "$n / $s" | bc)"
  stop_gateways
fi

# Medians and ratios.
python3 - "$out" <<'EOF'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] in ("churn", "publish"):
        kv = dict(x.split("=") for x in f[2:])
        rows.setdefault((f[0], f[1]), []).append(kv)
def med(shape, mode, key):
    v = [float(r[key]) for r in rows.get((shape, mode), []) if key in r]
    return statistics.median(v) if v else 0
for shape, key in (("churn", "ops_per_s"), ("publish", "max_rate")):
    off, on = med(shape, "off", key), med(shape, "on", key)
    if off:
        print(f"median {shape} {key}: off={off:.0f} on={on:.0f} ratio={on / off:.2f}")
if ("churn", "on") in rows:
    for key in ("delivered_per_s", "lag_median_s", "lag_max_s", "backlog_drained_in_s"):
        print(f"median churn on {key}={med('churn', 'on', key):g}")
EOF
