package pool_test

import (
	"context"
	"fmt"
	"log"
	"net"

	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay/forward"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/pool"
)

// A program on the tailnet uses every GPU host tagged tag:gpu as one.
func ExampleDial() {
	ctx := context.Background()
	node, err := tsnet.New(tsnet.Config{Hostname: "trainer", ControlURL: "https://headscale.example.com", Dir: "/var/lib/trainer"})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	if _, err := node.Up(ctx); err != nil {
		log.Fatal(err)
	}
	p, err := pool.Dial(ctx, pool.Config{Target: "tag:gpu", Network: node})
	if err != nil {
		log.Fatal(err) // no host of the pool answered
	}
	defer p.Close()

	// Stateless calls go to the least loaded host that allows them, and
	// move once if their host is lost.
	c, err := p.MatMul(ctx, [][]float32{{1, 2}, {3, 4}}, [][]float32{{5, 6}, {7, 8}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(c)

	// A session and its buffers stay on one host.
	s, err := p.OpenSession(ctx, "relu")
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)
	x := kernel.NewFloat32([]int64{4}, []float32{-1, 2, -3, 4})
	b, err := s.Upload(ctx, x.Data)
	if err != nil {
		log.Fatal(err)
	}
	y, err := s.Compute(ctx, "relu", pool.BufferArg(b, 4))
	if err != nil {
		log.Fatal(err) // on a lost host: errors.Is(err, pool.ErrHostLost), naming it
	}
	fmt.Println(s.Host(), y.Float32s())

	// Where would the next matrix_mul go, and why?
	fmt.Println(p.Explain(ctx, "matrix_mul").Why)
}

// A forwarder whose rule names the pool: each local connection goes to a
// host of the pool, as `gpumesh up --forward localhost:50051=tag:gpu` does.
func ExamplePool_DialContext() {
	var p *pool.Pool // from pool.Dial or pool.New
	fwd, err := forward.Start(forward.Config{
		Dial:  p.DialContext,
		Rules: []forward.Rule{{Listen: "localhost:50051", Target: net.JoinHostPort("tag:gpu", "50051")}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer fwd.Close()
}
