#!/usr/bin/env bash
# Installs fake-gcs-server (a Google Cloud Storage emulator) at a pinned
# version for the integration tests of pkg/storage/gcs, into the
# test-servers directory of internal/testservers. Idempotent:
# does nothing when the pinned version is already installed.
#
#   DIR/bin/fake-gcs-server-<version>   the server
#   DIR/bin/fake-gcs-server             -> fake-gcs-server-<version>
#
# It is built from source with `go install`.
set -euo pipefail

name=fake-gcs-server
module=github.com/fsouza/fake-gcs-server
version=v1.56.1
dir="${BACKUPD_TEST_SERVERS:-${XDG_CACHE_HOME:-$HOME/.cache}/backupd/test-servers}"
target="$dir/bin/$name-$version"
link="$dir/bin/$name"

command -v go >/dev/null || { echo "install-fake-gcs: go is not installed" >&2; exit 1; }

mkdir -p "$dir/bin"
if [[ -x "$target" ]]; then
	echo "$name $version already installed at $target"
else
	echo "building $module@$version"
	# Build into a temporary GOBIN and rename into place, so that an
	# interrupted build is not taken for a finished one. Build outside any
	# module so that the caller's go.mod does not interfere.
	tmp="$(mktemp -d "$dir/.$name-$version.XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && GOBIN="$tmp" GOFLAGS=-mod=mod GO111MODULE=on CGO_ENABLED=0 \
		go install "$module@$version")
	[[ -x "$tmp/$name" ]] || {
		echo "install-fake-gcs: go install did not produce $name" >&2
		exit 1
	}
	mv "$tmp/$name" "$target"
	rm -rf "$tmp"
	trap - EXIT
	echo "installed $target"
fi
ln -sfn "$name-$version" "$link"
echo "$link -> $name-$version"
