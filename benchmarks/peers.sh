#!/usr/bin/env bash
# Builds pinned peer binaries (currently: restic) for the side-by-side
# benchmark in a throwaway Go module under the user cache dir. Nothing is
# vendored into this repository. Idempotent: an existing binary is reused.
# Prints the path of the restic binary on stdout (progress goes to stderr).
set -euo pipefail

RESTIC_VERSION="${RESTIC_VERSION:-0.18.1}"
PEERS="${XDG_CACHE_HOME:-$HOME/.cache}/backupd/peers"
BIN="$PEERS/bin/restic-$RESTIC_VERSION"

if [[ -x "$BIN" ]]; then
	echo "$BIN"
	exit 0
fi

mkdir -p "$PEERS/bin"
MOD="$PEERS/restic-$RESTIC_VERSION"
mkdir -p "$MOD"
cd "$MOD"
# Keep the throwaway module independent of any enclosing workspace.
export GOWORK=off GOFLAGS=-mod=mod
if [[ ! -f go.mod ]]; then
	go mod init peers >&2
fi
echo "peers.sh: fetching restic v$RESTIC_VERSION (may take minutes)" >&2
go get "github.com/restic/restic/cmd/restic@v$RESTIC_VERSION" >&2
echo "peers.sh: building restic" >&2
go build -trimpath -o "$BIN.tmp" github.com/restic/restic/cmd/restic >&2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
