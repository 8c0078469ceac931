#!/usr/bin/env bash
# Installs MinIO (server) and mc (its client) at pinned versions for the
# integration tests of pkg/storage/s3 and pkg/storage/minio, into the
# test-servers directory of internal/testservers. Idempotent: a
# binary whose pinned version is already installed is not built again.
#
#   DIR/bin/minio-<version>   the server
#   DIR/bin/minio             -> minio-<version>
#   DIR/bin/mc-<version>      the client (admin: users, policies)
#   DIR/bin/mc                -> mc-<version>
#
# Both are built from source with `go install`; the MinIO build takes a few
# minutes and several GB of module cache (GOMODCACHE) the first time.
set -euo pipefail

minio_version=v0.0.0-20260212201848-7aac2a2c5b7c
mc_version=v0.0.0-20250313080218-cf909e1063a9
dir="${BACKUPD_TEST_SERVERS:-${XDG_CACHE_HOME:-$HOME/.cache}/backupd/test-servers}"

command -v go >/dev/null || { echo "install-minio: go is not installed" >&2; exit 1; }

mkdir -p "$dir/bin"

# install NAME MODULE VERSION: builds MODULE@VERSION into DIR/bin/NAME-VERSION
# and points DIR/bin/NAME at it.
install() {
	local name="$1" module="$2" version="$3"
	local target="$dir/bin/$name-$version"
	if [[ -x "$target" ]]; then
		echo "$name $version already installed at $target"
	else
		echo "building $module@$version (this may take several minutes)"
		# Build into a temporary GOBIN and rename into place, so that an
		# interrupted build is not taken for a finished one. Build outside
		# any module so that the caller's go.mod does not interfere.
		local tmp
		tmp="$(mktemp -d "$dir/.$name-$version.XXXXXX")"
		# shellcheck disable=SC2064 # expand $tmp now
		trap "rm -rf '$tmp'" EXIT
		(cd "$tmp" && GOBIN="$tmp" GOFLAGS=-mod=mod GO111MODULE=on CGO_ENABLED=0 \
			go install "$module@$version")
		[[ -x "$tmp/$name" ]] || {
			echo "install-minio: go install did not produce $name" >&2
			exit 1
		}
		mv "$tmp/$name" "$target"
		rm -rf "$tmp"
		trap - EXIT
		echo "installed $target"
	fi
	ln -sfn "$name-$version" "$dir/bin/$name"
	echo "$dir/bin/$name -> $name-$version"
}

install mc github.com/minio/mc "$mc_version"
install minio github.com/minio/minio "$minio_version"
