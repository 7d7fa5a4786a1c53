package pool

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/overlay"
)

// errLeft is why a host whose peer left the overlay's list is gone.
var errLeft = errors.New("left the overlay (no longer in the peer list, or offline)")

// run reads the peer list and probes the members every RefreshInterval,
// and at once when a call reports a failure. The first round's probes are
// waited for before Wait returns; later ones run on their own, each owned
// by the pool's WaitGroup.
func (p *Pool) run() {
	t := time.NewTicker(p.cfg.RefreshInterval)
	defer t.Stop()
	p.discover(p.ctx)
	var first sync.WaitGroup
	p.probeDue(&first)
	first.Wait()
	close(p.first)
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			p.discover(p.ctx)
		case <-p.kick:
		}
		p.probeDue(&p.wg)
	}
}

// discover reconciles the members with the overlay's peer list: peers the
// target matches join; members no longer listed (or offline) are lost at
// once, shown as down, and forgotten after ForgetAfter. A failed list
// changes nothing.
func (p *Pool) discover(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, p.cfg.ProbeTimeout)
	peers, err := p.cfg.Network.Peers(lctx)
	cancel()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.listErr = err
	if err != nil {
		p.mu.Unlock()
		p.log.Warn("pool: reading the peer list", "pool", p.target.String(), "err", err)
		return
	}
	now := time.Now()
	seen := make(map[string]bool)
	var joined, left []*host
	for _, m := range p.target.Members(peers) {
		name, pe, addr := m.Name, m.Peer, p.endpoint(m.Peer)
		seen[name] = true
		if h, ok := p.hosts[name]; ok {
			h.mu.Lock()
			gone := h.removed
			moved := h.addr != addr
			if !gone {
				h.peer, h.addr = pe, addr
			}
			h.mu.Unlock()
			if gone || moved {
				// Back after leaving, or at a new address: a new host,
				// whose sessions were not those of the old one.
				if !gone {
					left = append(left, h)
				}
				h = newHost(p, name, pe, addr, now)
				p.hosts[name] = h
				joined = append(joined, h)
			}
			continue
		}
		h := newHost(p, name, pe, addr, now)
		p.hosts[name] = h
		joined = append(joined, h)
	}
	forgot := false
	for name, h := range p.hosts {
		if seen[name] {
			continue
		}
		// A host that left stays listed, down, for ForgetAfter: those
		// watching the pool see it fail rather than vanish.
		h.mu.Lock()
		gone, since := h.removed, h.since
		h.mu.Unlock()
		switch {
		case !gone:
			left = append(left, h)
		case now.Sub(since) >= p.cfg.ForgetAfter:
			delete(p.hosts, name)
			forgot = true
		}
	}
	p.missing = p.missing[:0]
	for _, n := range p.target.Names {
		if !p.listedUnder(n) {
			p.missing = append(p.missing, n)
		}
	}
	p.mu.Unlock()
	for _, h := range left {
		p.closeLost(h.remove(errLeft))
		p.log.Info("pool: host left", "pool", p.target.String(), "host", h.name)
	}
	for _, h := range joined {
		p.log.Info("pool: host joined", "pool", p.target.String(), "host", h.name, "addr", h.addr)
	}
	if len(joined)+len(left) > 0 || forgot {
		p.notify()
	}
}

// listedUnder reports whether a member answers to n (an IP or a full name
// the target lists). Called with p.mu held.
func (p *Pool) listedUnder(n string) bool {
	for _, h := range p.hosts {
		if p.nameMatches(h, n) {
			return true
		}
	}
	return false
}

func (p *Pool) nameMatches(h *host, n string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Target{Names: []string{n}}.Matches(h.peer)
}

// endpoint is the address a member's compute endpoint is dialed at: its
// overlay IP, so that no name lookup is needed.
func (p *Pool) endpoint(pe overlay.Peer) string {
	a := pe.Addr()
	if !a.IsValid() {
		if pe.Name == "" {
			return ""
		}
		return net.JoinHostPort(pe.Name, strconv.Itoa(p.target.Port))
	}
	return net.JoinHostPort(a.String(), strconv.Itoa(p.target.Port))
}

// probeDue starts a probe of every member that is due one, tracked by wg.
func (p *Pool) probeDue(wg *sync.WaitGroup) {
	p.mu.Lock()
	hs := make([]*host, 0, len(p.hosts))
	for _, h := range p.hosts {
		hs = append(hs, h)
	}
	p.mu.Unlock()
	now := time.Now()
	for _, h := range hs {
		if !h.due(now) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.probe(p.ctx)
		}()
	}
}
