package gpumesh_test

import (
	"context"
	"fmt"
	"log"

	"github.com/gpumesh/gpumesh"
)

// A cloud machine runs `gpumesh up --forward localhost:50051=gpu-host`;
// a program there dials the forwarder like any local service.
func Example() {
	ctx := context.Background()
	c, err := gpumesh.Dial(ctx, forwarderAddr) // "localhost:50051"
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Printf("%s serves me as %s\n", c.Host(), c.Caller())

	out, err := c.MatMul(ctx,
		[][]float32{{1, 2, 3}, {4, 5, 6}},
		[][]float32{{7, 8}, {9, 10}, {11, 12}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(out)
	// Output:
	// gpu-host serves me as cloud
	// [[58 64] [139 154]]
}

// A program that is itself a tailnet node (overlay/tsnet) dials the GPU
// host by its tailnet name.
func ExampleWithOverlay() {
	ctx := context.Background()
	c, err := gpumesh.Dial(ctx, "gpu-host", gpumesh.WithOverlay(laptop))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("caller:", c.Caller())
	// Output:
	// caller: laptop
}

// A program on the tailnet names a pool of GPU hosts by their tag: each
// call goes to a host whose policy allows it the kernel, the least loaded.
// (In the lab, gpu-b's policy denies this node matrix_mul: it runs on
// gpu-host.)
func ExampleDial_pool() {
	ctx := context.Background()
	c, err := gpumesh.Dial(ctx, "tag:gpu", gpumesh.WithOverlay(laptop))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	out, err := c.MatMul(ctx, [][]float32{{1, 2}, {3, 4}}, [][]float32{{5, 6}, {7, 8}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(c.Pool().Hosts()), "hosts:", out)
	// Output:
	// 2 hosts: [[19 22] [43 50]]
}

func ExampleClient_Compute() {
	ctx := context.Background()
	c, err := gpumesh.Dial(ctx, forwarderAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// saxpy: a*x + y
	y, err := c.Compute(ctx, "saxpy",
		gpumesh.Scalar(2),
		gpumesh.F32([]int64{4}, []float32{1, 2, 3, 4}),
		gpumesh.F32([]int64{4}, []float32{10, 20, 30, 40}))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(y.Shape, y.Float32s())
	// Output:
	// [4] [12 24 36 48]
}

// Data can stay on the GPU between calls: upload it once, compute on it
// by reference, read results back.
func ExampleClient_Upload() {
	ctx := context.Background()
	c, err := gpumesh.Dial(ctx, forwarderAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close() // frees the client's buffers on the host

	x := gpumesh.F32([]int64{4}, []float32{-2, -1, 1, 2})
	buf, err := c.Upload(ctx, x.Tensor.Data)
	if err != nil {
		log.Fatal(err)
	}
	y, err := c.Compute(ctx, "relu", gpumesh.BufferArg(buf, 4))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(y.Float32s())
	back, err := c.Read(ctx, buf, 0, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(back), "bytes read back")
	if err := c.Free(ctx, buf); err != nil {
		log.Fatal(err)
	}
	// Output:
	// [0 0 1 2]
	// 16 bytes read back
}
