package node

import (
	"context"
	"log/slog"
	"net"
	"net/netip"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/qos/engine"
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

// startQoS starts the host's QoS (package qos/engine) as cfg says,
// following store's policy, and shaping by peer where ov can say where it
// sends each peer's packets.
func startQoS(cfg *QoSConfig, store *policy.Store, ov overlay.Overlay, log *slog.Logger) (*engine.Engine, error) {
	ecfg := engine.Config{
		Policy: store, UDPPort: cfg.UDPPort, DSCP: cfg.DSCP,
		ShapeLink: cfg.ShapeLink, ShapeRate: cfg.ShapeRate, LinkRate: cfg.LinkRate,
		Logger: log,
	}
	if pp, ok := ov.(overlay.PeerPather); ok {
		ecfg.PeerPaths = pp.PeerPaths
		ecfg.SubjectOf = func(ctx context.Context, addr netip.Addr) (policy.Subject, error) {
			id, err := ov.WhoIs(ctx, netip.AddrPortFrom(addr, 0).String())
			if err != nil {
				return policy.Subject{}, err
			}
			return gpusvc.Subject(id), nil
		}
	}
	return engine.Start(ecfg)
}

// qosConn is the compute endpoint's WrapConn: each caller's connection
// scheduled and marked by q in the caller's class.
func qosConn(q *engine.Engine) func(net.Conn, overlay.Identity) net.Conn {
	return func(c net.Conn, id overlay.Identity) net.Conn { return q.Conn(c, gpusvc.Subject(id)) }
}

// QoSStatus is what a host's QoS is doing, for `gpumesh qos status` and
// the demo; diag renders it (diag.LiveQoSOf).
type QoSStatus = diag.QoSState

// QoSStatus reports the host's marking, scheduling and shaping; zero
// without QoS.
func (h *Host) QoSStatus() QoSStatus {
	if h.qos == nil {
		return QoSStatus{}
	}
	return h.qos.Status()
}
