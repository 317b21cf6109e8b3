#!/usr/bin/env bash
# Replication benchmarks (issue 4): replication lag at fixed ingest rates, the primary's ingest rate
# with and without a replica, and catch-up speed. Release binaries, one machine, loopback.
#   usage: bench/repl/run.sh [lag RATE SECONDS | throughput SECONDS | catchup EVENTS]
# Environment: BIN (binaries, default ./target/release), W (work directory), PRIMARY_ARGS and
# REPLICA_ARGS (extra trackstore flags for each node, e.g. REPLICA_ARGS="--durability nosync-unsafe"),
# FSYNC_TRACE=1 (throughput: also time the primary writer's fdatasync calls with perf, as root).
set -euo pipefail
BIN=${BIN:-./target/release}
W=${W:-/tmp/ts-repl-bench}
PH=18080 PR=17443 RH=18081 RR=17444

certs() {
  [ -f "$W/certs/ca.pem" ] || "$BIN/trackctl" certs init "$W/certs" --nodes primary,replica >/dev/null
}
node() { # name http repl [primary-repl]
  local name=$1 http=$2 repl=$3 of=${4:-}
  local args=(--data "$W/$name" --http "127.0.0.1:$http" --https off --replication "127.0.0.1:$repl"
    --tls-ca "$W/certs/ca.pem" --tls-cert "$W/certs/$name.pem" --tls-key "$W/certs/$name.key")
  # shellcheck disable=SC2206
  if [ -n "$of" ]; then args+=(--replica-of "127.0.0.1:$of" ${REPLICA_ARGS:-}); else args+=(${PRIMARY_ARGS:-}); fi
  "$BIN/trackstore" "${args[@]}" >"$W/$name.out" 2>"$W/$name.err" &
  echo $!
}
wait_ready() { for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }
# Seconds since the epoch from bash itself (no `date` process in the poll loop), with a decimal
# point whatever the locale writes, for python.
now() { echo "${EPOCHREALTIME/,/.}"; }
# Polled every 50 ms while catch-up is timed: curl and a bash match only. A python3 per poll (a pyenv
# shim here: bash scripts, then the interpreter) took ~20% of the machine from the nodes it timed.
last_lsn() {
  local body; body=$(curl -sf "http://127.0.0.1:$1/v1/stats")
  [[ $body =~ \"last_lsn\":([0-9]+) ]] || { echo "no last_lsn from port $1: $body" >&2; return 1; }
  echo "${BASH_REMATCH[1]}"
}
summary() { # LABEL FILE: events/s and latency of a trackload --json report
  python3 - "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
op = d["ops"]["all"]; l = op["latency"]; batch = d.get("batch") or 1
print(f"{sys.argv[1]} {op['ok_per_s'] * batch:,.0f} events/s ({op['ok_per_s']:,.0f} req/s), errors {op['errors']}, "
      f"p50 {l['p50_ms']} ms, p99 {l['p99_ms']} ms, p99.9 {l['p999_ms']} ms, max {l['max_ms']} ms")
PY
}
settle() { # HTTP_PORT: wait (at most 60 s) until the node runs no compaction and owes none, so that a
           # measurement that follows is not shared with the compactions of the load before it
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$1/metrics" | awk '/^trackstore_rocksdb\{.*property="(running_compactions|pending_compaction_bytes)"/ {s += $2} END {exit s > 0}' && return
    sleep 0.2
  done
}
commit_times() { # the primary's /metrics on stdin: its group commits (write + WAL fdatasync)
  python3 -c '
import re, sys
t = sys.stdin.read()
def total(name): return float(re.search(name + r" ([0-9.e+]+)", t).group(1))
n = total("trackstore_commit_write_duration_seconds_count")
events = total("trackstore_commit_group_events_sum") / n
write_us = total("trackstore_commit_write_duration_seconds_sum") / n * 1e6
print(f"  primary: {n:,.0f} group commits, {events:.1f} events each, write + fdatasync {write_us:.0f} us on average")'
}
commit_tail() { # LABEL, a node's /metrics on stdin: its group commits' write + fdatasync, and how
                # many took 25.6 ms or longer (a replica's slow commits are lag)
  python3 -c '
import re, sys
t = sys.stdin.read()
def total(name): return float(re.search(name + r" ([0-9.e+]+)", t).group(1))
n = total("trackstore_commit_write_duration_seconds_count")
buckets = {float(le): float(c) for le, c in re.findall(r"trackstore_commit_write_duration_seconds_bucket\{le=\"([0-9.e+-]+)\"\} ([0-9.e+]+)", t)}
def over(s): return n - max((c for le, c in buckets.items() if le <= s * 1.0001), default=0)
avg = total("trackstore_commit_write_duration_seconds_sum") / max(n, 1) * 1e6
print(f"  {sys.argv[1]}: {n:,.0f} group commits, write + fdatasync {avg:.0f} us on average; "
      f"{over(0.0256):,.0f} took over 25.6 ms, {over(0.1024):,.0f} over 102.4 ms")' "$1"
}
fsync_trace() { # PID SECONDS FILE: the writer thread's fdatasync calls for 5 s mid-run (needs perf)
  sleep $(($2 > 6 ? $2 / 2 - 2 : 1))
  local t
  t=$(grep -l '^trackstore-writ$' /proc/"$1"/task/*/comm | head -1 | cut -d/ -f5) || return 0
  perf record -q -e syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync -t "$t" -o "$3" -- sleep 5 >/dev/null 2>&1 || true
}
fsync_times() { # FILE: fdatasync durations from fsync_trace
  perf script -i "$1" -F time,event 2>/dev/null | python3 -c '
import sys
d, start = [], None
for line in sys.stdin:
    t, ev = line.split()[:2]
    t = float(t.rstrip(":"))
    if "enter" in ev: start = t
    elif start is not None: d.append(t - start); start = None
d.sort()
if d: print(f"  primary writer fdatasync: {len(d):,} calls, p50 {d[len(d) // 2] * 1e6:.0f} us, "
            f"p99 {d[int(len(d) * 0.99)] * 1e6:.0f} us, max {d[-1] * 1e6:.0f} us")'
}
rss() { awk '/VmHWM/ {print $2/1024 " MiB"}' "/proc/$1/status"; }
stop() { # the servers are not children of this shell (started in $(...)): poll until they are gone
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
}
fresh() { stop ${P:-} ${R:-} $(pgrep -f "trackstore --data $W/" || true); P= R=; rm -rf "$W/primary" "$W/replica"; mkdir -p "$W"; certs
  sync; } # written back now, not in bursts during the run (see bench/http/run.sh)
trap 'stop ${P:-} ${R:-}' EXIT

case ${1:-lag} in
lag) # RATE SECONDS [BATCH]: open-loop ingest of RATE events/s on the primary (single-event requests,
     # or requests of BATCH events); the replica's lag per entry from the primary's commit
     # (commit_lag_ms) and from its receipt (apply_delay_ms)
  rate=${2:-10000} secs=${3:-30} batch=${4:-1}
  load=(ingest --rate "$rate")
  [ "$batch" -gt 1 ] && load=(ingest-batch --batch "$batch" --rate $((rate / batch)))
  fresh; P=$(node primary $PH $PR); wait_ready $PH; R=$(node replica $RH $RR $PR); wait_ready $RH
  "$BIN/trackload" "${load[@]}" --url "http://127.0.0.1:$PH" --duration "${secs}s" --json >"$W/load.json"
  sleep 1
  summary "primary (trackload):" "$W/load.json"
  curl -sf "http://127.0.0.1:$RH/v1/admin/replication" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("replica:", json.dumps({k: d[k] for k in ("commit_lag_ms","apply_delay_ms","lag_lsn","last_lsn","reconnects")}))'
  curl -sf "http://127.0.0.1:$PH/metrics" | commit_tail primary
  curl -sf "http://127.0.0.1:$RH/metrics" | commit_tail replica
  echo "primary RSS $(rss $P), replica RSS $(rss $R)"
  ;;
throughput) # SECONDS: closed-loop single-event ingest, 64 connections, without then with a replica
  secs=${2:-20}
  for with in no yes; do
    fresh; P=$(node primary $PH $PR); wait_ready $PH
    if [ $with = yes ]; then R=$(node replica $RH $RR $PR); wait_ready $RH; fi
    if [ -n "${FSYNC_TRACE:-}" ]; then fsync_trace "$P" "$secs" "$W/fsync-$with.data" & fi
    "$BIN/trackload" ingest --url "http://127.0.0.1:$PH" --connections 64 --duration "${secs}s" --json >"$W/tp-$with.json"
    wait || true # the trace, if any
    summary "replica attached: $with:" "$W/tp-$with.json"
    curl -sf "http://127.0.0.1:$PH/metrics" | commit_times
    if [ -n "${FSYNC_TRACE:-}" ]; then fsync_times "$W/fsync-$with.data"; fi
    echo "primary RSS $(rss $P)"
  done
  ;;
catchup) # EVENTS: load the primary, then time a fresh replica to its last LSN. From 1,000,000 entries
         # on a fresh replica bootstraps from a snapshot; to time catch-up from the log instead:
         # PRIMARY_ARGS="--replication-snapshot-min-lsn 1000000000000" bench/repl/run.sh catchup
  n=${2:-1000000}
  fresh; P=$(node primary $PH $PR); wait_ready $PH
  "$BIN/trackload" ingest-batch --batch 1000 --url "http://127.0.0.1:$PH" --connections 4 --requests $((n / 1000)) --json >/dev/null
  settle $PH
  target=$(last_lsn $PH); start=$(now)
  R=$(node replica $RH $RR $PR); wait_ready $RH
  # Also from the first applied entry on: the apply rate, without the process start and handshake.
  first= first_lsn=0
  while :; do
    lsn=$(last_lsn $RH)
    if [ -z "$first" ] && [ "$lsn" -gt 0 ]; then first=$(now) first_lsn=$lsn; fi
    [ "$lsn" -ge "$target" ] && break
    sleep 0.05
  done
  end=$(now)
  python3 -c "n=$target; t=$end-$start; a=$end-$first; m=n-$first_lsn
print(f'catch-up: {n} events in {t:.2f} s = {n/t:,.0f} events/s (replica start included); '
      f'from its first applied entry: {m} in {a:.2f} s = {m/a:,.0f} events/s')"
  echo "primary RSS $(rss $P), replica RSS $(rss $R)"
  ;;
drill) # RATE: failover drill: open-loop ingest at RATE on the primary, SIGKILL it after 10 s,
       # promote the replica, time the first acknowledged write on it (RTO), restart the old primary
       # as a replica of the new one and count its quarantined tail (RPO, in entries and seconds)
  rate=${2:-10000}
  fresh; P=$(node primary $PH $PR); wait_ready $PH; R=$(node replica $RH $RR $PR); wait_ready $RH
  "$BIN/trackload" ingest --url "http://127.0.0.1:$PH" --rate "$rate" --duration 30s --json >"$W/drill-load.json" 2>/dev/null &
  L=$!
  sleep 10
  kill -9 "$P"; killed=$(date +%s.%N)
  curl -sf -X POST "http://127.0.0.1:$RH/v1/admin/promote" -H 'content-type: application/json' -d '{}' >/dev/null
  until curl -sf "http://127.0.0.1:$RH/v1/events" -H 'content-type: application/json' \
      -d "{\"event_id\":\"drill-$$\",\"order_id\":\"drill\",\"status\":\"created\",\"occurred_at\":\"$(date -u +%Y-%m-%dT%H:%M:%S.000Z)\"}" >/dev/null; do sleep 0.01; done
  first=$(date +%s.%N)
  kill "$L" 2>/dev/null || true
  new_last=$(last_lsn $RH)
  # The old primary rejoins as a replica of the new one (its replication port becomes the new primary's).
  P=$(node primary $PH $PR $RR); wait_ready $PH
  until [ "$(last_lsn $PH)" -ge "$new_last" ]; do sleep 0.1; done
  q=$(curl -sf "http://127.0.0.1:$PH/v1/admin/replication" | python3 -c 'import json,sys; print(json.load(sys.stdin)["quarantined"])')
  python3 -c "rto=$first-$killed; q=$q; r=$rate; print(f'failover drill at {r} events/s: RTO {rto*1000:.0f} ms (SIGKILL → first acknowledged write on the promoted replica); RPO {q} entries = {q/r*1000:.1f} ms of writes, all in the old primary\'s quarantine')"
  ;;
esac
