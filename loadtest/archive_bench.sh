#!/usr/bin/env bash
# The archive's cost on the publish path (docs/benchmarks.md, "Archive"): one roomcast gateway
# on a Redis Cluster, driven by roomcast-loadtest's `fanout` (the chat shape of `make bench`:
# 100 rooms of 10, 100 publishers, JSON), at the same offered rates with `--archive none` and
# with `--archive postgres://…`, alternating (none, postgres, none, …) so that the machine's
# drift hits both alike. During each archived run the gateway's /metrics is read every 0.5 s
# for `roomcast_archive_lag_messages` / `_seconds` (their maximum is reported).
#
#   loadtest/archive_bench.sh REDIS_URLS POSTGRES_URL PORT [RUNS] [RATES] [SECS]
#
# REDIS_URLS: seed URLs (deploy/local/redis-cluster.sh urls BASE); POSTGRES_URL: the archive
# (deploy/local/postgres.sh url PORT); PORT: where the gateway listens; RUNS per mode (3);
# RATES: publishes/s, space separated ("500 1500"); SECS per run (15). Needs
# target/release/roomcast and target/release/roomcast-loadtest (cargo build --release -p
# gateway -p roomcast-loadtest). Writes each run's summary to docs/bench/archive-publish-*.txt
# and prints a table of medians.
set -euo pipefail
cd "$(dirname "$0")/.."
redis=$1 pg=$2 port=$3 runs=${4:-3} rates=${5:-500 1500} secs=${6:-15}
RC=target/release/roomcast
LT=target/release/roomcast-loadtest
SECRET=bench-secret
out=docs/bench
mkdir -p "$out"
# The flags of `make bench` (loadtest/bench.sh): per-user limits lifted for the load.
ARGS=(--jwt-secret "$SECRET" --publish-rate 1000000 --publish-burst 1000000
  --room-create-limit 1000000 --max-conns-per-ip 0 --traffic-high 1000000
  --traffic-critical 1000000 --traffic-cap 1000000 --worker-threads 1)
gw=

stop_gateway() {
  if [ -n "$gw" ]; then
    kill -TERM "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    gw=
  fi
}
trap stop_gateway EXIT

# One run: the gateway with `--archive $1`, the load at $2 publishes/s; the summary to $3.
run() {
  local archive=$1 rate=$2 file=$3 sampler lagfile
  "$RC" --listen "127.0.0.1:$port" --node-id "archbench-$port" --redis-cluster "$redis" \
    --archive "$archive" "${ARGS[@]}" >"${TMPDIR:-/tmp}/roomcast-archive-bench.log" 2>&1 &
  gw=$!
  for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  lagfile=$(mktemp)
  (
    while sleep 0.5; do
      curl -sf "127.0.0.1:$port/metrics" |
        awk '/^roomcast_archive_lag_(messages|seconds) / { printf "%s %s ", $1, $2 } END { print "" }'
    done
  ) >"$lagfile" 2>/dev/null &
  sampler=$!
  "$LT" fanout --url "ws://127.0.0.1:$port" --protocol json --jwt-secret "$SECRET" \
    --rooms 100 --members 10 --publishers 100 --rate "$rate" --secs "$secs" --setup-secs 60 \
    --quiet >"$file"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  awk '{ for (i = 1; i < NF; i += 2) if ($(i+1) > max[$i]) max[$i] = $(i+1) }
       END { printf "  archive lag (max of 0.5 s samples): messages %d, seconds %d\n",
             max["roomcast_archive_lag_messages"], max["roomcast_archive_lag_seconds"] }' \
    "$lagfile" >>"$file"
  rm -f "$lagfile"
  stop_gateway
}

for rate in $rates; do
  for i in $(seq 1 "$runs"); do
    for mode in none postgres; do
      file="$out/archive-publish-$mode-$rate-$i.txt"
      if [ "$mode" = none ]; then run none "$rate" "$file"; else run "$pg" "$rate" "$file"; fi
      echo "== $mode $rate/s run $i" >&2
      grep -E "rate|lag" "$file" >&2
    done
  done
done

# Medians per mode and rate: delivered/s, p50, p99 (ms); the archive's maximum lag.
python3 - "$out" "$runs" $rates <<'EOF'
import re, statistics, sys
out, runs, rates = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def parse(path):
    text = open(path).read()
    m = re.search(r"delivered \d+ \(([\d.]+)/s\).*?p50 ([\d.]+) p90 [\d.]+ p99 ([\d.]+)", text)
    lag = re.search(r"messages (\d+), seconds (\d+)", text)
    return float(m[1]), float(m[2]), float(m[3]), int(lag[1]), int(lag[2])
print("| offered publishes/s | archive | delivered/s (median) | p50 ms | p99 ms | max lag (messages / s) |")
print("|---|---|---|---|---|---|")
for rate in rates:
    med = {}
    for mode in ["none", "postgres"]:
        rows = [parse(f"{out}/archive-publish-{mode}-{rate}-{i}.txt") for i in range(1, runs + 1)]
        med[mode] = [statistics.median(c) for c in zip(*rows)]
        d, p50, p99, lm, ls = med[mode]
        lag = f"{max(r[3] for r in rows)} / {max(r[4] for r in rows)}" if mode == "postgres" else "-"
        print(f"| {rate} | {mode} | {d:,.0f} | {p50:.2f} | {p99:.2f} | {lag} |")
    n, p = med["none"], med["postgres"]
    print(f"| {rate} | postgres / none | {p[0]/n[0]:.3f}x | {p[1]/n[1]:.2f}x | {p[2]/n[2]:.2f}x | |")
EOF
