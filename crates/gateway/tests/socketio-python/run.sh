#!/usr/bin/env bash
# Part of `make test`: python-socketio's client (pinned in requirements.txt, installed into a
# virtualenv under target/) against a real roomcast process.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
venv="$root/target/socketio-python-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/pip" freeze 2>/dev/null | grep -q '^python-socketio==5.18.1'; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
fi
cd "$root"
cargo build -q --workspace --bins
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/roomcast --listen "127.0.0.1:$port" --jwt-secret py-secret-for-the-python-socketio-test-run >/dev/null 2>&1 &
node_pid=$!
trap 'kill $node_pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
ROOMCAST_URL="http://127.0.0.1:$port" ROOMCAST_JWT_SECRET=py-secret-for-the-python-socketio-test-run \
  "$venv/bin/python" "$here/test_socketio.py"
