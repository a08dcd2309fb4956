#!/usr/bin/env python3
"""The fault table of `make chaos`: sets the load tool's record (`roomcast-checks chaos
--json`) against the fault log that deploy/local/chaos.sh wrote, and prints one row per fault
(in the order the faults happened).

  --out FILE   also write the page (docs/reliability.md): this run's results go in the
               section of its mode (--durable 0 or 1), the other mode's section and the
               hand-written one between <!-- notes --> and <!-- /notes --> are kept.
  --quick      the `make test` version (timings are not asserted).

Fails (exit 1) on: an acknowledged message lost silently (with --durable 1: lost at all), a
divergence, a duplicate or out-of-order delivery, a publish answered only `unavailable` yet
delivered, a client that did not get back in or was left stuck.

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
END_SLACK_MS = 1000  # the last delivery may come this long before publishing stopped (else: a gap to the end)


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
    # In the order they happened (CHAOS_SEED shuffles them); numbers name the kind.
    return sorted(faults.values(), key=lambda f: f["start"]), marks


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


class Run:
    """The load's record, and what every fault row needs from it."""

    def __init__(self, doc):
        self.doc = doc
        self.clients = doc["clients"]
        self.pubs = doc["publishers"]
        self.start, self.pub_end, self.end = doc["start_ms"], doc["publish_end_ms"], doc["end_ms"]
        self.room_slot = [slot_of_room(r) for r in doc["rooms"]]
        self.readyz = doc["readyz"]
        self.gw_url = {u.rsplit(":", 1)[1].strip("/"): u for u in self.readyz}
        self.divergences = doc.get("divergences", [])
        self.div_behind = doc.get("divergences_behind_epoch_change", [])

    def affected(self, f):
        """For a gateway fault, the clients connected to it; for a Redis fault, the members of
        the rooms whose slots the faulted shard served."""
        kv = f["kv"]
        if "gateway" in kv:
            node = kv["gateway"]
            return [c for c in self.clients if any(
                s["node"] == node and s["connected_ms"] <= f["start"] and (s["end_ms"] is None or s["end_ms"] >= f["start"])
                for s in c["sessions"])]
        lo, _, hi = kv.get("slots", "0-16383").partition("-")
        lo, hi = int(lo), int(hi or lo)
        return [c for c in self.clients if lo <= self.room_slot[c["room"]] <= hi]

    def was_stuck(self, f):
        """Clients stuck since an earlier fault (nothing since it): they say nothing about this one."""
        return {c["client"] for c in self.clients if c["last_delivery_ms"] < self.pub_end - STUCK_MS and c["last_delivery_ms"] + SLACK_MS < f["start"]}


def set_windows(faults, run):
    """Attribution windows: fault i owns what was sent from 1 s before it until 1 s before the
    next one (the last one: until publishing stopped)."""
    for i, f in enumerate(faults):
        last = i + 1 == len(faults)
        f["win"] = (f["start"] - 1000, run.pub_end + 1 if last else faults[i + 1]["start"] - 1000)
        f["next"] = run.end if last else faults[i + 1]["start"]


def delivery_gaps(f, run, aff_ids, was_stuck):
    """The longest silence whose first missing delivery (its start + SLACK_MS) falls in
    [fault, next fault), at an affected client (and, apart, at the others), and when it ended."""
    longest, resumed, elsewhere = 0, 0, 0
    for c in run.clients:
        if c["client"] in was_stuck:
            continue
        gaps = list(c["gaps"])
        if c["last_delivery_ms"] + END_SLACK_MS < run.pub_end:
            gaps.append((c["last_delivery_ms"], run.end))  # never resumed
        for g0, g1 in gaps:
            if not (f["start"] <= g0 + SLACK_MS < f["next"]):
                continue
            if c["client"] not in aff_ids:
                elsewhere = max(elsewhere, g1 - g0)
            elif g1 - g0 > longest:
                longest, resumed = g1 - g0, g1 - f["start"]
    stuck = sorted(c["client"] for c in run.clients if c["last_delivery_ms"] < run.pub_end - STUCK_MS and f["start"] <= c["last_delivery_ms"] + SLACK_MS < f["next"])
    return {"pause": longest, "resumed": resumed, "elsewhere": elsewhere, "stuck": stuck}


def fmt_count(n, per_client):
    if n == 0:
        return "0"
    hit = [v for v in per_client.values() if v]
    return f"{n} ({len(hit)} clients, max {max(hit)})"


def delivery_counts(f, run):
    """Loss (silent / behind an epoch change), duplicates, order, epochs and divergences of
    the messages sent in the fault's window."""
    w0, w1 = f["win"]
    per = lambda key, keep=lambda x: True: {c["client"]: sum(1 for x in c[key] if w0 <= x[2] < w1 and keep(x)) for c in run.clients}
    silent = per("lost_list", lambda x: len(x) < 4 or not x[3])
    behind = per("lost_list", lambda x: len(x) >= 4 and x[3])
    dup, ooo = per("duplicates"), per("out_of_order")
    div = [d for d in run.divergences if w0 <= d["sent_ms"] < w1]
    behind_div = [d for d in run.div_behind if w0 <= d["sent_ms"] < w1]
    examples = sorted({f"room {c['room']}: {x[0]}:{x[1]} at {x[4]}" for c in run.clients for x in c["duplicates"] if w0 <= x[2] < w1 and len(x) > 4})
    out = {"divergences": div, "n_div": len(div), "div_behind": behind_div, "dup_examples": examples[:5],
           "div": f"{len(div)}" + (f" ({len(behind_div)})" if behind_div else "")}
    for name, d in (("silent", silent), ("behind", behind), ("dup", dup), ("ooo", ooo)):
        out[name + "_n"] = sum(d.values())
        out[name] = fmt_count(out[name + "_n"], d)
    # Duplicates whose copies were got in different epochs (x[4]: "epoch:offset ...").
    across = sum(1 for c in run.clients for x in c["duplicates"] if w0 <= x[2] < w1 and len(x) > 4 and len({p.split(":")[0] for p in x[4].split()}) > 1)
    if across:
        out["dup"] += f"; {across} across an epoch change"
    out["epochs"] = len([e for c in run.clients for e in c["epoch_changes"] if e["from"] and w0 <= e["ms"] < w1])
    out["anomalies"] = len([x for c in run.clients for x in c["offset_anomalies"] if w0 <= x["ms"] < w1])
    return out


def publish_counts(f, run):
    """Publishes first sent in the fault's window: acked, given up, unanswered, every error
    answer by code, retries and `duplicate: true` acks."""
    w0, w1 = f["win"]
    inwin = lambda key, at=1: [x for p in run.pubs for x in p.get(key, []) if w0 <= x[at] < w1]
    answers = {}
    for x in inwin("errors"):
        answers[x[3]] = answers.get(x[3], 0) + 1
    s0, s1 = max(0, (w0 - run.start) // 1000), max(0, (w1 - run.start) // 1000)
    return {
        "acked": sum(sum(p["acked_per_sec"][s0:s1]) for p in run.pubs),
        "failed": len(inwin("failed")),
        "unanswered": len(inwin("unanswered")),
        "codes": answers,
        "timeouts": answers.get("timeout", 0),
        "unavailable": answers.get("unavailable", 0),
        "retries": len(inwin("retries")),
        "dup_acks": len(inwin("duplicate_acks")),
    }


def reconnects(f, run):
    """Sessions that ended in the window, the slowest way back, and who did not get back."""
    w0, w1 = f["win"]
    n, back_max, not_back = 0, 0, []
    for c in run.clients:
        ss = c["sessions"]
        for i, s in enumerate(ss):
            if s["end_ms"] is None or not (w0 <= s["end_ms"] < w1) or s["end"] == "end":
                continue
            nxt = next((t["joined_ms"] for t in ss[i + 1:] if t["joined_ms"]), None)
            if nxt is None:
                not_back.append(c["client"])
            else:
                back_max = max(back_max, nxt - s["end_ms"])
            n += 1
    failed = sorted({c["client"] for c in run.clients if not c["connected_at_end"] and any(
        s["end_ms"] and w0 <= s["end_ms"] < w1 for s in c["sessions"])} | set(not_back))
    return {"reconnected": n, "back_max": back_max, "failed_reconnect": failed}


def readyz_allowed(f, mine, over, settled):
    """Where 503 is allowed: the faulted gateway until it is back, every gateway during a Redis
    fault, plus SETTLE_MS."""
    if f["kind"].endswith("primary") or f["kind"] == "cluster-failover":
        return (f["start"], settled + SETTLE_MS)
    if mine and f["kind"] == "cut-gateway":
        return (f["start"], over + CUT_RECOVER_MS)
    if mine:
        return (f["start"], over + SETTLE_MS)
    return (f["start"], f["start"])


def readyz_truth(f, run):
    """Every /readyz answer in the fault's time against what was injected: (lies, notes)."""
    lies, notes = [], []
    port = f["kv"].get("port")
    over, settled, end = fault_over(f), fault_settled(f), run.end
    for gport, url in sorted(run.gw_url.items()):
        ch = run.readyz[url]["changes"]
        if not ch:
            continue
        mine = gport == port
        allow = readyz_allowed(f, mine, over, settled)
        unready = [(lo, hi, s) for lo, hi, s in states_between(ch, f["start"], f["next"], end) if s != "200"]
        wrong = [(lo, hi, s) for lo, hi, s in unready if hi > allow[1] or lo < allow[0]]
        if wrong:
            lo, hi, s = wrong[0]
            lies.append(f"{gport} said `{s}` at +{fmt_s(lo - f['start'])}s for {fmt_s(hi - lo)} s while healthy")
        if unready:
            total = sum(hi - lo for lo, hi, _ in unready)
            notes.append(f"{gport}: not ready {fmt_s(total)} s from +{fmt_s(unready[0][0] - f['start'])}s ({', '.join(sorted({s for _, _, s in unready}))})")
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
    return lies, notes


def fault_row(f, run):
    aff_all = run.affected(f)
    was_stuck = run.was_stuck(f)
    aff = [c for c in aff_all if c["client"] not in was_stuck]
    lies, notes = readyz_truth(f, run)
    placeholders = {"gateway": "?", "primary": "?", "replica": "?", "pause": "?", "for": "?"}
    kv = {k: (v.replace("local-", "") if k == "gateway" else v) for k, v in f["kv"].items()}
    stuck_before = len(was_stuck & {c["client"] for c in aff_all})
    return {
        "n": f["n"],
        "fault": DESCRIBE.get(f["kind"], f["kind"]).format_map({**placeholders, **kv}),
        "affected": f"{len(aff)}" + (f" (+{stuck_before} already stuck)" if was_stuck else ""),
        "n_aff": len(aff),
        **delivery_gaps(f, run, {c["client"] for c in aff}, was_stuck),
        **delivery_counts(f, run),
        **publish_counts(f, run),
        **reconnects(f, run),
        "readyz": "yes" if not lies else "**no**", "lies": lies, "notes": notes,
        "over": fault_over(f) - f["start"], "settled": fault_settled(f) - f["start"],
    }


HEADER = [
    "| # | fault | affected clients | longest delivery gap (s) | resumed (s after fault) | gap at other clients (s) | lost silently | lost behind an epoch change | dup delivered | out of order | divergences (acked behind an epoch change) | epoch changes | publishes acked / failed / unanswered | answers timeout / unavailable | retries | dup acks | reconnects (slowest, s) | failed to reconnect | stuck (connected, receiving nothing) | /readyz truthful |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def table(rows):
    out = list(HEADER)
    for r in rows:
        out.append(
            f"| {r['n']} | {r['fault']} | {r['affected']} | {gap(r['pause']) if r['n_aff'] else 'n/a'} | {gap(r['resumed']) if r['pause'] else '-'} | {gap(r['elsewhere'])} | "
            f"{r['silent']} | {r['behind']} | {r['dup']} | {r['ooo']} | {r['div']} | {r['epochs']} | "
            f"{r['acked']} / {r['failed']} / {r['unanswered']} | {r['timeouts']} / {r['unavailable']} | {r['retries']} | {r['dup_acks']} | "
            f"{r['reconnected']} ({fmt_s(r['back_max'])}) | {len(r['failed_reconnect'])} | {len(r['stuck'])} | {r['readyz']} |"
        )
    return out


def fmt_divergence(d):
    what = ", ".join(f"{p}:{s}" for p, s in d["contents"])
    if d["kind"] == "ack_offset":
        got = ", ".join(f"{e[:8]}:{o}" for e, o in d["delivered_at"])
        return f"room {d['room']}: {what} acknowledged at offset {d['offset']} (epoch {d['epoch'][:8]}) but delivered at {got}"
    acked = ", ".join(f"{p}:{s}" for p, s in d.get("acked_here", []))
    return f"room {d['room']} epoch {d['epoch'][:8]} offset {d['offset']}: {what}{f' (acknowledged there: {acked})' if acked else ''}"


def details(rows):
    out = []
    for r in rows:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items())) or "none"
        out.append(f"- **{r['n']}.** over after {fmt_s(r['over'])} s, settled after {fmt_s(r['settled'])} s; publish error answers (retried or not): {codes}; offset anomalies: {r['anomalies']}")
        out += [f"  - readyz {n}" for n in r["notes"]]
        out += [f"  - **readyz wrong**: {l}" for l in r["lies"]]
        out += [f"  - **divergence**: {fmt_divergence(d)}" for d in r["divergences"][:5]]
        out += [f"  - **delivered twice**: {x}" for x in r["dup_examples"]]
        if r["n_div"] > 5:
            out.append(f"  - ... {r['n_div'] - 5} more divergences")
        out += [f"  - acknowledged where members hold another message, behind an epoch change they saw: {fmt_divergence(d)}" for d in r["div_behind"][:3]]
        if len(r["div_behind"]) > 3:
            out.append(f"  - ... {len(r['div_behind']) - 3} more acknowledged behind an epoch change")
        if r["failed_reconnect"]:
            out.append(f"  - clients that did not get back in: {r['failed_reconnect']}")
        if r["stuck"]:
            out.append(f"  - clients connected but receiving nothing from this fault to the end: {len(r['stuck'])} ({r['stuck'][:20]}{' ...' if len(r['stuck']) > 20 else ''})")
    return out


def totals(summ):
    g = lambda k: summ.get(k, "?")
    return (
        f"clients {g('clients')} (joined at start {g('joined_at_start')}), reconnects {g('reconnects')}, "
        f"failed attempts {g('failed_attempts')}, failed to reconnect {len(summ['failed_to_reconnect'])}; "
        f"publishes sent {g('sent')} (attempts {g('attempts')}, retries {g('retries')}), acked {g('acked')} "
        f"(duplicate acks {g('duplicate_acks')}), answers timeout {g('timeouts')} / unavailable {g('unavailable')}, "
        f"failed {g('failed')} (delivered anyway {g('failed_but_delivered')}, of them answered only \"not applied\" {g('not_applied_but_delivered')}), "
        f"unanswered {g('unanswered')} (delivered anyway {g('unanswered_but_delivered')}); deliveries {g('delivered')}; "
        f"lost {g('lost')} (silently {g('lost_silently')}, behind an epoch change {g('lost_behind_epoch_change')}, "
        f"acked but reached no member {g('lost_everywhere')}); duplicates delivered {g('duplicates')}; out of order {g('out_of_order')} "
        f"(retries landing after newer messages, not counted: {g('reordered_by_retry')}); "
        f"divergences {g('divergences')} (acked where members hold another message, behind an epoch change they saw: "
        f"{g('divergences_behind_epoch_change')}); offset anomalies {g('offset_anomalies')}; epoch changes {g('epoch_changes')}"
    )


def judge(a, summ, rows):
    """The pass/fail verdict: a list of failures (empty: passed)."""
    failures = []
    g = lambda k: summ.get(k, 0)
    if a.durable == "1" and g("lost") > 0:
        failures.append(f"{g('lost')} acknowledged deliveries lost with --durable-publish")
    elif g("lost_silently") > 0:
        failures.append(f"{g('lost_silently')} acknowledged deliveries lost silently (no epoch change seen)")
    for key, what in (("divergences", "divergences (two messages at one position, or an ack at the wrong offset)"),
                      ("duplicates", "duplicate deliveries"), ("out_of_order", "out-of-order deliveries"),
                      ("not_applied_but_delivered", "publishes answered only \"not applied\" (unavailable) yet delivered")):
        if g(key) > 0:
            failures.append(f"{g(key)} {what}")
    if summ["failed_to_reconnect"]:
        failures.append(f"clients that did not get back in: {summ['failed_to_reconnect']}")
    stuck_all = sorted({x for r in rows for x in r["stuck"]})
    if stuck_all and os.environ.get("CHAOS_ALLOW_STUCK") == "1":
        print(f"WARNING: {len(stuck_all)} clients connected but receiving nothing at the end (stuck); not failing (CHAOS_ALLOW_STUCK=1)")
    elif stuck_all:
        failures.append(f"{len(stuck_all)} clients connected but receiving nothing at the end (stuck)")
    if summ["joined_at_start"] < summ["clients"]:
        failures.append(f"only {summ['joined_at_start']} of {summ['clients']} clients joined before the load started")
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", required=True)
    ap.add_argument("--faults", required=True)
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--durable", default="1")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--elapsed", default="?")
    ap.add_argument("--command", default="")
    ap.add_argument("--gateway-args", default="")
    ap.add_argument("--gateway", default="target/release/roomcast")
    a = ap.parse_args()

    doc = json.load(open(a.load))
    faults, _ = parse_faults(a.faults)
    run = Run(doc)
    set_windows(faults, run)
    rows = [fault_row(f, run) for f in faults]
    summ = doc["summary"]
    readyz_polls = ", ".join(f"{u.rsplit(':', 1)[1]}: {r['polls']} polls, longest gap {r['max_poll_gap_ms']} ms" for u, r in sorted(run.readyz.items()))
    order = " → ".join(str(f["n"]) for f in faults)
    text = "\n".join(table(rows)) + "\n\nTotals: " + totals(summ) + "\n\n" + "\n".join(details(rows)) + f"\n\nFault order {order} (seed {a.seed}); readyz polling: " + readyz_polls + "\n"
    print()
    print(text)
    lies_all = [f"fault {r['n']}: {x}" for r in rows for x in r["lies"]]
    if lies_all:
        print("readyz did not tell the truth:\n  " + "\n  ".join(lies_all))
    if a.out:
        write_page(a, doc, text)
    failures = judge(a, summ, rows)
    mode = "--durable-publish" if a.durable == "1" else "default (non-durable) mode"
    if failures:
        print(f"CHAOS FAILED ({mode}, seed {a.seed}): " + "; ".join(failures))
        return 1
    promise = "nothing acknowledged lost" if a.durable == "1" else "no silent loss"
    print(f"chaos ({mode}, seed {a.seed}): {promise}, no divergence, no duplicate, every client back in")
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


MODES = {"0": ("default", "Default mode (no `--durable-publish`)"), "1": ("durable", "With `--durable-publish`")}


def kept(path, marker, default):
    """The `<!-- marker -->…<!-- /marker -->` section of an existing page, or `default`."""
    if os.path.exists(path):
        m = re.search(rf"<!-- {marker} -->.*?<!-- /{marker} -->", open(path).read(), re.S)
        if m:
            return m.group(0)
    return default


def results_section(a, text):
    """This run's results, between markers of its mode: a run of the other mode keeps it."""
    key, title = MODES.get(a.durable, MODES["1"])
    binary = "make chaos" if a.gateway.startswith("target/") else "CHAOS_GATEWAY_BIN=" + a.gateway + " make chaos"
    env = f"CHAOS_DURABLE={a.durable}" + (f" CHAOS_SEED={a.seed}" if a.seed != "0" else "")
    return f"""<!-- results:{key} -->
### {title}

Gateways `{a.gateway}` with `{a.gateway_args}`; {a.elapsed} s; seed {a.seed}.

```sh
{env} {binary}
# deploy/local/chaos.sh; its load:
{a.command}
```

{text}<!-- /results:{key} -->"""


def write_page(a, doc, text):
    notes = kept(a.out, "notes", "<!-- notes -->\n_(no notes yet)_\n<!-- /notes -->")
    this = MODES.get(a.durable, MODES["1"])[0]
    sections = {k: kept(a.out, f"results:{k}", f"<!-- results:{k} -->\n_(not run yet: `CHAOS_DURABLE={d} make chaos`)_\n<!-- /results:{k} -->") for d, (k, _) in MODES.items()}
    sections[this] = results_section(a, text)
    s = doc["settings"]
    page = f"""# Reliability: faults under load

Generated by `make chaos` (`deploy/local/chaos.sh`, then `deploy/local/chaos_report.py`), which
runs twice: in the default mode and with `--durable-publish` (`CHAOS_DURABLE=0` or `1` runs one
and keeps the other's section). One table per mode: every row is one fault injected into a live
cluster while a steady fan-out load runs through it. Figures are from single runs on a shared
2-core machine; pauses move by a second or so between runs, the loss/duplicate/order/divergence
counts should not.

## Machine

{machine()}

## Setup

- 6-process Redis Cluster on loopback (ports 7300-7305; 3 primaries, 3 replicas,
  `cluster-node-timeout 2000`, `repl-diskless-sync-delay 0`; deploy/local/redis-cluster.sh).
- 3 gateways (ports 8181-8183, deploy/local/cluster.sh) with the flags of each section below
  plus cluster.sh's `--drain-delay 1s --drain-window 2s --drain-deadline 5s`.
- nginx on 127.0.0.1:8180 (deploy/nginx/roomcast.conf.template: round robin, no stickiness,
  `max_fails=1 fail_timeout=5s`, retry on the next node).
- Load: `roomcast-checks chaos`: {s['rooms']} rooms × {s['members']} members = {s['rooms'] * s['members']} clients
  through nginx, {s['publishers']} of them publishing {s['rate']:.0f} messages/s in all (open loop,
  {s['payload']}-byte padding), rooms with `historySize` {s['history']}. Every client checks every
  delivery: offsets (gapless within an epoch, epoch changes recorded), content (each
  (publisher, seq) once, in order per publisher) and position (what it got at each room, epoch
  and offset). On any disconnection a client reconnects through nginx (honouring a drain's
  `reconnect.afterMs`, otherwise 50 ms, then backoff) and re-joins with `since` = the last
  offset and epoch it saw; publishers keep their schedule and skip the slots they were away
  for. Each message has its own `msgId`; one answered `unavailable` or `timeout`, or left
  unanswered by a dropped connection, is sent again with the same `msgId` (up to
  {s.get('max_tries', '?')} attempts within {s.get('retry_within_ms', 0) / 1000:.0f} s). `/readyz` of each gateway is polled every
  {s['readyz_every_ms']} ms.
- `CHAOS_SEED` (default 0: faults 1-6 in that order, fixed timings) shuffles the faults, picks
  the shards of faults 3-5 and moves the timings; each section names its seed and fault order.

## Results

{sections['default']}

{sections['durable']}

## How to read the tables

- **affected clients**: for a gateway fault, the clients connected to that gateway when it
  happened; for a Redis fault, the members of the rooms whose slots the faulted shard served.
  Clients already stuck by an earlier fault are left out of the row (counted apart).
- **longest delivery gap**: the longest silence between two deliveries at any affected client
  that overlaps the time from the fault to the next one (the normal gap is ~0.1 s: each room
  gets {s['rate'] / s['rooms']:.0f} messages/s); **resumed** is when that silence ended, counted from the fault.
  A room goes quiet also when its publishers are the ones reconnecting.
- **lost**: acknowledged publishes (an `ok` reply, or `duplicate: true` for a retry) first sent
  in the fault's window (from 1 s before it to 1 s before the next fault), that a member of the
  room, joined before they were sent, never received, live or through `since` recovery. **Lost
  behind an epoch change**: the member saw its room start a new epoch after the message was sent
  (the room told it history was lost); **lost silently**: it did not, which is a failure in
  either mode (with `--durable-publish`, any loss is). Per client: total (clients, max per client).
- **dup delivered**: a (publisher, seq) delivered twice to one client (`across an epoch
  change`: the copies came in different epochs); **out of order**: a
  publisher's seq lower than one already delivered (a retried message is not counted: its retry
  goes out after newer messages, which keep the schedule). **divergences**: a room, epoch and offset at
  which two members hold different messages, or a member and an acknowledgement do (unless
  every member holding it then saw that epoch replaced: in brackets, not a failure, the
  acknowledged message is lost behind the epoch change), or a message acknowledged at an offset
  other than the one members got it at; any is a failure. An acknowledgement carries no epoch:
  it is placed where members got the message, else in the publisher's own epoch when that is
  unambiguous. **epoch changes**: a client saw its room start
  a new epoch, live or as `recovered: false`.
- **publishes acked / failed / unanswered**: messages acknowledged, given up after an error
  answer, and given up with their last attempt unanswered (the connection or the run ended).
  **answers timeout / unavailable**: every such answer, retried or not (`unavailable`: not
  applied; `timeout`: outcome unknown). **retries**: attempts after the first; **dup acks**:
  `ok` answers with `duplicate: true` (a retry of a message already applied).
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
