#!/usr/bin/env bash
# Benchmark of the source: how fast `cdc run` reads a slot compared with pg_recvlogical, the
# walsender's own speed. Prints numbers; it is not a test.
#
#   scripts/bench/source.sh            # both shapes
#   SHAPES=2 scripts/bench/source.sh   # only shape 2
#   ADMIN=1 scripts/bench/source.sh    # also cdc with [admin] on and /metrics + /ready scraped every second
#   RUNS=5 ADMIN=1 SHAPES=2 scripts/bench/source.sh   # five rounds, then the medians
#
# Shape 1: one 1,000,000-row insert transaction, 500,000 updates in 5 transactions, a
#          100,000-row delete (1.6M changes).
# Shape 2: 200,000 one-row transactions.
# Each shape is written once and read twice, from two copies of one slot: once by
# pg_recvlogical (pgoutput, same publication, output to /dev/null), once by `cdc run` (stdout
# sink to /dev/null, --stop-at the end position). Prints changes/s for both, the ratio, and
# cdc's peak RSS. With ADMIN=1 each shape is read a third time, from a third copy of the slot, by
# `cdc run` with `[admin]` on and a scraper polling /metrics and /ready every second; the two cdc
# runs alternate which goes first from round to round (so neither always has the warmer cache),
# and the line ends with the admin run's changes/s and its difference to the plain run.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
echo "== building cdc (release)"
cargo build --release --quiet
cdc="$root/target/release/cdc"

work=$(mktemp -d /tmp/cdc-bench.XXXXXX)
chmod 755 "$work"
cleanup() { bash "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
eval "$(bash "$root/scripts/postgres.sh" start "$work/pg")"
bin="$CDC_TEST_PG_BIN"
url="postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/bench"
psql_() { "$bin/psql" -X -q -v ON_ERROR_STOP=1 "$url" "$@"; }
"$bin/psql" -X -q "postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/postgres" -c "CREATE DATABASE bench"

cat > "$work/cdc.toml" <<TOML
[source]
url = "$url"
slot = "bench_cdc"
publication = "bench"
status_interval = "100ms"   # the run ends by confirming its final position: do not wait 1 s for it

[sinks.out]
type = "stdout"

[[tables]]
table = "public.items"
sinks = ["out"]
TOML
admin_port=19187
if [[ -n "${ADMIN:-}" ]]; then
  sed 's/^slot = "bench_cdc"/slot = "bench_admin"/' "$work/cdc.toml" > "$work/cdc-admin.toml"
  printf '\n[admin]\nlisten = "127.0.0.1:%s"\n' "$admin_port" >> "$work/cdc-admin.toml"
fi

# ADMIN=1: what a Prometheus server and a readiness probe cost, scraping once a second.
scrape() {
  while true; do
    curl -s -o /dev/null "http://127.0.0.1:$admin_port/metrics" || true
    curl -s -o /dev/null "http://127.0.0.1:$admin_port/ready" || true
    sleep 1
  done
}

# Reads the slot copy of config $1 with `cdc run --stop-at $2`; sets cdc_s (seconds) and rss_kb.
run_cdc() {
  local config=$1 end=$2 scraper="" t0 t1
  if [[ "$config" == *admin* ]]; then scrape & scraper=$!; fi
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$cdc" --config "$config" run --stop-at "$end" > /dev/null 2> "$work/cdc.log"
  t1=$(date +%s.%N)
  if [[ -n "$scraper" ]]; then kill "$scraper"; wait "$scraper" 2>/dev/null || true; fi
  cdc_s=$(echo "$t1 - $t0" | bc -l)
  rss_kb=$(cat "$work/rss")
}

run_shape() {
  local shape=$1 changes=$2 load=$3 round=$4
  psql_ -c "DROP TABLE IF EXISTS items; CREATE TABLE items (id int PRIMARY KEY, title text, price numeric(10,2), updated_at timestamptz DEFAULT now());"
  psql_ -c "DROP PUBLICATION IF EXISTS bench; CREATE PUBLICATION bench FOR TABLE items;"
  psql_ -c "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput');" >/dev/null
  bash -c "$load"
  local end
  end=$(psql_ -At -c "SELECT pg_current_wal_insert_lsn()")  # not the write position: commits may be asynchronous
  psql_ -c "SELECT pg_copy_logical_replication_slot('bench_recv', 'bench_cdc');" >/dev/null
  if [[ -n "${ADMIN:-}" ]]; then psql_ -c "SELECT pg_copy_logical_replication_slot('bench_recv', 'bench_admin');" >/dev/null; fi

  local t0 t1 recv_s plain_s plain_rss admin_s=""
  t0=$(date +%s.%N)
  "$bin/pg_recvlogical" -d "$url" --slot bench_recv --start --endpos "$end" --no-loop \
      -o proto_version=1 -o publication_names=bench -f /dev/null
  t1=$(date +%s.%N)
  recv_s=$(echo "$t1 - $t0" | bc -l)

  if [[ -n "${ADMIN:-}" && $((round % 2)) -eq 0 ]]; then run_cdc "$work/cdc-admin.toml" "$end"; admin_s=$cdc_s; fi
  run_cdc "$work/cdc.toml" "$end"; plain_s=$cdc_s; plain_rss=$rss_kb
  if [[ -n "${ADMIN:-}" && -z "$admin_s" ]]; then run_cdc "$work/cdc-admin.toml" "$end"; admin_s=$cdc_s; fi

  psql_ -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench_%';" >/dev/null
  local plain_rate admin_part=""
  plain_rate=$(echo "$changes / $plain_s" | bc -l)
  if [[ -n "$admin_s" ]]; then
    local admin_rate
    admin_rate=$(echo "$changes / $admin_s" | bc -l)
    admin_part=$(printf " | cdc+admin %.2fs = %.0f changes/s (%+.1f%%)" "$admin_s" "$admin_rate" "$(echo "($admin_rate / $plain_rate - 1) * 100" | bc -l)")
    echo "$shape $plain_rate $admin_rate" >> "$work/rates"
  fi
  printf "shape %s round %s: %d changes | pg_recvlogical %.2fs = %.0f changes/s | cdc %.2fs = %.0f changes/s | ratio %.2f | cdc peak RSS %.1f MB%s\n" \
    "$shape" "$round" "$changes" "$recv_s" "$(echo "$changes / $recv_s" | bc -l)" "$plain_s" "$plain_rate" \
    "$(echo "$recv_s / $plain_s" | bc -l)" "$(echo "$plain_rss / 1024" | bc -l)" "$admin_part"
}

command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc >/dev/null; }
[[ -z "${ADMIN:-}" ]] || command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
shapes=${SHAPES:-"1 2"}
: > "$work/rates"
for round in $(seq 1 "${RUNS:-1}"); do
for shape in $shapes; do
  case $shape in
    1) run_shape 1 1600000 "
         $bin/psql -X -q '$url' -c \"INSERT INTO items (id, title, price) SELECT g, 'item ' || g, g % 1000 + 0.99 FROM generate_series(1, 1000000) g\"
         for k in 0 1 2 3 4; do $bin/psql -X -q '$url' -c \"UPDATE items SET price = price + 1 WHERE id > \$((k * 100000)) AND id <= \$(((k + 1) * 100000))\"; done
         $bin/psql -X -q '$url' -c 'DELETE FROM items WHERE id <= 100000'" "$round" ;;
    2) echo "INSERT INTO items (id, title, price) VALUES (nextval('bench_ids'), 'item', 1.99);" > "$work/one-row.sql"
       psql_ -c "DROP SEQUENCE IF EXISTS bench_ids; CREATE SEQUENCE bench_ids;"
       run_shape 2 200000 "$bin/pgbench -n -t 200000 -c 1 -f '$work/one-row.sql' '$url' >/dev/null" "$round" ;;
  esac
done
done
# The medians over the rounds (ADMIN=1): each round's two cdc runs read the same slot content.
if [[ -n "${ADMIN:-}" ]]; then
  for shape in $shapes; do
    median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    plain=$(awk -v s="$shape" '$1 == s { print $2 }' "$work/rates" | median)
    admin=$(awk -v s="$shape" '$1 == s { print $3 }' "$work/rates" | median)
    diffs=$(awk -v s="$shape" '$1 == s { printf "%+.1f%% ", ($3 / $2 - 1) * 100 }' "$work/rates")
    printf "shape %s, median of %s rounds: cdc %.0f changes/s, cdc+admin %.0f changes/s, difference %+.1f%% (per round: %s)\n" \
      "$shape" "${RUNS:-1}" "$plain" "$admin" "$(echo "($admin / $plain - 1) * 100" | bc -l)" "$diffs"
  done
fi
