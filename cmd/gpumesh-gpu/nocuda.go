//go:build !cuda

package main

import (
	"errors"

	"github.com/gpumesh/gpumesh/gpusvc"
)

func newGPUBackend(int) (gpusvc.Backend, error) {
	return nil, errors.New("built without CUDA support: build with `make build-cuda` (go build -tags cuda), or run with --stand-in")
}
