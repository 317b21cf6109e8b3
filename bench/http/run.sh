#!/usr/bin/env bash
# HTTP front-end benchmarks (issue 3): a fresh release server on a fresh data directory per run,
# loaded by trackload on the same machine; prints trackload's summary, the server's CPU seconds, its
# peak RSS and trackload's own CPU seconds. Every run: `bench/http/run.sh SCENARIO [ARGS]`, e.g.
#   bench/http/run.sh ingest 20            # single-event POSTs, 64 keep-alive HTTP/1.1 connections, 20 s
#   bench/http/run.sh batch 20             # POSTs of 1,000 events, 4 connections, 20 s
#   bench/http/run.sh read h1 20           # GET /v1/orders/{id} of 30,000 seeded orders (h1, h2 or h3)
#   bench/http/run.sh open 7000 300 256    # open loop: single-event POSTs at 7,000/s for 300 s, 256
#                                          # connections (default 64; HTTP/1.1 has one call in flight
#                                          # per connection, so too few connections queue in trackload)
#   bench/http/run.sh day                  # the delivery-day mix, 10M calls (DAY_REQUESTS to change)
# Environment: BIN (binaries, default ./target/release), W (work directory), SERVER_ARGS (extra
# trackstore flags), LOAD_ARGS (extra trackload flags).
set -euo pipefail
BIN=${BIN:-./target/release}
W=${W:-/tmp/ts-http-bench}
H=18111 S=18112

summary() { # FILE: the throughput and latency of a trackload --json report, per operation
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
batch = d.get("batch") or 1
for name, op in d["ops"].items():
    l = op["latency"]
    per_s = op["ok_per_s"]
    events = f" = {per_s * batch:,.0f} events/s" if batch > 1 else ""
    print(f"  {name}: {op['ok']:,} ok, {op['errors']} errors, {per_s:,.0f} calls/s{events}; "
          f"p50 {l['p50_ms']} / p90 {l['p90_ms']} / p99 {l['p99_ms']} / p99.9 {l['p999_ms']} / max {l['max_ms']} ms")
print(f"  wall {d.get('wall_s', 0):.1f} s, read-your-writes violations "
      f"{(d.get('read_your_writes') or {}).get('violations', 0)}, errors by status {d.get('errors_by_status') or {}}")
PY
}
cpu_s() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$1/stat"; }
rss() { awk '/VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$1/status"; }
stop() { # SIGTERM (graceful), then SIGKILL after 60 s
  kill "$1" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

start() { # a fresh server; sets P
  if curl -sf "http://127.0.0.1:$H/readyz" >/dev/null; then
    echo "another server already answers on port $H: stop it first" >&2; exit 1
  fi
  rm -rf "$W/data" "$W"/*.json "$W"/*.txt "$W"/server.*; mkdir -p "$W"
  # Write back what earlier steps left dirty (copied binaries, the last run's files) now: the kernel
  # would otherwise flush it in bursts of up to 1.5 GB/s during the run, and the WAL's fsyncs wait
  # behind them (a 60-s open loop measured p99 753 ms that way, 36 ms after a sync; RESULTS.md).
  sync
  # shellcheck disable=SC2086
  "$BIN/trackstore" --data "$W/data" --http "127.0.0.1:$H" --https "127.0.0.1:$S" --replication off \
    ${SERVER_ARGS:-} >"$W/server.out" 2>"$W/server.err" &
  P=$!
  trap 'stop $P' EXIT
  for _ in $(seq 600); do
    # Ready, and it is this server that answered (not one left running on the port).
    if curl -sf "http://127.0.0.1:$H/readyz" >/dev/null; then
      kill -0 "$P" 2>/dev/null && return
      echo "the server exited (port $H taken?); see $W/server.err" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "the server did not become ready; see $W/server.err" >&2; exit 1
}

# CPU seconds of this shell's waited-for children (`times` must run in this shell, not in a $(...)
# subshell, whose children start from zero): with the server still running, trackload's share.
children_cpu() { # FILE written by `times`
  awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { gsub(",", ".", $i); split($i, a, /[ms]/); t += a[1] * 60 + a[2] }; printf "%.1f", t }' "$1"
}

load() { # trackload arguments...; prints the summary, the server's CPU and RSS, trackload's CPU
  local before rc=0; before=$(cpu_s "$P")
  times >"$W/times.before"
  # shellcheck disable=SC2086
  "$BIN/trackload" "$@" ${LOAD_ARGS:-} --json >"$W/load.json" || rc=$?
  times >"$W/times.after"
  [ "$rc" = 0 ] || echo "  trackload exited with $rc (3: read-your-writes violations)"
  summary "$W/load.json"
  curl -sf "http://127.0.0.1:$H/metrics" >"$W/metrics.txt" || true # the server's own histograms
  echo "  server: $(python3 -c "print(f'{$(cpu_s "$P") - $before:.1f}')") s CPU while trackload ran (seeding included), peak RSS $(rss "$P"); trackload $(python3 -c "print(f'{$(children_cpu "$W/times.after") - $(children_cpu "$W/times.before"):.1f}')") s CPU"
  return "$rc"
}

scenario=${1:-ingest}
echo "== $scenario ${*:2} ($(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg))"
case $scenario in
ingest) # SECONDS
  start; load ingest --url "http://127.0.0.1:$H" --connections 64 --duration "${2:-20}s" ;;
batch) # SECONDS [CONNECTIONS]
  start; load ingest-batch --batch 1000 --url "http://127.0.0.1:$H" --connections "${3:-4}" --duration "${2:-20}s" ;;
read) # PROTO SECONDS
  proto=${2:-h1} secs=${3:-20}
  start
  if [ "$proto" = h1 ]; then
    load read --url "http://127.0.0.1:$H" --seed-orders 30000 --connections 64 --duration "${secs}s"
  else
    load read --proto "$proto" --url "https://127.0.0.1:$S" --ca "$W/data/tls/cert.pem" \
      --seed-orders 30000 --connections 8 --streams 8 --duration "${secs}s"
  fi ;;
open) # RATE SECONDS [CONNECTIONS]
  start; load ingest --url "http://127.0.0.1:$H" --rate "${2:-7000}" --connections "${4:-64}" --duration "${3:-300}s" ;;
day)
  # One runtime thread: trackload takes ~20% of the machine's CPU in the day, and one thread needs
  # no cross-thread wake-ups (docs/trackload.md).
  start; load day --url "http://127.0.0.1:$H" --requests "${DAY_REQUESTS:-10000000}" --threads 1 ;;
*) echo "usage: $0 ingest|batch|read|open|day [ARGS]" >&2; exit 2 ;;
esac
