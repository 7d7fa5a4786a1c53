package engine

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/gpumesh/gpumesh/qos/tc"
)

// routeEvery is how often the engine looks again at where its peers'
// packets go; a peer that roams is shaped by its new route within this
// time. A policy change is followed at once.
const routeEvery = 2 * time.Second

// routePeers keeps the host's shaping classifying each peer's WireGuard
// packets by the peer's class: every peer's packets leave from one UDP
// socket with one DSCP, so the DSCP filters alone would put all callers in
// one class, where an interactive caller's packets wait behind a bulk
// caller's. Peers relayed through DERP keep the DSCP classification. It
// runs until the engine closes; not at all without shaping or peers.
func (e *Engine) routePeers() {
	if e.shaper == nil || e.cfg.PeerPaths == nil || e.cfg.SubjectOf == nil {
		return
	}
	ctx := e.ctx
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		var last []tc.PeerRoute
		t := time.NewTicker(routeEvery)
		defer t.Stop()
		for {
			routes, err := e.peerRoutes(ctx)
			switch {
			case errors.Is(err, errors.ErrUnsupported):
				return
			case err != nil:
				if ctx.Err() == nil {
					e.log.Warn("shaping by peer: " + err.Error())
				}
			case !slices.Equal(routes, last):
				if err := e.shaper.Route(routes); err != nil {
					e.log.Warn("shaping by peer: " + err.Error())
				} else {
					last = routes
					e.log.Info("shaping by peer", "routes", len(routes))
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-e.reroute:
			}
		}
	}()
}

// peerRoutes maps each directly reached peer's WireGuard endpoint to its
// class under the policy in force.
func (e *Engine) peerRoutes(ctx context.Context) ([]tc.PeerRoute, error) {
	paths, err := e.cfg.PeerPaths(ctx)
	if err != nil {
		return nil, err
	}
	pol := e.cfg.Policy.Current()
	var routes []tc.PeerRoute
	for _, path := range paths {
		if !path.Endpoint.IsValid() {
			continue
		}
		who, err := e.cfg.SubjectOf(ctx, path.Addr)
		if err != nil {
			continue // gone since; the next pass sees
		}
		class, _ := pol.ClassOf(who)
		routes = append(routes, tc.PeerRoute{Addr: path.Endpoint, Class: class})
	}
	slices.SortFunc(routes, func(a, b tc.PeerRoute) int { return a.Addr.Compare(b.Addr) })
	return routes, nil
}
