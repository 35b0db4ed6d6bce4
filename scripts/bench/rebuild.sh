#!/usr/bin/env bash
# Benchmark of `cdc rebuild-index`: a full rebuild of ROWS rows (6 columns, one ~200-byte text)
# into a fresh OpenSearch node, against what users do today (a Python script: a server-side
# psycopg cursor feeding opensearch-py's helpers.bulk) and the node's direct capacity
# (parallel_bulk of documents prepared in memory, 4 threads), and the node's ceiling: bulk bodies in
# cdc's form rendered before the clock starts and sent on 4 connections by a client that costs
# almost nothing, into an index with the rebuild's settings. No loader, cdc included, can index
# faster than that ceiling on the same machine. Prints numbers; it is not a test.
#
#   scripts/bench/rebuild.sh              # 1,000,000 rows
#   ROWS=200000 scripts/bench/rebuild.sh  # smaller
#   PARALLEL=8 scripts/bench/rebuild.sh   # cdc's --parallel (default 4)
#
# Each load goes into its own index on the same node, one after another, each index deleted
# before the next load. cdc's figures: wall time of the whole command, its peak RSS, and the
# phases from its summary line (copy, catch-up, swap).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
. "$root/scripts/bench/lib.sh"
rows=${ROWS:-1000000}
parallel=${PARALLEL:-4}

command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
echo "== building cdc (release)"
cargo build --release --quiet
cdc="$root/target/release/cdc"

venv="${CDC_BENCH_VENV:-/var/cache/cdc/bench-venv}"
if ! "$venv/bin/python" -c "import opensearchpy, psycopg" 2>/dev/null; then
  echo "== installing opensearch-py and psycopg into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "opensearch-py==3.2.0" "psycopg[binary]==3.2.13"
fi

work=$(mktemp -d /tmp/cdc-bench-rebuild.XXXXXX)
chmod 755 "$work"
cleanup() {
  bash "$root/scripts/search-node.sh" stop "$work/search" >/dev/null 2>&1 || true
  bash "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
eval "$(bash "$root/scripts/postgres.sh" start "$work/pg")"
eval "$(CDC_SEARCH_HEAP=${CDC_SEARCH_HEAP:-1g} bash "$root/scripts/search-node.sh" start "$work/search")"
node="$CDC_TEST_SEARCH_URL"
bin="$CDC_TEST_PG_BIN"
url="postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/bench"
psql_() { "$bin/psql" -X -q -v ON_ERROR_STOP=1 "$url" "$@"; }
"$bin/psql" -X -q "postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/postgres" -c "CREATE DATABASE bench"

echo "== loading $rows rows"
psql_ -c "CREATE TABLE events (id bigint PRIMARY KEY, tenant int NOT NULL, state text NOT NULL, title text NOT NULL,
  score numeric(10,2) NOT NULL, created_at timestamptz NOT NULL)"
psql_ -c "INSERT INTO events SELECT g, g % 100, CASE WHEN g % 10 = 0 THEN 'draft' ELSE 'published' END,
  'event ' || g || ' ' || repeat('lorem ipsum dolor sit amet consectetur ', 5), (g % 10000) / 100.0,
  timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' FROM generate_series(1, $rows) g"
psql_ -c "VACUUM ANALYZE events"

cat > "$work/cdc.toml" <<TOML
[source]
url = "$url"
slot = "bench"
publication = "bench"

[sinks.search]
type = "elasticsearch"
url = "$node"

[[tables]]
table = "public.events"
sinks = ["search"]
index = "bench_events"
TOML
"$cdc" --config "$work/cdc.toml" setup >/dev/null

node_pid="$CDC_TEST_SEARCH_PID"
node_cpu() { cpu_seconds "$node_pid"; }
rate_of() { awk '/^docs\/s/ {print $2}'; }
secs_of() { awk '/^seconds/ {print $2}'; }

echo "== the node's direct capacity: parallel_bulk of $rows prepared documents"
n0=$(node_cpu)
direct=$("$venv/bin/python" "$root/scripts/bench/rebuild_python.py" direct "$node" bench_direct "$rows")
node_direct=$(echo "$(node_cpu) - $n0" | bc -l)
curl -fsS -X DELETE "$node/bench_direct" >/dev/null

echo "== the Python loader: server-side psycopg cursor → helpers.bulk"
n0=$(node_cpu)
python=$("$venv/bin/python" "$root/scripts/bench/rebuild_python.py" loader "$url" "$node" bench_python)
node_python=$(echo "$(node_cpu) - $n0" | bc -l)
curl -fsS -X DELETE "$node/bench_python" >/dev/null

echo "== the node's ceiling: prepared bulk bodies on 4 connections"
n0=$(node_cpu)
ceiling=$("$venv/bin/python" "$root/scripts/bench/rebuild_python.py" ceiling "$node" bench_ceiling "$rows")
node_ceiling=$(echo "$(node_cpu) - $n0" | bc -l)
curl -fsS -X DELETE "$node/bench_ceiling" >/dev/null

echo "== cdc rebuild-index --parallel $parallel"
n0=$(node_cpu)
start=$(date +%s.%N)
/usr/bin/time -f "%M %U %S" -o "$work/rss" "$cdc" --config "$work/cdc.toml" rebuild-index --table public.events \
  --parallel "$parallel" >"$work/summary" 2>"$work/cdc.log"
wall=$(echo "$(date +%s.%N) - $start" | bc -l)
node_cdc=$(echo "$(node_cpu) - $n0" | bc -l)
count=$(curl -fsS "$node/bench_events/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
[ "$count" = "$rows" ] || { echo "the index holds $count documents, not $rows"; cat "$work/cdc.log"; exit 1; }

cdc_rate=$(echo "$rows / $wall" | bc -l)
python_rate=$(echo "$python" | rate_of)
direct_rate=$(echo "$direct" | rate_of)
ceiling_rate=$(echo "$ceiling" | rate_of)
echo
cat "$work/summary"
read -r rss user sys <"$work/rss"
printf "cdc rebuild-index, %d rows:    %8.0f rows/s  (%.1f s wall, peak RSS %d kB, cdc CPU %.1f s, node CPU %.1f s)\n" "$rows" "$cdc_rate" "$wall" "$rss" "$(echo "$user + $sys" | bc -l)" "$node_cdc"
printf "Python loader (psycopg+bulk):  %8.0f docs/s  (%.1f s, node CPU %.1f s)\n" "$python_rate" "$(echo "$python" | secs_of)" "$node_python"
printf "node direct (parallel_bulk):   %8.0f docs/s  (%.1f s, node CPU %.1f s)\n" "$direct_rate" "$(echo "$direct" | secs_of)" "$node_direct"
printf "node ceiling (prepared bodies): %7.0f docs/s  (%.1f s, node CPU %.1f s, client CPU %s s)\n" "$ceiling_rate" "$(echo "$ceiling" | secs_of)" "$node_ceiling" "$(echo "$ceiling" | awk '/^client_cpu/ {print $2}')"
printf "cdc / Python loader:           %8.2f\n" "$(echo "$cdc_rate / $python_rate" | bc -l)"
printf "node ceiling / Python loader:  %8.2f  (about the most any loader can reach in this run)\n" "$(echo "$ceiling_rate / $python_rate" | bc -l)"
printf "cdc / node ceiling:            %8.2f\n" "$(echo "$cdc_rate / $ceiling_rate" | bc -l)"
printf "cdc / node direct:             %8.2f\n" "$(echo "$cdc_rate / $direct_rate" | bc -l)"
