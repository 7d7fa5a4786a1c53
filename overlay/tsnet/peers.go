package tsnet

import (
	"context"
	"errors"
	"fmt"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/internal/localapi"
)

var _ overlay.PeerLister = (*Node)(nil)

// Peers lists the node's tailnet peers from its own backend's status: the
// control plane's netmap, with each peer's tags, addresses, online state
// and current path. It sends nothing on the network.
func (n *Node) Peers(ctx context.Context) ([]overlay.Peer, error) {
	if n.lc == nil {
		return nil, errors.New("tsnet: Peers before Up")
	}
	ps, err := localapi.Peers(ctx, n.lc)
	if err != nil {
		return nil, fmt.Errorf("tsnet: %w", err)
	}
	return ps, nil
}
