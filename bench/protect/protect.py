#!/usr/bin/env python3
"""Helpers of bench/protect/run.sh (issue 6's data-protection benchmark). Standard library only.

  orders URL N PREFIX CURLCFG   store N orders of 3 recent events (ids PREFIX-o<i>), write the
                                curl config that erases them (one DELETE per order)
  sample URL PID OUT            append a line of counters to OUT every 0.25 s until killed
  summary DIR                   the results of one run (DIR holds the files run.sh wrote), as JSON
  header | row N SUMMARY        the Markdown table of the runs, a row per summary
"""
import json
import os
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

CARRIERS = ["dhl", "ups", "dpd", "gls", "fedex", "hermes"]
STEPS = ["created", "allocated", "picking"]
BATCH = 1000


def post(url, body):
    req = urllib.request.Request(
        url + "/v1/events", data=body, headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def orders(url, n, prefix, cfg):
    # Two hours ago, one millisecond apart per order: recent (retention keeps them), never future.
    t0 = datetime.now(timezone.utc) - timedelta(hours=2)
    events = []
    for i in range(n):
        for k, status in enumerate(STEPS):
            at = t0 + timedelta(milliseconds=i, minutes=10 * k)
            events.append({
                "event_id": f"{prefix}-e{i}-{k}",
                "order_id": f"{prefix}-o{i}",
                "status": status,
                "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
                "carrier": CARRIERS[i % len(CARRIERS)],
                # Personal data of the kind an erasure exists for.
                "location": {"lat": 51.5 + i / 1e5, "lon": -0.12, "name": f"{i} Example Street"},
                "attributes": {"recipient": f"Recipient {i}", "phone": f"+44 20 7946 {i % 10000:04d}"},
            })
    created = 0
    for s in range(0, len(events), BATCH):
        res = post(url, json.dumps(events[s:s + BATCH]).encode())["results"]
        created += sum(r["outcome"] == "created" for r in res)
    if created != len(events):
        sys.exit(f"orders: {created} of {len(events)} events created (ids reused from an earlier run?)")
    with open(cfg, "w") as f:
        for i in range(n):
            f.write(f'url = "{url}/v1/orders/{prefix}-o{i}"\noutput = "/dev/null"\n')
    print(f"{n} orders, {created} events stored")


def metrics(url):
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    want = {
        'trackstore_ingest_events_total{outcome="created"}': "created",
        "trackstore_erasures_total": "erasures",
        "trackstore_erased_events_total": "erased_events",
        "trackstore_retention_removed_events_total": "retained_removed",
        "trackstore_retention_removed_orders_total": "retained_removed_orders",
        "trackstore_events": "events",
        "trackstore_orders": "orders",
        # The writer's group commits: how many, and their write time (WAL, memtable, fsync) in µs.
        "trackstore_commit_write_duration_seconds_count": "writes",
        "trackstore_commit_write_duration_seconds_sum": "write_us",
    }
    out = {v: 0 for v in want.values()}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key in want:
            v = float(value)
            out[want[key]] = int(v * 1e6 if want[key] == "write_us" else v)
    return out


def cpu_ticks(pid):
    """(whole process, writer thread) CPU in clock ticks, from /proc."""
    def ticks(path):
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    writer = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() == "trackstore-writ":  # comm is cut to 15 bytes
                    writer = ticks(f"/proc/{pid}/task/{tid}/stat")
        except FileNotFoundError:
            pass
    return ticks(f"/proc/{pid}/stat"), writer


def busy_ticks():
    """CPU ticks spent by the whole machine (all processes), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # minus idle and iowait


def sample(url, pid, out):
    with open(out, "a") as f:
        while True:
            m = metrics(url)
            server, writer = cpu_ticks(pid)
            m.update(t=time.time(), server_ticks=server, writer_ticks=writer, busy_ticks=busy_ticks())
            f.write(json.dumps(m) + "\n")
            f.flush()
            time.sleep(0.25)


def rate(samples, key, t0, t1):
    """Increase of a counter per second between the samples nearest to t0 and t1."""
    a = min(samples, key=lambda s: abs(s["t"] - t0))
    b = min(samples, key=lambda s: abs(s["t"] - t1))
    return (b[key] - a[key]) / (b["t"] - a["t"]) if b["t"] > a["t"] else 0.0


def phase(d, name, t0, t1):
    """Figures of one load phase: trackload's report, and the server's counters over [t0, t1]."""
    rep = json.load(open(f"{d}/{name}.json"))
    op = rep["ops"]["all"]
    lat = op["latency"]
    s = [json.loads(x) for x in open(f"{d}/{name}.samples")]
    hz = os.sysconf("SC_CLK_TCK")
    secs = t1 - t0
    server_cpu = rate(s, "server_ticks", t0, t1) / hz
    busy = rate(s, "busy_ticks", t0, t1) / hz
    load_cpu = [float(x) for x in open(f"{d}/{name}.time").read().split()]
    trackload_cpu = (load_cpu[0] + load_cpu[1]) / rep["wall_s"]
    return {
        "load_events_per_s": op["ok_per_s"],
        "errors": op["errors"],
        "wall_s": rep["wall_s"],
        "p50_ms": lat["p50_ms"], "p90_ms": lat["p90_ms"], "p99_ms": lat["p99_ms"],
        "p999_ms": lat["p999_ms"], "max_ms": lat["max_ms"],
        "server_created_per_s": rate(s, "created", t0, t1),
        "window_s": secs,
        "server_cores": server_cpu,
        "writer_cores": rate(s, "writer_ticks", t0, t1) / hz,
        "trackload_cores": trackload_cpu,
        # Whatever else ran on the machine (the curl erasures, the sampler, other engineers' jobs).
        "other_cores": busy - server_cpu - trackload_cpu,
        "samples": s,
    }


def summary(d):
    meta = json.load(open(f"{d}/meta.json"))
    base = phase(d, "baseline", meta["baseline_t0"], meta["baseline_t1"])
    # The protection window: from the first erasure or retention step to the last one.
    prot_s = [json.loads(x) for x in open(f"{d}/protect.samples")]
    moved = [s for s in prot_s if s["erasures"] > 0 or s["retained_removed"] > 0]
    erase_done = next(s["t"] for s in prot_s if s["erasures"] >= meta["orders"])
    sweep_start = next(s["t"] for s in prot_s if s["retained_removed"] > 0)
    sweep_done = next(s["t"] for s in prot_s if s["retained_removed"] >= meta["old_events"])
    w0, w1 = moved[0]["t"], max(erase_done, sweep_done)
    prot = phase(d, "protect", w0, w1)
    after = phase(d, "after", meta["after_t0"], meta["after_t1"]) if os.path.exists(f"{d}/after.json") else None
    erase_s = meta["erase_t1"] - meta["erase_t0"]
    # The two jobs overlap, then one runs alone: ingest, erasure and sweep rates in each part.
    hz = os.sysconf("SC_CLK_TCK")
    parts = []
    first_done = min(erase_done, sweep_done)
    for label, a, b in (
        ("both", w0, first_done),
        ("erasures only" if erase_done > sweep_done else "sweep only", first_done, w1),
    ):
        if b - a >= 1.0:
            parts.append({
                "part": label, "s": b - a,
                "created_per_s": rate(prot_s, "created", a, b),
                "erasures_per_s": rate(prot_s, "erasures", a, b),
                "swept_per_s": rate(prot_s, "retained_removed", a, b),
                "writer_cores": rate(prot_s, "writer_ticks", a, b) / hz,
            })
    out = {
        "load_before": "/".join(str(meta[k]) for k in ("load_quiet", "load_baseline", "load_protect") if k in meta),
        "baseline": base,
        "protect": prot,
        "after": after,
        "erasures": meta["orders"],
        "erase_s": erase_s,
        "erasures_per_s": meta["orders"] / erase_s,
        "erase_start_lag_s": meta["erase_t0"] - meta["protect_t0"],
        "old_events": meta["old_events"],
        "sweep_s": sweep_done - sweep_start,
        "sweep_events_per_s": meta["old_events"] / (sweep_done - sweep_start),
        "sweep_start_lag_s": sweep_start - meta["protect_t0"],
        "ratio_load": prot["load_events_per_s"] / base["load_events_per_s"],
        "ratio_window": prot["server_created_per_s"] / base["server_created_per_s"],
        "parts": parts,
        "config": meta.get("config", ""),
    }
    for p in (base, prot, after):
        if p:
            del p["samples"]
    return out


HEADER = """| run | config | other CPU, cores: baseline / protect / after | plain ingest (baseline): ev/s, p99 ms | under erasure + retention (trackload): ev/s, p99 / max ms | ratio (server counters over the removals) | ingest while both jobs run | ingest while one job runs alone | 10k erasures | retention sweep | plain ingest after |
|---|---|---|---|---|---|---|---|---|---|---|"""

# Cores used by anything but the server and trackload above which a phase is flagged as shared.
SHARED_CORES = 0.3


def row(n, path):
    r = json.load(open(path))
    b, p, a = r["baseline"], r["protect"], r["after"]
    base = b["server_created_per_s"]
    parts = {x["part"]: x for x in r["parts"]}

    def part(name):
        x = parts.get(name)
        if not x:
            return "—"
        return (f"{name}: {x['created_per_s']:,.0f} ({x['created_per_s'] / base:.0%}) for {x['s']:.1f} s, "
                f"{x['erasures_per_s']:,.0f} erasures/s, {x['swept_per_s']:,.0f} swept/s")

    after = f"{a['load_events_per_s']:,.0f}, {a['p99_ms']:.1f}" if a else "—"
    alone = next((k for k in parts if k != "both"), None)
    others = [x["other_cores"] for x in (b, p, a) if x]
    shared = " ⚠ shared" if max(others) > SHARED_CORES else ""
    return (
        f"| {n} | {r['config']} | {' / '.join(f'{x:.2f}' for x in others)}{shared} "
        f"| {b['load_events_per_s']:,.0f}, {b['p99_ms']:.1f} "
        f"| {p['load_events_per_s']:,.0f} over {p['wall_s']:.1f} s, {p['p99_ms']:.1f} / {p['max_ms']:.0f} "
        f"| **{r['ratio_load']:.0%}** ({r['ratio_window']:.0%}) "
        f"| {part('both')} | {part(alone) if alone else '—'} "
        f"| {r['erase_s']:.1f} s = {r['erasures_per_s']:,.0f}/s "
        f"| {r['old_events']:,} events in {r['sweep_s']:.1f} s = {r['sweep_events_per_s']:,.0f}/s "
        f"| {after} |"
    )


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "orders":
        orders(args[0], int(args[1]), args[2], args[3])
    elif cmd == "sample":
        sample(args[0], int(args[1]), args[2])
    elif cmd == "header":
        print(HEADER)
    elif cmd == "row":
        print(row(args[0], args[1]))
    elif cmd == "summary":
        print(json.dumps(summary(args[0]), indent=1))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
