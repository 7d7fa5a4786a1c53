// Package workerpb is the generated code of the node↔worker protocol
// (worker.proto). Regenerate with `go generate ./gpusvc/worker/workerpb`
// (needs protoc, protoc-gen-go and protoc-gen-go-grpc on $PATH).
package workerpb

//go:generate protoc -I . --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative worker.proto
