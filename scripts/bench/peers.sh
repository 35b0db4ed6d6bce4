#!/usr/bin/env bash
# scripts/bench/peers.sh — peer readers for scripts/bench/source.sh: pg_recvlogical with the
# wal2json plugin, and Debezium's embedded engine (scripts/bench/peers/debezium, a small Java
# reader built here by Maven). Each peer that cannot be installed or built is skipped with a
# one-line reason; nothing here ever aborts the caller (every function returns 0, also under
# `set -euo pipefail`).
#
# MEANT TO BE SOURCED by source.sh:   source "$root/scripts/bench/peers.sh"
# Also runnable by itself:            bash scripts/bench/peers.sh selftest
#   (throwaway Postgres, 20k one-row transactions + one 100k-row insert, every peer, a table)
#
# Interface (all messages on stderr; the result lines on stdout):
#   peers_prepare [PG_BIN]
#       Once, after scripts/postgres.sh start (PG_BIN defaults to $CDC_TEST_PG_BIN), called
#       directly, not in $(...): it records skipped peers in this shell (PEERS_SKIP). Installs
#       postgresql-<major>-wal2json with apt-get when missing; builds the Debezium reader into
#       .tmp/bench-peers/debezium (rebuilt only when pom.xml or Reader.java change). A peer that
#       fails is marked skipped (see peer_skipped) with its reason.
#   peers_create_slots URL [FROM_SLOT]
#       Makes one slot per ready peer: bench_peer_wal2json (plugin wal2json) and
#       bench_peer_debezium (pgoutput). An old slot of that name is dropped first.
#       Without FROM_SLOT: new slots, so call it BEFORE the workload (a slot only sees changes
#       made after its creation), e.g. right after source.sh creates bench_recv.
#       With FROM_SLOT (e.g. bench_recv): copies of that slot, made with
#       pg_copy_logical_replication_slot(FROM, NAME, false, PLUGIN) — the copy may take another
#       output plugin, so wal2json too starts at exactly the position of bench_recv and
#       bench_cdc; call it where source.sh copies bench_recv to bench_cdc (after the workload).
#   peer_run TOOL URL SLOT PUBLICATION END_LSN CHANGES
#       TOOL: wal2json | debezium | pgoutput (pg_recvlogical + pgoutput, the baseline, as
#       source.sh runs it). SLOT: the slot to read; "-" or "" means $(peer_slot TOOL). Reads
#       to END_LSN (debezium: until it has counted CHANGES records; see Reader.java for why),
#       drops the slot it read when that slot is a bench_peer_* one, and prints ONE line:
#         peer=TOOL seconds=WALL cpu=USER+SYS rss_mb=PEAK changes=COUNTED server_cpu=S [extra...]
#       or, when the peer is skipped or fails (the reason has no double quote):
#         peer=TOOL skipped="REASON"
#       seconds, cpu and rss_mb are the client process's (/usr/bin/time -f "%e %U %S %M"), like
#       source.sh measures cdc. server_cpu: user+sys seconds of the walsender that served the
#       slot (sampled from /proc every 0.1 s; "-" when the run was too short to see it), where
#       decoding and wal2json's JSON happen, so in none of the client's figures. changes:
#       records counted by the reader ("-" for pgoutput, whose binary output goes to /dev/null
#       as in source.sh). debezium adds bytes (JSON chars made), startup_s (JVM start to first
#       record), stream_s (first to last record) and last_lsn (source.lsn of the last record).
#   peers_drop_slots URL
#       Drops any bench_peer_* slot left (idempotent); call it where source.sh drops its slots.
#   peer_slot TOOL            prints the slot name of TOOL (bench_peer_TOOL).
#   peer_skipped TOOL         exit 0 (and the reason on stdout) when TOOL is skipped.
#   peers_table CHANGES       reads peer lines on stdin (any tool name, e.g. a line for cdc made
#                             by the caller in the same format) and prints one table: tool,
#                             seconds, changes/s (CHANGES / seconds), ratio to pg_recvlogical
#                             (its seconds / the tool's: > 1 is faster; baseline = the line with
#                             peer=pgoutput, or PEERS_BASELINE_SECONDS), peak RSS, CPU seconds,
#                             server CPU seconds, and a note (skip reason, count mismatch).
#
# Call order in source.sh (per shape, inside run_shape):
#   peers_prepare                                   # once, after postgres.sh start
#   ... CREATE TABLE / PUBLICATION bench; create bench_recv ...
#   peers_create_slots "$url"                       # EITHER here, before the load
#   bash -c "$load"; end=...
#   peers_create_slots "$url" bench_recv            # OR here, beside the copy to bench_cdc
#   ... time pg_recvlogical and cdc ...
#   peer_run wal2json "$url" - bench "$end" "$changes"   >> "$work/peers"
#   peer_run debezium "$url" - bench "$end" "$changes"   >> "$work/peers"
#   peers_drop_slots "$url"                         # beside the drop of bench_recv/bench_cdc
#   peers_table "$changes" < "$work/peers"          # with the caller's own lines added
#
# Env: PEERS_CACHE (default <repo>/.tmp/bench-peers), PEERS_JAVA_OPTS (extra JVM options),
# PEERS_IDLE_SECONDS (debezium gives up after this long without a record; default 120),
# PEERS_VERBOSE=1 (copy each reader's stderr to ours; with PEERS_JAVA_OPTS=-Dreader.sample=true
# the Debezium reader prints its first JSON record there).

PEERS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS_CACHE="${PEERS_CACHE:-$PEERS_ROOT/.tmp/bench-peers}"
PEERS_TOOLS="wal2json debezium"
PEERS_BIN="${PEERS_BIN:-}"
declare -gA PEERS_SKIP=()

peers_log() { echo "peers: $*" >&2; }

peer_slot() { echo "bench_peer_$1"; }

peer_skipped() {
  [[ -n "${PEERS_SKIP[$1]:-}" ]] || return 1
  echo "${PEERS_SKIP[$1]}"
}

peers_skip() {  # TOOL REASON
  PEERS_SKIP[$1]="${2//\"/\'}"  # no double quote: the reason is printed as skipped="..."
  peers_log "$1 skipped: $2"
}

# The PostgreSQL bin directory: the argument, $CDC_TEST_PG_BIN, or the highest installed.
peers_find_bin() {
  local d
  for d in "${1:-}" "${CDC_TEST_PG_BIN:-}" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
    if [[ -n "$d" && -x "$d/pg_recvlogical" && -x "$d/psql" ]]; then echo "$d"; return 0; fi
  done
  return 1
}

peers_psql() {  # URL SQL...
  local url=$1; shift
  "$PEERS_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 "$url" "$@"
}

peers_prepare() {
  PEERS_SKIP=()
  PEERS_BIN=$(peers_find_bin "${1:-}") || {
    peers_skip wal2json "no PostgreSQL client binaries (pg_recvlogical, psql) found"
    peers_skip debezium "no PostgreSQL client binaries (psql) found"
    return 0
  }
  command -v /usr/bin/time >/dev/null 2>&1 || {
    apt-get install -y -q -o DPkg::Lock::Timeout=120 time >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -q -o DPkg::Lock::Timeout=120 time >/dev/null 2>&1; } \
      || true
  }
  if [[ ! -x /usr/bin/time ]]; then
    peers_skip wal2json "/usr/bin/time is missing and could not be installed"
    peers_skip debezium "/usr/bin/time is missing and could not be installed"
    return 0
  fi
  mkdir -p "$PEERS_CACHE" 2>/dev/null || true
  peers_prepare_wal2json
  peers_prepare_debezium
  return 0
}

peers_prepare_wal2json() {
  local major libdir pkg
  major=$("$PEERS_BIN/pg_config" --version 2>/dev/null | awk '{print $2}' | cut -d. -f1) || true
  [[ -n "$major" ]] || major=$(basename "$(dirname "$PEERS_BIN")")   # /usr/lib/postgresql/15/bin
  libdir=$("$PEERS_BIN/pg_config" --pkglibdir 2>/dev/null) || libdir="$(dirname "$PEERS_BIN")/lib"
  pkg="postgresql-$major-wal2json"
  if [[ -f "$libdir/wal2json.so" ]]; then peers_log "wal2json ready ($libdir/wal2json.so)"; return 0; fi
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    peers_skip wal2json "$libdir/wal2json.so is missing (install $pkg as root)"; return 0
  fi
  peers_log "installing $pkg with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # The lock timeout: other engineers' apt-get may hold the dpkg lock for a while.
  if ! apt-get install -y -q -o DPkg::Lock::Timeout=300 "$pkg" >"$PEERS_CACHE/apt.log" 2>&1; then
    apt-get update -q >>"$PEERS_CACHE/apt.log" 2>&1 || true
    apt-get install -y -q -o DPkg::Lock::Timeout=300 "$pkg" >>"$PEERS_CACHE/apt.log" 2>&1 || true
  fi
  if [[ -f "$libdir/wal2json.so" ]]; then peers_log "wal2json installed ($pkg)"
  else peers_skip wal2json "apt-get install $pkg failed (see $PEERS_CACHE/apt.log)"; fi
  return 0
}

peers_prepare_debezium() {
  local src="$PEERS_ROOT/scripts/bench/peers/debezium" dir="$PEERS_CACHE/debezium" sum tool
  for tool in java javac mvn; do
    command -v "$tool" >/dev/null 2>&1 || { peers_skip debezium "$tool is not installed"; return 0; }
  done
  sum=$(cat "$src/pom.xml" "$src/src/main/java/bench/Reader.java" 2>/dev/null | sha256sum | cut -c1-16)
  if [[ -f "$dir/stamp" && "$(cat "$dir/stamp")" == "$sum" && -f "$dir/tree/target/classes/bench/Reader.class" ]]; then
    peers_log "debezium reader ready ($dir, built before)"; return 0
  fi
  peers_log "building the debezium reader with Maven into $dir (the first build fetches ~100 MB from Maven Central)"
  rm -rf "$dir/tree" "$dir/stamp"
  mkdir -p "$dir/tree" && cp -r "$src/pom.xml" "$src/src" "$dir/tree/" || {
    peers_skip debezium "could not copy the reader's sources to $dir"; return 0; }
  if ! (cd "$dir/tree" && timeout 1200 mvn -B -q package dependency:copy-dependencies) >"$dir/build.log" 2>&1; then
    peers_skip debezium "the Maven build failed: $(grep -m1 -E 'ERROR|error:' "$dir/build.log" | cut -c1-160) (see $dir/build.log)"
    return 0
  fi
  echo "$sum" >"$dir/stamp"
  peers_log "debezium reader built ($(ls "$dir/tree/target/lib" | wc -l) jars)"
  return 0
}

peers_slot_plugin() {  # TOOL
  case $1 in wal2json) echo wal2json ;; *) echo pgoutput ;; esac
}

# Drop one slot, waiting for a walsender that is still exiting to release it.
peers_drop_slot() {  # URL SLOT
  local _
  for _ in $(seq 1 50); do
    [[ -n "$(peers_psql "$1" -c "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$2'" 2>/dev/null)" ]] || return 0
    peers_psql "$1" -c "SELECT pg_drop_replication_slot('$2')" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  peers_log "could not drop slot $2"
  return 0
}

peers_create_slots() {  # URL [FROM_SLOT]
  local url=$1 from=${2:-} tool slot plugin sql
  for tool in $PEERS_TOOLS; do
    peer_skipped "$tool" >/dev/null && continue
    slot=$(peer_slot "$tool"); plugin=$(peers_slot_plugin "$tool")
    peers_drop_slot "$url" "$slot"
    if [[ -n "$from" ]]; then
      sql="SELECT pg_copy_logical_replication_slot('$from', '$slot', false, '$plugin')"
    else
      sql="SELECT pg_create_logical_replication_slot('$slot', '$plugin')"
    fi
    if ! peers_psql "$url" -c "$sql" >/dev/null 2>"$PEERS_CACHE/slot.err"; then
      peers_skip "$tool" "could not create slot $slot: $(head -c 200 "$PEERS_CACHE/slot.err" | tr '\n' ' ')"
    fi
  done
  return 0
}

peers_drop_slots() {  # URL
  local slot
  for slot in $(peers_psql "$1" -c "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'bench\_peer\_%'" 2>/dev/null); do
    peers_drop_slot "$1" "$slot"
  done
  return 0
}

# LSN text X/Y to a number, for comparisons.
peers_lsn() { local h=${1%/*} l=${1#*/}; echo $(( (16#$h << 32) | 16#$l )); }

# The walsender's CPU (user+sys ticks) while it serves SLOT, written to OUT every 0.1 s until
# it exits: decoding and the output plugin (wal2json's JSON) run there, not in the client.
# The last sample misses at most 0.1 s of its work. Runs in the background.
peers_sample_walsender() {  # URL SLOT OUT
  local pid line out=$3
  # One session that polls (not a psql per poll, which would cost CPU beside the reader): the
  # reader may take a while to connect (the JVM: ~10 s here), so up to 90 s.
  pid=$(peers_psql "$1" -c "DO \$\$ DECLARE p int; BEGIN FOR i IN 1..900 LOOP
      SELECT active_pid INTO p FROM pg_replication_slots WHERE slot_name = '$2' AND active;
      IF p IS NOT NULL THEN RAISE NOTICE 'walsender=%', p; RETURN; END IF;
      PERFORM pg_sleep(0.1); END LOOP; END \$\$" 2>&1 | sed -n 's/.*walsender=\([0-9]*\).*/\1/p') || pid=""
  [[ -n "$pid" ]] || return 0
  while read -r line <"/proc/$pid/stat"; do
    line=${line##*) }  # the fields after "(comm) ": state is the first, utime the 12th, stime the 13th
    # shellcheck disable=SC2086 # split into fields on purpose
    set -- $line
    echo "$(( ${12} + ${13} ))" >"$out"
    sleep 0.1
  done 2>/dev/null
  return 0
}

peer_run() {  # TOOL URL SLOT PUBLICATION END_LSN CHANGES
  local tool=$1 url=$2 slot=${3:-} pub=$4 end=$5 changes=$6 reason out rc extra="" counted
  if reason=$(peer_skipped "$tool"); then echo "peer=$tool skipped=\"$reason\""; return 0; fi
  [[ -n "$slot" && "$slot" != "-" ]] || slot=$(peer_slot "$tool")
  [[ -n "$PEERS_BIN" ]] || PEERS_BIN=$(peers_find_bin) || { echo "peer=$tool skipped=\"no PostgreSQL binaries\""; return 0; }
  case $tool in
    pgoutput|wal2json|debezium) ;;
    *) echo "peer=$tool skipped=\"unknown tool (wal2json, debezium, pgoutput)\""; return 0 ;;
  esac
  local tables=""
  if [[ $tool == wal2json ]]; then
    # wal2json knows no publication: it is told the publication's tables (add-tables).
    tables=$(peers_psql "$url" -c "SELECT string_agg(quote_ident(schemaname) || '.' || quote_ident(tablename), ',') FROM pg_publication_tables WHERE pubname = '$pub'" 2>/dev/null) || tables=""
    [[ -n "$tables" ]] || { echo "peer=$tool skipped=\"publication $pub has no tables\""; return 0; }
  fi
  out=$(mktemp -d "${TMPDIR:-/tmp}/cdc-peer.XXXXXX")
  rc=0
  local sampler
  peers_sample_walsender "$url" "$slot" "$out/server" &
  sampler=$!
  case $tool in
    pgoutput)  # the baseline, exactly as source.sh runs it
      /usr/bin/time -f "%e %U %S %M" -o "$out/time" "$PEERS_BIN/pg_recvlogical" -d "$url" --slot "$slot" \
          --start --endpos "$end" --no-loop -o proto_version=1 -o publication_names="$pub" -f /dev/null \
          2>"$out/err" || rc=$?
      counted="-" ;;
    wal2json)
      # format-version 2: one JSON object per change (and per BEGIN/COMMIT), like pgoutput's one
      # message per change; version 1 builds each transaction as one JSON document, 1M rows
      # in one message. add-tables: wal2json knows no publication, so decode only the
      # publication's tables, as pgoutput does. The JSON lines are counted by grep as they
      # come (a pipe, not a file); /usr/bin/time measures pg_recvlogical alone.
      # pg_recvlogical's exit code goes through a file: the pipeline's is grep's (1 on no match).
      { local prc=0
        /usr/bin/time -f "%e %U %S %M" -o "$out/time" "$PEERS_BIN/pg_recvlogical" -d "$url" --slot "$slot" \
          --start --endpos "$end" --no-loop -o format-version=2 -o add-tables="$tables" -f - 2>"$out/err" || prc=$?
        echo "$prc" >"$out/rc"; } | LC_ALL=C grep -c '^{"action":"[IUD]"' >"$out/count" || true
      rc=$(cat "$out/rc" 2>/dev/null || echo 1)
      counted=$(cat "$out/count" 2>/dev/null || echo 0) ;;
    debezium)
      local dir="$PEERS_CACHE/debezium/tree/target"
      # shellcheck disable=SC2086 # PEERS_JAVA_OPTS is a list of options
      /usr/bin/time -f "%e %U %S %M" -o "$out/time" java ${PEERS_JAVA_OPTS:-} -cp "$dir/classes:$dir/lib/*" bench.Reader \
          "$url" "$slot" "$pub" "$changes" "${PEERS_IDLE_SECONDS:-120}" >"$out/stdout" 2>"$out/err" || rc=$?
      # stdout: records=N bytes=B startup_s=S stream_s=T last_lsn=L
      counted=$(sed -n 's/.*records=\([0-9]*\).*/\1/p' "$out/stdout" | head -1)
      extra=" $(sed -n 's/.*\(bytes=.*\)/\1/p' "$out/stdout" | head -1)"
      local last
      last=$(sed -n 's/.*last_lsn=\([0-9A-F]*\/[0-9A-F]*\).*/\1/p' "$out/stdout" | head -1)
      if [[ -n "$last" ]] && (( $(peers_lsn "$last") >= $(peers_lsn "$end") )); then
        peers_log "debezium: the last record's LSN $last is not below the end $end: the slot held more than the workload"
      fi ;;
  esac
  # The walsender exits when its client does; give it 5 s, then stop sampling.
  for _ in $(seq 1 50); do kill -0 "$sampler" 2>/dev/null || break; sleep 0.1; done
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  local server_cpu="-"
  if [[ -s "$out/server" ]]; then server_cpu=$(printf '%.2f' "$(echo "$(cat "$out/server") / $(getconf CLK_TCK)" | bc -l)"); fi
  if [[ "$slot" == bench_peer_* ]]; then peers_drop_slot "$url" "$slot"; fi
  if [[ -n "${PEERS_VERBOSE:-}" && -s "$out/err" ]]; then sed "s/^/peers: $tool: /" "$out/err" >&2; fi
  if [[ $rc != 0 || ! -s "$out/time" ]]; then
    # The reader's own last word when it has one, else the last lines (no stack traces).
    local why
    why=$(grep '^debezium reader:' "$out/err" 2>/dev/null | tail -n 1) || true
    [[ -n "$why" ]] || why=$(grep -v -e '^Command exited' -e '^[[:space:]]*at ' "$out/err" 2>/dev/null | tail -n 3) || true
    echo "peer=$tool skipped=\"failed (exit $rc): $(echo "$why" | tr '\n"' ' '"'"'' | cut -c1-300)\""
    rm -rf "$out"; return 0
  fi
  # /usr/bin/time -o writes "Command exited with non-zero status" first when rc != 0: last line.
  local wall usr sys rss
  read -r wall usr sys rss < <(tail -n 1 "$out/time")
  printf 'peer=%s seconds=%s cpu=%.2f rss_mb=%.1f changes=%s server_cpu=%s%s\n' "$tool" "$wall" \
    "$(echo "$usr + $sys" | bc -l)" "$(echo "$rss / 1024" | bc -l)" "${counted:--}" "$server_cpu" "$extra"
  rm -rf "$out"
  return 0
}

peers_table() {  # CHANGES < peer lines
  awk -v changes="$1" -v base="${PEERS_BASELINE_SECONDS:-}" '
    function field(line, key,   re, m) {
      if (match(line, "(^| )" key "=[^ ]*")) { m = substr(line, RSTART, RLENGTH); sub(/^ /, "", m); return substr(m, length(key) + 2) }
      return ""
    }
    /^peer=/ { n++; line[n] = $0; if (field($0, "peer") == "pgoutput" && base == "") base = field($0, "seconds") }
    END {
      printf "%-14s %9s %12s %9s %10s %8s %10s  %s\n", "tool", "seconds", "changes/s", "ratio", "peak RSS", "CPU s", "server CPU", "note"
      for (i = 1; i <= n; i++) {
        l = line[i]; tool = field(l, "peer"); s = field(l, "seconds")
        if (index(l, " skipped=")) { r = l; sub(/.* skipped=/, "", r); printf "%-14s %9s %12s %9s %10s %8s %10s  skipped: %s\n", tool, "-", "-", "-", "-", "-", "-", r; continue }
        note = ""; c = field(l, "changes"); if (c != "-" && c != "" && c + 0 != changes + 0) note = "counted " c " of " changes
        ratio = (base != "" && s > 0) ? sprintf("%.2f", base / s) : "-"
        sc = field(l, "server_cpu"); if (sc == "") sc = "-"
        printf "%-14s %9.2f %12.0f %9s %8.1f MB %8s %10s  %s\n", tool, s, (s > 0 ? changes / s : 0), ratio, field(l, "rss_mb"), field(l, "cpu"), sc, note
      }
    }'
}

# --- selftest: bash scripts/bench/peers.sh selftest ----------------------------------------

peers_selftest() {
  set -euo pipefail
  local work url bin end changes=120000 mode
  command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc >/dev/null; }
  work=$(mktemp -d /tmp/cdc-peers.XXXXXX); chmod 755 "$work"
  # shellcheck disable=SC2064
  trap "bash '$PEERS_ROOT/scripts/postgres.sh' stop '$work/pg' >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  eval "$(bash "$PEERS_ROOT/scripts/postgres.sh" start "$work/pg")"
  bin="$CDC_TEST_PG_BIN"
  url="postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/bench"
  "$bin/psql" -X -q "postgres://postgres@127.0.0.1:$CDC_TEST_PG_PORT/postgres" -c "CREATE DATABASE bench"
  peers_prepare "$bin"
  echo "INSERT INTO items (id, title, price) VALUES (nextval('bench_ids'), 'item', 1.99);" >"$work/one-row.sql"
  # Both ways of making the peers' slots: "create" (new slots before the load) and "copy"
  # (copies of bench_recv after the load, wal2json's with its plugin swapped in).
  for mode in ${PEERS_SELFTEST_MODES:-create copy}; do
    echo "== selftest, peer slots by $mode: 20,000 one-row transactions + one 100,000-row insert"
    peers_psql "$url" -c "SET client_min_messages = warning; DROP TABLE IF EXISTS items; CREATE TABLE items (id int PRIMARY KEY, title text, price numeric(10,2), updated_at timestamptz DEFAULT now());
      DROP SEQUENCE IF EXISTS bench_ids; CREATE SEQUENCE bench_ids START 1000001;
      DROP PUBLICATION IF EXISTS bench; CREATE PUBLICATION bench FOR TABLE items;"
    peers_psql "$url" -c "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')" >/dev/null
    [[ $mode == copy ]] || peers_create_slots "$url"
    "$bin/pgbench" -n -t 20000 -c 1 -f "$work/one-row.sql" "$url" >/dev/null
    peers_psql "$url" -c "INSERT INTO items (id, title, price) SELECT g, 'item ' || g, g % 1000 + 0.99 FROM generate_series(1, 100000) g"
    end=$(peers_psql "$url" -c "SELECT pg_current_wal_insert_lsn()")
    [[ $mode != copy ]] || peers_create_slots "$url" bench_recv
    {
      peer_run pgoutput "$url" bench_recv bench "$end" "$changes"
      peer_run wal2json "$url" - bench "$end" "$changes"
      peer_run debezium "$url" - bench "$end" "$changes"
    } | tee "$work/lines"
    peers_drop_slot "$url" bench_recv
    peers_drop_slots "$url"
    peers_table "$changes" <"$work/lines"
  done
  echo "uptime: $(uptime)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-}" in
    selftest) peers_selftest ;;
    *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
fi
