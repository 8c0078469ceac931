#!/usr/bin/env bash
# Builds pinned peer binaries for the side-by-side benchmark (restic, and
# kopia on request) in throwaway Go modules under the user cache dir.
# Nothing is vendored into this repository. Idempotent: an existing binary is
# reused.
#
#	peers.sh          builds restic, prints its path on stdout
#	peers.sh kopia    builds kopia, prints its path on stdout
#
# Progress goes to stderr.
set -euo pipefail

RESTIC_VERSION="${RESTIC_VERSION:-0.18.1}"
KOPIA_VERSION="${KOPIA_VERSION:-0.22.3}"
PEERS="${XDG_CACHE_HOME:-$HOME/.cache}/backupd/peers"

# build NAME VERSION MODULE PACKAGE
build() {
	local name=$1 version=$2 module=$3 pkg=$4
	local bin="$PEERS/bin/$name-$version"
	if [[ -x "$bin" ]]; then
		echo "$bin"
		return
	fi
	mkdir -p "$PEERS/bin"
	local mod="$PEERS/$name-$version"
	mkdir -p "$mod"
	cd "$mod"
	# Keep the throwaway module independent of any enclosing workspace.
	export GOWORK=off GOFLAGS=-mod=mod
	if [[ ! -f go.mod ]]; then
		go mod init peers >&2
	fi
	echo "peers.sh: fetching $name v$version (may take minutes)" >&2
	go get "$module@v$version" >&2
	echo "peers.sh: building $name" >&2
	go build -trimpath -o "$bin.tmp" "$pkg" >&2
	mv "$bin.tmp" "$bin"
	echo "$bin"
}

case "${1:-restic}" in
restic) build restic "$RESTIC_VERSION" github.com/restic/restic/cmd/restic github.com/restic/restic/cmd/restic ;;
kopia) build kopia "$KOPIA_VERSION" github.com/kopia/kopia github.com/kopia/kopia ;;
*)
	echo "peers.sh: unknown peer $1 (want restic or kopia)" >&2
	exit 2
	;;
esac
