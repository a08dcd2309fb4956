#!/usr/bin/env bash
# Part of `make test`: every scenario of the load-test tool, tiny, against an embedded node.
# Checks that it runs and that nothing is lost or duplicated; asserts no timing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build -q --workspace --bins
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tmp=$(mktemp -d)
target/debug/roomcast --listen "127.0.0.1:$port" --jwt-secret smoke --publish-rate 100000 --publish-burst 100000 \
  --room-create-limit 100000 --max-conns-per-ip 0 >"$tmp/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
LT=(target/debug/roomcast-loadtest --url "ws://127.0.0.1:$port" --jwt-secret smoke --pids "$node" --quiet --setup-secs 2)
passed=0
check() {
  local name=$1 expr=$2
  shift 2
  "${LT[0]}" "$@" "${LT[@]:1}" --json "$tmp/$name.json" >/dev/null
  python3 - "$tmp/$name.json" "$expr" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
assert eval(sys.argv[2], {}, {"s": s}), f"{sys.argv[2]} failed: {json.dumps(s)[:600]}"
PY
  echo "ok   loadtest $name"
  passed=$((passed + 1))
}
check fanout-json 's["phases"][0]["lost"] == 0 and s["phases"][0]["delivered"] > 0 and s["phases"][0]["duplicates"] == 0 and s["phases"][0]["duplicate_acks"] == 0' \
  fanout --rooms 2 --members 3 --publishers 2 --rate 40 --secs 2
check fanout-msgpack-2-workers 's["phases"][0]["lost"] == 0 and s["clients"] == 6' \
  fanout --rooms 2 --members 3 --publishers 2 --rate 40 --secs 2 --protocol msgpack --workers 2
check broadcast 's["last_member_ms"] is not None and s["phases"][0]["lost"] == 0' \
  broadcast --members 5 --rate 10 --secs 2
check connections 's["clients"] == 20 and s["connect_failures"] == 0 and s["rss_per_connection_bytes"] is not None' \
  connections --clients 20 --rooms 4 --secs 2 --source-ips 127.0.0.2-127.0.0.3
check churn 's["ops_per_sec"] > 0 and sum(s["ops"].values()) > 0' \
  churn --clients 4 --rooms 2 --rate 20 --secs 2
check max 's["max_sustainable_rate"] is not None and len(s["phases"]) == 2 and s["phases"][0]["lost"] == 0' \
  max --rooms 2 --members 3 --publishers 2 --start-rate 20 --factor 2 --steps 2 --step-secs 1
echo "loadtest smoke: $passed passed, 0 failed"
