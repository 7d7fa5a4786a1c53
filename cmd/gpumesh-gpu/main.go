// Command gpumesh-gpu is gpumesh's GPU worker: `gpumesh serve` starts one
// per GPU and caller and talks to it over a Unix socket it passes as file
// descriptor 3 (see gpusvc/worker). Built with -tags cuda it drives an
// NVIDIA GPU through gpusvc/cuda; with --stand-in it serves the CPU
// backend behind the same protocol, for tests on machines without a GPU.
//
// The worker stops when its stdin closes (the node asked, or died).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
	"github.com/gpumesh/gpumesh/gpusvc/worker/standin"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "gpumesh-gpu: %v\n", err)
		if errors.Is(err, worker.ErrFault) {
			os.Exit(3)
		}
		os.Exit(1)
	}
}

func run() error {
	var (
		listenFD = flag.Int("listen-fd", 3, "file descriptor of the listening Unix socket")
		gpu      = flag.Int("gpu", 0, "the GPU this worker serves")
		standIn  = flag.Bool("stand-in", false, "serve the CPU backend behind the worker protocol (tests)")
		probe    = flag.Bool("probe", false, "print the backend's devices and exit")
		shmFD    = flag.Int("shm-fd", -1, "file descriptor of the shared memory for bulk transfers (-1: none)")
		shmSize  = flag.Int("shm-size", 0, "size of the shared memory")
	)
	flag.Parse()

	var (
		b   gpusvc.Backend
		err error
	)
	if *standIn {
		b = standin.New()
	} else {
		b, err = newGPUBackend(*gpu)
		if err != nil {
			return err
		}
	}
	defer b.Close()
	if *probe {
		info := b.Info(context.Background())
		fmt.Printf("backend %s, nvrtc %s: %s\n", info.Backend, info.NVRTC, info.Status)
		for _, d := range info.Devices {
			fmt.Printf("gpu %d: %s %s, %d MiB, driver %s, cuda %s\n", d.Index, d.Name, d.UUID, d.MemoryTotal>>20, d.DriverVersion, d.CUDAVersion)
		}
		return nil
	}

	f := os.NewFile(uintptr(*listenFD), "listener")
	if f == nil {
		return fmt.Errorf("no file descriptor %d (gpumesh-gpu is started by `gpumesh serve`)", *listenFD)
	}
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("listener on fd %d: %w (gpumesh-gpu is started by `gpumesh serve`)", *listenFD, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // ends with the process: stdin stays open until the node closes it
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	var shm []byte
	if *shmFD >= 0 {
		if shm, err = worker.MapShared(*shmFD, *shmSize); err != nil {
			return err
		}
	}
	return worker.Serve(ctx, ln, b, shm)
}
