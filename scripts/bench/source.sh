#!/usr/bin/env bash
# Benchmark of the source: how fast `cdc run` reads a slot compared with pg_recvlogical, the
# walsender's own speed. Prints numbers; it is not a test.
#
#   scripts/bench/source.sh            # both shapes
#   SHAPES=2 scripts/bench/source.sh   # only shape 2
#   ADMIN=1 scripts/bench/source.sh    # also cdc with [admin] on and /metrics + /ready scraped every second
#   PEERS=0 scripts/bench/source.sh    # without the peer tools (wal2json, Debezium; scripts/bench/peers.sh)
#   RUNS=5 scripts/bench/source.sh     # runs per shape (default 3); the median line is the one that counts
#   CDC_BASE=/tmp/old/cdc scripts/bench/source.sh   # also read each run with another build (before/after)
#
# Shape 1: one 1,000,000-row insert transaction, 500,000 updates in 5 transactions, a
#          100,000-row delete (1.6M changes).
# Shape 2: 200,000 one-row transactions (a DO block committing after each row).
# Each shape is written once and read twice, from two copies of one slot: once by
# pg_recvlogical (pgoutput, same publication, output to /dev/null), once by `cdc run` (stdout
# sink to /dev/null, --stop-at the end position). Per run it prints:
#   - changes/s: pg_recvlogical timed from spawn to exit (it exits as it writes the end position),
#     cdc timed from spawn to its log line saying the sinks delivered everything (its last event);
#   - CPU seconds (user + system) of each, and cdc's / pg_recvlogical's;
#   - wake-ups per change: voluntary context switches of all the process's threads (each one is
#     a thread that blocked and had to be woken again) divided by the changes;
#   - cdc's stop latency: from that log line to its exit (confirming the final position to
#     Postgres and checking that the slot shows it);
#   - cdc's peak RSS.
# Then the median of the runs' ratios. With ADMIN=1 each run also reads a third copy of the slot
# with `[admin]` on and a scraper polling /metrics and /ready every second (the plain and the admin
# run alternate which goes first), and the median line adds the difference in changes/s.
# The first run of each shape also reads copies of the slot with the peer tools that are
# installed or can be (pg_recvlogical + wal2json, Debezium's embedded engine: scripts/bench/peers.sh;
# each skipped with its reason otherwise) and prints one table: tool, changes/s, ratio to
# pg_recvlogical, peak RSS, CPU seconds (cdc's line from that run). `uptime` is printed with the figures: the machine may be
# shared, and wall-clock ratios move with its load (CPU seconds per change much less so).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cdc=${CDC_BIN:-"$root/target/release/cdc"}  # CDC_BIN: another build to compare
if [[ -z "${CDC_BIN:-}" ]]; then
  echo "== building cdc (release)"
  cargo build --release --quiet
fi

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

[sinks.out]
type = "stdout"

[[tables]]
table = "public.items"
sinks = ["out"]
TOML
admin_port=19187
cp "$work/cdc.toml" "$work/cdc-admin.toml"
printf '\n[admin]\nlisten = "127.0.0.1:%s"\n' "$admin_port" >> "$work/cdc-admin.toml"

# shellcheck source=scripts/bench/peers.sh
source "$root/scripts/bench/peers.sh"
if [[ "${PEERS:-1}" != 0 ]]; then peers_prepare "$bin"; fi

# ADMIN=1: what a Prometheus server and a readiness probe cost, scraping once a second.
scrape() {
  while true; do
    curl -s -o /dev/null "http://127.0.0.1:$admin_port/metrics" || true
    curl -s -o /dev/null "http://127.0.0.1:$admin_port/ready" || true
    sleep 1
  done
}

run_shape() {
  local shape=$1 changes=$2 load=$3 run=$4
  psql_ -c "DROP TABLE IF EXISTS items; CREATE TABLE items (id int PRIMARY KEY, title text, price numeric(10,2), updated_at timestamptz DEFAULT now());"
  psql_ -c "DROP PUBLICATION IF EXISTS bench; CREATE PUBLICATION bench FOR TABLE items;"
  psql_ -c "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput');" >/dev/null
  bash -c "$load"
  local end
  end=$(psql_ -At -c "SELECT pg_current_wal_insert_lsn()")  # not the write position: commits may be asynchronous
  psql_ -c "SELECT pg_copy_logical_replication_slot('bench_recv', 'bench_cdc');" >/dev/null

  [[ -z "${CDC_BASE:-}" ]] || psql_ -c "SELECT pg_copy_logical_replication_slot('bench_recv', 'bench_base');" >/dev/null
  [[ -z "${ADMIN:-}" ]] || psql_ -c "SELECT pg_copy_logical_replication_slot('bench_recv', 'bench_admin');" >/dev/null
  local peers=""
  if [[ "${PEERS:-1}" != 0 && $run -eq 1 ]]; then peers=1; peers_create_slots "$url" bench_recv; fi
  local t0 t1 recv_s
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S %w %M" -o "$work/recv.time" "$bin/pg_recvlogical" -d "$url" --slot bench_recv --start --endpos "$end" --no-loop \
      -o proto_version=1 -o publication_names=bench -f /dev/null
  t1=$(date +%s.%N)
  recv_s=$(echo "$t1 - $t0" | bc -l)
  local recv_cpu recv_wake recv_rss
  read -r recv_cpu recv_wake recv_rss < <(awk '{ print $1 + $2, $3, $4 }' "$work/recv.time")
  printf "shape %s: %d changes | pg_recvlogical %.0f changes/s, %.2f CPU s, %.2f wake-ups/change\n" \
    "$shape" "$changes" "$(echo "$changes / $recv_s" | bc -l)" "$recv_cpu" "$(echo "$recv_wake / $changes" | bc -l)"
  if [[ -n "${CDC_BASE:-}" ]]; then
    read_cdc "$CDC_BASE" bench_base "  base cdc" /dev/null "$work/cdc.toml"
  fi
  # ADMIN=1: the plain and the admin run alternate which goes first (neither always has the
  # warmer cache).
  local plain_rate admin_rate=""
  if [[ -n "${ADMIN:-}" && $((run % 2)) -eq 0 ]]; then
    read_cdc "$cdc" bench_admin " cdc+admin" /dev/null "$work/cdc-admin.toml"; admin_rate=$last_rate
  fi
  read_cdc "$cdc" bench_cdc "       cdc" "$work/ratios-$shape" "$work/cdc.toml"; plain_rate=$last_rate
  local cdc_line="peer=cdc seconds=$last_s cpu=$last_cpu rss_mb=$last_rss_mb changes=-"
  if [[ -n "${ADMIN:-}" && -z "$admin_rate" ]]; then
    read_cdc "$cdc" bench_admin " cdc+admin" /dev/null "$work/cdc-admin.toml"; admin_rate=$last_rate
  fi
  [[ -z "$admin_rate" ]] || echo "$plain_rate $admin_rate" >> "$work/rates-$shape"

  if [[ -n "$peers" ]]; then
    {
      printf "peer=pgoutput seconds=%s cpu=%s rss_mb=%s changes=-\n" "$recv_s" "$recv_cpu" "$(echo "$recv_rss / 1024" | bc -l)"
      echo "$cdc_line"
      peer_run wal2json "$url" - bench "$end" "$changes"
      peer_run debezium "$url" - bench "$end" "$changes"
    } > "$work/peers-$shape"
    echo "shape $shape, run 1: every reader of the same slot content (ratio: pg_recvlogical's seconds / the tool's)"
    peers_table "$changes" < "$work/peers-$shape" | sed 's/^pgoutput      /pg_recvlogical/'
  fi
  psql_ -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots" >/dev/null
}

# read_cdc BINARY SLOT LABEL RATIOS_FILE CONFIG: one `cdc run --stop-at` of the shape, compared
# with the pg_recvlogical read just before it; sets last_rate, last_s, last_cpu, last_rss_mb.
read_cdc() {
  local binary=$1 slot=$2 label=$3 ratios=$4 config=$5
  sed "s/^slot = .*/slot = \"$slot\"/" "$config" > "$work/cdc-$slot.toml"
  local scraper=""
  if grep -q '^\[admin\]' "$config"; then scrape & scraper=$!; fi
  local t0 t1 delivered cdc_s
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M %U %S %w" -o "$work/cdc.time" "$binary" --config "$work/cdc-$slot.toml" run --stop-at "$end" > /dev/null 2> "$work/cdc.log"
  t1=$(date +%s.%N)
  if [[ -n "$scraper" ]]; then kill "$scraper"; wait "$scraper" 2>/dev/null || true; fi
  # The log line's timestamp (UTC, microseconds) is when the sinks had delivered the last event.
  # (A build without that line is timed to its exit.)
  delivered=$t1
  if grep -q 'the sinks delivered everything' "$work/cdc.log"; then
    delivered=$(date -d "$(grep -m1 'the sinks delivered everything' "$work/cdc.log" | awk '{print $1}')" +%s.%N)
  fi
  cdc_s=$(echo "$delivered - $t0" | bc -l)
  local rss cdc_cpu cdc_wake ratio cpu_ratio
  read -r rss cdc_cpu cdc_wake < <(awk '{ print $1, $2 + $3, $4 }' "$work/cdc.time")
  ratio=$(echo "$recv_s / $cdc_s" | bc -l)
  cpu_ratio=$(echo "$cdc_cpu / $recv_cpu" | bc -l)
  printf "%s %.0f changes/s, %.2f CPU s, %.2f wake-ups/change, stop %.0f ms, peak RSS %.1f MB | ratio %.2f, CPU ratio %.2f\n" \
    "$label" "$(echo "$changes / $cdc_s" | bc -l)" "$cdc_cpu" "$(echo "$cdc_wake / $changes" | bc -l)" \
    "$(echo "($t1 - $delivered) * 1000" | bc -l)" "$(echo "$rss / 1024" | bc -l)" "$ratio" "$cpu_ratio"
  echo "$ratio $cpu_ratio" >> "$ratios"
  last_rate=$(echo "$changes / $cdc_s" | bc -l); last_s=$cdc_s; last_cpu=$cdc_cpu
  last_rss_mb=$(echo "$rss / 1024" | bc -l)
}

median() {  # median of column $1 of file $2
  sort -g -k"$1","$1" "$2" | awk -v c="$1" '{ v[NR] = $c } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc >/dev/null; }
[[ -z "${ADMIN:-}" ]] || command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
shapes=${SHAPES:-"1 2"}
runs=${RUNS:-3}
for shape in $shapes; do
  for run in $(seq "$runs"); do
    case $shape in
      1) run_shape 1 1600000 "
           $bin/psql -X -q '$url' -c \"INSERT INTO items (id, title, price) SELECT g, 'item ' || g, g % 1000 + 0.99 FROM generate_series(1, 1000000) g\"
           for k in 0 1 2 3 4; do $bin/psql -X -q '$url' -c \"UPDATE items SET price = price + 1 WHERE id > \$((k * 100000)) AND id <= \$(((k + 1) * 100000))\"; done
           $bin/psql -X -q '$url' -c 'DELETE FROM items WHERE id <= 100000'" "$run" ;;
      # One transaction per row, committed by a DO block: the same WAL as 200,000 client
      # transactions, written without 200,000 round trips (the load is not what is measured).
      2) psql_ -c "DROP SEQUENCE IF EXISTS bench_ids; CREATE SEQUENCE bench_ids;"
         run_shape 2 200000 "$bin/psql -X -q '$url' -c \"DO \\\$\\\$ BEGIN FOR i IN 1..200000 LOOP INSERT INTO items (id, title, price) VALUES (nextval('bench_ids'), 'item', 1.99); COMMIT; END LOOP; END \\\$\\\$\"" "$run" ;;
    esac
  done
  printf "shape %s, median of %d runs: cdc / pg_recvlogical %.2f changes/s, CPU ratio %.2f (load: %s)\n" \
    "$shape" "$runs" "$(median 1 "$work/ratios-$shape")" "$(median 2 "$work/ratios-$shape")" "$(uptime | sed 's/.*load average: //')"
  if [[ -s "$work/rates-$shape" ]]; then
    plain=$(median 1 "$work/rates-$shape"); admin=$(median 2 "$work/rates-$shape")
    printf "shape %s, median of %d runs: cdc %.0f changes/s, cdc+admin (scraped every second) %.0f changes/s, difference %+.1f%%\n" \
      "$shape" "$runs" "$plain" "$admin" "$(echo "($admin / $plain - 1) * 100" | bc -l)"
  fi
done
