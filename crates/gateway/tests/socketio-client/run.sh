#!/usr/bin/env bash
# Part of `make test`: a stock socket.io-client (pinned by package-lock.json) against a real
# roomcast process. Installs the client with `npm ci` when needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
cd "$here"
# Installed again when the lock file is newer than what npm installed.
[ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund >/dev/null
cd "$root"
cargo build -q --workspace --bins
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/roomcast --listen "127.0.0.1:$port" --jwt-secret sio-secret --socketio-namespaces /admin >/dev/null 2>&1 &
node_pid=$!
# A second node that runs hot (critical from 2 creations a minute), for the seed app's code.
hot=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/roomcast --listen "127.0.0.1:$hot" --jwt-secret sio-secret --traffic-high 1 \
  --traffic-critical 2 --traffic-cap 3 --traffic-interval 200ms >/dev/null 2>&1 &
hot_pid=$!
trap 'kill $node_pid $hot_pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && curl -sf "127.0.0.1:$hot/readyz" >/dev/null && break; sleep 0.1; done
cd "$here"
ROOMCAST_URL="http://127.0.0.1:$port" ROOMCAST_HOT_URL="http://127.0.0.1:$hot" ROOMCAST_JWT_SECRET=sio-secret \
  timeout 300 node --experimental-websocket --no-warnings --test --test-force-exit socketio.test.mjs polling.test.mjs
