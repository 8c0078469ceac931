#!/usr/bin/env bash
# Installs Azurite (the Azure Storage emulator) at a pinned version for the
# integration tests of pkg/storage/azure, into the test-servers directory of
# internal/testservers. Idempotent: does nothing when the pinned
# version is already installed.
#
#   DIR/azurite-<version>/           npm prefix holding the package
#   DIR/bin/azurite-blob-<version>   launcher of the blob service
#   DIR/bin/azurite-blob             -> azurite-blob-<version>
set -euo pipefail

version=3.35.0
dir="${BACKUPD_TEST_SERVERS:-${XDG_CACHE_HOME:-$HOME/.cache}/backupd/test-servers}"
prefix="$dir/azurite-$version"
launcher="$dir/bin/azurite-blob-$version"
link="$dir/bin/azurite-blob"

command -v node >/dev/null || { echo "install-azurite: node is not installed" >&2; exit 1; }
command -v npm >/dev/null || { echo "install-azurite: npm is not installed" >&2; exit 1; }

mkdir -p "$dir/bin"
if [[ -x "$prefix/node_modules/.bin/azurite-blob" && -x "$launcher" ]]; then
	echo "azurite $version already installed in $prefix"
else
	echo "installing azurite $version into $prefix"
	# Install into a temporary prefix and rename it into place, so that an
	# interrupted install is not taken for a finished one.
	tmp="$(mktemp -d "$dir/.azurite-$version.XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	npm install --prefix "$tmp" --no-audit --no-fund --no-save --loglevel=error "azurite@$version"
	[[ -x "$tmp/node_modules/.bin/azurite-blob" ]] || {
		echo "install-azurite: npm did not install bin azurite-blob" >&2
		exit 1
	}
	rm -rf "$prefix"
	mv "$tmp" "$prefix"
	trap - EXIT
	cat >"$launcher.tmp" <<LAUNCHER
#!/bin/sh
exec "$prefix/node_modules/.bin/azurite-blob" "\$@"
LAUNCHER
	chmod 0755 "$launcher.tmp"
	mv "$launcher.tmp" "$launcher"
	echo "installed $launcher"
fi
ln -sfn "azurite-blob-$version" "$link"
echo "$link -> azurite-blob-$version"
