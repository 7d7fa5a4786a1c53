package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/qos"
	"github.com/gpumesh/gpumesh/qos/tc"
)

// Config says how the engine marks, schedules and shapes a host's GPU
// traffic. Policy is required; the zero value of every other field turns
// its part off.
type Config struct {
	// Policy is the store whose policy in force names the classes and
	// each caller's class; the engine follows its reloads.
	Policy *policy.Store
	// UDPPort is the overlay's WireGuard UDP port whose packets get the
	// outer DSCP; 0 marks none.
	UDPPort uint16
	// DSCP is the outer code point; dscp.None means AF41.
	DSCP dscp.Code
	// ShapeLink, if set, is the interface whose egress is shaped with an
	// HTB tree (needs CAP_NET_ADMIN; without it a one-line notice).
	ShapeLink string
	// ShapeRate is the link's usable egress rate in bytes/s; 0 reads it
	// from sysfs.
	ShapeRate int64
	// LinkRate paces the GPU traffic, all classes together, to this many
	// bytes/s (qos.Options.LinkRate); 0 (or less) means no pacing.
	LinkRate int64
	// PeerPaths and SubjectOf, if both set, let the host shaping classify
	// each directly reached peer's WireGuard packets by the peer's class
	// (see overlay.PeerPath); without them, or without ShapeLink, it classifies by
	// DSCP alone.
	PeerPaths func(ctx context.Context) ([]overlay.PeerPath, error)
	// SubjectOf is who the peer at an overlay address is to the policy.
	SubjectOf func(ctx context.Context, addr netip.Addr) (policy.Subject, error)
	// Logger receives the engine's notices; nil discards them.
	Logger *slog.Logger
}

// Engine is a host's running QoS. Its marker and shaper may be absent
// (Config); the scheduler is always there.
type Engine struct {
	cfg    Config
	sched  *qos.Scheduler
	marker *qos.Marker // nil without outer marking
	shaper *tc.Shaper  // nil without host shaping

	log           *slog.Logger
	ctx           context.Context    // ends when the engine closes
	cancel        context.CancelFunc // ends ctx
	innerOnce     sync.Once          // logs that inner marking is not possible
	wg            sync.WaitGroup     // routePeers
	reroute       chan struct{}      // asks routePeers to look again now; buffered
	removeApplier func()             // unregisters apply from the store; nil before

	closeOnce sync.Once // Close

	mu    sync.Mutex
	conns map[*liveConn]bool // the callers' open connections; guarded by mu
}

// Start builds the scheduler from the policy's classes, marks the
// overlay's UDP sockets, installs host shaping where it can, and makes all
// of it follow the store's policy until Close. A half-built start is
// undone.
func Start(cfg Config) (*Engine, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{cfg: cfg, log: log, ctx: ctx, cancel: cancel, reroute: make(chan struct{}, 1), conns: make(map[*liveConn]bool)}
	pol := cfg.Policy.Current()
	classes := Classes(pol)
	if err := qos.ValidateClasses(classes); err != nil {
		cancel()
		return nil, fmt.Errorf("qos: classes: %w", err)
	}
	if cfg.UDPPort != 0 {
		e.marker = qos.NewMarker(qos.MarkerConfig{
			Port: cfg.UDPPort, DSCP: cfg.DSCP,
			Logf: func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) },
		})
		e.marker.Start(ctx)
	}
	if cfg.ShapeLink != "" {
		sh, err := tc.Install(tc.Config{Link: cfg.ShapeLink, Rate: cfg.ShapeRate, Classes: classes, Default: policy.DefaultClass})
		switch {
		case errors.Is(err, tc.ErrNoPrivilege):
			log.Warn(err.Error())
		case err != nil:
			e.Close()
			return nil, fmt.Errorf("qos: host shaping on %s: %w", cfg.ShapeLink, err)
		default:
			e.shaper = sh
			log.Info("host shaping installed", "report", sh.Report().String())
		}
	}
	opts := qos.Options{Slots: 2, LinkRate: max(cfg.LinkRate, 0), DefaultClass: policy.DefaultClass}
	sched, err := qos.NewScheduler(classes, opts)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("qos: scheduler: %w", err)
	}
	e.sched = sched
	if opts.LinkRate > 0 {
		log.Info("pacing GPU traffic", "link_rate_bytes_per_s", opts.LinkRate)
	}
	cur, remove := cfg.Policy.AddApplier("qos", e.apply)
	e.removeApplier = remove
	if cur != pol { // a reload slipped in while the engine was built
		commit, _, err := e.apply(pol, cur)
		if err != nil {
			e.Close()
			return nil, err
		}
		commit()
	}
	e.routePeers()
	return e, nil
}

// apply is the store's applier: it checks that the QoS of next can be put
// in force and rebuilds the host shaping for it (the one step the kernel
// may refuse, undone if another applier refuses next); once next is in
// force, commit moves the scheduler to its classes, every live connection
// to its caller's class, and the peer routes at once.
func (e *Engine) apply(old, next *policy.Policy) (commit, rollback func(), err error) {
	classes := Classes(next)
	if err := qos.ValidateClasses(classes); err != nil {
		return nil, nil, fmt.Errorf("qos: classes: %w", err)
	}
	if e.shaper != nil {
		if err := e.shaper.SetClasses(classes); err != nil {
			return nil, nil, fmt.Errorf("qos: host shaping: %w", err)
		}
		rollback = func() {
			if err := e.shaper.SetClasses(Classes(old)); err != nil {
				e.log.Warn("host shaping: restoring the classes of the policy in force", "err", err)
			}
		}
	}
	commit = func() {
		if err := e.sched.SetClasses(classes); err != nil { // checked above: not expected
			e.log.Warn("qos scheduler: new classes", "err", err)
		}
		e.reclassify(next)
		select {
		case e.reroute <- struct{}{}:
		default: // a pass is due already
		}
	}
	return commit, rollback, nil
}

// Classes are the classes a host schedules and shapes for pol
// (policy.ScheduledClasses, the default class included), as QoS classes.
func Classes(pol *policy.Policy) []qos.Class {
	pcs := pol.ScheduledClasses()
	out := make([]qos.Class, 0, len(pcs))
	for _, c := range pcs {
		out = append(out, qos.Class{Name: c.Name, DSCP: c.DSCP, Priority: c.Priority, Rate: c.Rate, Burst: c.Burst})
	}
	return out
}

// Close stops the peer routes, the marker and the host shaping, and
// leaves the policy store's appliers. A second Close returns
// net.ErrClosed.
func (e *Engine) Close() error {
	err := net.ErrClosed
	e.closeOnce.Do(func() { err = e.close() })
	return err
}

func (e *Engine) close() error {
	e.cancel()
	if e.removeApplier != nil {
		e.removeApplier()
	}
	e.wg.Wait()
	var errs []error
	if e.marker != nil {
		errs = append(errs, e.marker.Close())
	}
	if e.shaper != nil {
		errs = append(errs, e.shaper.Close())
	}
	return errors.Join(errs...)
}

// Status is what the engine is doing: its marking, scheduling and
// shaping (diag.QoSState, which renders it).
type Status struct {
	Marking *qos.MarkerStatus // nil when outer marking is off
	// LinkRate is the rate the scheduler paces all classes to, bytes/s;
	// 0 when it does not pace.
	LinkRate int64
	Classes  []qos.ClassStats // per class, from the scheduler
	Shaping  string           // the installed tc tree, or "" when none
	// ShapingStats are the kernel's counters of the tc classes.
	ShapingStats []tc.ClassStats
	// Routes are the peers' WireGuard endpoints the tc tree classifies
	// by peer (the others by DSCP).
	Routes []tc.PeerRoute
}

// Status reports the engine's marking (after a fresh pass), scheduling
// and shaping.
func (e *Engine) Status() Status {
	var st Status
	if e.marker != nil {
		e.marker.Mark() // a fresh pass: its result lands in Status
		ms := e.marker.Status()
		st.Marking = &ms
	}
	st.Classes = e.sched.Stats()
	st.LinkRate = e.sched.LinkRate()
	if e.shaper != nil {
		st.Shaping = e.shaper.Report().String()
		st.ShapingStats, _ = e.shaper.Stats()
		st.Routes = e.shaper.Routes()
	}
	return st
}
