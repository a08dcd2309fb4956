#!/usr/bin/env bash
# What the app's back-end hooks cost (docs/benchmarks.md, "Back-end hooks"): release roomcast
# gateways on a Redis Cluster, a Node app answering the proxies' contract (loadtest/hooks/app.js,
# docs/protocol.md "The app's proxies") and, for the publish shapes, roomcast-loadtest.
#
#   loadtest/hooks.sh REDIS_URLS GATEWAY_PORT APP_PORT
#
# REDIS_URLS: seed URLs (deploy/local/redis-cluster.sh urls BASE). Gateways listen on
# GATEWAY_PORT and GATEWAY_PORT+1; the app on APP_PORT (accepting) and APP_PORT+1 (rewriting).
#
# Shapes (SHAPES, "connect max steady"), each REPEATS times (3), modes alternating within a
# repeat (their order reversed every other repeat) so that a shared machine's drift hits all:
#   connect  two gateways up at once, one without and one with `--connect-proxy`, and
#            loadtest/hooks/connect.js opening CONNECTS (1000) connections to each, interleaved,
#            one at a time, timed to admission (native `welcome`; Socket.IO the namespace's
#            CONNECT answer), for each of PROTOCOLS ("native socketio"). Summaries in
#            docs/bench/hooks-connect-PROTOCOL-RUN.txt.
#   max      one fresh gateway per run and mode (MODES, "off proxy rewrite webhook"):
#              off      no hook;
#              proxy    `--publish-proxy` on half of the chat rooms (50 of 100, by
#                       `--publish-proxy-rooms` patterns on the run's room names), app accepting;
#              rewrite  the same, the app answering every publish with a rewrite (its own data);
#              webhook  `--webhook-url` (publishes make no events: the background cost of
#                       delivery, and the join/online events of the setup);
#            `roomcast-loadtest max` as `make bench` runs the chat shape (100 rooms of 10, 100
#            publishers, JSON; steps ×1.5 from START_RATE (100/s), 6 s each, stopped after the
#            first failed step; sustained: p99 <= 50 ms and >= 99.9 % delivered). Summaries in
#            docs/bench/hooks-max-MODE-RUN.txt (hooks-maxTAG-… with TAG set). FACTOR (1.5): a
#            smaller growth factor from a higher START_RATE resolves rates between make bench's
#            steps.
#   steady   the same gateways and modes, `roomcast-loadtest fanout` at RATE publishes/s (500)
#            for SECS (20): p50, p99, SUT CPU-µs per delivered message. Summaries in
#            docs/bench/hooks-steady-MODE-RATE-RUN.txt.
#
# Environment: SUT_PIDS (pids of the servers behind the gateways, the redis-server processes:
# pinned and sampled with them), SUT_CPU / GEN_CPU (pin the gateways and SUT_PIDS to SUT_CPU,
# `taskset -a -pc`, and the load generator, connect.js and the app to GEN_CPU, `taskset -c`, as
# loadtest/bench.sh does; unset: no pinning). Needs target/release/roomcast and
# target/release/roomcast-loadtest (cargo build --release --workspace --bins) and node >= 20.
set -euo pipefail
cd "$(dirname "$0")/.."
redis=$1 gw_port=$2 app_port=$3
RC=${RC:-target/release/roomcast}
LT=${LT:-target/release/roomcast-loadtest}
repeats=${REPEATS:-3}
read -r -a shapes <<<"${SHAPES:-connect max steady}"
read -r -a modes <<<"${MODES:-off proxy rewrite webhook}"
read -r -a protocols <<<"${PROTOCOLS:-native socketio}"
connects=${CONNECTS:-1000}
rate=${RATE:-500}
secs=${SECS:-20}
SECRET=bench-secret
out=docs/bench
work=$(mktemp -d "${TMPDIR:-/tmp}/hooks-bench.XXXXXX")
mkdir -p "$out"
# The flags of `make bench` (loadtest/bench.sh): per-user limits lifted for the load.
ARGS=(--jwt-secret "$SECRET" --publish-rate 1000000 --publish-burst 1000000
  --room-create-limit 1000000 --max-conns-per-ip 0 --traffic-high 1000000
  --traffic-critical 1000000 --traffic-cap 1000000 --worker-threads 1
  --max-handshake-rate 0 --drain-delay 0s --drain-window 1s --drain-deadline 3s)
gen=()
[ -n "${GEN_CPU:-}" ] && gen=(taskset -c "$GEN_CPU")
gws=()
apps=()

stop_gateways() {
  local p
  for p in "${gws[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${gws[@]}"; do wait "$p" 2>/dev/null || true; done
  gws=()
}
cleanup() {
  set +e
  stop_gateways
  for p in "${apps[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

pin_sut() {
  local p
  [ -n "${SUT_CPU:-}" ] || return 0
  for p in "${gws[@]}" ${SUT_PIDS:-}; do taskset -a -pc "$SUT_CPU" "$p" >/dev/null 2>&1 || true; done
}

# start_gateway PORT FLAGS...: a fresh gateway, ready.
start_gateway() {
  local port=$1
  shift
  "$RC" --listen "127.0.0.1:$port" --node-id "hooks-$port" --redis-cluster "$redis" \
    "${ARGS[@]}" "$@" >>"$work/gateway-$port.log" 2>&1 &
  gws+=($!)
  for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "127.0.0.1:$port/readyz" >/dev/null || { echo "gateway on $port not ready" >&2; tail "$work/gateway-$port.log" >&2; exit 1; }
}

# Half of the chat shape's 100 rooms (`lt-RUN-0` … `lt-RUN-99`, loadtest/src/engine.rs):
# 10-19, 20-29, 30-39, 40-49 and 1-4 by prefix (44), 0 and 5-9 by name (6).
half_rooms() {
  local r=$1
  echo "lt-$r-1*,lt-$r-2*,lt-$r-3*,lt-$r-4*,lt-$r-0,lt-$r-5,lt-$r-6,lt-$r-7,lt-$r-8,lt-$r-9"
}

# The gateway flags of a publish mode for the run named $2.
mode_flags() {
  case $1 in
    off) ;;
    proxy) echo "--publish-proxy http://127.0.0.1:$app_port/publish --publish-proxy-rooms $(half_rooms "$2")" ;;
    rewrite) echo "--publish-proxy http://127.0.0.1:$((app_port + 1))/publish --publish-proxy-rooms $(half_rooms "$2")" ;;
    webhook) echo "--webhook-url http://127.0.0.1:$app_port/hooks" ;;
  esac
}

"${gen[@]}" node loadtest/hooks/app.js "$app_port" accept &
apps+=($!)
"${gen[@]}" node loadtest/hooks/app.js "$((app_port + 1))" rewrite &
apps+=($!)
for _ in $(seq 1 50); do curl -sf "127.0.0.1:$((app_port + 1))/count" >/dev/null 2>&1 && break; sleep 0.1; done

# One publish run: shape $1 (max|steady), mode $2, repeat $3.
publish_run() {
  local shape=$1 mode=$2 rep=$3 name file load
  name="h$shape$mode$rep$(date +%s)"
  # shellcheck disable=SC2046 # mode_flags is a list of flags without spaces inside
  start_gateway "$gw_port" $(mode_flags "$mode" "$name")
  pin_sut
  if [ "$shape" = max ]; then
    file="$out/hooks-max${TAG:-}-$mode-$rep.txt"
    load=(max --start-rate "${START_RATE:-100}" --factor "${FACTOR:-1.5}" --steps 14 --step-secs 6
      --stop-after-failed 1 --p99-bound-ms 50 --min-delivered 0.999)
  else
    file="$out/hooks-steady-$mode-$rate-$rep.txt"
    load=(fanout --rate "$rate" --secs "$secs")
  fi
  local a0 a1
  a0=$(curl -s "127.0.0.1:$app_port/count"; curl -s "127.0.0.1:$((app_port + 1))/count")
  "${gen[@]}" "$LT" "${load[@]}" --url "ws://127.0.0.1:$gw_port" --protocol json \
    --jwt-secret "$SECRET" --rooms 100 --members 10 --publishers 100 --setup-secs 60 \
    --run-name "$name" --gateway-pids "${gws[0]}" --pids "$(echo ${SUT_PIDS:-} | tr ' ' ',')" \
    --quiet >"$file"
  a1=$(curl -s "127.0.0.1:$app_port/count"; curl -s "127.0.0.1:$((app_port + 1))/count")
  {
    echo "  mode $mode: $(mode_flags "$mode" "$name")"
    echo "  app requests before: $(echo $a0) after: $(echo $a1)"
    curl -s "127.0.0.1:$gw_port/metrics" | grep -E '^roomcast_proxy_requests_total|^roomcast_webhook_events_total' | sed 's/^/  /'
    echo "  load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  } >>"$file"
  stop_gateways
  echo "== $shape $mode run $rep" >&2
  grep -E "highest|rate .*/s:" "$file" | tail -2 >&2
}

for rep in $(seq 1 "$repeats"); do
  order=("${modes[@]}")
  if [ $((rep % 2)) = 0 ]; then
    order=()
    for ((i = ${#modes[@]} - 1; i >= 0; i--)); do order+=("${modes[i]}"); done
  fi
  for shape in "${shapes[@]}"; do
    case $shape in
      connect)
        start_gateway "$gw_port"
        start_gateway "$((gw_port + 1))" --connect-proxy "http://127.0.0.1:$app_port/connect"
        pin_sut
        for proto in "${protocols[@]}"; do
          file="$out/hooks-connect-$proto-$rep.txt"
          "${gen[@]}" node --experimental-websocket --no-warnings loadtest/hooks/connect.js \
            "$proto" "$connects" "$SECRET" "ws://127.0.0.1:$gw_port" "ws://127.0.0.1:$((gw_port + 1))" >"$file"
          {
            echo "a: without --connect-proxy (port $gw_port), b: with (port $((gw_port + 1)))"
            curl -s "127.0.0.1:$((gw_port + 1))/metrics" | grep -E '^roomcast_proxy_requests_total'
            echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
          } >>"$file"
          echo "== connect $proto run $rep" >&2
          head -1 "$file" >&2
        done
        stop_gateways
        ;;
      max | steady)
        for mode in "${order[@]}"; do publish_run "$shape" "$mode" "$rep"; done
        ;;
    esac
  done
done

# Medians over the repeats, and ratios to `off` (publish) or to the gateway without the proxy.
python3 - "$out" "$repeats" "$rate" "${TAG:-}" "${shapes[*]}" "${modes[*]}" "${protocols[*]}" <<'EOF'
import json, os, re, statistics, sys
out, reps, rate, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
shapes, modes, protos = (a.split() for a in sys.argv[5:])
med = statistics.median
if "connect" in shapes:
    print("| protocol | proxy | median ms (runs) | median | p99 ms (runs) | median p99 | errors |")
    print("|---|---|---|---|---|---|---|")
    for p in protos:
        runs = [json.loads(open(f"{out}/hooks-connect-{p}-{i}.txt").readline()) for i in range(1, reps + 1)]
        for k, label in (("a", "without"), ("b", "with")):
            m = [r[k]["median_ms"] for r in runs]
            q = [r[k]["p99_ms"] for r in runs]
            print(f"| {p} | {label} | {' / '.join('%.2f' % x for x in m)} | {med(m):.2f} | {' / '.join('%.2f' % x for x in q)} | {med(q):.2f} | {sum(r[k]['errors'] for r in runs)} |")
        ma, mb = med([r["a"]["median_ms"] for r in runs]), med([r["b"]["median_ms"] for r in runs])
        qa, qb = med([r["a"]["p99_ms"] for r in runs]), med([r["b"]["p99_ms"] for r in runs])
        print(f"| {p} | with ÷ without | | {mb / ma:.2f}x (+{mb - ma:.2f} ms) | | {qb / qa:.2f}x | |")
if "max" in shapes:
    print("\n| mode | highest sustainable publishes/s (runs) | median | ratio to off |")
    print("|---|---|---|---|")
    best = {}
    for m in modes:
        rs = []
        for i in range(1, reps + 1):
            h = re.search(r"highest sustainable publish rate: (\d+)/s", open(f"{out}/hooks-max{tag}-{m}-{i}.txt").read())
            rs.append(int(h[1]) if h else 0)
        best[m] = med(rs)
        ratio = f"{best[m] / best['off']:.2f}x" if best.get("off") else ""
        print(f"| {m} | {' / '.join(map(str, rs))} | {best[m]:.0f} | {ratio} |")
if "steady" in shapes:
    print(f"\n| mode ({rate}/s) | delivered/s | p50 ms (runs) | median p50 | p99 ms (runs) | median p99 | SUT CPU-µs/delivered (median) |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for m in modes:
        rows = []
        for i in range(1, reps + 1):
            t = open(f"{out}/hooks-steady-{m}-{rate}-{i}.txt").read()
            x = re.search(r"delivered \d+ \(([\d.]+)/s\).*?p50 ([\d.]+) p90 [\d.]+ p99 ([\d.]+)", t)
            c = re.search(r"SUT ([\d.]+) CPU-µs/delivered", t)
            rows.append((float(x[1]), float(x[2]), float(x[3]), float(c[1]) if c else 0.0))
        d, p50, p99, cpu = (med(c) for c in zip(*rows))
        print(f"| {m} | {d:,.0f} | {' / '.join('%.2f' % r[1] for r in rows)} | {p50:.2f} | {' / '.join('%.2f' % r[2] for r in rows)} | {p99:.2f} | {cpu:.1f} |")
        if m == "off":
            base = (p50, p99, cpu)
        elif base:
            print(f"| {m} ÷ off | | | {p50 / base[0]:.2f}x | | {p99 / base[1]:.2f}x | {cpu / base[2]:.2f}x |" if base[2] else "")
EOF
