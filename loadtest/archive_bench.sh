#!/usr/bin/env bash
# The archive's cost on the publish path (docs/benchmarks.md, "Archive"): one roomcast gateway
# on a Redis Cluster, driven by roomcast-loadtest in the chat shape of `make bench` (100 rooms
# of 10, 100 publishers, JSON), with `--archive none` and with `--archive postgres://…`,
# alternating (none, postgres, none, …) so that the machine's drift hits both alike. During
# each run the gateway's /metrics is read every 0.5 s for `roomcast_archive_lag_messages` /
# `_seconds` (their maximum is reported).
#
#   loadtest/archive_bench.sh REDIS_URLS POSTGRES_URL PORT [RUNS] [RATES] [SECS]
#
# REDIS_URLS: seed URLs (deploy/local/redis-cluster.sh urls BASE); POSTGRES_URL: the archive
# (deploy/local/postgres.sh url PORT); PORT: where the gateway listens; RUNS per mode (3);
# RATES: publishes/s, space separated ("500 1500"); SECS per run (15). Needs
# target/release/roomcast and target/release/roomcast-loadtest (cargo build --release
# --workspace --bins).
#
# Environment:
#   MODE=fanout (default) each rate of RATES for SECS: delivered/s, p50, p99, SUT CPU-µs per
#               delivered message; summaries in docs/bench/archive-publish-MODE-RATE-RUN.txt.
#   MODE=max    `roomcast-loadtest max` as `make bench` runs the chat shape (steps ×1.5 from
#               START_RATE, 100/s, 6 s each, stopped after the first failed step; a step is
#               sustained with p99 <= 50 ms and >= 99.9 % delivered): the highest sustainable
#               publish rate; summaries in docs/bench/archive-max-MODE-RUN.txt
#               (archive-maxTAG-… with TAG set). RATES and SECS are ignored. FACTOR (1.5): a
#               smaller growth factor from a higher START_RATE resolves rates between make
#               bench's steps.
#   SUT_PIDS    pids of the servers behind the gateway (the redis-server processes, the
#               postmaster): with their children at each run's start, they are the system under
#               test with the gateway, for CPU figures and pinning.
#   SUT_CPU, GEN_CPU  pin the gateway and SUT_PIDS (every thread, `taskset -a -pc`) to
#               SUT_CPU and the load generator to GEN_CPU (`taskset -c`), as loadtest/bench.sh
#               does; unset: no pinning.
set -euo pipefail
cd "$(dirname "$0")/.."
redis=$1 pg=$2 port=$3 runs=${4:-3} rates=${5:-500 1500} secs=${6:-15}
mode=${MODE:-fanout}
RC=${RC:-target/release/roomcast}
LT=${LT:-target/release/roomcast-loadtest}
SECRET=bench-secret
out=docs/bench
mkdir -p "$out"
# The flags of `make bench` (loadtest/bench.sh): per-user limits lifted for the load.
ARGS=(--jwt-secret "$SECRET" --publish-rate 1000000 --publish-burst 1000000
  --room-create-limit 1000000 --max-conns-per-ip 0 --traffic-high 1000000
  --traffic-critical 1000000 --traffic-cap 1000000 --worker-threads 1)
gen=()
[ -n "${GEN_CPU:-}" ] && gen=(taskset -c "$GEN_CPU")
gw=

stop_gateway() {
  if [ -n "$gw" ]; then
    kill -TERM "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    gw=
  fi
}
trap stop_gateway EXIT

# The system under test's pids, comma separated: SUT_PIDS and their children (PostgreSQL's
# backends, one per pooled connection of the gateway, exist once the gateway is up).
sut_pids() {
  local p all=""
  for p in ${SUT_PIDS:-}; do
    all="$all $p $(ps --ppid "$p" -o pid= 2>/dev/null | tr '\n' ' ')"
  done
  echo $all | tr ' ' ','
}

# One run: the gateway with `--archive $1`; the load (`$2`: a rate, or "max"); the summary to $3.
run() {
  local archive=$1 rate=$2 file=$3 sampler lagfile p load
  "$RC" --listen "127.0.0.1:$port" --node-id "archbench-$port" --redis-cluster "$redis" \
    --archive "$archive" "${ARGS[@]}" >"${TMPDIR:-/tmp}/roomcast-archive-bench.log" 2>&1 &
  gw=$!
  for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  if [ -n "${SUT_CPU:-}" ]; then
    for p in $gw $(sut_pids | tr ',' ' '); do taskset -a -pc "$SUT_CPU" "$p" >/dev/null 2>&1 || true; done
  fi
  lagfile=$(mktemp)
  (
    while sleep 0.5; do
      curl -sf "127.0.0.1:$port/metrics" |
        awk '/^roomcast_archive_lag_(messages|seconds) / { printf "%s %s ", $1, $2 } END { print "" }'
    done
  ) >"$lagfile" 2>/dev/null &
  sampler=$!
  if [ "$rate" = max ]; then
    load=(max --start-rate "${START_RATE:-100}" --factor "${FACTOR:-1.5}" --steps 14 --step-secs 6
      --stop-after-failed 1 --p99-bound-ms 50 --min-delivered 0.999)
  else
    load=(fanout --rate "$rate" --secs "$secs")
  fi
  "${gen[@]}" "$LT" "${load[@]}" --url "ws://127.0.0.1:$port" --protocol json \
    --jwt-secret "$SECRET" --rooms 100 --members 10 --publishers 100 --setup-secs 60 \
    --gateway-pids "$gw" --pids "$(sut_pids)" --quiet >"$file"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  awk '{ for (i = 1; i < NF; i += 2) if ($(i+1) > max[$i]) max[$i] = $(i+1) }
       END { printf "  archive lag (max of 0.5 s samples): messages %d, seconds %d\n",
             max["roomcast_archive_lag_messages"], max["roomcast_archive_lag_seconds"] }' \
    "$lagfile" >>"$file"
  echo "  load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$file"
  rm -f "$lagfile"
  stop_gateway
}

if [ "$mode" = max ]; then
  for i in $(seq 1 "$runs"); do
    for m in none postgres; do
      file="$out/archive-max${TAG:-}-$m-$i.txt"
      if [ "$m" = none ]; then run none max "$file"; else run "$pg" max "$file"; fi
      echo "== $m max run $i" >&2
      grep -E "highest|lag|load average" "$file" >&2
    done
  done
  python3 - "$out" "$runs" "${TAG:-}" <<'PY'
import re, statistics, sys
out, runs, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
med = {}
print("| archive | highest sustainable publishes/s (runs) | median | delivered/s | max lag (messages / s) |")
print("|---|---|---|---|---|")
for m in ["none", "postgres"]:
    rows = []
    for i in range(1, runs + 1):
        text = open(f"{out}/archive-max{tag}-{m}-{i}.txt").read()
        h = re.search(r"highest sustainable publish rate: (\d+)/s \((\d+) delivered", text)
        lag = re.search(r"messages (\d+), seconds (\d+)", text)
        rows.append((int(h[1]) if h else 0, int(h[2]) if h else 0, int(lag[1]), int(lag[2])))
    med[m] = statistics.median(r[0] for r in rows)
    lag = f"{max(r[2] for r in rows)} / {max(r[3] for r in rows)}" if m == "postgres" else "-"
    print(f"| {m} | {' / '.join(str(r[0]) for r in rows)} | {med[m]:.0f} | {statistics.median(r[1] for r in rows):.0f} | {lag} |")
if med["none"]:
    print(f"| postgres / none | | {med['postgres'] / med['none']:.2f}x | | |")
PY
  exit 0
fi

for rate in $rates; do
  for i in $(seq 1 "$runs"); do
    for m in none postgres; do
      file="$out/archive-publish-$m-$rate-$i.txt"
      if [ "$m" = none ]; then run none "$rate" "$file"; else run "$pg" "$rate" "$file"; fi
      echo "== $m $rate/s run $i" >&2
      grep -E "rate|lag" "$file" >&2
    done
  done
done

# Medians per mode and rate: delivered/s, p50, p99 (ms), SUT CPU-µs per delivered message
# (when SUT_PIDS or the gateway were sampled); the archive's maximum lag.
python3 - "$out" "$runs" $rates <<'EOF'
import re, statistics, sys
out, runs, rates = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def parse(path):
    text = open(path).read()
    m = re.search(r"delivered \d+ \(([\d.]+)/s\).*?p50 ([\d.]+) p90 [\d.]+ p99 ([\d.]+)", text)
    cpu = re.search(r"SUT ([\d.]+) CPU-µs/delivered", text)
    lag = re.search(r"messages (\d+), seconds (\d+)", text)
    return float(m[1]), float(m[2]), float(m[3]), float(cpu[1]) if cpu else 0.0, int(lag[1]), int(lag[2])
print("| offered publishes/s | archive | delivered/s (median) | p50 ms | p99 ms | SUT CPU-µs/delivered | max lag (messages / s) |")
print("|---|---|---|---|---|---|---|")
for rate in rates:
    med = {}
    for mode in ["none", "postgres"]:
        rows = [parse(f"{out}/archive-publish-{mode}-{rate}-{i}.txt") for i in range(1, runs + 1)]
        med[mode] = [statistics.median(c) for c in zip(*rows)]
        d, p50, p99, cpu, lm, ls = med[mode]
        lag = f"{max(r[4] for r in rows)} / {max(r[5] for r in rows)}" if mode == "postgres" else "-"
        print(f"| {rate} | {mode} | {d:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.1f} | {lag} |")
    n, p = med["none"], med["postgres"]
    cpu = f"{p[3]/n[3]:.2f}x" if n[3] else ""
    print(f"| {rate} | postgres / none | {p[0]/n[0]:.3f}x | {p[1]/n[1]:.2f}x | {p[2]/n[2]:.2f}x | {cpu} | |")
EOF
