#!/usr/bin/env bash
# scripts/test.sh — the one command that runs the whole cdc test suite, on a fresh machine too.
#
# Usage:
#   scripts/test.sh                      # cargo test --all-targets
#   scripts/test.sh --test harness       # extra arguments go to `cargo test`
#   scripts/test.sh -- --nocapture       # ... including the test binaries' own arguments
#
# Steps: check/install prerequisites (cargo; PostgreSQL via apt when missing), build the tests,
# start ONE throwaway PostgreSQL cluster (scripts/postgres.sh) in a temp dir and export its
# CDC_TEST_PG_* variables, start a search node when scripts/search-node.sh exists (it exports
# CDC_TEST_SEARCH_URL), run `cargo test`, and stop everything on exit (also on failure or Ctrl-C).
# Exits with cargo test's status.
#
# `--all-targets` is added unless you pass a target selection yourself (--test, --lib, --bin, ...).
# Env: CDC_TEST_TMPDIR (default /tmp) is where the run's temp dir is made;
#      CDC_TEST_KEEP=1 keeps the temp dir (logs, data) after the run;
#      CDC_TEST_SKIP_SEARCH=1 does not start the search node even when its script exists.
# The whole suite (or `--test examples`) also gets a compose client from scripts/compose.sh, in
# CDC_TEST_COMPOSE, for the docker-compose.yml check.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

section() { printf '\n==== %s ====\n' "$*"; }
die() { echo "test.sh: error: $*" >&2; exit 1; }
SECONDS=0

# --- prerequisites ---------------------------------------------------------------------------
section "prerequisites"
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 \
    || die "cargo not found on PATH (nor in ~/.cargo/env): install Rust with rustup (https://rustup.rs), then re-run"
cargo --version
bash scripts/postgres.sh install

# --- arguments: cargo's own vs. the test binaries' (after --) ---------------------------------
cargo_args=()
test_args=()
seen_dashdash=""
for a in "$@"; do
    if [[ -z "$seen_dashdash" && "$a" == "--" ]]; then seen_dashdash=1; continue; fi
    if [[ -n "$seen_dashdash" ]]; then test_args+=("$a"); else cargo_args+=("$a"); fi
done
targets=(--all-targets)
for a in "${cargo_args[@]+"${cargo_args[@]}"}"; do
    case "$a" in
        --lib|--bin|--bin=*|--bins|--test|--test=*|--tests|--example|--example=*|--examples|--bench|--bench=*|--benches|--doc|--all-targets)
            targets=() ;;
    esac
done

build_cmd=(cargo test "${targets[@]+"${targets[@]}"}" "${cargo_args[@]+"${cargo_args[@]}"}" --no-run)
# --no-fail-fast: one failing suite must not hide the others' results.
test_cmd=(cargo test --no-fail-fast "${targets[@]+"${targets[@]}"}" "${cargo_args[@]+"${cargo_args[@]}"}")
if [[ ${#test_args[@]} -gt 0 ]]; then test_cmd+=(-- "${test_args[@]}"); fi

# --- a compose client for tests/examples.rs (docker-compose.yml checked by reading) ------------
# Built in the background while the lint and the build run; the test skips, saying why, when
# there is none.
compose_pid=""
if [[ $# -eq 0 || " $* " == *" examples "* || " $* " == *"--test=examples"* ]]; then
    mkdir -p .tmp
    bash scripts/compose.sh path >.tmp/compose-path 2>.tmp/compose.log &
    compose_pid=$!
fi

# --- lint: the fastest failures first (the whole suite only, not a selection) --------------------
if [[ $# -eq 0 && "${CDC_TEST_SKIP_LINT:-}" != 1 ]]; then
    section "lint: cargo fmt --check; cargo clippy --all-targets -- -D warnings"
    cargo fmt --check || die "cargo fmt --check found unformatted code: run \`cargo fmt\` and commit"
    cargo clippy --all-targets -- -D warnings || die "cargo clippy found problems (above)"
fi

# --- build (before anything is started, so a compile error costs nothing) ---------------------
section "build: ${build_cmd[*]}"
set +e
"${build_cmd[@]}"
status=$?
set -e
if [[ $status -ne 0 ]]; then
    echo "test.sh: the build failed (cargo exit status $status)" >&2
    exit "$status"
fi

# --- temp dir, stale runs, cleanup trap --------------------------------------------------------
# Not $TMPDIR: the PostgreSQL OS user must be able to reach the cluster dir through every parent.
TMPBASE="${CDC_TEST_TMPDIR:-/tmp}"
# Clean up after earlier runs that were killed before their trap ran (their owner is gone).
for old in "$TMPBASE"/cdc-test.*; do
    [[ -d "$old" ]] || continue
    owner="$(cat "$old/owner.pid" 2>/dev/null || true)"
    if [[ -n "$owner" ]] && kill -0 "$owner" 2>/dev/null; then continue; fi  # another live run
    echo "test.sh: cleaning up a stale run in $old"
    if [[ -f scripts/search-node.sh && -d "$old/search" ]]; then bash scripts/search-node.sh stop "$old/search" >/dev/null 2>&1 || true; fi
    if [[ -d "$old/pg" ]]; then bash scripts/postgres.sh stop "$old/pg" >/dev/null 2>&1 || true; fi
    rm -rf "$old" || true
done

WORK="$(mktemp -d "$TMPBASE/cdc-test.XXXXXX")"
chmod 0755 "$WORK"   # the PostgreSQL OS user must be able to reach $WORK/pg
echo $$ >"$WORK/owner.pid"
export CDC_TEST_TMP="$WORK"
search_started=""
pg_started=""
cargo_pgid=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    section "cleanup"
    if [[ -n "$cargo_pgid" ]]; then
        # cargo, the test binaries and any cdc process a test leaked (they share a process group)
        kill -TERM -- "-$cargo_pgid" 2>/dev/null && sleep 1
        kill -KILL -- "-$cargo_pgid" 2>/dev/null || true
    fi
    if [[ -n "$search_started" ]]; then
        bash scripts/search-node.sh stop "$WORK/search" || echo "test.sh: warning: search node stop failed" >&2
    fi
    if [[ -n "$pg_started" ]]; then
        if [[ $rc -ne 0 && -f "$WORK/pg/postgres.log" ]]; then
            echo "---- last lines of the PostgreSQL log ($WORK/pg/postgres.log) ----"
            tail -n 40 "$WORK/pg/postgres.log" || true
            echo "----"
        fi
        bash scripts/postgres.sh stop "$WORK/pg" || echo "test.sh: warning: PostgreSQL stop failed" >&2
    fi
    if [[ "${CDC_TEST_KEEP:-}" == 1 ]]; then
        echo "test.sh: kept $WORK (CDC_TEST_KEEP=1)"
    else
        rm -rf "$WORK" || true
    fi
    echo "test.sh: finished in ${SECONDS}s with exit status $rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- services ----------------------------------------------------------------------------------
section "PostgreSQL"
pg_env="$(bash scripts/postgres.sh start "$WORK/pg")" || die "could not start PostgreSQL (see above)"
pg_started=1
eval "$pg_env"
echo "$pg_env" | sed 's/^export /  /'

if [[ -f scripts/search-node.sh && "${CDC_TEST_SKIP_SEARCH:-}" != 1 ]]; then
    section "search node"
    mkdir -p "$WORK/search"
    search_started=1   # stop it even when start fails half-way
    search_env="$(bash scripts/search-node.sh start "$WORK/search")" \
        || die "scripts/search-node.sh start failed (see above); set CDC_TEST_SKIP_SEARCH=1 to run without it"
    eval "$search_env"
    echo "  CDC_TEST_SEARCH_URL=${CDC_TEST_SEARCH_URL:-<not set by search-node.sh>}"
fi

if [[ -n "$compose_pid" ]]; then
    section "compose client (scripts/compose.sh)"
    if wait "$compose_pid"; then
        export CDC_TEST_COMPOSE="$(cat .tmp/compose-path)"
        echo "  CDC_TEST_COMPOSE=$CDC_TEST_COMPOSE"
    else
        echo "  none: the docker-compose.yml check skips ($(tail -n 1 .tmp/compose.log))"
    fi
fi

# --- tests -------------------------------------------------------------------------------------
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
section "tests: ${test_cmd[*]}"
# In the background, in a process group of its own (setsid), so that a signal to this script
# runs the cleanup at once and the cleanup can stop cargo and everything it started.
# Its output also goes to a log, for the summary of all suites at the end.
LOG="$WORK/cargo-test.log"
run_tests=(bash -o pipefail -c '"$@" 2>&1 | tee "$LOG"' test.sh "${test_cmd[@]}")
set +e
if command -v setsid >/dev/null 2>&1; then
    LOG="$LOG" setsid "${run_tests[@]}" </dev/null &
    cargo_pgid=$!
else
    LOG="$LOG" "${run_tests[@]}" </dev/null &
fi
wait $!
status=$?
set -e
section "result"
# One line per suite (cargo prints `Running <suite>` before its results), then the total.
awk '
    /^ *Running / { suite = $2 ($2 == "unittests" ? " " $3 : "") }
    /^test result:/ {
        passed = $4; failed = $6; sub(";", "", passed); sub(";", "", failed)
        total_passed += passed; total_failed += failed
        printf "  %-40s %5d passed, %d failed\n", suite, passed, failed
    }
    /^error: test failed, to rerun pass/ { failed_suites++ }
    END {
        if (failed_suites) printf "  %d suite(s) failed: see their output above\n", failed_suites
        printf "total: %d passed, %d failed\n", total_passed, total_failed
    }' "$LOG"
if [[ $status -eq 0 ]]; then echo "test.sh: all tests passed"; else echo "test.sh: cargo test failed (exit status $status)"; fi
exit "$status"
