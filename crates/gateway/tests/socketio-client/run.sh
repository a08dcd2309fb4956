#!/usr/bin/env bash
# Part of `make test`: a stock socket.io-client (pinned by package-lock.json) against a real
# roomcast process. Installs the client with `npm ci` when needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
cd "$here"
[ -d node_modules ] || npm ci --no-audit --no-fund >/dev/null
cd "$root"
cargo build -q -p gateway --bin roomcast
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/roomcast --listen "127.0.0.1:$port" --jwt-secret sio-secret --socketio-namespaces /admin >/dev/null 2>&1 &
node_pid=$!
trap 'kill $node_pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
cd "$here"
ROOMCAST_URL="http://127.0.0.1:$port" ROOMCAST_JWT_SECRET=sio-secret \
  node --experimental-websocket --no-warnings --test socketio.test.mjs
