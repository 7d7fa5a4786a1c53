package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/qos"
	"github.com/gpumesh/gpumesh/qos/tc"
)

// QoSConfig says how a host marks and schedules its GPU traffic.
type QoSConfig struct {
	// UDPPort is the overlay's WireGuard UDP port whose packets get the
	// outer DSCP. 0 means the port of the tailnet node the host joined
	// itself (HostConfig.Join), and no outer marking on an overlay given
	// ready. A WireGuard mesh the host joins marks its packets itself.
	UDPPort uint16
	// DSCP is the outer code point; dscp.None means AF41. CS0 marks CS0.
	DSCP dscp.Code
	// NoOuterMarking leaves the overlay's outer packets unmarked (serve
	// --dscp off); replies are still scheduled by class.
	NoOuterMarking bool
	// ShapeLink, if set, is the interface whose egress is shaped with an
	// HTB tree (needs CAP_NET_ADMIN; without it a one-line notice).
	ShapeLink string
	// ShapeRate is the link's usable egress rate in bytes/s; 0 reads it
	// from sysfs.
	ShapeRate int64
	// LinkRate paces the host's GPU traffic, all classes together, to this
	// many bytes/s (qos.Options.LinkRate): set it to the rate of a link
	// beyond this host that its traffic saturates (a router's uplink), or
	// a little less, so bulk bytes wait in the scheduler, where interactive
	// calls overtake them, not in that link's FIFO. 0 means no pacing. With
	// ShapeLink the host's own HTB tree already puts each peer's packets in
	// its class, so the shaped link needs no pacing.
	LinkRate int64
}

// outerDSCP is the code point of the overlay's outer packets: none
// without QoS or with NoOuterMarking, else DSCP (AF41 when unset).
func (c *QoSConfig) outerDSCP() dscp.Code {
	switch {
	case c == nil || c.NoOuterMarking:
		return dscp.None
	case c.DSCP == dscp.None:
		return dscp.AF41
	}
	return c.DSCP
}

// qosParts are what a host runs for QoS; each of sched, marker and shaper
// may be nil. They follow the policy: an applier registered with the
// policy store rebuilds the scheduler's classes, the tc tree and the peer
// routes, and moves every live connection to its caller's class, whenever
// a new policy is put in force, or refuses the policy when they cannot.
type qosParts struct {
	sched  *qos.Scheduler
	marker *qos.Marker
	shaper *tc.Shaper

	log           *slog.Logger
	ctx           context.Context    // ends when the parts close
	cancel        context.CancelFunc // ends ctx
	innerOnce     sync.Once          // logs that inner marking is not possible
	wg            sync.WaitGroup     // routePeers
	reroute       chan struct{}      // asks routePeers to look again now; buffered
	removeApplier func()             // unregisters apply from the store; nil before

	mu    sync.Mutex
	conns map[*liveConn]bool // the callers' open connections; guarded by mu
}

// routeEvery is how often the host looks again at where its peers' packets
// go; a peer that roams is shaped by its new route within this time. A
// policy change is followed at once.
const routeEvery = 2 * time.Second

// routePeers keeps the host's shaping classifying each peer's WireGuard
// packets by the peer's class: every peer's packets leave from one UDP
// socket with one DSCP, so the DSCP filters alone would put all callers in
// one class, where an interactive caller's packets wait behind a bulk
// caller's. Peers relayed through DERP keep the DSCP classification. It
// runs until the parts close.
func (p *qosParts) routePeers(pp overlay.PeerPather, ov overlay.Overlay, store *policy.Store) {
	if p.shaper == nil {
		return
	}
	ctx := p.ctx
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		var last []tc.PeerRoute
		t := time.NewTicker(routeEvery)
		defer t.Stop()
		for {
			routes, err := peerRoutes(ctx, pp, ov, store)
			switch {
			case errors.Is(err, errors.ErrUnsupported):
				return
			case err != nil:
				if ctx.Err() == nil {
					p.log.Warn("shaping by peer: " + err.Error())
				}
			case !slices.Equal(routes, last):
				if err := p.shaper.Route(routes); err != nil {
					p.log.Warn("shaping by peer: " + err.Error())
				} else {
					last = routes
					p.log.Info("shaping by peer", "routes", len(routes))
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-p.reroute:
			}
		}
	}()
}

// classOf is the QoS class of a caller and its DSCP (policy.ClassOf).
func classOf(pol *policy.Policy, id overlay.Identity) (string, dscp.Code) {
	return pol.ClassOf(gpusvc.Subject(id))
}

// peerRoutes maps each directly reached peer's WireGuard endpoint to its
// class (classOf).
func peerRoutes(ctx context.Context, pp overlay.PeerPather, ov overlay.Overlay, store *policy.Store) ([]tc.PeerRoute, error) {
	paths, err := pp.PeerPaths(ctx)
	if err != nil {
		return nil, err
	}
	pol := store.Current()
	var routes []tc.PeerRoute
	for _, path := range paths {
		if !path.Endpoint.IsValid() {
			continue
		}
		id, err := ov.WhoIs(ctx, netip.AddrPortFrom(path.Addr, 0).String())
		if err != nil {
			continue // gone since; the next pass sees
		}
		class, _ := classOf(pol, id)
		routes = append(routes, tc.PeerRoute{Addr: path.Endpoint, Class: class})
	}
	slices.SortFunc(routes, func(a, b tc.PeerRoute) int { return a.Addr.Compare(b.Addr) })
	return routes, nil
}

// startQoS builds the scheduler from the policy's classes, marks the
// overlay's UDP sockets, installs host shaping where it can, and makes all
// of it follow the store's policy.
func startQoS(cfg *QoSConfig, store *policy.Store, log *slog.Logger) (*qosParts, error) {
	ctx, cancel := context.WithCancel(context.Background())
	p := &qosParts{log: log, ctx: ctx, cancel: cancel, reroute: make(chan struct{}, 1), conns: make(map[*liveConn]bool)}
	pol := store.Current()
	classes := QoSClasses(pol)
	if err := qos.ValidateClasses(classes); err != nil {
		cancel()
		return nil, fmt.Errorf("node: qos classes: %w", err)
	}
	if cfg.UDPPort != 0 {
		p.marker = qos.NewMarker(qos.MarkerConfig{
			Port: cfg.UDPPort, DSCP: cfg.DSCP,
			Logf: func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) },
		})
		p.marker.Start(ctx)
	}
	if cfg.ShapeLink != "" {
		sh, err := tc.Install(tc.Config{Link: cfg.ShapeLink, Rate: cfg.ShapeRate, Classes: classes, Default: policy.DefaultClass})
		switch {
		case errors.Is(err, tc.ErrNoPrivilege):
			log.Warn(err.Error())
		case err != nil:
			p.close()
			return nil, fmt.Errorf("node: host shaping on %s: %w", cfg.ShapeLink, err)
		default:
			p.shaper = sh
			log.Info("host shaping installed", "report", sh.Report().String())
		}
	}
	opts := qos.Options{Slots: 2, LinkRate: max(cfg.LinkRate, 0), DefaultClass: policy.DefaultClass}
	sched, err := qos.NewScheduler(classes, opts)
	if err != nil {
		p.close()
		return nil, fmt.Errorf("node: qos scheduler: %w", err)
	}
	p.sched = sched
	if opts.LinkRate > 0 {
		log.Info("pacing GPU traffic", "link_rate_bytes_per_s", opts.LinkRate)
	}
	cur, remove := store.AddApplier("qos", p.apply)
	p.removeApplier = remove
	if cur != pol { // a reload slipped in while the parts were built
		commit, _, err := p.apply(pol, cur)
		if err != nil {
			p.close()
			return nil, err
		}
		commit()
	}
	return p, nil
}

// apply is the store's applier: it checks that the QoS of next can be put
// in force and rebuilds the host shaping for it (the one step the kernel
// may refuse, undone if another applier refuses next); once next is in
// force, commit moves the scheduler to its classes, every live connection
// to its caller's class, and the peer routes at once.
func (p *qosParts) apply(old, next *policy.Policy) (commit, rollback func(), err error) {
	classes := QoSClasses(next)
	if err := qos.ValidateClasses(classes); err != nil {
		return nil, nil, fmt.Errorf("node: qos classes: %w", err)
	}
	if p.shaper != nil {
		if err := p.shaper.SetClasses(classes); err != nil {
			return nil, nil, fmt.Errorf("node: host shaping: %w", err)
		}
		rollback = func() {
			if err := p.shaper.SetClasses(QoSClasses(old)); err != nil {
				p.log.Warn("host shaping: restoring the classes of the policy in force", "err", err)
			}
		}
	}
	commit = func() {
		if err := p.sched.SetClasses(classes); err != nil { // checked above: not expected
			p.log.Warn("qos scheduler: new classes", "err", err)
		}
		p.reclassify(next)
		select {
		case p.reroute <- struct{}{}:
		default: // a pass is due already
		}
	}
	return commit, rollback, nil
}

// QoSClasses are the classes a host schedules and shapes for pol
// (policy.ScheduledClasses, the default class included), as QoS classes.
func QoSClasses(pol *policy.Policy) []qos.Class {
	pcs := pol.ScheduledClasses()
	out := make([]qos.Class, 0, len(pcs))
	for _, c := range pcs {
		out = append(out, qos.Class{Name: c.Name, DSCP: c.DSCP, Priority: c.Priority, Rate: c.Rate, Burst: c.Burst})
	}
	return out
}

// wrapConn schedules a connection's writes in its caller's class (classOf)
// and marks its inner packets with the class's DSCP. The connection it
// returns has SetClass(string), which gpusvc calls with each call's class.
func (p *qosParts) wrapConn(store *policy.Store) func(net.Conn, overlay.Identity) net.Conn {
	return func(c net.Conn, id overlay.Identity) net.Conn {
		class, code := classOf(store.Current(), id)
		// The inner packets carry the class too: the far end's stack and,
		// in the WireGuard TUN mode, the kernel see it. Before wrapping:
		// the scheduler's Conn hides the connection underneath.
		p.markInner(c, code)
		lc := &liveConn{Conn: p.sched.Conn(c, class), raw: c, id: id, p: p, class: class, dscp: code}
		p.mu.Lock()
		p.conns[lc] = true
		p.mu.Unlock()
		return lc
	}
}

func (p *qosParts) markInner(c net.Conn, code dscp.Code) {
	if err := qos.SetConnDSCP(c, code); err != nil {
		p.innerOnce.Do(func() { p.log.Info("no inner DSCP on the overlay's connections", "err", err) })
	}
}

// reclassify moves every live connection to its caller's class under pol.
func (p *qosParts) reclassify(pol *policy.Policy) {
	p.mu.Lock()
	conns := make([]*liveConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		class, _ := classOf(pol, c.id)
		c.SetClass(class)
	}
}

// liveConn is a caller's connection as the host's QoS holds it: its
// writes scheduled in its class, its inner packets marked with the class's
// DSCP, and known to the host until it closes, so a new policy reaches it.
type liveConn struct {
	net.Conn // the scheduler's
	raw      net.Conn
	id       overlay.Identity
	p        *qosParts

	mu    sync.Mutex
	class string    // as last set; guarded by mu
	dscp  dscp.Code // marked on raw; guarded by mu
}

// SetClass moves the connection to the class name ("" or a class the
// policy lacks: the default class): its next replies are scheduled and
// counted there, and its packets carry that class's DSCP.
func (c *liveConn) SetClass(name string) {
	code := c.p.sched.Class(name).DSCP
	c.mu.Lock()
	defer c.mu.Unlock()
	if name == c.class && code == c.dscp {
		return
	}
	c.Conn.(interface{ SetClass(string) }).SetClass(name)
	if code != c.dscp {
		c.p.markInner(c.raw, code)
	}
	c.class, c.dscp = name, code
}

func (c *liveConn) Close() error {
	c.p.mu.Lock()
	delete(c.p.conns, c)
	c.p.mu.Unlock()
	return c.Conn.Close()
}

// close stops the peer routes, the marker and the host shaping, and
// leaves the policy store's appliers.
func (p *qosParts) close() error {
	p.cancel()
	if p.removeApplier != nil {
		p.removeApplier()
	}
	p.wg.Wait()
	var errs []error
	if p.marker != nil {
		errs = append(errs, p.marker.Close())
	}
	if p.shaper != nil {
		errs = append(errs, p.shaper.Close())
	}
	return errors.Join(errs...)
}

// QoSStatus is what a host's QoS is doing, for `gpumesh qos status` and
// the demo; diag renders it (diag.LiveQoSOf).
type QoSStatus = diag.QoSState

// QoSStatus reports the host's marking, scheduling and shaping.
func (h *Host) QoSStatus() QoSStatus {
	var st QoSStatus
	if h.qos.marker != nil {
		h.qos.marker.Mark() // a fresh pass: its result lands in Status
		ms := h.qos.marker.Status()
		st.Marking = &ms
	}
	if h.qos.sched != nil {
		st.Classes = h.qos.sched.Stats()
		st.LinkRate = h.qos.sched.LinkRate()
	}
	if h.qos.shaper != nil {
		st.Shaping = h.qos.shaper.Report().String()
		st.ShapingStats, _ = h.qos.shaper.Stats()
		st.Routes = h.qos.shaper.Routes()
	}
	return st
}
