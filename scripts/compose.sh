#!/usr/bin/env bash
# scripts/compose.sh — a `docker compose` client for checking docker-compose.yml by reading
# (`docker compose config`), which needs no Docker engine. The machines this project is built on
# have the docker client without its compose plugin, and no Docker engine.
#
# Usage: scripts/compose.sh path    # prints a command that runs compose (builds it when needed)
#
# Uses `docker compose` when it answers; otherwise builds docker/compose from the Go module
# proxy (the module has replace directives, so `go install` cannot, and its sources are built
# where `go mod download` put them) into .tmp/compose/docker-compose, once. Exits 1 with the
# reason when neither works: the test that uses it then skips with that message.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VERSION="v5.6.0"
OUT="$ROOT/.tmp/compose"
BIN="$OUT/docker-compose"

[[ "${1:-}" == path ]] || { echo "usage: scripts/compose.sh path" >&2; exit 2; }

if docker compose version >/dev/null 2>&1; then echo "docker compose"; exit 0; fi
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
command -v go >/dev/null 2>&1 || { echo "compose.sh: neither \`docker compose\` nor go (to build it) is installed" >&2; exit 1; }

mkdir -p "$OUT"
export GOPATH="$OUT/gopath" GOFLAGS=-modcacherw
echo "compose.sh: building docker compose $VERSION from the Go module proxy (a few minutes, once)" >&2
dir="$(go mod download -json "github.com/docker/compose/v5@$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -n "$dir" ]] || { echo "compose.sh: go mod download github.com/docker/compose/v5@$VERSION failed" >&2; exit 1; }
(cd "$dir" && go build -o "$BIN.partial" ./cmd) >&2 || { echo "compose.sh: building docker compose failed" >&2; exit 1; }
mv "$BIN.partial" "$BIN"
echo "$BIN"
