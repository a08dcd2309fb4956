#!/usr/bin/env bash
# Runs the official Socket.IO v5 and Engine.IO v4 protocol test suites (socket.io monorepo,
# docs/socket.io-protocol/v5-test-suite and docs/engine.io-protocol/v4-test-suite) against a
# roomcast node in conformance mode (`--socketio-conformance`), configured as the suites
# expect: ping interval 300 ms, ping timeout 200 ms, max payload 1,000,000, connect timeout
# 1 s, namespaces / and /custom.
#
# The suites are not vendored (they are someone else's code): point SOCKETIO_REPO at a clone
# of github.com/socketio/socket.io (a work tree, or a bare git directory). Without it this
# script says so and exits 0, so that `make test` runs on machines without the clone.
#
# Both suites run in full: WebSocket, HTTP long-polling and the upgrade between them.
set -uo pipefail
cd "$(dirname "$0")/../../../.."
export PATH="$HOME/.cargo/bin:$PATH"

REPO=${SOCKETIO_REPO:-}
if [ -z "$REPO" ] || [ ! -e "$REPO" ]; then
  echo "socket.io protocol suites: SOCKETIO_REPO not set or missing; skipped"
  exit 0
fi
PORT=${SUITE_PORT:-3000}
WORK=$(mktemp -d)
trap 'kill $NODE_PID 2>/dev/null; wait $NODE_PID 2>/dev/null; rm -rf "$WORK"' EXIT

SUITES="docs/socket.io-protocol/v5-test-suite docs/engine.io-protocol/v4-test-suite"
if [ -d "$REPO/docs" ]; then
  for s in $SUITES; do mkdir -p "$WORK/$s" && cp -r "$REPO/$s/." "$WORK/$s/"; done
else
  git --git-dir="$REPO" archive HEAD $SUITES | tar -x -C "$WORK"
fi

cargo build --release --workspace --bins >/dev/null 2>&1 || { echo "build failed"; exit 1; }
target/release/roomcast --listen "127.0.0.1:$PORT" --allow-anonymous --socketio-conformance \
  --socketio-namespaces /custom --socketio-ping-interval 300ms --socketio-ping-timeout 200ms \
  --socketio-max-payload 1000000 --socketio-connect-timeout 1s --max-handshake-rate 0 \
  --log warn &
NODE_PID=$!
for _ in $(seq 1 50); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

rc=0
run() {
  local dir=$1 name=$2; shift 2
  (
    cd "$WORK/$dir" || exit 1
    # The suites hard-code http://localhost:3000; Node may resolve localhost to ::1 first.
    sed -i "s#http://localhost:3000#http://127.0.0.1:$PORT#" test-suite.js
    npm ci --no-audit --no-fund --silent >/dev/null 2>&1 || npm install --no-audit --no-fund --silent >/dev/null 2>&1
    npx mocha test-suite.js --reporter dot "$@" 2>&1 | tee "$WORK/$name.log" | tail -40
    exit "${PIPESTATUS[0]}"
  ) || rc=1
  local passing failing
  passing=$(grep -Eo '[0-9]+ passing' "$WORK/$name.log" | grep -Eo '[0-9]+' || echo 0)
  failing=$(grep -Eo '[0-9]+ failing' "$WORK/$name.log" | grep -Eo '[0-9]+' || echo 0)
  echo "$name: $passing passed, $failing failed"
}
run docs/socket.io-protocol/v5-test-suite "socket.io v5"
run docs/engine.io-protocol/v4-test-suite "engine.io v4"
exit $rc
