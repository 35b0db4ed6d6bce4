#!/usr/bin/env bash
# Benchmark of the webhook sink against a fast local receiver (examples/webhook_bench_receiver.rs,
# which answers 200 at once). Prints numbers; it is not a test.
#
#   scripts/bench/webhook.sh              # N=200000 events per throughput run
#   N=500000 scripts/bench/webhook.sh
#   MODE=latency scripts/bench/webhook.sh # only 2. below
#   MODE=fanout scripts/bench/webhook.sh  # only 3. below: CPU per event, 1 endpoint vs ENDPOINTS
#
# 1. Throughput: N rows inserted in one transaction while cdc is stopped, then `cdc run` drains
#    the slot to the receiver, with batches of 25 and of 500. Events/s is measured at the
#    receiver (first to last request); CPU seconds are cdc's user+system time for the run
#    (decoding, routing, serializing, HTTP), per 100k events.
# 2. Latency: a steady 1,000 one-row transactions/s for 10 s (pgbench --rate) with
#    batch_max_wait = "0"; p50/p99 of receipt time minus the event's commit time.
# 3. Fan-out (MODE=fanout): one table mapped to 1 webhook sink, then to ENDPOINTS (default 100)
#    webhook sinks, all on the local receiver under different paths, batches of 500. FANOUT_N
#    (default 20000) rows are inserted in one transaction once cdc streams (ten times as many for
#    the single endpoint, whose CPU time would otherwise be a tenth of a second, too short to
#    measure); cdc's CPU seconds from then until the receiver has every event, per 100k events
#    read from the slot, for both, and their ratio; and the ratio per event delivered (ENDPOINTS times as
#    many for the fan-out). An event is serialized once however many endpoints receive it; each
#    endpoint's request body, signature and HTTP exchange are its own, so signing and sending
#    grow with the endpoints: `perf record -g` on the fan-out run shows their share.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
. "$root/scripts/bench/lib.sh"
N=${N:-200000}
PORT=${PORT:-9099}

echo "== building cdc and the receiver (release)"
cargo build --release --quiet --bin cdc --example webhook_bench_receiver
cdc=${CDC_BIN:-"$root/target/release/cdc"}  # CDC_BIN: another build to compare
receiver="$root/target/release/examples/webhook_bench_receiver"

work=$(mktemp -d /tmp/cdc-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
  [[ -n "${cdc_pid:-}" ]] && kill "$cdc_pid" 2>/dev/null || true
  [[ -n "${recv_pid:-}" ]] && kill "$recv_pid" 2>/dev/null || true
  bash "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
eval "$(bash "$root/scripts/postgres.sh" start "$work/pg")"
bin="$CDC_TEST_PG_BIN"
admin="postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/postgres"
url="postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/bench"
"$bin/psql" -X -q "$admin" -c "CREATE DATABASE bench"
psql_() { "$bin/psql" -X -q -v ON_ERROR_STOP=1 "$url" "$@"; }
psql_ -c "CREATE TABLE items (id int PRIMARY KEY, title text, price numeric(10,2), updated_at timestamptz DEFAULT now())"

config() {  # config BATCH_MAX_EVENTS BATCH_MAX_WAIT
  cat > "$work/cdc.toml" <<TOML
[source]
url = "$url"
slot = "bench"
publication = "bench"

[sinks.hook]
type = "webhook"
url = "http://127.0.0.1:$PORT/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
batch_max_events = $1
batch_max_wait = "$2"

[[tables]]
table = "public.items"
sinks = ["hook"]
TOML
  "$cdc" --config "$work/cdc.toml" setup >/dev/null
}


start_receiver() {
  "$receiver" --port "$PORT" --idle 3 --give-up 120 > "$work/receiver.json" &
  recv_pid=$!
  sleep 0.3
}

finish() {  # waits for the receiver's figures, stops cdc; sets $cpu to cdc's CPU seconds
  wait "$recv_pid"; recv_pid=
  cpu=$(cpu_seconds "$cdc_pid")
  kill -TERM "$cdc_pid"; wait "$cdc_pid" || true; cdc_pid=
  "$cdc" --config "$work/cdc.toml" teardown >/dev/null
  psql_ -c "TRUNCATE cdc.webhook_outbox, cdc.webhook_attempts"
}

field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/" "$work/receiver.json"; }

throughput() {  # throughput BATCH
  psql_ -c "TRUNCATE items"
  config "$1" "1s"
  psql_ -c "INSERT INTO items (id, title, price) SELECT g, 'item ' || g, g % 1000 + 0.5 FROM generate_series(1, $N) g"
  start_receiver
  "$cdc" --config "$work/cdc.toml" run 2>"$work/cdc-$1.log" &
  cdc_pid=$!
  finish
  local events; events=$(field events)
  [[ "$events" == "$N" ]] || echo "warning: the receiver counted $events events, expected $N" >&2
  printf "batches of %-4s %8s events/s   %5.2f CPU s per 100k events   (%s events in %s requests)\n" \
    "$1" "$(field events_per_s)" "$(awk -v c="$cpu" -v n="$N" 'BEGIN { print c * 100000 / n }')" "$events" "$(field requests)"
}

latency() {
  psql_ -c "TRUNCATE items"
  config 25 0
  start_receiver
  "$cdc" --config "$work/cdc.toml" run 2>"$work/cdc-latency.log" &
  cdc_pid=$!
  sleep 1
  echo "INSERT INTO items (id, title, price) VALUES (nextval('ids'), 'x', 1.5);" > "$work/one.sql"
  psql_ -c "CREATE SEQUENCE IF NOT EXISTS ids"
  # The test cluster runs with synchronous_commit = off, where the walsender only sees a commit
  # after the WAL writer's next flush (every 200 ms): the writers here commit synchronously, as
  # a production database does, so the figure is cdc's latency and not the WAL writer's.
  PGOPTIONS="-c synchronous_commit=on" "$bin/pgbench" -n -f "$work/one.sql" -R 1000 -T 10 -c 2 -j 2 "$url" > "$work/pgbench.log" 2>&1
  finish
  printf "1,000 changes/s, batch_max_wait = 0: p50 %s ms, p99 %s ms, max %s ms (%s events in %s requests; pgbench %s)\n" \
    "$(field p50_ms)" "$(field p99_ms)" "$(field max_ms)" "$(field events)" "$(field requests)" \
    "$(grep -oE 'tps = [0-9.]+' "$work/pgbench.log" | head -1)"
}

fanout_config() {  # fanout_config ENDPOINTS
  {
    printf '[source]\nurl = "%s"\nslot = "bench"\npublication = "bench"\n' "$url"
    for i in $(seq "$1"); do
      printf '\n[sinks.hook%s]\ntype = "webhook"\nurl = "http://127.0.0.1:%s/hook/%s"\nsecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\nbatch_max_events = 500\nbatch_max_wait = "1s"\n' "$i" "$PORT" "$i"
    done
    printf '\n[[tables]]\ntable = "public.items"\nsinks = [%s]\n' "$(seq -f '"hook%g"' -s, "$1")"
  } > "$work/cdc.toml"
  "$cdc" --config "$work/cdc.toml" setup >/dev/null
}

fanout_run() {  # fanout_run ENDPOINTS ROWS: sets $per_100k, cdc's CPU seconds per 100k events
  psql_ -c "TRUNCATE items"
  fanout_config "$1"
  start_receiver
  "$cdc" --config "$work/cdc.toml" run 2>"$work/cdc-fanout-$1.log" &
  cdc_pid=$!
  until grep -q "streaming from" "$work/cdc-fanout-$1.log"; do sleep 0.1; done
  sleep 1  # the sinks' start (state tables, connections) is not what is measured
  local cpu0; cpu0=$(cpu_seconds "$cdc_pid")
  psql_ -c "INSERT INTO items (id, title, price) SELECT g, 'item ' || g, g % 1000 + 0.5 FROM generate_series(1, $2) g"
  finish
  local events; events=$(field events)
  [[ "$events" == "$(($2 * $1))" ]] || echo "warning: the receiver counted $events events, expected $(($2 * $1))" >&2
  per_100k=$(awk -v c="$cpu" -v c0="$cpu0" -v n="$2" 'BEGIN { print (c - c0) * 100000 / n }')
  printf "%3s endpoint(s): %6.2f CPU s per 100k events (%s events delivered in %s requests)\n" "$1" "$per_100k" "$events" "$(field requests)"
}

fanout() {
  local one many
  fanout_run 1 "$((FANOUT_N * 10))"; one=$per_100k
  fanout_run "$ENDPOINTS" "$FANOUT_N"; many=$per_100k
  printf "fan-out: %s endpoints cost %.2f times the CPU per event read of 1, %.2f times its CPU per event delivered (load: %s)\n" \
    "$ENDPOINTS" "$(awk -v a="$many" -v b="$one" 'BEGIN { print a / b }')" \
    "$(awk -v a="$many" -v b="$one" -v n="$ENDPOINTS" 'BEGIN { print a / n / b }')" "$(uptime | sed 's/.*load average: //')"
}

if [[ "${MODE:-}" == fanout ]]; then
  FANOUT_N=${FANOUT_N:-20000}
  ENDPOINTS=${ENDPOINTS:-100}
  echo "== webhook fan-out, $((FANOUT_N * 10)) events to 1 endpoint, $FANOUT_N to each of $ENDPOINTS endpoints on 127.0.0.1:$PORT"
  fanout
  exit 0
fi
if [[ "${MODE:-}" == latency ]]; then
  latency
  exit 0
fi
echo "== webhook sink, $N events per throughput run, receiver on 127.0.0.1:$PORT"
throughput 25
throughput 500
latency
