#!/usr/bin/env bash
# A throwaway OpenSearch node for tests, benchmarks and the quickstart.
#
#   eval "$(scripts/search-node.sh start DIR)"   # prints: export CDC_TEST_SEARCH_URL=... CDC_TEST_SEARCH_PID=...
#   scripts/search-node.sh stop DIR
#
# The node is OpenSearch's integ-test distribution (no security plugin, no scripting, no reindex
# module; cdc needs none of them), fetched through Maven so that only Maven Central is needed;
# Maven's local repository and an unpacked copy under the cache dir make later starts offline.
# It runs single-node on 127.0.0.1 with its data and logs under DIR. A second `start DIR` after a
# `stop DIR` reuses the same port and data (tests stop and restart the node to simulate an outage).
#
# Environment: CDC_OPENSEARCH_VERSION (default 2.19.6: the newest 2.19 that runs on Java 17),
# CDC_SEARCH_HEAP (default 512m), CDC_CACHE_DIR (default ~/.cache/cdc, or /var/cache/cdc as root).
# A node of a cluster instead of a single node (tests/search_cluster.rs): CDC_SEARCH_CLUSTER (the
# cluster's name), CDC_SEARCH_SEEDS (every node's transport address, host:port,...; write each
# node's port to DIR/transport.port before starting it), CDC_SEARCH_MANAGER (the node name, =
# DIR's base name, that bootstraps the cluster) and CDC_SEARCH_ROLES (default: every role).
set -euo pipefail

version=${CDC_OPENSEARCH_VERSION:-2.19.6}
heap=${CDC_SEARCH_HEAP:-512m}
# OpenSearch refuses to run as root; as root the node runs as this system user.
node_user=cdc-search

log() { echo "search-node: $*" >&2; }
die() { log "$*"; exit 1; }

usage() { die "usage: $0 start DIR | stop DIR"; }

cache_root() {
  if [ -n "${CDC_CACHE_DIR:-}" ]; then
    echo "$CDC_CACHE_DIR"
  elif [ "$(id -u)" = 0 ]; then
    # Root's home is closed to other users, and the node's user must read the install.
    echo /var/cache/cdc
  else
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/cdc"
  fi
}

# Prints the unpacked distribution's directory, fetching it first when missing.
install_dir() {
  local home
  home="$(cache_root)/opensearch-$version"
  if [ ! -x "$home/bin/opensearch" ]; then
    command -v mvn >/dev/null || die "mvn is missing: install Maven (apt-get install maven)"
    log "fetching OpenSearch $version (integ-test zip) through Maven"
    mvn -q -B dependency:get -Dtransitive=false \
      -Dartifact="org.opensearch.distribution.integ-test-zip:opensearch:$version:zip" >&2 \
      || die "Maven could not fetch org.opensearch.distribution.integ-test-zip:opensearch:$version:zip"
    local zip="${MAVEN_REPO:-$HOME/.m2/repository}/org/opensearch/distribution/integ-test-zip/opensearch/$version/opensearch-$version.zip"
    [ -f "$zip" ] || die "fetched, but $zip is missing (set MAVEN_REPO to Maven's local repository)"
    local tmp
    mkdir -p "$(cache_root)"
    tmp=$(mktemp -d "$(cache_root)/unpack.XXXXXX")
    unzip -q "$zip" -d "$tmp"
    # Renaming makes the install appear whole or not at all, even when two starts race.
    mv "$tmp/opensearch-$version" "$home" 2>/dev/null || [ -x "$home/bin/opensearch" ]
    rm -rf "$tmp"
    chmod -R a+rX "$(cache_root)"
  fi
  echo "$home"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

java_home() {
  if [ -n "${OPENSEARCH_JAVA_HOME:-}" ]; then echo "$OPENSEARCH_JAVA_HOME"; return; fi
  local java
  java=$(command -v java) || die "java is missing: install a JDK 17 (apt-get install openjdk-17-jre-headless)"
  dirname "$(dirname "$(readlink -f "$java")")"
}

ensure_node_user() {
  id "$node_user" >/dev/null 2>&1 && return
  useradd --system --no-create-home --shell /usr/sbin/nologin "$node_user" \
    || die "cannot create the system user $node_user (OpenSearch refuses to run as root)"
}

answers() { curl -fsS -m 2 "http://127.0.0.1:$1/" >/dev/null 2>&1; }

alive() { [ -f "$1/opensearch.pid" ] && kill -0 "$(cat "$1/opensearch.pid")" 2>/dev/null; }

print_env() {
  echo "export CDC_TEST_SEARCH_URL=http://127.0.0.1:$(cat "$1/http.port")"
  echo "export CDC_TEST_SEARCH_PID=$(cat "$1/opensearch.pid")"
}

start() {
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if alive "$dir" && answers "$(cat "$dir/http.port")"; then
    print_env "$dir"
    return
  fi
  local home
  home=$(install_dir)
  [ -f "$dir/http.port" ] || free_port >"$dir/http.port"
  [ -f "$dir/transport.port" ] || free_port >"$dir/transport.port"
  local port transport
  port=$(cat "$dir/http.port")
  transport=$(cat "$dir/transport.port")
  mkdir -p "$dir/data" "$dir/logs" "$dir/tmp"
  # The node writes a keystore next to its config, so each node gets its own copy; its JVM
  # options lose the fixed 1g heap and the GC log and dump paths relative to the working dir.
  if [ ! -d "$dir/config" ]; then
    cp -r "$home/config" "$dir/config"
    sed -i -E '/^(-Xm[sx]|.*-Xlog:|-XX:HeapDumpPath|-XX:ErrorFile)/d' "$dir/config/jvm.options"
  fi
  rm -f "$dir/opensearch.pid"

  local run=()
  if [ "$(id -u)" = 0 ]; then
    ensure_node_user
    chown -R "$node_user" "$dir"
    # Every directory above DIR must be enterable by the node's user.
    local up=$dir
    while [ "$up" != / ]; do up=$(dirname "$up"); chmod o+x "$up" 2>/dev/null || true; done
    run=(runuser -u "$node_user" --)
  fi
  local cluster=(-Ecluster.name=cdc-test -Enode.name=cdc-test -Ediscovery.type=single-node)
  if [ -n "${CDC_SEARCH_CLUSTER:-}" ]; then
    cluster=(-Ecluster.name="$CDC_SEARCH_CLUSTER" -Enode.name="$(basename "$dir")"
      -Ediscovery.seed_hosts="${CDC_SEARCH_SEEDS:?CDC_SEARCH_SEEDS: every node transport address}"
      -Ecluster.initial_cluster_manager_nodes="${CDC_SEARCH_MANAGER:?CDC_SEARCH_MANAGER: the bootstrapping node}")
    if [ -n "${CDC_SEARCH_ROLES:-}" ]; then cluster+=(-Enode.roles="$CDC_SEARCH_ROLES"); fi
  fi
  log "starting OpenSearch $version on 127.0.0.1:$port (data in $dir)"
  (cd "$dir" && "${run[@]}" env -i PATH="$PATH" HOME="$dir" \
    OPENSEARCH_JAVA_HOME="$(java_home)" \
    OPENSEARCH_PATH_CONF="$dir/config" \
    OPENSEARCH_TMPDIR="$dir/tmp" \
    OPENSEARCH_JAVA_OPTS="-Xms$heap -Xmx$heap -XX:HeapDumpPath=$dir/tmp -XX:ErrorFile=$dir/logs/hs_err_pid%p.log" \
    "$home/bin/opensearch" -d -p "$dir/opensearch.pid" \
    "${cluster[@]}" \
    -Enetwork.host=127.0.0.1 \
    -Ehttp.port="$port" \
    -Etransport.port="$transport" \
    -Epath.data="$dir/data" \
    -Epath.logs="$dir/logs" \
    -Ecluster.routing.allocation.disk.threshold_enabled=false) \
    >"$dir/stdout.log" 2>&1 || { tail -n 40 "$dir/stdout.log" >&2; die "OpenSearch did not start"; }

  local deadline=$((SECONDS + ${CDC_SEARCH_START_TIMEOUT:-120}))
  until answers "$port"; do
    if [ $SECONDS -ge $deadline ] || { [ -f "$dir/opensearch.pid" ] && ! alive "$dir"; }; then
      log "OpenSearch did not answer on port $port; the end of its log:"
      tail -n 40 "$dir/logs/${CDC_SEARCH_CLUSTER:-cdc-test}.log" >&2 2>/dev/null || tail -n 40 "$dir/stdout.log" >&2
      stop "$dir" >/dev/null 2>&1 || true
      exit 1
    fi
    sleep 0.5
  done
  # Waiting for yellow means the node can take writes before the first test sends one.
  curl -fsS -m 60 "http://127.0.0.1:$port/_cluster/health?wait_for_status=yellow&timeout=50s" >/dev/null
  log "OpenSearch answers on http://127.0.0.1:$port"
  print_env "$dir"
}

stop() {
  local dir=$1
  [ -f "$dir/opensearch.pid" ] || { log "no node in $dir"; return 0; }
  local pid
  pid=$(cat "$dir/opensearch.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      log "OpenSearch (pid $pid) ignored SIGTERM for 30 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/opensearch.pid"
  log "stopped the node in $dir"
}

[ $# -eq 2 ] || usage
case "$1" in
  start) start "$2" ;;
  stop) stop "$2" ;;
  *) usage ;;
esac
