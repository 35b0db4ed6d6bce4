#!/usr/bin/env bash
# cdc end to end on this machine, with nothing set up beforehand:
#   scripts/quickstart.sh
# Starts a throwaway PostgreSQL (wal_level=logical) and an OpenSearch node (fetched through
# Maven on first use) in a temp dir, creates a sample table, writes a cdc.toml that sends the
# table to stdout and to the search index, runs `cdc setup` and `cdc run`, makes some changes,
# shows the events cdc printed and the documents in the index, then stops everything.
# Set KEEP=1 to leave Postgres and the node running and print how to reach them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

command -v cargo >/dev/null || { echo "cargo is missing: install Rust with rustup (https://rustup.rs)"; exit 1; }
echo "== building cdc"
cargo build --release --quiet
cdc="$root/target/release/cdc"

work=$(mktemp -d /tmp/cdc-quickstart.XXXXXX)
chmod 755 "$work"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  if [ "${KEEP:-0}" != 1 ]; then
    bash "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null 2>&1 || true
    bash "$root/scripts/search-node.sh" stop "$work/search" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
}
trap cleanup EXIT

echo "== starting PostgreSQL"
eval "$(bash "$root/scripts/postgres.sh" start "$work/pg")"
echo "== starting an OpenSearch node (the first time, Maven downloads it)"
eval "$(bash "$root/scripts/search-node.sh" start "$work/search")"
url="postgres://cdc:cdc@127.0.0.1:$CDC_TEST_PG_PORT/shop"
psql_() { "$CDC_TEST_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_ "$CDC_TEST_PG_URL" -c "CREATE DATABASE shop OWNER cdc"
psql_ "$url" -c "CREATE TABLE items (id serial PRIMARY KEY, title text NOT NULL, price numeric(10,2), tags text[], updated_at timestamptz DEFAULT now());
                 CREATE TABLE audit_log (id serial PRIMARY KEY, note text);  -- not mapped: cdc ignores it"

cat > "$work/cdc.toml" <<TOML
[source]
url = "postgres://cdc:\${CDC_PG_PASSWORD}@127.0.0.1:$CDC_TEST_PG_PORT/shop"
slot = "cdc"
publication = "cdc"

[sinks.out]
type = "stdout"

[sinks.search]
type = "elasticsearch"
url = "$CDC_TEST_SEARCH_URL"
flush_interval = "200ms"

[[tables]]
table = "public.items"
sinks = ["out", "search"]
columns = ["id", "title", "price", "tags"]
index = "items"
TOML
export CDC_PG_PASSWORD=cdc
echo "== cdc.toml"; cat "$work/cdc.toml"
echo "== cdc check"; "$cdc" --config "$work/cdc.toml" check || true
echo "== cdc setup"; "$cdc" --config "$work/cdc.toml" setup --replica-identity-full public.items
echo "== cdc check"; "$cdc" --config "$work/cdc.toml" check

echo "== cdc run (events below come from cdc's stdout)"
"$cdc" --config "$work/cdc.toml" run > "$work/events.jsonl" 2> "$work/cdc.log" &
pid=$!
sleep 1
psql_ "$url" -c "INSERT INTO items (title, price, tags) VALUES ('lamp', 19.90, '{home,light}'), ('desk', 120.00, '{home}');"
psql_ "$url" -c "UPDATE items SET price = 17.50 WHERE title = 'lamp';"
psql_ "$url" -c "INSERT INTO audit_log (note) VALUES ('ignored');"
psql_ "$url" -c "DELETE FROM items WHERE title = 'desk';"
for _ in $(seq 1 50); do [ "$(wc -l < "$work/events.jsonl")" -ge 4 ] && break; sleep 0.2; done
sleep 1  # the search sink flushes every 200 ms
kill -TERM "$pid"; wait "$pid"; pid=""
# Printed as cdc wrote them: numbers keep the database's digits (19.90, not 19.9).
cat "$work/events.jsonl"
echo "== cdc log (stderr)"; cat "$work/cdc.log"
n=$(wc -l < "$work/events.jsonl")
echo "== $n events (expected 4: 2 creates, 1 update, 1 delete)"
[ "$n" -eq 4 ]
echo "== documents in the search index (alias items; the lamp at 17.50, the desk deleted)"
python3 - "$CDC_TEST_SEARCH_URL" <<'PY'
import json, sys, urllib.request
url = sys.argv[1]
urllib.request.urlopen(urllib.request.Request(url + "/items/_refresh", method="POST")).read()
hits = json.load(urllib.request.urlopen(url + "/items/_search?version=true"))["hits"]["hits"]
for h in hits:
    print(f"  _id={h['_id']} _version={h['_version']} (the commit LSN) {json.dumps(h['_source'])}")
assert [h["_source"]["title"] for h in hits] == ["lamp"], hits
PY
if [ "${KEEP:-0}" = 1 ]; then
  echo "Postgres keeps running: $CDC_TEST_PG_BIN/psql $url ; config: $work/cdc.toml"
  echo "OpenSearch keeps running: $CDC_TEST_SEARCH_URL"
  echo "stop them with: bash scripts/postgres.sh stop $work/pg; bash scripts/search-node.sh stop $work/search"
fi
