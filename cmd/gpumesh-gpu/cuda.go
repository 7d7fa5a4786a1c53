//go:build cuda

package main

import (
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cuda"
)

func newGPUBackend(gpu int) (gpusvc.Backend, error) { return cuda.New(gpu) }
