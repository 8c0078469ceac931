# backupd: build, test and benchmark.
GO        ?= go
BIN       ?= bin
GOFLAGS   ?=
TESTFLAGS ?= -race -timeout 20m

.PHONY: all build test unit vet fmt-check bench bench-harness clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

## test: everything CI runs (formatting, vet, all tests with the race detector).
test: fmt-check vet
	$(GO) test $(TESTFLAGS) ./...

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
