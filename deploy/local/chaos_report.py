#!/usr/bin/env python3
"""The fault table of `make chaos`: sets the load tool's record (`roomcast-checks chaos
--json`) against the fault log that deploy/local/chaos.sh wrote, and prints one row per fault.

  --out FILE   also write the page (docs/reliability.md); a section between the markers
               <!-- notes --> and <!-- /notes --> of an existing page is kept (hand-written).
  --quick      the `make test` version: exit 1 when an acknowledged message was lost (with
               --durable-publish) or a client did not get back in; timings are not asserted.

Fault log lines: `<unix ms> <fault number> <event> [key=value ...]`; the first event of a
number is the fault itself, the others mark its progress (restarted, ready, promoted, ...).
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys

# /readyz rules (see docs/reliability.md, "How /readyz is judged").
DETECT_MS = 5000  # a gateway cut off from Redis must say 503 within this (probe 1 s + timeout 3 s + slack)
DRAIN_MS = 300  # a draining gateway must say 503 within this of SIGTERM
SETTLE_MS = 5000  # after a fault is over, 503 may last this long before it counts as wrong
CUT_RECOVER_MS = 10000  # after the cut is restored, the gateway must be ready within this
SLACK_MS = 300  # a silence starts at the last delivery; the next one was due ~100 ms later
STUCK_MS = 5000  # a client with no delivery in the last 5 s of publishing is stuck


def crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot_of_room(room: str) -> int:
    return crc16(f"r:{room}".encode()) % 16384


def parse_faults(path):
    faults, marks = {}, []
    for line in open(path):
        parts = line.split()
        if len(parts) < 3:
            continue
        ms, n, what = int(parts[0]), int(parts[1]), parts[2]
        kv = dict(p.split("=", 1) for p in parts[3:] if "=" in p)
        marks.append((ms, n, what, kv))
        if n > 0 and n not in faults:
            faults[n] = {"n": n, "kind": what, "start": ms, "kv": kv, "marks": {}}
        elif n > 0:
            faults[n]["marks"][what] = ms
    return [faults[k] for k in sorted(faults)], marks


def fault_over(f):
    """When the injected condition was over (service restored), by kind."""
    m = f["marks"]
    k = f["kind"]
    if k in ("kill-gateway", "drain-gateway"):
        return m.get("ready", m.get("restarted", f["start"]))
    if k == "cluster-failover":
        return m.get("promoted", f["start"])
    if k == "kill-primary":
        return m.get("promoted", m.get("revived", f["start"]))
    if k == "pause-primary":
        return min(m.get("promoted", 1 << 62), m.get("resumed", 1 << 62))
    if k == "cut-gateway":
        return m.get("restored", f["start"])
    return f["start"]


def fault_settled(f):
    m = f["marks"]
    return max([fault_over(f)] + [m[k] for k in ("settled", "ready", "restored") if k in m])


DESCRIBE = {
    "kill-gateway": "kill -9 gateway {gateway}, restarted after 2 s",
    "drain-gateway": "SIGTERM gateway {gateway} (drain), restarted",
    "cluster-failover": "CLUSTER FAILOVER: replica {replica} takes over from {primary}",
    "kill-primary": "kill -9 primary {primary} (replica {replica} promoted; revived as replica)",
    "pause-primary": "SIGSTOP primary {primary} for {pause} (> cluster-node-timeout), SIGCONT",
    "cut-gateway": "gateway {gateway} cut off from Redis for {for} (iptables), restored",
}


def states_between(changes, a, b, end_ms):
    """(from, to, state) pieces of the readyz record that overlap [a, b)."""
    out = []
    for i, (t, s) in enumerate(changes):
        nxt = changes[i + 1][0] if i + 1 < len(changes) else end_ms
        lo, hi = max(t, a), min(nxt, b)
        if lo < hi:
            out.append((lo, hi, s))
    return out


def first_time(changes, after, pred, end_ms):
    for lo, hi, s in states_between(changes, after, end_ms, end_ms):
        if pred(s):
            return lo
    return None


def fmt_s(ms):
    return f"{ms / 1000:.1f}"


def gap(ms):
    # Silences shorter than the load tool's threshold (gap_ms, 250) are not recorded.
    return fmt_s(ms) if ms else "< 0.25"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", required=True)
    ap.add_argument("--faults", required=True)
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--durable", default="1")
    ap.add_argument("--elapsed", default="?")
    ap.add_argument("--command", default="")
    ap.add_argument("--gateway-args", default="")
    ap.add_argument("--gateway", default="target/release/roomcast")
    a = ap.parse_args()

    doc = json.load(open(a.load))
    faults, _ = parse_faults(a.faults)
    clients = doc["clients"]
    pubs = doc["publishers"]
    start, pub_end, end = doc["start_ms"], doc["publish_end_ms"], doc["end_ms"]
    rooms = doc["rooms"]
    room_slot = [slot_of_room(r) for r in rooms]
    readyz = doc["readyz"]
    gw_url = {u.rsplit(":", 1)[1].strip("/"): u for u in readyz}

    # Attribution windows: fault i owns what was sent from 1 s before it until 1 s before the
    # next one (the last one: until publishing stopped).
    for i, f in enumerate(faults):
        f["win"] = (f["start"] - 1000, faults[i + 1]["start"] - 1000 if i + 1 < len(faults) else pub_end + 1)
        f["next"] = faults[i + 1]["start"] if i + 1 < len(faults) else end

    def affected(f):
        kv = f["kv"]
        if "gateway" in kv:
            node = kv["gateway"]
            out = []
            for c in clients:
                for s in c["sessions"]:
                    if s["node"] == node and s["connected_ms"] <= f["start"] and (s["end_ms"] is None or s["end_ms"] >= f["start"]):
                        out.append(c)
                        break
            return out
        lo, _, hi = kv.get("slots", "0-16383").partition("-")
        lo, hi = int(lo), int(hi or lo)
        return [c for c in clients if lo <= room_slot[c["room"]] <= hi]

    rows = []
    problems = []
    lies_all = []
    for f in faults:
        w0, w1 = f["win"]
        aff = affected(f)
        # Delivery pause: the longest silence whose first missing delivery (its start + SLACK_MS)
        # falls in [fault, next fault), at an affected client (and, apart, at the others).
        # Clients already stuck before this fault (nothing since an earlier one) say nothing
        # about this one.
        was_stuck = {c["client"] for c in clients if c["last_delivery_ms"] < pub_end - STUCK_MS and c["last_delivery_ms"] + SLACK_MS < f["start"]}
        aff = [c for c in aff if c["client"] not in was_stuck]
        aff_ids = {c["client"] for c in aff}
        longest, resumed, elsewhere = 0, 0, 0
        for c in clients:
            gaps = list(c["gaps"])
            if c["last_delivery_ms"] < pub_end:
                gaps.append((c["last_delivery_ms"], end))  # never resumed
            if c["client"] in was_stuck:
                continue
            for g0, g1 in gaps:
                if not (f["start"] <= g0 + SLACK_MS < f["next"]):
                    continue
                if c["client"] not in aff_ids:
                    elsewhere = max(elsewhere, g1 - g0)
                elif g1 - g0 > longest:
                    longest, resumed = g1 - g0, g1 - f["start"]
        # Clients that got nothing in the last STUCK_MS of publishing, stuck since this window.
        stuck = sorted(c["client"] for c in clients if c["last_delivery_ms"] < pub_end - STUCK_MS and f["start"] <= c["last_delivery_ms"] + SLACK_MS < f["next"])
        per = lambda key: {c["client"]: sum(1 for x in c[key] if w0 <= x[2] < w1) for c in clients}
        lost = per("lost_list")
        dup = per("duplicates")
        ooo = per("out_of_order")
        lost_n, dup_n, ooo_n = sum(lost.values()), sum(dup.values()), sum(ooo.values())
        epoch = [e for c in clients for e in c["epoch_changes"] if e["from"] and w0 <= e["ms"] < w1]
        anomalies = [x for c in clients for x in c["offset_anomalies"] if w0 <= x["ms"] < w1]
        # Publishes.
        failed = [x for p in pubs for x in p["failed"] if w0 <= x[1] < w1]
        codes = {}
        for x in failed:
            codes[x[3]] = codes.get(x[3], 0) + 1
        unanswered = sum(1 for p in pubs for x in p["unanswered"] if w0 <= x[1] < w1)
        s0, s1 = max(0, (w0 - start) // 1000), max(0, (w1 - start) // 1000)
        acked = sum(sum(p["acked_per_sec"][s0:s1]) for p in pubs)
        # Reconnects: sessions that ended in the window, and how long until the client was back.
        reconnected, back_max, not_back = 0, 0, []
        for c in clients:
            ss = c["sessions"]
            for i, s in enumerate(ss):
                if s["end_ms"] is None or not (w0 <= s["end_ms"] < w1) or s["end"] == "end":
                    continue
                nxt = next((t["joined_ms"] for t in ss[i + 1:] if t["joined_ms"]), None)
                if nxt is None:
                    not_back.append(c["client"])
                else:
                    back_max = max(back_max, nxt - s["end_ms"])
                reconnected += 1
        failed_reconnect = sorted({c["client"] for c in clients if not c["connected_at_end"] and any(
            s["end_ms"] and w0 <= s["end_ms"] < w1 for s in c["sessions"])} | set(not_back))

        # /readyz against the injected ground truth.
        lies, notes = [], []
        kv = f["kv"]
        port = kv.get("port")
        over, settled = fault_over(f), fault_settled(f)
        for gport, url in sorted(gw_url.items()):
            ch = readyz[url]["changes"]
            if not ch:
                continue
            mine = gport == port
            # Where 503 is allowed: the faulted gateway until it is back, every gateway during a
            # Redis fault, plus SETTLE_MS.
            if f["kind"].endswith("primary") or f["kind"] == "cluster-failover":
                allow = (f["start"], settled + SETTLE_MS)
            elif mine and f["kind"] == "cut-gateway":
                allow = (f["start"], over + CUT_RECOVER_MS)
            elif mine:
                allow = (f["start"], over + SETTLE_MS)
            else:
                allow = (f["start"], f["start"])
            unready = [(lo, hi, s) for lo, hi, s in states_between(ch, f["start"], f["next"], end) if s != "200"]
            wrong = [(lo, hi, s) for lo, hi, s in unready if hi > allow[1] or lo < allow[0]]
            if wrong:
                lo, hi, s = wrong[0]
                lies.append(f"{gport} said `{s}` at +{fmt_s(lo - f['start'])}s for {fmt_s(hi - lo)} s while healthy")
            if unready:
                total = sum(hi - lo for lo, hi, _ in unready)
                first = unready[0]
                notes.append(f"{gport}: not ready {fmt_s(total)} s from +{fmt_s(first[0] - f['start'])}s ({', '.join(sorted({s for _, _, s in unready}))})")
            if mine and f["kind"] == "drain-gateway":
                bad = [(lo, hi) for lo, hi, s in states_between(ch, f["start"] + DRAIN_MS, f["marks"].get("exited", over), end) if s == "200"]
                if bad:
                    lies.append(f"{gport} said ready {fmt_s(bad[0][0] - f['start'])} s into its drain")
            if mine and f["kind"] == "cut-gateway":
                bad = [(lo, hi) for lo, hi, s in states_between(ch, f["start"] + DETECT_MS, over, end) if s == "200"]
                t503 = first_time(ch, f["start"], lambda s: s != "200", end)
                t200 = first_time(ch, over, lambda s: s == "200", end)
                notes.append(f"{gport}: 503 after {fmt_s(t503 - f['start']) if t503 else 'never'} s of the cut; ready {fmt_s(t200 - over) if t200 else 'never'} s after the restore")
                if bad:
                    lies.append(f"{gport} said ready while cut off from Redis ({fmt_s(sum(h - l for l, h in bad))} s of the cut after the first {DETECT_MS // 1000} s)")
        lies_all.extend(f"fault {f['n']}: {x}" for x in lies)

        max_per = lambda d: max(d.values()) if d else 0
        fmt_count = lambda n, d: f"{n}" if n == 0 else f"{n} ({sum(1 for v in d.values() if v)} clients, max {max_per(d)})"
        rows.append({
            "n": f["n"],
            "fault": DESCRIBE.get(f["kind"], f["kind"]).format_map({**{"gateway": "?", "primary": "?", "replica": "?", "pause": "?", "for": "?"}, **{k: (v.replace("local-", "") if k == "gateway" else v) for k, v in kv.items()}}),
            "affected": f"{len(aff)}" + (f" (+{len(was_stuck & set(c['client'] for c in affected(f)))} already stuck)" if was_stuck else ""),
            "n_aff": len(aff),
            "pause": longest,
            "resumed": resumed,
            "elsewhere": elsewhere,
            "stuck": stuck,
            "lost": fmt_count(lost_n, lost), "lost_n": lost_n,
            "dup": fmt_count(dup_n, dup), "dup_n": dup_n,
            "ooo": fmt_count(ooo_n, ooo), "ooo_n": ooo_n,
            "epochs": len(epoch), "epoch_clients": len({(e["from"], e["to"]) for e in epoch}),
            "anomalies": len(anomalies),
            "acked": acked, "failed": len(failed), "codes": codes, "unanswered": unanswered,
            "reconnected": reconnected, "back_max": back_max, "failed_reconnect": failed_reconnect,
            "readyz": "yes" if not lies else "**no**", "lies": lies, "notes": notes,
            "over": over - f["start"], "settled": settled - f["start"],
        })

    summ = doc["summary"]
    table = [
        "| # | fault | affected clients | longest delivery gap (s) | resumed (s after fault) | gap at other clients (s) | lost | dup | out of order | epoch changes | publishes acked / failed / unanswered | reconnects (slowest, s) | failed to reconnect | stuck (connected, receiving nothing) | /readyz truthful |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['n']} | {r['fault']} | {r['affected']} | {gap(r['pause']) if r['n_aff'] else 'n/a'} | {gap(r['resumed']) if r['pause'] else '-'} | {gap(r['elsewhere'])} | {r['lost']} | {r['dup']} | {r['ooo']} | {r['epochs']} | "
            f"{r['acked']} / {r['failed']} / {r['unanswered']} | {r['reconnected']} ({fmt_s(r['back_max'])}) | {len(r['failed_reconnect'])} | {len(r['stuck'])} | {r['readyz']} |"
        )
    details = []
    for r in rows:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items())) or "none"
        details.append(f"- **{r['n']}.** over after {fmt_s(r['over'])} s, settled after {fmt_s(r['settled'])} s; publish errors: {codes}; offset anomalies: {r['anomalies']}")
        for n in r["notes"]:
            details.append(f"  - readyz {n}")
        for l in r["lies"]:
            details.append(f"  - **readyz wrong**: {l}")
        if r["failed_reconnect"]:
            details.append(f"  - clients that did not get back in: {r['failed_reconnect']}")
        if r["stuck"]:
            details.append(f"  - clients connected but receiving nothing from this fault to the end: {len(r['stuck'])} ({r['stuck'][:20]}{' ...' if len(r['stuck']) > 20 else ''})")
    totals = (
        f"clients {summ['clients']} (joined at start {summ['joined_at_start']}), reconnects {summ['reconnects']}, "
        f"failed attempts {summ['failed_attempts']}, failed to reconnect {len(summ['failed_to_reconnect'])}; publishes sent {summ['sent']}, "
        f"acked {summ['acked']}, failed {summ['failed']} (delivered anyway {summ['failed_but_delivered']}), unanswered {summ['unanswered']} "
        f"(delivered anyway {summ['unanswered_but_delivered']}); deliveries {summ['delivered']}; lost {summ['lost']} "
        f"(behind an epoch change {summ['lost_behind_epoch_change']}, acked but reached no member {summ['lost_everywhere']}); "
        f"duplicates {summ['duplicates']}; out of order {summ['out_of_order']}; offset anomalies {summ['offset_anomalies']}; "
        f"epoch changes {summ['epoch_changes']}"
    )
    readyz_polls = ", ".join(f"{u.rsplit(':', 1)[1]}: {r['polls']} polls, longest gap {r['max_poll_gap_ms']} ms" for u, r in sorted(readyz.items()))

    text = "\n".join(table) + "\n\nTotals: " + totals + "\n\n" + "\n".join(details) + "\n\nreadyz polling: " + readyz_polls + "\n"
    print()
    print(text)
    if lies_all:
        print("readyz did not tell the truth:\n  " + "\n  ".join(lies_all))

    if a.out:
        write_page(a, doc, text)

    failures = []
    if a.durable == "1" and summ["lost"] > 0:
        failures.append(f"{summ['lost']} acknowledged deliveries lost with --durable-publish")
    if summ["failed_to_reconnect"]:
        failures.append(f"clients that did not get back in: {summ['failed_to_reconnect']}")
    stuck_all = sorted({x for r in rows for x in r["stuck"]})
    if stuck_all and os.environ.get("CHAOS_ALLOW_STUCK") == "1":
        print(f"WARNING: {len(stuck_all)} clients connected but receiving nothing at the end (stuck); not failing (CHAOS_ALLOW_STUCK=1)")
    elif stuck_all:
        failures.append(f"{len(stuck_all)} clients connected but receiving nothing at the end (stuck)")
    if summ["joined_at_start"] < summ["clients"]:
        failures.append(f"only {summ['joined_at_start']} of {summ['clients']} clients joined before the load started")
    if failures:
        print("CHAOS FAILED: " + "; ".join(failures))
        return 1
    print("chaos: nothing acknowledged lost, every client back in" if a.durable == "1" else "chaos: every client back in")
    return 0


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1048576:.0f} GiB"
    except OSError:
        pass
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    redis_v = next((x.split("=")[1] for x in redis if x.startswith("v=")), "?")
    return f"- CPU: {cpu}, {os.cpu_count()} cores (shared with other work)\n- Memory: {mem}\n- Kernel: {platform.release()}; Redis {redis_v}"


def write_page(a, doc, text):
    notes = "<!-- notes -->\n_(no notes yet)_\n<!-- /notes -->"
    if os.path.exists(a.out):
        m = re.search(r"<!-- notes -->.*?<!-- /notes -->", open(a.out).read(), re.S)
        if m:
            notes = m.group(0)
    s = doc["settings"]
    page = f"""# Reliability: faults under load

Generated by `make chaos` (`deploy/local/chaos.sh`, then `deploy/local/chaos_report.py`) in
{a.elapsed} s. One run, one table: every row is one fault injected into a live cluster while a
steady fan-out load runs through it. Figures are from a single run on a shared 2-core machine;
pauses move by a second or so between runs, the loss/duplicate/order counts should not.

## Machine

{machine()}

## Setup

- 6-process Redis Cluster on loopback (ports 7300-7305; 3 primaries, 3 replicas,
  `cluster-node-timeout 2000`, `repl-diskless-sync-delay 0`; deploy/local/redis-cluster.sh).
- 3 gateways (`{a.gateway}`, ports 8181-8183, deploy/local/cluster.sh) with
  `{a.gateway_args}` plus cluster.sh's `--drain-delay 1s --drain-window 2s --drain-deadline 5s`.
- nginx on 127.0.0.1:8180 (deploy/nginx/roomcast.conf.template: round robin, no stickiness,
  `max_fails=1 fail_timeout=5s`, retry on the next node).
- Load: `roomcast-checks chaos`: {s['rooms']} rooms × {s['members']} members = {s['rooms'] * s['members']} clients
  through nginx, {s['publishers']} of them publishing {s['rate']:.0f} messages/s in all (open loop,
  {s['payload']}-byte padding), rooms with `historySize` {s['history']}. Every client checks every
  delivery: offsets (gapless within an epoch, epoch changes recorded) and content (each
  (publisher, seq) once, in order per publisher). On any disconnection a client reconnects
  through nginx (honouring a drain's `reconnect.afterMs`, otherwise 50 ms, then backoff) and
  re-joins with `since` = the last offset and epoch it saw; publishers keep their schedule
  and skip the slots they were away for. `/readyz` of each gateway is polled every
  {s['readyz_every_ms']} ms.

```sh
{"make chaos" if a.gateway.startswith("target/") else "CHAOS_GATEWAY_BIN=" + a.gateway + " make chaos"}
# which runs deploy/local/chaos.sh, whose load is
{a.command}
```

## Results

{text}
## How to read the table

- **affected clients**: for a gateway fault, the clients connected to that gateway when it
  happened; for a Redis fault, the members of the rooms whose slots the faulted shard served.
  Clients already stuck by an earlier fault are left out of the row (counted apart).
- **longest delivery gap**: the longest silence between two deliveries at any affected client
  that overlaps the time from the fault to the next one (the normal gap is ~0.1 s: each room
  gets {s['rate'] / s['rooms']:.0f} messages/s); **resumed** is when that silence ended, counted from the fault.
  A room goes quiet also when its publishers are the ones reconnecting.
- **lost**: acknowledged publishes (an `ok` reply) sent in the fault's window (from 1 s before
  it to 1 s before the next fault), that a member of the room, joined before they were sent,
  never received, live or through `since` recovery. Per client: total (clients, max per client).
  **dup**: a (publisher, seq) delivered twice to one client; **out of order**: a publisher's
  seq lower than one already delivered. **epoch changes**: a client saw its room start a new
  epoch (history lost), live or as `recovered: false`.
- **publishes acked / failed / unanswered**: `ok` replies, error replies (codes below), and
  publishes whose connection ended before the reply (their fate is unknown to the publisher).
- **gap at other clients**: the same, at clients the fault should not touch (other gateways'
  clients, other shards' rooms): a fault whose effect spreads shows here.
- **stuck**: clients still connected that received nothing in the last {STUCK_MS // 1000} s of publishing,
  counted at the fault after which they last received something.
- **reconnects**: sessions that ended in the window; slowest = longest time from a drop to the
  next successful join. **failed to reconnect**: clients not back in by the end of the run.
- **/readyz truthful** compares every poll with what was injected: a killed gateway must not
  answer; a draining gateway must say 503 within {DRAIN_MS} ms of SIGTERM; a gateway cut off from
  Redis must say 503 within {DETECT_MS // 1000} s (1 s probe period + 3 s probe timeout + slack) and
  be ready again within {CUT_RECOVER_MS // 1000} s of the restore; during a Redis fault any gateway may say
  503 until {SETTLE_MS // 1000} s after the cluster settled; outside those windows, a 503 from a healthy
  gateway is wrong too.

## Interpretation

{notes}
"""
    open(a.out, "w").write(page)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
