#!/usr/bin/env python3
"""Seeds a trackstore server with ORDERS orders `o-seed-<n>` of 3 events each (NDJSON, 1,000 events
per request), for the read benchmarks. Usage: seed.py http://127.0.0.1:8080 100000"""
import datetime
import json
import sys
import urllib.request

base, orders = sys.argv[1], int(sys.argv[2])
at = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).strftime(
    "%Y-%m-%dT%H:%M:%S.000Z")
lines = []

def flush():
    if not lines:
        return
    req = urllib.request.Request(base + "/v1/events", data="\n".join(lines).encode(),
                                 headers={"Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 200, r.status
    lines.clear()

for n in range(orders):
    for i, status in enumerate(["created", "allocated", "out_for_delivery"]):
        lines.append(json.dumps({"event_id": f"seed-{n}-{i}", "order_id": f"o-seed-{n}",
                                 "status": status, "occurred_at": at, "carrier": f"van-{n % 50}",
                                 "location": {"lat": 51.5, "lon": -0.12}}))
    if len(lines) >= 999:
        flush()
flush()
print(f"seeded {orders} orders")
