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

# `make test` ends with every skipped test and its reason, checked against
# the allowlist of skips that are decisions; SKIPS=strict (CI) also fails
# when a test skipped for a reason not on it. TESTPKGS narrows the packages.
SKIPS          ?= report
SKIP_ALLOWLIST ?= .ci/allowed-skips
TESTREPORT     ?= .tools/bin/testreport
TESTPKGS       ?= ./...

.PHONY: test
test: headscale grpcurl kube-tools tailscaled ## Run all tests (vet, gofmt, every Go test; root runs the netns tests too), then list every skip and why
	$(GO) vet ./...
	@files=$$(git ls-files --cached --others --exclude-standard '*.go' | grep -v '\.pb\.go$$'); \
	  bad=$$(gofmt -l $$files); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) build -o $(TESTREPORT) ./internal/cmd/testreport
	GPUMESH_HEADSCALE=$(abspath $(HEADSCALE)) $(TESTREPORT) -allow $(SKIP_ALLOWLIST) $(if $(filter strict,$(SKIPS)),-strict) \
		-- $(GO) test -json $(TESTFLAGS) $(TESTPKGS)

.PHONY: bench
bench: ## Benchmarks, each printed with its ratio to the raw path measured in the same run
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./gpusvc/ ./gpusvc/cpu/ ./gpusvc/compat/ ./policy/ ./overlay/forward/ ./qos/ ./node/ ./e2e/priority/ ./pool/

# The soak is not part of `make test`: SOAK is its duration.
SOAK ?= 3m
.PHONY: soak
soak: ## Soak the GPU host for SOAK (3m): 64 clients, valid/invalid/cancelled calls, policy reloads; prints calls, wrong results, errors by code, p50/p99, peak RSS, buffers, goroutines
	$(GO) test -tags soak -run '^TestSoak$$' -count=1 -timeout 0 -v ./gpusvc/ -soak.duration=$(SOAK)

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

.PHONY: proto-cuda
proto-cuda: ## Regenerate gpusvc/cudapb from examples/cuda/cuda.proto (needs protoc, protoc-gen-go, protoc-gen-go-grpc, libprotobuf-dev)
	protoc -I examples/cuda -I $(PROTOBUF_INCLUDE) --go_out=gpusvc/cudapb --go_opt=paths=source_relative \
		--go-grpc_out=gpusvc/cudapb --go-grpc_opt=paths=source_relative cuda.proto

# Where google/protobuf/struct.proto lives (Debian: libprotobuf-dev).
PROTOBUF_INCLUDE ?= /usr/include
export PROTOBUF_INCLUDE

.PHONY: python-stubs
python-stubs: ## Regenerate the Python stubs of gpumesh.proto and cuda.proto (examples/python, python/gpumesh, examples/cuda; needs protobuf-compiler, protobuf-compiler-grpc, libprotobuf-dev)
	./scripts/gen-python-stubs.sh

.PHONY: clean
clean: ## Remove built binaries
	rm -rf $(BIN)

-include Makefile.gpu Makefile.headscale Makefile.grpcurl Makefile.kubernetes Makefile.tailscaled
