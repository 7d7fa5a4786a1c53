# gpumesh. `make help` lists the targets.
GO        ?= go
BIN       ?= bin
GOFLAGS   ?=
TESTFLAGS ?= -timeout 20m
export GOFLAGS

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/gpumesh
	$(GO) build -o $(BIN)/gpumesh ./cmd/gpumesh

.PHONY: test
test: ## Run all tests (vet, gofmt, Go tests)
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$'))" || { gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) test $(TESTFLAGS) ./...

.PHONY: proto
proto: ## Regenerate gRPC code from gpusvc/gpumeshpb/gpumesh.proto (needs protoc, protoc-gen-go, protoc-gen-go-grpc)
	protoc -I gpusvc/gpumeshpb --go_out=gpusvc/gpumeshpb --go_opt=paths=source_relative \
		--go-grpc_out=gpusvc/gpumeshpb --go-grpc_opt=paths=source_relative gpumesh.proto
