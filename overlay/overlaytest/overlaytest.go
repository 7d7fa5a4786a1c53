// Package overlaytest wraps the embedded development tailnet (package
// overlay/devnet) for tests: StartNodes starts one, joins nodes, fails the
// test on error and closes everything at cleanup. Tests that want the
// tailnet itself use Start and close it themselves.
package overlaytest

import (
	"context"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/overlay/devnet"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
)

// Tailnet is a running embedded tailnet (devnet.Tailnet).
type Tailnet = devnet.Tailnet

// Options tune the embedded tailnet (devnet.Options).
type Options = devnet.Options

// Start runs an embedded tailnet, as devnet.Start does; the caller closes it.
func Start(opts Options) (*Tailnet, error) { return devnet.Start(opts) }

// New starts an embedded tailnet for a test: it fails tb on error and
// closes the tailnet at cleanup.
func New(tb testing.TB, opts Options) *Tailnet {
	tb.Helper()
	tn, err := devnet.Start(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tn.Close() })
	return tn
}

// StartNodes starts a tailnet and joins one node per name to it, for a
// test: it fails tb on error, and closes the nodes and the tailnet at
// cleanup. The nodes are in the order of names.
func StartNodes(tb testing.TB, names ...string) (*Tailnet, []*tsnet.Node) {
	tb.Helper()
	tn := New(tb, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes := make([]*tsnet.Node, len(names))
	for i, name := range names {
		n, err := tn.Join(ctx, name)
		if err != nil {
			tb.Fatalf("join %s: %v", name, err)
		}
		tb.Cleanup(func() { n.Close() })
		nodes[i] = n
	}
	return tn, nodes
}
