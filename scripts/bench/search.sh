#!/usr/bin/env bash
# Benchmark of the search sink: how fast `cdc run` brings an OpenSearch index up to date with a
# table, compared with the node's own capacity (the same documents bulk-loaded directly by
# opensearch-py). Prints numbers; it is not a test.
#
#   scripts/bench/search.sh              # 1,000,000 rows
#   ROWS=200000 scripts/bench/search.sh  # smaller
#
# Phase 1: ROWS inserts (in transactions of 10,000) → `cdc run` until the slot confirms the
#          end (every change is in the index) → docs/s.
# Phase 2: ROWS/2 updates (one transaction) and ROWS/10 deletes (another) → the same → changes/s.
# Then: seconds from the start of phase 2's run until the index equals the table (count and a
# sample of documents), and cdc's peak RSS over both runs. Before them, the direct loader
# indexes the phase-1 documents into another index of the same node, two requests in flight,
# 1000 documents each, like cdc's defaults.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
rows=${ROWS:-1000000}

command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
echo "== building cdc (release)"
cargo build --release --quiet
cdc="$root/target/release/cdc"

venv="${CDC_BENCH_VENV:-/var/cache/cdc/bench-venv}"
if ! "$venv/bin/python" -c "import opensearchpy" 2>/dev/null; then
  echo "== installing opensearch-py into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "opensearch-py==3.2.0"
fi

work=$(mktemp -d /tmp/cdc-bench-search.XXXXXX)
chmod 755 "$work"
cleanup() {
  bash "$root/scripts/search-node.sh" stop "$work/search" >/dev/null 2>&1 || true
  bash "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
eval "$(bash "$root/scripts/postgres.sh" start "$work/pg")"
# The node gets a heap that holds a million small documents without GC thrash.
eval "$(CDC_SEARCH_HEAP=${CDC_SEARCH_HEAP:-1g} bash "$root/scripts/search-node.sh" start "$work/search")"
node="$CDC_TEST_SEARCH_URL"
bin="$CDC_TEST_PG_BIN"
url="postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/bench"
psql_() { "$bin/psql" -X -q -v ON_ERROR_STOP=1 "$url" "$@"; }
"$bin/psql" -X -q "postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/postgres" -c "CREATE DATABASE bench"
psql_ -c "CREATE TABLE items (id int PRIMARY KEY, title text, body text, views int, state text)"

cat > "$work/cdc.toml" <<TOML
[source]
url = "$url"
slot = "bench"
publication = "bench"

[sinks.search]
type = "elasticsearch"
url = "$node"

[[tables]]
table = "public.items"
sinks = ["search"]
index = "bench_items"
TOML
"$cdc" --config "$work/cdc.toml" setup >/dev/null

now() { date +%s.%N; }
lsn() { psql_ -At -c "SELECT pg_current_wal_lsn()"; }
# Runs cdc until the slot confirms $1 (everything before it is in the index), then stops it.
# Not `--stop-at`: it can end the stream inside a large transaction, before that transaction's
# commit reaches the sinks. Prints the seconds until the confirmation.
run_cdc() { # $1: LSN, $2: RSS file
  local t0 t1 timer
  t0=$(now)
  /usr/bin/time -f "%M" -o "$2" "$cdc" --config "$work/cdc.toml" run 2>>"$work/cdc.log" &
  timer=$!
  until [ "$(psql_ -At -c "SELECT confirmed_flush_lsn >= '$1' FROM pg_replication_slots WHERE slot_name = 'bench'")" = t ]; do
    sleep 0.1
  done
  t1=$(now)
  kill -TERM "$(pgrep -P "$timer")"
  wait "$timer"
  echo "$t1 - $t0" | bc -l
}
count() { curl -fsS "$node/bench_items/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }

# The direct load goes first, on the fresh node, and its index is dropped after: neither run
# shares the node with the other's index and its background merges.
echo "== direct bulk load of the same $rows documents (opensearch-py parallel_bulk)"
direct=$("$venv/bin/python" "$root/scripts/bench/search_direct.py" "$node" bench_direct "$rows")
direct_rate=$(echo "$direct" | awk '/^docs\/s/ {print $2}')
curl -fsS -X DELETE "$node/bench_direct" >/dev/null

echo "== phase 1: $rows inserts"
psql_ -c "DO \$\$ BEGIN FOR b IN 0..$(( (rows - 1) / 10000 )) LOOP
  INSERT INTO items SELECT g, 'title ' || g, repeat('lorem ipsum dolor sit amet ', 4) || g, g % 1000,
    CASE WHEN g % 10 = 0 THEN 'draft' ELSE 'published' END
  FROM generate_series(b * 10000 + 1, least((b + 1) * 10000, $rows)) g;
  COMMIT; END LOOP; END \$\$"
end1=$(lsn)
s1=$(run_cdc "$end1" "$work/rss1")

updates=$((rows / 2)); deletes=$((rows / 10))
echo "== phase 2: $updates updates, $deletes deletes"
psql_ -c "UPDATE items SET views = views + 1, title = title || ' (edited)' WHERE id % 2 = 0"
psql_ -c "DELETE FROM items WHERE id % 10 = 1"
end2=$(lsn)
t2=$(now)
s2=$(run_cdc "$end2" "$work/rss2")
curl -fsS -X POST "$node/bench_items/_refresh" >/dev/null
table_rows=$(psql_ -At -c "SELECT count(*) FROM items")
until [ "$(count)" = "$table_rows" ]; do sleep 0.2; curl -fsS -X POST "$node/bench_items/_refresh" >/dev/null; done
equal_s=$(echo "$(now) - $t2" | bc -l)
sample=$(curl -fsS "$node/bench_items/_doc/4" | python3 -c 'import json,sys; print(json.load(sys.stdin)["_source"]["title"])')
[ "$sample" = "title 4 (edited)" ] || { echo "document 4 is not up to date: $sample"; exit 1; }


rss=$(sort -n "$work/rss1" "$work/rss2" | tail -1)
rate1=$(echo "$rows / $s1" | bc -l)
rate2=$(echo "($updates + $deletes) / $s2" | bc -l)
echo
printf "cdc, %d inserts:               %8.0f docs/s  (%.1f s)\n" "$rows" "$rate1" "$s1"
printf "direct bulk load, same docs:   %8.0f docs/s\n" "$direct_rate"
printf "cdc / direct:                  %8.2f\n" "$(echo "$rate1 / $direct_rate" | bc -l)"
printf "cdc, %d updates + %d deletes: %8.0f changes/s  (%.1f s)\n" "$updates" "$deletes" "$rate2" "$s2"
printf "index == table (%d docs) %.1f s after phase 2's run started\n" "$table_rows" "$equal_s"
printf "cdc peak RSS:                  %8d kB\n" "$rss"
grep -h "search sink stopped" "$work/cdc.log" | sed 's/^/  /'
