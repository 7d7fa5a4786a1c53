# gpumesh. `make help` lists the targets.
GO        ?= go
BIN       ?= bin
TESTFLAGS ?= -timeout 30m
BENCHTIME ?= 2s
# go-nvml's C headers warn about deprecated NVML calls on every build.
CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations
export CGO_CFLAGS

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/gpumesh (the one binary)
	$(GO) build -o $(BIN)/gpumesh ./cmd/gpumesh

.PHONY: demo
demo: build ## Run gpumesh end to end on an embedded tailnet (no account needed)
	$(BIN)/gpumesh demo

.PHONY: test
test: ## Run all tests: go vet, gofmt, then every Go test (root-only ones skip when not root)
	$(GO) vet ./...
	@files=$$(git ls-files --cached --others --exclude-standard '*.go' | grep -v '\.pb\.go$$'); \
	  bad=$$(gofmt -l $$files); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) test $(TESTFLAGS) ./...

.PHONY: bench
bench: ## Benchmarks, each printed with its ratio to the raw path measured in the same run
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./gpusvc/ ./gpusvc/cpu/ ./policy/ ./overlay/forward/ ./qos/ ./node/ ./e2e/priority/

# The WAN matrix (e2e/wan, root): RTT × loss × link rate through the
# impaired-link lab, tailnet and WireGuard modes; about an hour on 2 shared
# cores. A subset: make bench-wan WAN='-wan.cells 40/0.5/100 -wan.modes tailnet'
# (-wan.rtt, -wan.loss, -wan.rate, -wan.ops, -wan.stripes, -wan.tcp: see
# e2e/wan/matrix_test.go).
WAN ?=
.PHONY: bench-wan
bench-wan: ## The WAN benchmark matrix through the impaired-link lab (root; long; WAN='-wan.cells ...' for a subset)
	$(GO) test -run '^$$' -bench '^BenchmarkWAN$$' -benchtime 1x -timeout 4h ./e2e/wan/ -args $(WAN)

# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# fail a target with a bare "context deadline exceeded" as the time runs
# out on a loaded machine (go.dev/issue/75804, fixed in Go 1.27).
FUZZTIME ?= 10000x
.PHONY: fuzz
fuzz: ## Run every fuzz target briefly (FUZZTIME each)
	@git grep -h -o '^func Fuzz[A-Za-z0-9_]*' -- '*_test.go' >/dev/null || exit 0; \
	for file in $$(git grep -l '^func Fuzz' -- '*_test.go'); do \
	  for f in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/p' $$file); do \
	    echo "fuzz ./$$(dirname $$file) $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./$$(dirname $$file) || exit 1; \
	  done; \
	done

.PHONY: proto
proto: ## Regenerate gRPC code from gpusvc/gpumeshpb/gpumesh.proto (needs protoc, protoc-gen-go, protoc-gen-go-grpc)
	protoc -I gpusvc/gpumeshpb --go_out=gpusvc/gpumeshpb --go_opt=paths=source_relative \
		--go-grpc_out=gpusvc/gpumeshpb --go-grpc_opt=paths=source_relative gpumesh.proto

.PHONY: python-stubs
python-stubs: ## Regenerate examples/python stubs (needs protobuf-compiler, protobuf-compiler-grpc)
	./examples/python/gen_stubs.sh

.PHONY: clean
clean: ## Remove built binaries
	rm -rf $(BIN)

-include Makefile.gpu Makefile.headscale
