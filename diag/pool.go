package diag

import (
	"context"
	"errors"
	"fmt"

	"github.com/gpumesh/gpumesh/pool"
)

// A pool target in Options.Pool ("tag:gpu", "gpu-a,gpu-b", "*") makes
// Status and Doctor look at the pool's members, and say which host the
// pool would pick for Options.Kernel and why (package pool decides; this
// file only asks it).

// lookPool reports on opts.Pool as seen from n, and the members' names.
func lookPool(ctx context.Context, n Node, opts Options) (*pool.Report, []string, error) {
	nw, ok := n.(pool.Network)
	if !ok {
		return nil, nil, errors.New("diag: this node cannot list its peers, so it has no pools")
	}
	r, err := pool.Look(ctx, pool.Config{Target: opts.Pool, Network: nw, Port: opts.Port, GPU: opts.GPU, ProbeTimeout: opts.Timeout}, opts.Kernel)
	if err != nil {
		return nil, nil, fmt.Errorf("diag: pool %s: %w", opts.Pool, err)
	}
	var members []string
	for _, h := range r.Hosts {
		members = append(members, h.Name)
	}
	return &r, members, nil
}

// poolCheck is Doctor's line on the pool: which host it would pick, or
// why none.
func poolCheck(r *pool.Report) Check {
	c := Check{Name: "pool " + r.Target}
	ready, allow := 0, 0
	for _, x := range r.Placement.Candidates {
		if x.State == pool.StateReady {
			ready++
			if x.Allowed {
				allow++
			}
		}
	}
	counts := fmt.Sprintf("%d hosts, %d ready, %d allow %s", len(r.Hosts), ready, allow, r.Kernel)
	if r.Placement.Pick == "" {
		c.Result, c.Detail = Fail, counts+"; "+r.Placement.Why
		c.Hint = "the lines above say what each host answered; a pool needs a ready host whose policy allows the kernel"
		return c
	}
	c.Result, c.Detail = OK, counts+"; would pick "+r.Placement.Pick+": "+r.Placement.Why
	return c
}
