# backupd: build, test and benchmark.
GO        ?= go
BIN       ?= bin
GOFLAGS   ?=
TESTFLAGS ?= -race -timeout 20m

TOOLS     ?= $${XDG_CACHE_HOME:-$$HOME/.cache}/backupd/tools
BUF_VERSION     = v1.50.0
GRPCURL_VERSION = v1.9.4
STATICCHECK_VERSION = v0.8.2

# What --version reports, and the image's tag and labels.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
LDFLAGS  ?= -X main.version=$(VERSION)

# make image: where it writes, and the repository its tag names.
IMAGE_DIR        ?= $(BIN)/image
IMAGE_REPOSITORY ?= ghcr.io/backupd/backupd
# The nested module deploy/ (Helm chart, image and manifest tools): its
# tests run without -race (they drive the Helm library and built binaries)
# and never from the test cache (`make image` and the daemon they run are
# built from sources outside the module, which go test does not track).
DEPLOY_TESTFLAGS ?= -count=1 -timeout 15m

.PHONY: all build test test-servers tools unit vet staticcheck fmt-check proto proto-lint bench bench-harness fuzz clean image manifests deploy-test

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

## test: everything CI runs: installs the pinned test servers (cached under
## the user's cache directory), then formatting, vet, staticcheck, buf lint,
## all tests with -race, then the tests of the nested module deploy/.
test: test-servers tools fmt-check vet staticcheck proto-lint
	$(GO) test $(TESTFLAGS) ./...
	$(MAKE) --no-print-directory deploy-test

## deploy-test: the tests of deploy/ (chart rendered and linted through the
## Helm library, objects decoded strictly, the rendered daemon run against
## MinIO, make image read back, deploy/kubernetes/ up to date).
deploy-test:
	cd deploy && $(GO) test $(DEPLOY_TESTFLAGS) ./...

## image: the container image without a container engine: the static
## binaries (deploy/image/build-binaries.sh, as deploy/Dockerfile builds
## them) in one layer on an empty base, as an OCI image layout
## ($(IMAGE_DIR)/oci, for `crane push`) and a tarball
## ($(IMAGE_DIR)/backupd-image.tar, for `docker load -i`).
image:
	VERSION=$(VERSION) sh deploy/image/build-binaries.sh $(abspath $(IMAGE_DIR))/rootfs
	cd deploy && SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run ./cmd/mkimage \
		-binaries $(abspath $(IMAGE_DIR))/rootfs -version $(VERSION) -revision "$(REVISION)" \
		-repository $(IMAGE_REPOSITORY) -oci $(abspath $(IMAGE_DIR))/oci -tar $(abspath $(IMAGE_DIR))/backupd-image.tar

## manifests: deploy/kubernetes/ rendered from the chart with its default
## values, for operators without Helm (a test fails when it is stale).
manifests:
	cd deploy && $(GO) run ./cmd/render -o kubernetes/backupd.yaml

## test-servers: MinIO + mc, fake-gcs-server and Azurite at pinned versions,
## into $${XDG_CACHE_HOME:-~/.cache}/backupd/test-servers (skipped when present).
test-servers:
	bash scripts/install-minio.sh
	bash scripts/install-fake-gcs.sh
	bash scripts/install-azurite.sh

## tools: buf (proto lint), grpcurl and staticcheck at pinned versions, into $(TOOLS).
tools:
	bash scripts/install-go-tool.sh buf github.com/bufbuild/buf/cmd/buf $(BUF_VERSION)
	bash scripts/install-go-tool.sh grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl $(GRPCURL_VERSION)
	bash scripts/install-go-tool.sh staticcheck honnef.co/go/tools/cmd/staticcheck $(STATICCHECK_VERSION)

## proto: regenerate the committed Go code of proto/backupd/v1 (protoc from
## Debian's protobuf-compiler; the Go plugins are pinned tools in go.mod).
proto:
	@command -v protoc >/dev/null || apt-get install -y protobuf-compiler
	protoc -I proto -I /usr/include \
		--plugin=protoc-gen-go=$$($(GO) tool -n protoc-gen-go) \
		--go_out=. --go_opt=module=github.com/backupd/backupd \
		--plugin=protoc-gen-go-grpc=$$($(GO) tool -n protoc-gen-go-grpc) \
		--go-grpc_out=. --go-grpc_opt=module=github.com/backupd/backupd \
		proto/backupd/v1/backupd.proto

## proto-lint: buf lint (STANDARD rules, buf.yaml) of proto/.
proto-lint:
	bash scripts/install-go-tool.sh buf github.com/bufbuild/buf/cmd/buf $(BUF_VERSION) >/dev/null
	$(TOOLS)/buf lint

unit:
	$(GO) test ./...

vet:
	$(GO) vet ./...
	cd deploy && $(GO) vet ./...

## staticcheck: honnef.co/go/tools at a pinned version, clean on every package.
staticcheck:
	bash scripts/install-go-tool.sh staticcheck honnef.co/go/tools/cmd/staticcheck $(STATICCHECK_VERSION) >/dev/null
	$(TOOLS)/staticcheck ./...
	cd deploy && $(TOOLS)/staticcheck ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

## fuzz: each decoder's fuzz function, and the chunker's against
## restic/chunker's, for FUZZTIME (default 1m), one after
## another (go test fuzzes one function of one package at a time).
FUZZTIME ?= 1m
.PHONY: fuzz
fuzz:
	@set -e; for f in FuzzDecodeIndex FuzzDecodeTree FuzzParsePackTrailer FuzzDecodeSnapshot FuzzDecodeConfig; do \
		echo "== $$f"; $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) ./pkg/repo/; done
	@echo "== FuzzDecompress"; $(GO) test -run '^$$' -fuzz '^FuzzDecompress$$' -fuzztime $(FUZZTIME) ./pkg/chunk/
	@echo "== FuzzChunkerIsRestics"; $(GO) test -run '^$$' -fuzz '^FuzzChunkerIsRestics$$' -fuzztime $(FUZZTIME) ./pkg/chunk/

## bench: Go benchmarks of the hot paths (chunk, hash, compress, pipelines).
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./pkg/...

## bench-harness: backupd vs restic on $(go env GOROOT)/src, medians of 5 runs.
bench-harness:
	$(GO) run ./benchmarks/harness --runs 5 --out benchmarks/RESULTS.md

clean:
	rm -rf $(BIN)
