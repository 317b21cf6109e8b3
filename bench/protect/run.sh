#!/usr/bin/env bash
# Data-protection benchmark (issue 6): single-event ingest throughput (trackload, closed loop, 64
# HTTP/1.1 connections) while ORDERS orders are erased (DELETE /v1/orders/{id}, PAR in flight) and a
# retention sweep removes ~OLD expired events, against the same ingest on the same store with neither
# running. Release binaries, one machine, loopback, a fresh store per run, each run only once the
# machine is quiet. Fails (exit 1) unless every erasure answered 200 and every expired event is gone.
#   usage: bench/protect/run.sh [RUNS]
# Per run N, in $W/run-N: the trackload reports (baseline, protect, after .json), the server counters
# sampled every 0.25 s (*.samples), summary.json; one Markdown table row per run on stdout.
#
# Phases of a run (each on a freshly reopened server, so all start with the same cold caches):
#   prefill   OLD events 38-40 days old (trackload ingest-batch --base-time, realistic lifecycles) and
#             ORDERS orders of 3 recent events with the ids to erase
#   baseline  SECS s of ingest, no retention configured
#   protect   the same ingest; DELAY_MS after the server's start (trackload has run ~1.5 s by then) the
#             retention sweep begins (--retention-days 30 --retention-interval-ms DELAY_MS, steps of
#             STEP events), and the erasures start with its first step; trackload is stopped (SIGINT:
#             the report covers what was measured) as soon as both are done, so its figures cover the
#             protection work (plus the ~1.5 s before it)
#   after     SECS s of ingest again without retention (AFTER=0 skips it): the store has grown by the
#             two runs' events, this separates the effect of that growth from the removals'
# The load average is checked before each run only (the prefill raises it); a row whose phases saw
# more than 0.3 cores used by anything but the server and trackload (others' jobs) is marked shared.
# Settings (environment): STEP (the server's --retention-step-events, its default 10000), WRITER_PCT
# (its --retention-writer-percent, unset: the server's default), PAR
# (erasures in flight, 8) or ERASE_RATE (erasures per second, one at a time), ORDERS, OLD, SECS,
# BIN (binaries; copy them out of target/ so that others' builds cannot swap them mid-run), W, PORT.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-./target/release}
W=${W:-/tmp/ts-protect-bench}
PORT=${PORT:-18097}
ORDERS=${ORDERS:-10000}
OLD=${OLD:-300000}
STEP=${STEP:-10000}
WRITER_PCT=${WRITER_PCT:-} # the server's --retention-writer-percent; unset: its default
PAR=${PAR:-8}
ERASE_RATE=${ERASE_RATE:-} # erasures per second, one at a time; unset: as fast as PAR in flight allow
SECS=${SECS:-30}
DELAY_MS=${DELAY_MS:-2000}
AFTER=${AFTER:-1}
MAX_LOAD=${MAX_LOAD:-0.6}
URL=http://127.0.0.1:$PORT
H=bench/protect/protect.py
P= S= L=

now() { date +%s.%N; }
die() { echo "FAILED: $*" >&2; exit 1; }
stop() { # the server is not a child of this shell (started in $(...)): poll until it is gone
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
}
cleanup() { for pid in ${S:-} ${L:-}; do kill "$pid" 2>/dev/null || true; done; stop ${P:-}; }
trap cleanup EXIT

quiet() { # wait (up to 20 min, polling every 30 s) for a 1-minute load average under MAX_LOAD
  local l
  for _ in $(seq 40); do
    l=$(cut -d' ' -f1 /proc/loadavg)
    if python3 -c "import sys; sys.exit(0 if $l < $MAX_LOAD else 1)"; then echo "$l"; return; fi
    echo "load $l >= $MAX_LOAD, waiting; busiest: $(ps -eo pcpu=,comm= --sort=-pcpu | head -3 | tr -s ' ' | paste -sd,)" >&2
    sleep 30
  done
  die "the machine was not quiet for 20 minutes (load $l)"
}
load() { cut -d' ' -f1 /proc/loadavg; }
server() { # [flags...]: start the primary on $D/data, wait until it is ready, print its pid
  "$BIN/trackstore" --data "$D/data" --http "127.0.0.1:$PORT" --https off --replication off \
    --purge-interval-ms 0 "$@" >>"$D/server.out" 2>>"$D/server.err" &
  local pid=$!
  for _ in $(seq 600); do curl -sf "$URL/readyz" >/dev/null && { echo $pid; return; }; sleep 0.05; done
  kill $pid 2>/dev/null || true
  die "server not ready (see $D/server.err)"
}
stat_of() { curl -sf "$URL/v1/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
metric() { curl -sf "$URL/metrics" | awk -v k="$1" '$1 == k {print int($2)} END {}' | head -1; }
ingest() { # NAME DURATION: the plain single-event ingest of bench/RESULTS.md, with the counters sampled
  python3 "$H" sample "$URL" "$P" "$D/$1.samples" & S=$!
  /usr/bin/time -f '%U %S' -o "$D/$1.time" "$BIN/trackload" ingest --url "$URL" --connections 64 \
    --duration "$2" --json --no-progress >"$D/$1.json"
}
meta() { M+=("\"$1\": $2"); }

run_once() { # N
  local n=$1
  D=$W/run-$n
  rm -rf "$D"; mkdir -p "$D"
  M=()
  meta config "\"STEP=$STEP${WRITER_PCT:+ WRITER_PCT=$WRITER_PCT} $([ -n "$ERASE_RATE" ] && echo "ERASE_RATE=$ERASE_RATE" || echo "PAR=$PAR")\""
  local lq
  lq=$(quiet) # an assignment alone, so that set -e sees quiet's failure
  meta load_quiet "$lq"

  # Prefill: the expired events, then the orders to erase.
  P=$(server)
  "$BIN/trackload" ingest-batch --url "$URL" --batch 1000 --connections 4 --requests $((OLD / 1000)) \
    --base-time "$(date -u -d '40 days ago' +%Y-%m-%dT%H:%M:%SZ)" --run-id "old$n" --json --no-progress >"$D/prefill.json"
  local old_events old_orders
  old_events=$(stat_of events) old_orders=$(stat_of orders)
  python3 "$H" orders "$URL" "$ORDERS" "gdpr$n" "$D/erase.curl"
  meta old_events "$old_events"; meta old_orders "$old_orders"; meta orders "$ORDERS"
  stop "$P"

  # Baseline.
  P=$(server)
  meta load_baseline "$(load)"; meta baseline_t0 "$(now)"
  ingest baseline "${SECS}s"
  meta baseline_t1 "$(now)"
  kill "$S"; S=; stop "$P"

  # Under protection load.
  local spawn events_before
  meta load_protect "$(load)"
  spawn=$(now)
  P=$(server --retention-days 30 --retention-interval-ms "$DELAY_MS" --retention-step-events "$STEP" \
    ${WRITER_PCT:+--retention-writer-percent "$WRITER_PCT"})
  events_before=$(stat_of events)
  python3 "$H" sample "$URL" "$P" "$D/protect.samples" & S=$!
  /usr/bin/time -f '%U %S' -o "$D/protect.time" "$BIN/trackload" ingest --url "$URL" --connections 64 \
    --duration 1800s --json --no-progress >"$D/protect.json" &
  L=$!
  # The erasures start with the sweep's first step (the sweep timer starts with the server's
  # maintenance task, a little after the spawn).
  meta protect_t0 "$(python3 -c "print($spawn + $DELAY_MS / 1000)")"
  local deadline=$(($(date +%s) + 60))
  until [ "$(metric trackstore_retention_removed_events_total)" -gt 0 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "no retention step within 60 s of the start"
    sleep 0.02
  done
  meta erase_t0 "$(now)"
  local pace=(--parallel --parallel-max "$PAR")
  [ -n "$ERASE_RATE" ] && pace=(--rate "$ERASE_RATE/s") # one at a time (curl ignores --rate in parallel)
  /usr/bin/time -f '%U %S' -o "$D/erase.time" curl -s --no-progress-meter -X DELETE "${pace[@]}" \
    -w '%{http_code}\n' -K "$D/erase.curl" >"$D/erase.codes" 2>"$D/erase.err"
  meta erase_t1 "$(now)"
  deadline=$(($(date +%s) + 900))
  until [ "$(metric trackstore_retention_removed_events_total)" -ge "$old_events" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "retention sweep not done after 15 minutes"
    sleep 0.1
  done
  # /usr/bin/time ignores SIGINT; trackload's Ctrl-C handling ends its measured phase.
  pkill -INT -P "$L" -x trackload || die "trackload ended before the removals (1800 s cap)"
  wait "$L" || die "trackload (protect) failed: $D/protect.json"
  L=; sleep 0.5; kill "$S"; S=

  # Verification: every erasure and every expired event, by the answers, the counters and the data.
  local ok created
  ok=$(grep -c '^200$' "$D/erase.codes" || true)
  [ "$ok" -eq "$ORDERS" ] || die "$ok of $ORDERS erasures answered 200: $(sort "$D/erase.codes" | uniq -c | tr -s ' ' | paste -sd,)"
  [ "$(metric trackstore_erasures_total)" -eq "$ORDERS" ] || die "trackstore_erasures_total"
  [ "$(metric trackstore_erased_events_total)" -eq $((3 * ORDERS)) ] || die "trackstore_erased_events_total"
  [ "$(metric trackstore_retention_removed_events_total)" -eq "$old_events" ] || die "retention removed events"
  [ "$(metric trackstore_retention_removed_orders_total)" -eq "$old_orders" ] || die "retention removed orders"
  created=$(metric 'trackstore_ingest_events_total{outcome="created"}')
  [ "$(stat_of events)" -eq $((events_before - 3 * ORDERS - old_events + created)) ] ||
    die "stats: $(stat_of events) events, expected $events_before - $((3 * ORDERS)) - $old_events + $created"
  local cutoff
  cutoff=$(date -u -d '30 days ago' +%Y-%m-%dT%H:%M:%SZ)
  curl -sf "$URL/v1/events?from=1970-01-01T00:00:00Z&to=$cutoff&limit=10" |
    python3 -c 'import json,sys; e=json.load(sys.stdin)["events"]; sys.exit(f"{len(e)} expired events still served" if e else 0)'
  for i in 0 1 $((ORDERS / 2)) $((ORDERS - 1)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/orders/gdpr$n-o$i")" = 404 ] || die "order gdpr$n-o$i still served"
    [ "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$URL/v1/orders/gdpr$n-o$i")" = 404 ] || die "second erasure of gdpr$n-o$i not 404"
  done
  stop "$P"

  if [ "$AFTER" = 1 ]; then
    P=$(server)
    meta load_after "$(load)"; meta after_t0 "$(now)"
    ingest after "${SECS}s"
    meta after_t1 "$(now)"
    kill "$S"; S=; stop "$P"
  fi
  P=
  (IFS=,; echo "{${M[*]}}") >"$D/meta.json"
  python3 "$H" summary "$D" >"$D/summary.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); bad={k: r[k]["errors"] for k in ("baseline","protect","after") if r[k] and r[k]["errors"]}; sys.exit(f"trackload errors: {bad}" if bad else 0)' "$D/summary.json"
  python3 "$H" row "$n" "$D/summary.json"
}

mkdir -p "$W"
echo "trackstore $(stat -c %y "$BIN/trackstore" | cut -d. -f1), $(date -u +%FT%TZ), ORDERS=$ORDERS OLD=$OLD STEP=$STEP WRITER_PCT=$WRITER_PCT PAR=$PAR ERASE_RATE=$ERASE_RATE SECS=$SECS DELAY_MS=$DELAY_MS"
python3 "$H" header
for n in $(seq "${1:-2}"); do run_once "$n"; done
