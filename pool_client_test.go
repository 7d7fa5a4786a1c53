package gpumesh_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh"
)

// TestDialPool: Dial with a pool target gives a Client whose calls a pool
// places on the lab's two tag:gpu hosts: matrix_mul only on gpu-host (gpu-b
// denies the laptop it), calls held in flight on both, buffers in one
// session on one host. Without an overlay that lists peers, a pool target
// is refused with what it needs.
func TestDialPool(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	_, err := gpumesh.Dial(ctx, "tag:gpu")
	if err == nil || !strings.Contains(err.Error(), "a pool target needs WithOverlay") {
		t.Errorf("Dial(tag:gpu) without an overlay: %v", err)
	}

	c, err := gpumesh.Dial(ctx, "tag:gpu", gpumesh.WithOverlay(laptop))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Pool() == nil || c.Host() != "tag:gpu" || c.API() != nil {
		t.Errorf("a pool client: Pool %v, Host %q, API %v; want a pool, tag:gpu, nil", c.Pool(), c.Host(), c.API())
	}
	var names []string
	for _, h := range c.Pool().Hosts() {
		names = append(names, h.Name+"="+h.State.String())
	}
	if strings.Join(names, " ") != "gpu-b=ready gpu-host=ready" {
		t.Errorf("pool hosts %v; want gpu-b and gpu-host ready", names)
	}
	if _, err := c.Devices(ctx); err == nil || !strings.Contains(err.Error(), "tag:gpu is a pool of hosts") {
		t.Errorf("Devices on a pool: %v", err)
	}

	// First, while the pool has no measure of either host's time per call
	// (it would rightly prefer a host it has seen answer fast).
	t.Run("calls spread over both hosts", func(t *testing.T) {
		const calls = 8
		entered := make(chan string, calls)
		release := hold(entered, labHosts["gpu-host"], labHosts["gpu-b"])
		defer release()
		var wg sync.WaitGroup
		errs := make(chan error, calls)
		for range calls {
			wg.Go(func() {
				y, err := c.Compute(ctx, "softmax", gpumesh.F32([]int64{2}, []float32{1, 1}))
				if err == nil && fmt.Sprint(y.Float32s()) != "[0.5 0.5]" {
					err = fmt.Errorf("softmax = %v", y.Float32s())
				}
				errs <- err
			})
		}
		on := map[string]int{}
		for range calls {
			on[<-entered]++
		}
		release()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		if on["gpu-host"] == 0 || on["gpu-b"] == 0 {
			t.Errorf("%d calls held at once went %v; want some on each host", calls, on)
		}
	})

	t.Run("matrix_mul on the allowed host only", func(t *testing.T) {
		onB, onHost := labHosts["gpu-b"].ranKernel("matrix_mul"), labHosts["gpu-host"].ranKernel("matrix_mul")
		for range 4 {
			out, err := c.MatMul(ctx, [][]float32{{1, 2}, {3, 4}}, [][]float32{{5, 6}, {7, 8}})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(out) != "[[19 22] [43 50]]" {
				t.Fatalf("MatMul = %v", out)
			}
		}
		if n := labHosts["gpu-b"].ranKernel("matrix_mul") - onB; n != 0 {
			t.Errorf("gpu-b ran %d matrix_mul calls; its policy denies the laptop", n)
		}
		if n := labHosts["gpu-host"].ranKernel("matrix_mul") - onHost; n != 4 {
			t.Errorf("gpu-host ran %d matrix_mul calls; want 4", n)
		}
	})

	t.Run("buffers in one session", func(t *testing.T) {
		x := gpumesh.F32([]int64{4}, []float32{-2, -1, 1, 2})
		b, err := c.Upload(ctx, x.Tensor.Data)
		if err != nil {
			t.Fatal(err)
		}
		y, err := c.Compute(ctx, "relu", gpumesh.BufferArg(b, 4))
		if err != nil {
			t.Fatal(err)
		}
		back, err := c.Read(ctx, b, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(y.Float32s()) != "[0 0 1 2]" || len(back) != 16 {
			t.Errorf("relu on a pool buffer = %v, read back %d bytes", y.Float32s(), len(back))
		}
		if err := c.Free(ctx, b); err != nil {
			t.Fatal(err)
		}
	})

	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v; want net.ErrClosed", err)
	}
}
