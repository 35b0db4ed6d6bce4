#!/usr/bin/env bash
# Benchmark of the stream sink: how many events/s SSE clients of /events receive
# (examples/stream_bench_client.rs counts them). Prints numbers; it is not a test.
#
#   scripts/bench/stream.sh                      # N=200000 events, 1 and 50 clients
#   N=500000 CLIENTS=20 scripts/bench/stream.sh
#
# 1. Live: one client connected at the live end while N inserted rows (one transaction) stream
#    through cdc: bounded by decoding, so close to the source benchmark's figure.
# 2. Full speed: the N events are in the buffer (buffer = N); one client reads them all with
#    ?from=oldest: what the server sends one client at full speed.
# 3. The same with CLIENTS clients at once: per-client and aggregate events/s.
# The machine's load (uptime) is printed before and after: the client runs on the same cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
N=${N:-200000}
CLIENTS=${CLIENTS:-50}
PORT=${PORT:-19188}
TOKEN=bench-token

echo "== building cdc and the client (release)"
cargo build --release --quiet --bin cdc --example stream_bench_client
cdc="$root/target/release/cdc"
client="$root/target/release/examples/stream_bench_client"

work=$(mktemp -d /tmp/cdc-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
  [[ -n "${cdc_pid:-}" ]] && kill "$cdc_pid" 2>/dev/null || true
  bash "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
eval "$(bash "$root/scripts/postgres.sh" start "$work/pg")"
bin="$CDC_TEST_PG_BIN"
url="postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/bench"
"$bin/psql" -X -q "postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/postgres" -c "CREATE DATABASE bench"
psql_() { "$bin/psql" -X -q -v ON_ERROR_STOP=1 "$url" "$@"; }
psql_ -c "CREATE TABLE items (id int PRIMARY KEY, title text, price numeric(10,2), updated_at timestamptz DEFAULT now())"

cat > "$work/cdc.toml" <<TOML
[source]
url = "$url"
slot = "bench"
publication = "bench"

[admin]
listen = "127.0.0.1:$PORT"

[sinks.feed]
type = "stream"
token = "$TOKEN"
buffer = $N

[[tables]]
table = "public.items"
sinks = ["feed"]
TOML
"$cdc" --config "$work/cdc.toml" setup >/dev/null

metric() {  # metric NAME: the value of NAME{sink="feed"}, 0 when absent
  curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1{sink=\"feed\"}" '$1 == m { print $2; found = 1 } END { if (!found) print 0 }'
}
wait_for() {  # wait_for NAME VALUE: polls /metrics until NAME{sink="feed"} >= VALUE (5 min at most)
  for _ in $(seq 3000); do
    awk -v v="$(metric "$1" 2>/dev/null || echo 0)" -v want="$2" 'BEGIN { exit !(v >= want) }' && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1 >= $2" >&2; exit 1
}
field() { sed -E "s/.*\"$2\":([0-9.]+).*/\1/" <<<"$1"; }
events_url="http://127.0.0.1:$PORT/events?sink=feed"

echo "== stream sink, $N events; load before: $(uptime)"
"$cdc" --config "$work/cdc.toml" run 2>"$work/cdc.log" &
cdc_pid=$!
until curl -sf -o /dev/null "http://127.0.0.1:$PORT/ready"; do sleep 0.1; done

# 1. Live.
"$client" --url "$events_url" --token "$TOKEN" --clients 1 --events "$N" > "$work/live.json" &
live_pid=$!
wait_for cdc_stream_clients_connected 1
psql_ -c "INSERT INTO items (id, title, price) SELECT g, 'item ' || g, g % 1000 + 0.5 FROM generate_series(1, $N) g"
wait "$live_pid"
live=$(cat "$work/live.json")
printf "live, 1 client:        %8s events/s (decoding and serving together)\n" "$(field "$live" per_client_max)"

# 2. and 3. From the buffer.
wait_for cdc_sink_events_total "$N"
one=$("$client" --url "$events_url&from=oldest" --token "$TOKEN" --clients 1 --events "$N")
printf "buffered, 1 client:    %8s events/s\n" "$(field "$one" per_client_max)"
many=$("$client" --url "$events_url&from=oldest" --token "$TOKEN" --clients "$CLIENTS" --events "$N")
printf "buffered, %s clients:  %8s events/s per client (min %s, median %s), %s events/s in all, %s s\n" \
  "$CLIENTS" "$(field "$many" per_client_median)" "$(field "$many" per_client_min)" "$(field "$many" per_client_median)" \
  "$(field "$many" aggregate_events_per_s)" "$(field "$many" wall_s)"
echo "sent in all: $(metric cdc_stream_events_sent_total) events; cdc peak RSS $(awk '/VmHWM/ { print $2 / 1024 " MB" }' "/proc/$cdc_pid/status")"
echo "== load after: $(uptime)"
kill -TERM "$cdc_pid"; wait "$cdc_pid" || true; cdc_pid=
