# backupd: build, test and benchmark.
GO        ?= go
BIN       ?= bin
GOFLAGS   ?=
TESTFLAGS ?= -race -timeout 20m

.PHONY: all build test test-servers unit vet fmt-check bench bench-harness clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

## test: everything CI runs: installs the pinned test servers (cached under
## the user's cache directory), then formatting, vet, all tests with -race.
test: test-servers fmt-check vet
	$(GO) test $(TESTFLAGS) ./...

## test-servers: MinIO + mc, fake-gcs-server and Azurite at pinned versions,
## into $${XDG_CACHE_HOME:-~/.cache}/backupd/test-servers (skipped when present).
test-servers:
	bash scripts/install-minio.sh
	bash scripts/install-fake-gcs.sh
	bash scripts/install-azurite.sh

unit:
	$(GO) test ./...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

## bench: Go benchmarks of the hot paths (chunk, hash, compress, pipelines).
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./pkg/...

## bench-harness: backupd vs restic on $(go env GOROOT)/src, medians of 5 runs.
bench-harness:
	$(GO) run ./benchmarks/harness --runs 5 --out benchmarks/RESULTS.md

clean:
	rm -rf $(BIN)
