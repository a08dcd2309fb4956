#!/usr/bin/env python3
"""docs/benchmarks.md from what loadtest/bench.sh measured.

    report.py common-rate RAW SHAPE   the highest step of SHAPE that every row sustained
                                      (median of the pinned repeats): "RATE NOTE"
    report.py page RAW ASSETS         the page, on stdout

RAW holds runs.jsonl (one record per run, written by bench.sh) and each run's --json file;
ASSETS (docs/bench) the plots, the text summaries and the profile.
"""
import json
import os
import platform
import statistics
import subprocess
import sys

ROWS = ["rc-sio", "peer-sio", "rc-json", "rc-msgpack"]
LABEL = {
    "rc-sio": "roomcast, Socket.IO",
    "peer-sio": "peer, Socket.IO",
    "rc-json": "roomcast, native JSON",
    "rc-msgpack": "roomcast, native MessagePack",
}
SHAPES = ["chat", "dm", "broadcast"]
SHAPE_NAME = {"chat": "chat", "dm": "direct messages", "broadcast": "broadcast"}
# The shapes' arguments as bench.sh ran them (set from runs.jsonl).
META = {}


def arg(args, key):
    a = (args or "").split()
    try:
        return float(a[a.index(key) + 1])
    except (ValueError, IndexError):
        return None


def shape_label(shape):
    rooms, members = arg(META.get(shape), "--rooms"), arg(META.get(shape), "--members")
    if rooms is None or members is None:
        return SHAPE_NAME[shape]
    plural = "room" if rooms == 1 else "rooms"
    return f"{SHAPE_NAME[shape]} ({rooms:,.0f} {plural} of {members:,.0f})"
# A load generator above this share of its core may be what limits a step.
GEN_BUSY = 90.0


def records(raw):
    path = os.path.join(raw, "runs.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load(raw, rec):
    """A run's summary, or None when the run left no report."""
    path = os.path.join(raw, rec.get("file") or "-")
    try:
        with open(path) as f:
            return json.load(f)["summary"]
    except (OSError, ValueError, KeyError):
        return None


def runs(raw, recs, kind, shape=None, mode=None):
    """{row: [summary, …]} in repeat order."""
    out = {r: [] for r in ROWS}
    for rec in recs:
        if rec.get("kind") != kind or (shape and rec.get("shape") != shape):
            continue
        if mode and rec.get("mode") != mode:
            continue
        s = load(raw, rec)
        if s is not None and rec.get("row") in out:
            out[rec["row"]].append(s)
    return out


def med(values, low=False):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median_low(values) if low else statistics.median(values)


def step(s, rate):
    """The step of a `max` summary at `rate` (steps cut by an early stop are absent)."""
    for ph in s.get("phases", []):
        if abs(ph["rate"] - rate) <= 1e-6 * max(1.0, rate):
            return ph
    return None


def passes(s, ph):
    return (
        ph["expected"] > 0
        and ph["latency_ms"]["p99"] <= s["p99_bound_ms"]
        and ph["delivered"] >= s["min_delivered"] * ph["expected"]
    )


def first_rate(by_row):
    for summaries in by_row.values():
        for s in summaries:
            if s.get("phases"):
                return s["phases"][0]["rate"]
    return None


def common_rate(raw, recs, shape):
    """(rate, note): the highest step every row sustained (median of pinned repeats)."""
    sh_ = Shape(raw, recs, shape)
    return (sh_.common or 1.0), sh_.common_note


# --- formatting -------------------------------------------------------------------------


def num(v, fmt="{:,.0f}"):
    return "–" if v is None else fmt.format(v)


def ms(v):
    return num(v, "{:,.2f}")


def ratio(a, b):
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "–"
    return f"{a / b:,.2f}×"


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# --- figures ----------------------------------------------------------------------------


class Shape:
    """The pinned `max` runs of one shape: per row, medians over repeats."""

    def __init__(self, raw, recs, shape, mode="pinned"):
        self.shape = shape
        self.by_row = runs(raw, recs, "max", shape, mode)
        self.rate = {r: med([s["max_sustainable_rate"] for s in v], low=True) for r, v in self.by_row.items()}
        self.delivered = {
            r: med([s["max_sustainable_delivered_per_sec"] for s in v]) for r, v in self.by_row.items()
        }
        ran = [r for r in ROWS if self.by_row.get(r)]
        if ran and all(self.rate.get(r) for r in ran):
            self.common = min(self.rate[r] for r in ran)
            self.common_note = "the highest step every row sustained"
        else:
            self.common = first_rate(self.by_row)
            failed = [r for r in ran if not self.rate.get(r)]
            self.common_note = "the first step; not sustained by " + (", ".join(failed) or "any row")

    def at(self, row, rate, key):
        """Median over repeats of `key(step)` at `rate` (repeats where it ran)."""
        if rate is None:
            return None
        vals = []
        for s in self.by_row.get(row, []):
            ph = step(s, rate)
            if ph is not None:
                vals.append(key(ph))
        return med(vals)

    def repeats(self, row):
        return [s["max_sustainable_delivered_per_sec"] for s in self.by_row.get(row, [])]


def redis_part(ph):
    if ph.get("cpu_us_per_delivered") is None or ph.get("gateway_cpu_us_per_delivered") is None:
        return None
    return ph["cpu_us_per_delivered"] - ph["gateway_cpu_us_per_delivered"]


def shape_table(sh_):
    c = sh_.common
    cols = ROWS
    rows = []

    def line(label, f, fmt=num, ratios=True):
        vals = [f(r) for r in cols]
        rest = [ratio(vals[0], vals[1]), ratio(vals[2], vals[1])] if ratios else ["", ""]
        rows.append([label] + [fmt(v) for v in vals] + rest)

    line("highest sustainable publish rate (/s)", lambda r: sh_.rate.get(r))
    line("highest sustainable delivered/s", lambda r: sh_.delivered.get(r))
    line(f"at {num(c)} publishes/s: SUT CPU-µs per delivered", lambda r: sh_.at(r, c, lambda p: p.get("cpu_us_per_delivered")), lambda v: num(v, "{:,.1f}"))
    line("… of which gateways / peer processes", lambda r: sh_.at(r, c, lambda p: p.get("gateway_cpu_us_per_delivered")), lambda v: num(v, "{:,.1f}"))
    line("… of which Redis", lambda r: sh_.at(r, c, redis_part), lambda v: num(v, "{:,.1f}"))
    line(f"at {num(c)} publishes/s: p50 (ms)", lambda r: sh_.at(r, c, lambda p: p["latency_ms"]["p50"]), ms)
    line(f"at {num(c)} publishes/s: p99 (ms)", lambda r: sh_.at(r, c, lambda p: p["latency_ms"]["p99"]), ms)
    line(f"at {num(c)} publishes/s: load generator CPU (% of its core)", lambda r: sh_.at(r, c, lambda p: p.get("generator_cpu_percent")), ratios=False)
    header = ["figure (median of pinned runs)"] + [LABEL[r] for r in cols] + ["rc-sio ÷ peer", "rc-json ÷ peer"]
    return table(header, rows)


def step_cell(s, ph):
    if ph is None:
        return ""
    mark = "" if passes(s, ph) else " ✗"
    gen = ph.get("generator_cpu_percent")
    busy = " ‡" if gen is not None and gen >= GEN_BUSY else ""
    frac = ph.get("delivered_fraction")
    cpu = ph.get("cpu_us_per_delivered")
    return (
        f"{ph['latency_ms']['p99']:,.1f} ms, {num(frac and 100 * frac, '{:.2f}')} %, "
        f"{num(cpu, '{:,.0f}')} µs{mark}{busy}"
    )


def steps_table(sh_, rep=0):
    first = {r: (v[rep] if len(v) > rep else None) for r, v in sh_.by_row.items()}
    rates = sorted({ph["rate"] for s in first.values() if s for ph in s["phases"]})
    rows = []
    for rate in rates:
        cells = []
        for r in ROWS:
            s = first.get(r)
            cells.append(step_cell(s, step(s, rate)) if s else "")
        members = next((s for s in first.values() if s and step(s, rate)), None)
        per = step(members, rate) if members else None
        factor = per["expected"] / per["sent"] if per and per["sent"] else None
        rows.append([num(rate, "{:,.1f}") if rate < 100 else num(rate), num(factor and rate * factor)] + cells)
    header = ["publishes/s", "deliveries/s asked"] + [LABEL[r] for r in ROWS]
    return table(header, rows)


def main_page(raw, assets):
    recs = records(raw)
    meta = next((r for r in recs if r.get("kind") == "meta"), {})
    META.update(meta)
    quick = meta.get("quick") == "1"
    shapes = {s: Shape(raw, recs, s) for s in SHAPES}
    unpinned = {s: Shape(raw, recs, s, "unpinned") for s in meta.get("unpinned", "").split() if s in SHAPES}
    steady = {r: (v[0] if v else None) for r, v in runs(raw, recs, "steady").items()}
    idle = {r: (v[0] if v else None) for r, v in runs(raw, recs, "idle").items()}
    chat = shapes["chat"]
    rc, peer = "rc-sio", "peer-sio"

    def sp(row, *path):
        s = steady.get(row)
        if not s or not s.get("phases"):
            return None
        v = s["phases"][0]
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    def idl(row, key):
        s = idle.get(row)
        return s.get(key) if s else None

    # --- against the targets ---
    t_rows = []

    def target(label, a, b, shown, fmt, goal, met):
        verdict = "–" if met is None else ("met" if met else "not met")
        if quick:
            verdict = "(smoke run)"
        t_rows.append([label, fmt(a), fmt(b), shown, goal, verdict])

    a, b = chat.delivered.get(rc), chat.delivered.get(peer)
    target(
        f"highest sustainable delivered msg/s (pinned; median of {meta.get('repeats', '?')})",
        a, b, ratio(a, b), num, "≥ 3× the peer",
        None if not (a is not None and b) else a / b >= 3,
    )
    a, b = sp(rc, "cpu_us_per_delivered"), sp(peer, "cpu_us_per_delivered")
    sent, expected = sp(peer, "sent"), sp(peer, "expected")
    asked = float(meta.get("common_rate") or 0) * (expected / sent if sent else 0)
    target(
        f"SUT CPU-µs per delivered message at {num(asked or None)} deliveries/s (steady run, {meta.get('common_note', '')})",
        a, b, ratio(a, b), lambda v: num(v, "{:,.1f}"), "≤ 1/3 of the peer's (≤ 0.33×)",
        None if not (a is not None and b) else a / b <= 1 / 3,
    )
    peer_rate = chat.rate.get(peer)
    a = chat.at(rc, peer_rate, lambda p: p["latency_ms"]["p99"]) if peer_rate else None
    b = chat.at(peer, peer_rate, lambda p: p["latency_ms"]["p99"]) if peer_rate else None
    target(
        f"p99 publish → receive (ms) at the peer's highest sustainable rate ({num(chat.delivered.get(peer))} delivered/s)",
        a, b, "–", ms, "≤ 5 ms",
        None if a is None else a <= 5,
    )
    a, b = idl(rc, "rss_per_connection_bytes_gateways"), idl(peer, "rss_per_connection_bytes_gateways")
    target(
        "RSS per idle connection, gateway alone (KiB)",
        a and a / 1024, b and b / 1024, ratio(a, b), lambda v: num(v, "{:,.1f}"), "≤ 8 KiB",
        None if a is None else a <= 8 * 1024,
    )
    a, b = idl(rc, "idle_cpu_percent_per_gateway"), idl(peer, "idle_cpu_percent_per_gateway")
    held = idl(rc, "clients")
    per_gw = held / max(1, idl(rc, "gateway_processes") or 1) if held else None
    target(
        f"CPU of one gateway process holding {num(per_gw)} idle connections (% of a core)",
        a, b, ratio(a, b), lambda v: num(v, "{:,.2f}"), "19k connections, < 2 %",
        None if a is None or per_gw is None else (a < 2 and per_gw >= 19000),
    )

    # --- pinned vs unpinned ---
    pu_rows = []
    for s, u in unpinned.items():
        for r in ROWS:
            p_, q = shapes[s].delivered.get(r), u.delivered.get(r)
            pu_rows.append([shape_label(s), LABEL[r], num(p_), num(q), ratio(p_, q)])

    # --- steady ---
    st_rows = []

    def st(label, f, fmt=num):
        vals = [f(r) for r in ROWS]
        st_rows.append([label] + [fmt(v) for v in vals] + [ratio(vals[0], vals[1])])

    st("delivered/s", lambda r: sp(r, "delivered_per_sec"))
    st("delivered (% of expected)", lambda r: sp(r, "delivered_fraction") and 100 * sp(r, "delivered_fraction"), lambda v: num(v, "{:.3f}"))
    st("duplicates + out of order", lambda r: None if sp(r, "duplicates") is None else sp(r, "duplicates") + sp(r, "out_of_order"))
    for q in ("p50", "p90", "p99", "max"):
        st(f"publish → receive {q} (ms)", lambda r, q=q: sp(r, "latency_ms", q), ms)
    st("SUT CPU-µs per delivered message", lambda r: sp(r, "cpu_us_per_delivered"), lambda v: num(v, "{:,.1f}"))
    st("… gateways / peer processes", lambda r: sp(r, "gateway_cpu_us_per_delivered"), lambda v: num(v, "{:,.1f}"))
    st("… Redis", lambda r: None if sp(r, "cpu_us_per_delivered") is None or sp(r, "gateway_cpu_us_per_delivered") is None else sp(r, "cpu_us_per_delivered") - sp(r, "gateway_cpu_us_per_delivered"), lambda v: num(v, "{:,.1f}"))
    st("SUT CPU (% of its one core)", lambda r: sp(r, "sut_cpu_percent"))
    st("load generator CPU (% of its core)", lambda r: sp(r, "generator_cpu_percent"))

    # --- idle ---
    id_rows = []

    def il(label, f, fmt=num):
        vals = [f(r) for r in ROWS]
        id_rows.append([label] + [fmt(v) for v in vals] + [ratio(vals[0], vals[1])])

    il("clients held (all processes)", lambda r: idl(r, "clients"))
    il("… per gateway / peer process", lambda r: idl(r, "clients") and idl(r, "clients") / max(1, idl(r, "gateway_processes") or 1))
    il("failed to connect / closed while held", lambda r: None if idle.get(r) is None else f"{idl(r, 'connect_failures')} / {idl(r, 'dropped_while_held')}", str)
    il("connects/s (with a join each)", lambda r: idl(r, "connect_per_sec"))
    il("RSS per idle connection, gateway alone (KiB)", lambda r: idl(r, "rss_per_connection_bytes_gateways") and idl(r, "rss_per_connection_bytes_gateways") / 1024, lambda v: num(v, "{:,.2f}"))
    il("RSS per idle connection, gateways + Redis (KiB)", lambda r: idl(r, "rss_per_connection_bytes") and idl(r, "rss_per_connection_bytes") / 1024, lambda v: num(v, "{:,.2f}"))
    il("idle CPU per gateway process (% of a core)", lambda r: idl(r, "idle_cpu_percent_per_gateway"), lambda v: num(v, "{:,.2f}"))
    il("idle CPU, gateways + Redis (% of a core)", lambda r: idl(r, "idle_cpu_percent_of_one_core"), lambda v: num(v, "{:,.2f}"))
    il("seconds measured idle", lambda r: idl(r, "idle_seconds"), lambda v: num(v, "{:,.1f}"))

    # --- what ran where ---
    def affinities(mode):
        sut, gen_ = set(), set()
        for rec in recs:
            if rec.get("mode") != mode or rec.get("kind") not in ("max", "steady", "idle"):
                continue
            s = load(raw, rec)
            if s:
                sut |= set(s.get("affinity", {}).get("sut", {}).values())
                gen_ |= set(s.get("affinity", {}).get("generator", {}).values())
        return ", ".join(sorted(sut)) or "–", ", ".join(sorted(gen_)) or "–"

    def threads(row):
        seen = set()
        for v in runs(raw, recs, "max").get(row, []) + runs(raw, recs, "idle").get(row, []):
            seen.add(tuple(v.get("gateway_threads", [])))
        return "; ".join(", ".join(str(t) for t in ts) for ts in sorted(seen)) or "–"

    pinned_aff, unpinned_aff = affinities("pinned"), affinities("unpinned")

    # --- profile ---
    prof = next((r for r in recs if r.get("kind") == "profile"), {})
    profile_text = ""

    def read(name):
        try:
            with open(os.path.join(assets, name)) as f:
                return f.read().rstrip("\n")
        except OSError:
            return ""

    if prof.get("status") == "ok":
        dso = read("profile-roomcast-dso.txt")
        top = [l for l in read("profile-roomcast.txt").splitlines() if l.strip() and not l.startswith("#")][:15]
        prun = load(raw, prof) or {}
        ph = (prun.get("phases") or [{}])[0]
        profile_text = f"""`{prof.get('cmd', '')}`, with the SUT pinned as above; roomcast Socket.IO clients
(rc-sio) at {num(float(meta.get('common_rate', 0)))} publishes/s ({num(ph.get('delivered_per_sec'))} delivered/s, p99
{ms(ph.get('latency_ms', {}).get('p99'))} ms during the profiled run).

Samples by object (gateways only):

```
{dso}
```

Top symbols, self time (`--no-children`); the first 70 lines are in
[bench/profile-roomcast.txt](bench/profile-roomcast.txt), and their callers in
[bench/profile-roomcast-callers.txt](bench/profile-roomcast-callers.txt):

```
{chr(10).join(top)}
```"""
    else:
        profile_text = f"No profile: {prof.get('status', 'the profiling step did not run')}."

    cpu = sh("lscpu | grep 'Model name' | sed 's/.*: *//'") or platform.processor()
    seconds = int(meta.get("seconds", "0") or 0)
    plots = "\n".join(
        f"![{r} chat]({'bench/max-chat-' + r + '-pinned-1.svg'})"
        for r in ROWS
        if os.path.exists(os.path.join(assets, f"max-chat-{r}-pinned-1.svg"))
    )
    repeat_rows = [[LABEL[r], ", ".join(num(v) for v in chat.repeats(r)), num(chat.delivered.get(r))] for r in ROWS]
    steps = "\n\n".join(f"#### {shape_label(s)}\n\n{steps_table(shapes[s])}" for s in SHAPES)
    steps_unpinned = "\n\n".join(f"#### {shape_label(s)}, unpinned\n\n{steps_table(u)}" for s, u in unpinned.items())
    shape_sections = "\n\n".join(
        f"### {shape_label(s)}\n\n`{meta.get(s, '')}`; figures at {num(shapes[s].common)} publishes/s: {shapes[s].common_note}.\n\n{shape_table(shapes[s])}"
        for s in SHAPES
    )
    quick_note = (
        "**BENCH_QUICK=1 smoke run: tiny scale, figures not meaningful.**\n\n" if quick else ""
    )

    return f"""# Benchmarks: roomcast and Socket.IO with the Redis adapter

{quick_note}Generated by `make bench` ({'BENCH_QUICK=1' if quick else 'full run'}) in {seconds // 60} min {seconds % 60} s.
Both systems ran on one machine against the same 6-process Redis Cluster (3 primaries, 3
replicas, loopback), driven by the same client, `roomcast-loadtest`, on the same machine.
Rows: **rc-sio** = {LABEL['rc-sio']} (`/socket.io/`), **peer-sio** = {LABEL['peer-sio']}
(the Node peer), **rc-json** / **rc-msgpack** = roomcast's native protocol (`/ws`). Ratios are
roomcast ÷ peer.

## Against the issue's targets

Shape {shape_label('chat')}, gapless rooms, the same Socket.IO client for both (rc-sio and
peer-sio); system under test pinned to one core.

{table(["figure", "roomcast (rc-sio)", "peer (peer-sio)", "roomcast ÷ peer", "target", "met?"], t_rows)}

## Highest sustainable rate, per shape (pinned)

A step is sustained when its p99 publish → receive latency is at most 50 ms and at least
99.9 % of its deliveries arrived; the highest sustainable rate is the last of the steps, in
order, that were all sustained. CPU-µs per delivered message are the system under test's
(gateways or peer processes, plus the 6 redis-server processes) CPU during the step divided
by the deliveries of the step's messages.

{shape_sections}

Chat, highest sustainable delivered/s of each pinned repeat:

{table(["row", "repeats", "median"], repeat_rows)}

## Pinned and unpinned

Pinned: the system under test on CPU {meta.get('sut_cpu', '?')}, the load generator on CPU {meta.get('gen_cpu', '?')}.
Unpinned: every process may use both CPUs.

{table(["shape", "row", "pinned delivered/s (median)", "unpinned delivered/s", "pinned ÷ unpinned"], pu_rows) if pu_rows else "No unpinned runs."}

## Steady run at one rate for all (chat, pinned)

`roomcast-loadtest fanout {meta.get('steady', '')}`: {meta.get('common_note', '')}.

{table(["figure"] + [LABEL[r] for r in ROWS] + ["rc-sio ÷ peer"], st_rows)}

## Idle connections (pinned, freshly started processes)

`roomcast-loadtest connections {meta.get('idle', '')}`: every client joins one of
{num(arg(meta.get('idle'), '--rooms'))} rooms (rooms of {num((arg(meta.get('idle'), '--clients') or 0) / (arg(meta.get('idle'), '--rooms') or 1))}), then all are held while the system under test is
sampled. RSS per connection is the growth of the processes' resident memory (before the first
connect → end of the hold) divided by the clients held; kernel socket memory is not included.
Idle CPU is measured over the hold (`--secs`), which starts `--settle-secs` after the last
client is in.

{table(["figure"] + [LABEL[r] for r in ROWS] + ["rc-sio ÷ peer"], id_rows)}

## Profile: roomcast's gateways at the common chat rate

{profile_text}

## Steps

Each cell: p99, delivered share, SUT CPU-µs per delivered message; ✗ = the step was not
sustained; ‡ = the load generator used at least {GEN_BUSY:.0f} % of its core during the step (it may
be what limited it). A run stops after its first step that surely missed the p99 bound
(`--stop-after-failed 1`), so later steps are empty. First pinned repeat.

{steps}

{steps_unpinned}

### Plots (chat, first pinned repeat)

{plots}

## What was run

- Machine: {cpu}, {os.cpu_count()} cores, {sh("free -h | awk '/Mem:/{print $2}'")} memory, kernel {platform.release()},
  {sh("ulimit -n")} file descriptors per process. Load average (1, 5, 15 min) at the start
  {meta.get('loadavg_start', '?')}, at the end {meta.get('loadavg_end', '?')}: other processes
  were not stopped.
- roomcast: 3 gateway processes (`{meta.get('binary', 'target/release/roomcast')}`, 127.0.0.1:8081-8083, started by
  `deploy/local/cluster.sh`) with `--redis-cluster` and `{meta.get('gateway_args', '')}`. Threads
  per gateway process, as read from /proc: {threads('rc-sio')}. The Socket.IO endpoint ran
  with its defaults, connection state recovery included (a journal per socket, and the
  recovery offset as a last argument of every `message`); the peer has no recovery.
- peer: 3 Node.js {sh("node --version")} processes (`loadtest/peers/socketio-node/server.js`,
  127.0.0.1:3001-3003): socket.io 4.8, `@socket.io/redis-adapter` 8.3 `createShardedAdapter`
  (SSUBSCRIBE/SPUBLISH, one channel per room), node-redis 4 cluster clients, WebSocket transport
  only, versions pinned by `package-lock.json`; `create_room`, `join`, `leave` and `publish`
  with acks. Threads per process: {threads('peer-sio')}.
- Both systems were up for the whole run (the one not measured had no clients), so that
  repeats alternate between them. With no clients at all, before the first run, they used
  (% of one core, over 5 s): {meta.get('baseline', '?')}; this is part of every CPU figure.
  Between runs the bench waits until they are back near that level (at most 60 s). Clients connect directly to the three processes,
  round-robin. Per publish, roomcast runs its gapless-offset and history scripts in Redis; the
  peer only SPUBLISHes.
- CPUs allowed, read from /proc during the runs: pinned runs: system under test {pinned_aff[0]},
  load generator {pinned_aff[1]}; unpinned runs: system under test {unpinned_aff[0]}, load
  generator {unpinned_aff[1]}. Pinning: `taskset -a -pc {meta.get('sut_cpu', '?')} <pid>` on every
  gateway or peer process and redis-server (all threads), `taskset -c {meta.get('gen_cpu', '?')}` on the
  load generator.
- Commands (each also gets `--url` of the three processes, `--protocol`, `--jwt-secret` for
  roomcast, and `--pids`/`--gateway-pids` for the sampled processes):

```sh
make bench        # BENCH_QUICK=1 make bench: the smoke version
roomcast-loadtest max {meta.get('chat', '')} {meta.get('judge', '')}
roomcast-loadtest max {meta.get('dm', '')} {meta.get('judge', '')}
roomcast-loadtest max {meta.get('broadcast', '')} {meta.get('judge', '')}
roomcast-loadtest fanout {meta.get('steady', '')}
roomcast-loadtest connections {meta.get('idle', '')}
```

  `max` runs a 3 s warm-up at the first rate (not reported), then its steps. Chat ran
  {meta.get('repeats', '?')} time(s) pinned per row, the rows alternating; the other shapes
  once; unpinned: {meta.get('unpinned', '') or 'none'}. Per-run summaries are in `docs/bench/*.txt`,
  full reports (per-second histograms, /proc samples every 100 ms) in `target/bench/*.json`.

## How to read these figures

- The load generator decodes every delivery and checks every (publisher, sequence); publishers
  are open-loop (each message is stamped with its intended send time), so a system that falls
  behind shows it as latency.
- CPU is utime + stime from /proc/<pid>/stat (10 ms ticks), sampled every 100 ms and
  interpolated at step boundaries; a step's CPU includes whatever was still queued from the
  step before.
- Everything runs on one 2-core machine over loopback: no network, and Redis shares the
  system under test's core when pinned.
"""


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "common-rate":
        raw, shape = sys.argv[2], sys.argv[3]
        rate, note = common_rate(raw, records(raw), shape)
        print(f"{rate:g} {note}")
    elif cmd == "page":
        page = main_page(sys.argv[2], sys.argv[3])
        # The archive's figures (measured by loadtest/archive_bench.sh and archive_paging.sh),
        # the webhooks' (loadtest/webhooks.sh), the proxies' (ignored tests in tests/proxy.rs)
        # and the back-end hooks' (loadtest/hooks.sh), none by bench.sh, and the profile
        # findings (what the numbers meant, what was done about them) are kept by hand and
        # carried into every generated page as they are, in the page's order.
        for kept in ["archive.md", "findings.md", "webhooks.md", "proxies.md", "hooks.md"]:
            path = os.path.join(sys.argv[3], kept)
            if os.path.exists(path):
                with open(path) as f:
                    page = page.rstrip("\n") + "\n\n" + f.read()
        print(page)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
