#!/usr/bin/env bash
# scripts/postgres.sh — a throwaway PostgreSQL cluster for the cdc test suite.
#
# Usage:
#   eval "$(scripts/postgres.sh start DIR)"   # initdb in DIR/data, start on a free 127.0.0.1 port,
#                                             # print `export CDC_TEST_PG_*=...` lines (stdout only)
#   scripts/postgres.sh restart DIR           # pg_ctl restart -m fast, same port
#   scripts/postgres.sh stop DIR              # pg_ctl stop -m fast (no-op when not running)
#   scripts/postgres.sh status DIR            # exit 0 when running
#   scripts/postgres.sh install               # apt-get install postgresql when pg_ctl is missing
#
# The cluster is tuned for tests, never for data you care about: fsync=off, wal_level=logical
# (CDC_PG_WAL_LEVEL=replica for a test of what cdc says on a cluster without logical decoding;
# CDC_PG_SSL_CERT and CDC_PG_SSL_KEY, PEM files, turn TLS on),
# many slots and connections, trust auth on 127.0.0.1 and the unix socket (in DIR), plus a role
# `cdc` (LOGIN REPLICATION, password 'cdc') that must use scram-sha-256 over TCP, so tests can
# exercise password authentication.
#
# initdb/postgres refuse to run as root. As root, the server runs as the OS user `postgres`
# (created by the Debian package) or, when that is missing, a system user `cdcpg` created here;
# DIR is chowned to it, so DIR's parent directories must be traversable by other users
# (anything under /tmp is fine). As a non-root user the server simply runs as you.
#
# `start` on a DIR that already holds a cluster stops it (if running) and recreates it from scratch.
# Everything this script says goes to stderr, except the export lines of `start`.
# Env: CDC_PG_BIN overrides the directory holding pg_ctl/initdb/postgres.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }
die() { echo "postgres.sh: error: $*" >&2; exit 1; }

# --- locate / install the binaries -----------------------------------------------------------

find_bin() {
    local d
    if [[ -n "${CDC_PG_BIN:-}" ]]; then
        [[ -x "$CDC_PG_BIN/pg_ctl" ]] || die "CDC_PG_BIN=$CDC_PG_BIN has no pg_ctl"
        echo "$CDC_PG_BIN"; return 0
    fi
    # Debian's /usr/bin/pg_config may come from libpq-dev and report /usr/bin, so check for pg_ctl.
    if command -v pg_config >/dev/null 2>&1; then
        d="$(pg_config --bindir 2>/dev/null || true)"
        if [[ -n "$d" && -x "$d/pg_ctl" && -x "$d/initdb" ]]; then echo "$d"; return 0; fi
    fi
    # Highest version first.
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
        if [[ -x "$d/pg_ctl" && -x "$d/initdb" ]]; then echo "$d"; return 0; fi
    done
    return 1
}

install_pg() {
    if find_bin >/dev/null; then return 0; fi
    if [[ "$(id -u)" != 0 ]]; then
        die "PostgreSQL binaries not found and not root: install them with 'sudo apt-get install -y postgresql' (or set CDC_PG_BIN to the directory holding pg_ctl)"
    fi
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL binaries not found and apt-get is missing: install PostgreSQL (>= 14) and set CDC_PG_BIN to its bin directory"
    log "PostgreSQL not found; installing it with apt-get (takes a minute)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || die "apt-get update failed (is the Debian mirror reachable?)"
    apt-get install -y -q --no-install-recommends postgresql >&2 \
        || die "apt-get install postgresql failed; see the output above"
    find_bin >/dev/null || die "installed the postgresql package but found no pg_ctl under /usr/lib/postgresql/*/bin"
}

# --- helpers ---------------------------------------------------------------------------------

# The OS user the server runs as (empty: the current user).
pg_user() {
    if [[ "$(id -u)" != 0 ]]; then echo ""; return 0; fi
    if id postgres >/dev/null 2>&1; then echo postgres; return 0; fi
    if ! id cdcpg >/dev/null 2>&1; then
        log "creating system user cdcpg to run PostgreSQL (it refuses to run as root)"
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin cdcpg >&2 \
            || die "could not create user cdcpg; create a non-root user named postgres or cdcpg yourself"
    fi
    echo cdcpg
}

# Run a command as the server's OS user, from DIR (so no tool complains about an unreadable cwd).
as_pg() {
    local user; user="$(pg_user)"
    if [[ -z "$user" ]]; then
        (cd "$DIR" && "$@")
    elif command -v runuser >/dev/null 2>&1; then
        (cd "$DIR" && runuser -u "$user" -- "$@")
    else
        (cd "$DIR" && setpriv --reuid="$user" --regid="$user" --init-groups -- "$@")
    fi
}

port_in_use() {
    # A connect that succeeds means somebody listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
    local p
    if command -v python3 >/dev/null 2>&1; then
        p="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null || true)"
        if [[ -n "$p" ]] && ! port_in_use "$p"; then echo "$p"; return 0; fi
    fi
    for _ in $(seq 1 200); do
        p=$(( 20000 + RANDOM % 30000 ))
        if ! port_in_use "$p"; then echo "$p"; return 0; fi
    done
    die "found no free TCP port on 127.0.0.1"
}

is_running() {
    [[ -f "$DATA/postmaster.pid" ]] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

show_log_tail() {
    if [[ -f "$LOGFILE" ]]; then
        echo "---- last lines of $LOGFILE ----" >&2
        tail -n 30 "$LOGFILE" >&2 || true
        echo "--------------------------------" >&2
    fi
}

print_env() {
    local port; port="$(cat "$DIR/port")"
    echo "export CDC_TEST_PG_URL='postgres://postgres@127.0.0.1:$port/postgres'"
    echo "export CDC_TEST_PG_HOST='127.0.0.1'"
    echo "export CDC_TEST_PG_PORT='$port'"
    echo "export CDC_TEST_PG_DIR='$DIR'"
    echo "export CDC_TEST_PG_BIN='$BIN'"
}

write_config() {
    local port="$1"
    # Re-creatable block at the end of postgresql.conf (later settings win).
    sed -i '/^# --- cdc test settings/,$d' "$DATA/postgresql.conf"
    cat >>"$DATA/postgresql.conf" <<EOF
# --- cdc test settings (scripts/postgres.sh) ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$DIR'
max_connections = 300
wal_level = ${CDC_PG_WAL_LEVEL:-logical}
# Every test makes its own slots and the whole suite runs on one cluster: room for all of them.
max_replication_slots = 256
max_wal_senders = 64
wal_sender_timeout = 60s
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
logging_collector = off
EOF
    # TLS for a test of cdc's sslmode (CDC_PG_SSL_CERT / CDC_PG_SSL_KEY: PEM files made by the test).
    if [[ -n "${CDC_PG_SSL_CERT:-}" ]]; then
        cp "$CDC_PG_SSL_CERT" "$DATA/server.crt"
        cp "${CDC_PG_SSL_KEY:?CDC_PG_SSL_KEY goes with CDC_PG_SSL_CERT}" "$DATA/server.key"
        chmod 0600 "$DATA/server.key"
        local owner; owner="$(stat -c %U "$DATA")"
        chown "$owner:" "$DATA/server.crt" "$DATA/server.key"
        printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" >>"$DATA/postgresql.conf"
    fi
    # First matching line wins: role cdc must authenticate with a password over TCP.
    cat >"$DATA/pg_hba.conf" <<EOF
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          cdc   127.0.0.1/32   scram-sha-256
host    replication  cdc   127.0.0.1/32   scram-sha-256
host    all          all   127.0.0.1/32   trust
host    replication  all   127.0.0.1/32   trust
EOF
}

pg_start() {
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 start >&2
}

wait_ready() {
    local port; port="$(cat "$DIR/port")"
    for _ in $(seq 1 120); do
        if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres 2>/dev/null; then return 0; fi
        sleep 0.5
    done
    show_log_tail
    die "PostgreSQL in $DIR did not become ready on port $port within 60 s"
}

# --- commands --------------------------------------------------------------------------------

cmd_start() {
    install_pg
    BIN="$(find_bin)"
    local user; user="$(pg_user)"

    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd -P)"
    DATA="$DIR/data"; LOGFILE="$DIR/postgres.log"
    # unix socket path limit is 107 bytes: DIR/.s.PGSQL.NNNNN.lock
    (( ${#DIR} <= 80 )) || die "DIR is too long for a unix socket path (${#DIR} > 80 chars): use a shorter one, e.g. under /tmp"

    if [[ -f "$DATA/PG_VERSION" ]]; then
        if is_running; then
            log "stopping the cluster already running in $DATA"
            as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >&2 \
                || as_pg "$BIN/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >&2 || true
        fi
        log "removing the old cluster in $DATA"
        rm -rf "$DATA"
    elif [[ -e "$DATA" ]]; then
        die "$DATA exists but is not a PostgreSQL data directory; remove it or pick another DIR"
    fi
    rm -f "$LOGFILE" "$DIR/port" "$DIR/env"

    if [[ -n "$user" ]]; then
        chown "$user:" "$DIR"
        chmod 0755 "$DIR"
        as_pg test -w "$DIR" \
            || die "user $user cannot write $DIR (a parent directory is probably not traversable by others); use a DIR under /tmp"
    fi

    log "initdb in $DATA (${user:-$(id -un)}, $BIN)"
    if ! as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale --no-sync \
            >"$DIR/initdb.log" 2>&1; then
        cat "$DIR/initdb.log" >&2
        die "initdb failed (output above)"
    fi

    # Pick a port; retry when another process grabs it between the check and the bind.
    local port attempt started=""
    for attempt in 1 2 3 4 5; do
        port="$(free_port)"
        echo "$port" >"$DIR/port"
        write_config "$port"
        if pg_start; then started=1; break; fi
        log "start on port $port failed (attempt $attempt)"
        show_log_tail
        is_running && as_pg "$BIN/pg_ctl" -D "$DATA" -m immediate -w stop >&2 || true
    done
    [[ -n "$started" ]] || die "PostgreSQL would not start; see $LOGFILE"
    wait_ready

    "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$port" -U postgres -d postgres >&2 <<'SQL' \
        || die "could not create role cdc"
CREATE ROLE cdc WITH LOGIN REPLICATION PASSWORD 'cdc';
SQL

    print_env >"$DIR/env"
    log "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') running on 127.0.0.1:$port (data $DATA, log $LOGFILE)"
    print_env
}

need_cluster() {
    DIR="$(cd "$DIR" 2>/dev/null && pwd -P)" || die "no such directory: $1 (start a cluster with: scripts/postgres.sh start DIR)"
    DATA="$DIR/data"; LOGFILE="$DIR/postgres.log"
    [[ -f "$DATA/PG_VERSION" ]] || die "$DIR holds no cluster (start one with: scripts/postgres.sh start DIR)"
    BIN="$(find_bin)" || die "PostgreSQL binaries not found (run: scripts/postgres.sh install)"
}

cmd_stop() {
    if [[ ! -d "$DIR" || ! -f "$DIR/data/PG_VERSION" ]]; then
        log "no cluster in $DIR; nothing to stop"; return 0
    fi
    need_cluster "$DIR"
    if ! is_running; then log "cluster in $DIR is not running"; return 0; fi
    if ! as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >&2; then
        log "fast shutdown failed; trying immediate"
        as_pg "$BIN/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >&2 || die "could not stop the cluster in $DIR"
    fi
}

cmd_restart() {
    need_cluster "$DIR"
    if is_running; then
        as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -m fast -w -t 60 restart >&2 \
            || { show_log_tail; die "restart failed"; }
    else
        log "cluster in $DIR was not running; starting it"
        pg_start || { show_log_tail; die "start failed"; }
    fi
    wait_ready
    log "restarted on port $(cat "$DIR/port")"
}

cmd_status() {
    need_cluster "$DIR"
    if is_running; then log "running on port $(cat "$DIR/port")"; return 0; fi
    log "not running"; return 3
}

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cmd="${1:-}"
case "$cmd" in
    install) install_pg; log "PostgreSQL binaries in $(find_bin)" ;;
    start|stop|restart|status)
        [[ $# -eq 2 && -n "$2" ]] || usage
        DIR="$2"
        "cmd_$cmd" "$DIR" ;;
    *) usage ;;
esac
