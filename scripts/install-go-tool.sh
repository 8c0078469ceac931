#!/usr/bin/env bash
# Installs a Go program at a pinned version into a cache directory, once:
#
#   install-go-tool.sh NAME MODULE/PATH VERSION [DIR]
#
#   DIR/NAME-VERSION   the program (DIR defaults to
#                      ${XDG_CACHE_HOME:-~/.cache}/backupd/tools)
#   DIR/NAME           -> NAME-VERSION
#
# Idempotent: does nothing when the pinned version is there. Built with
# `go install` outside any module, into a temporary directory renamed into
# place, so an interrupted build is never taken for a finished one.
set -euo pipefail

[[ $# -ge 3 ]] || { echo "usage: $0 NAME MODULE VERSION [DIR]" >&2; exit 2; }
name=$1 module=$2 version=$3
dir="${4:-${XDG_CACHE_HOME:-$HOME/.cache}/backupd/tools}"
target="$dir/$name-$version"

command -v go >/dev/null || { echo "install-go-tool: go is not installed" >&2; exit 1; }
mkdir -p "$dir"
if [[ ! -x "$target" ]]; then
	echo "building $module@$version"
	tmp="$(mktemp -d "$dir/.$name-$version.XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && GOBIN="$tmp" GOFLAGS=-mod=mod GO111MODULE=on CGO_ENABLED=0 go install "$module@$version")
	[[ -x "$tmp/$name" ]] || { echo "install-go-tool: go install did not produce $name" >&2; exit 1; }
	mv "$tmp/$name" "$target"
	rm -rf "$tmp"
	trap - EXIT
fi
ln -sfn "$name-$version" "$dir/$name"
echo "$name $version: $dir/$name"
