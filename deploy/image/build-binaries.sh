#!/bin/sh
# Builds the static binaries of the container image, backupd and
# backupctl, into DIR. The one place their build flags live: `make image`
# and deploy/Dockerfile both run this script (a test checks that the
# Dockerfile does), so the two images cannot drift apart.
#
#   VERSION=1.2.3 deploy/image/build-binaries.sh DIR
#
# CGO_ENABLED=0: no libc, no dynamic section (the image has no base).
# -trimpath, -buildvcs=false: no build machine's paths or VCS state in the
# binaries. -s -w: no symbol table or DWARF. VERSION is what --version
# reports (main.version).
set -eu
[ $# -eq 1 ] || { echo "usage: VERSION=... $0 DIR" >&2; exit 2; }
out=$1
version=${VERSION:-dev}
cd "$(dirname "$0")/../.."
mkdir -p "$out"
CGO_ENABLED=0 GOOS=${GOOS:-linux} GOARCH=${GOARCH:-$(go env GOARCH)} \
	go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=$version" \
	-o "$out/" ./cmd/backupd ./cmd/backupctl
