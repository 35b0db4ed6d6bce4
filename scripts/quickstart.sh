#!/usr/bin/env bash
# cdc end to end on this machine, with nothing set up beforehand:
#   scripts/quickstart.sh          # runs everything, then stops it and removes its temp dir
#   KEEP=1 scripts/quickstart.sh   # leaves Postgres, the search node and the config in place and
#                                  # prints the commands to continue by hand (and to stop them)
# Starts a throwaway PostgreSQL (wal_level=logical) and an OpenSearch node (fetched through
# Maven on first use) in a temp dir, creates a sample table, writes a cdc.toml that sends the
# table to stdout and to the search index, runs `cdc setup` and `cdc run`, makes some changes,
# shows the events cdc printed and the documents in the index, then stops everything.
# Needs: cargo, python3, curl, unzip, java (17), mvn; PostgreSQL comes from apt-get when missing.
# The first run builds cdc in release mode: 10 to 20 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
missing=""
for tool in cargo python3 curl unzip java mvn; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
if [ -n "$missing" ]; then
  echo "quickstart: missing:$missing"
  echo "  cargo: install Rust with rustup (https://rustup.rs)"
  echo "  the others on Debian/Ubuntu: apt-get install python3 curl unzip openjdk-17-jre-headless maven"
  exit 1
fi
if [ ! -x target/release/cdc ]; then
  echo "== building cdc (cargo build --release; the first build takes 10 to 20 minutes on a 2-core machine)"
else
  echo "== building cdc (cargo build --release)"
fi
cargo build --release
cdc="$root/target/release/cdc"

work=$(mktemp -d /tmp/cdc-quickstart.XXXXXX)
chmod 755 "$work"
pid=""
cleanup() {
  local rc=$?
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    echo "== quickstart failed (exit status $rc)"
    [ -s "$work/cdc.log" ] && { echo "== the end of cdc's log"; tail -n 20 "$work/cdc.log"; }
    [ "${KEEP:-0}" = 1 ] || echo "== rerun with KEEP=1 to keep $work (config, logs) and the servers for a look"
  fi
  if [ "${KEEP:-0}" != 1 ]; then
    bash "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null 2>&1 || true
    bash "$root/scripts/search-node.sh" stop "$work/search" >/dev/null 2>&1 || true
    rm -rf "$work"
  elif [ "$rc" != 0 ]; then
    echo "== KEEP=1: kept $work; stop what runs there with:"
    echo "bash $root/scripts/postgres.sh stop $work/pg; bash $root/scripts/search-node.sh stop $work/search; rm -rf $work"
  fi
}
trap cleanup EXIT

echo "== starting PostgreSQL"
pg_env=$(bash "$root/scripts/postgres.sh" start "$work/pg") || { echo "quickstart: PostgreSQL did not start (above)"; exit 1; }
eval "$pg_env"
echo "== starting an OpenSearch node (the first time, Maven downloads it)"
search_env=$(bash "$root/scripts/search-node.sh" start "$work/search") || { echo "quickstart: the search node did not start (above)"; exit 1; }
eval "$search_env"
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
echo
if [ "${KEEP:-0}" = 1 ]; then
  cat <<EOF
== KEEP=1: PostgreSQL, the search node and $work (config, logs) keep running. To continue:

# cdc again, from where it stopped (in the foreground; Ctrl-C stops it):
export CDC_PG_PASSWORD=cdc
$cdc run --config $work/cdc.toml

# in another terminal, a change, then the index (documents appear within a second):
$CDC_TEST_PG_BIN/psql '$url' -c "INSERT INTO items (title, price, tags) VALUES ('chair', 49.00, '{home}')"
curl -s '$CDC_TEST_SEARCH_URL/items/_search?pretty'

# stop everything and remove the temp dir:
bash $root/scripts/postgres.sh stop $work/pg; bash $root/scripts/search-node.sh stop $work/search; rm -rf $work
EOF
else
  cat <<EOF
== done (Postgres and the search node stop now; $work is removed). What next:
  KEEP=1 bash scripts/quickstart.sh      # the same, but leaves Postgres, the node and the config running
                                         # and prints the commands to continue by hand
  $cdc --help
  examples/stdout.toml, examples/search.toml, examples/webhook.toml   # configs for your own database
  README.md: Configuration, Search-index sink, Webhook sink
EOF
fi
