// Package diag inspects a gpumesh node on a tailnet: Status says who is
// here, which peers serve GPUs, over which path and how fast; Doctor checks
// what usually goes wrong and says what to do about it.
//
// Both run over a live node, the node's own (in a running `gpumesh serve`
// or `gpumesh up`, reached through the local API in localapi.go) or one a
// command joined for the purpose. The package computes reports; rendering
// them as text or JSON is in render.go, and printing is the commands' job.
// It imports gpusvc's client, Tailscale's local client and the QoS parts'
// status types (qos, qos/tc), no server code. discover.go finds the nodes
// running on this machine, for commands given no flags.
package diag

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"

	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/internal/human"
	"github.com/gpumesh/gpumesh/pool"
)

// Node is the live tailnet node a report is made from; *tsnet.Node is one.
type Node interface {
	// LocalClient is the node's own Tailscale backend (status, ping).
	LocalClient() *local.Client
	// Dial connects inside the tailnet.
	Dial(ctx context.Context, network, addr string) (net.Conn, error)
}

// Options say what to look at. The zero value works: every peer, the
// default port, 5s per probe.
type Options struct {
	// Hosts are the GPU hosts to look at, by name or tailnet IP. Empty
	// means every peer; those answering on Port are the GPU hosts.
	Hosts []string `json:"hosts,omitempty"`
	// Port is the compute endpoint's port; 0 means gpusvc.DefaultPort.
	Port int `json:"port,omitempty"`
	// Timeout bounds each probe (a ping, a call); 0 means 5s.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Kernel and GPU are what Doctor asks the host's policy about; empty
	// Kernel means "matrix_mul".
	Kernel string `json:"kernel,omitempty"`
	GPU    string `json:"gpu,omitempty"`
	// NeedCUDA is the CUDA version the client's code needs ("12.2"); Doctor
	// fails a host whose driver supports less. Empty: no requirement.
	NeedCUDA string `json:"need_cuda,omitempty"`
	// Pool is a pool target ("tag:gpu", "a,b", "*"): its members are the
	// hosts looked at, and the report says which one the pool would pick
	// for Kernel (see pool.go).
	Pool string `json:"pool,omitempty"`
}

func (o Options) withDefaults() Options {
	if o.Port == 0 {
		o.Port = gpusvc.DefaultPort
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Kernel == "" {
		o.Kernel = "matrix_mul"
	}
	return o
}

// Report is what Status found.
type Report struct {
	Self  Self   `json:"self"`
	Peers []Peer `json:"peers"`
	// Pool is Options.Pool's report, when one was asked for.
	Pool *pool.Report `json:"pool,omitempty"`
}

// Self is this node.
type Self struct {
	Name    string   `json:"name"`
	DNSName string   `json:"dns_name,omitempty"`
	Addrs   []string `json:"addrs"`
	State   string   `json:"state"` // Tailscale's backend state: "Running", "NeedsLogin", ...
	Health  []string `json:"health,omitempty"`
	// GPU is this node's own compute endpoint when it is a GPU host (as
	// its local API reports it); nil otherwise.
	GPU *GPUHost `json:"gpu,omitempty"`
}

// Path values: how packets to a peer travel.
const (
	PathDirect  = "direct"  // UDP straight between the two machines
	PathRelayed = "relayed" // through a DERP relay (or a peer relay)
	PathNone    = "none"    // no answer
)

// Peer is one peer of this node.
type Peer struct {
	Name    string   `json:"name"`
	DNSName string   `json:"dns_name,omitempty"`
	Addrs   []string `json:"addrs,omitempty"`
	OS      string   `json:"os,omitempty"`
	// Online is the control server's word; LastSeen is set when offline.
	Online   bool       `json:"online"`
	LastSeen *time.Time `json:"last_seen,omitempty"`
	// Path, Via and Latency come from a ping (disco, over WireGuard's own
	// path): Via is the direct endpoint (ip:port) or the DERP region.
	Path      string  `json:"path"`
	Via       string  `json:"via,omitempty"`
	LatencyMS float64 `json:"latency_ms,omitempty"`
	PingError string  `json:"ping_error,omitempty"`
	// GPU is the compute endpoint's answer to Devices; nil when the peer
	// does not serve one (ServiceError says why, for a named host).
	GPU          *GPUHost `json:"gpu,omitempty"`
	ServiceError string   `json:"service_error,omitempty"`
	// Asked: the peer was named in Options.Hosts. Missing: it was, and
	// it is not in this node's tailnet.
	Asked   bool `json:"asked,omitempty"`
	Missing bool `json:"missing,omitempty"`

	ip netip.Addr
}

// GPUHost is a peer's compute endpoint, as it describes itself.
type GPUHost struct {
	Endpoint string   `json:"endpoint"` // name:port
	Backend  string   `json:"backend"`
	Host     string   `json:"host"`    // the name it serves as
	SeesUsAs string   `json:"caller"`  // who it says this node is
	Status   string   `json:"status"`  // its backend's one-line status
	Devices  []Device `json:"devices"` // with live telemetry
}

// Device is one GPU of a host.
type Device struct {
	Index       uint32 `json:"index"`
	Name        string `json:"name"`
	UUID        string `json:"uuid,omitempty"`
	MemoryTotal uint64 `json:"memory_total_bytes"`
	MemoryUsed  uint64 `json:"memory_used_bytes"`
	Utilization uint32 `json:"utilization_percent"`
	Temperature int32  `json:"temperature_c,omitempty"`
	PowerMW     uint32 `json:"power_mw,omitempty"`
	Driver      string `json:"driver,omitempty"`
	CUDA        string `json:"cuda,omitempty"`
}

// Status reports on this node and its peers: each peer is pinged and asked
// for its GPUs, all at once, each probe bounded by Options.Timeout.
func Status(ctx context.Context, n Node, opts Options) (Report, error) {
	opts = opts.withDefaults()
	lc := n.LocalClient()
	if lc == nil {
		return Report{}, errors.New("diag: the node is not up")
	}
	st, err := lc.Status(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("diag: status: %w", err)
	}
	var pr *pool.Report
	if opts.Pool != "" {
		if pr, opts.Hosts, err = lookPool(ctx, n, opts); err != nil {
			return Report{}, err
		}
	}
	r := Report{Self: selfOf(st), Peers: peersOf(st, opts.Hosts), Pool: pr}
	var wg sync.WaitGroup
	for i := range r.Peers {
		p := &r.Peers[i]
		if p.Missing {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			probe(ctx, n, lc, p, opts, 1)
		}()
	}
	wg.Wait()
	if len(opts.Hosts) == 0 {
		// Without names, a peer that serves no GPUs is just a peer: its
		// endpoint's silence is not an error.
		for i := range r.Peers {
			r.Peers[i].ServiceError = ""
		}
	}
	return r, nil
}

func selfOf(st *ipnstate.Status) Self {
	s := Self{State: st.BackendState, Health: st.Health}
	for _, a := range st.TailscaleIPs {
		s.Addrs = append(s.Addrs, a.String())
	}
	if st.Self != nil {
		s.Name, s.DNSName = nameOf(st.Self), strings.TrimSuffix(st.Self.DNSName, ".")
	}
	return s
}

// nameOf is a peer's short name: the first label of its MagicDNS name,
// which is what WhoIs and policies call it.
func nameOf(p *ipnstate.PeerStatus) string {
	if name, _, _ := strings.Cut(p.DNSName, "."); name != "" {
		return name
	}
	return p.HostName
}

// peersOf lists the peers, sorted by name; with hosts, only those, in the
// order given, a host not found being marked Missing.
func peersOf(st *ipnstate.Status, hosts []string) []Peer {
	var all []Peer
	for _, ps := range st.Peer {
		p := Peer{Name: nameOf(ps), DNSName: strings.TrimSuffix(ps.DNSName, "."), OS: ps.OS, Online: ps.Online, Path: PathNone}
		for _, a := range ps.TailscaleIPs {
			p.Addrs = append(p.Addrs, a.String())
			if !p.ip.IsValid() || a.Is4() && !p.ip.Is4() {
				p.ip = a // the first IPv4 address, else the first
			}
		}
		if !ps.Online && !ps.LastSeen.IsZero() {
			t := ps.LastSeen
			p.LastSeen = &t
		}
		all = append(all, p)
	}
	slices.SortFunc(all, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	if len(hosts) == 0 {
		return all
	}
	out := make([]Peer, 0, len(hosts))
	for _, h := range hosts {
		i := slices.IndexFunc(all, func(p Peer) bool {
			return p.Name == h || p.DNSName == strings.TrimSuffix(h, ".") || slices.Contains(p.Addrs, h)
		})
		if i < 0 {
			out = append(out, Peer{Name: h, Missing: true, Path: PathNone, Asked: true})
			continue
		}
		p := all[i]
		p.Asked = true
		out = append(out, p)
	}
	return out
}

// probe pings p (up to pings times, stopping once the path is direct) and
// asks its endpoint for its GPUs.
func probe(ctx context.Context, n Node, lc *local.Client, p *Peer, opts Options, pings int) {
	if !p.ip.IsValid() {
		p.PingError = "the peer has no tailnet address"
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ping(ctx, lc, p, opts.Timeout, pings)
	}()
	dev, err := devices(ctx, n, net.JoinHostPort(p.ip.String(), strconv.Itoa(opts.Port)), opts.Timeout)
	if err != nil {
		p.ServiceError = serviceError(err, opts.Timeout)
	} else {
		p.GPU = gpuHostOf(dev, net.JoinHostPort(p.Name, strconv.Itoa(opts.Port)))
	}
	wg.Wait()
}

func ping(ctx context.Context, lc *local.Client, p *Peer, timeout time.Duration, tries int) {
	for i := 0; i < tries; i++ {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		pr, err := lc.Ping(pctx, p.ip, tailcfg.PingDisco)
		cancel()
		switch {
		case err != nil:
			p.PingError = pingError(err, timeout)
			return
		case pr.Err != "":
			p.PingError = pr.Err
			return
		}
		p.PingError = ""
		p.LatencyMS = human.RoundMillis(pr.LatencySeconds * 1000)
		switch {
		case pr.Endpoint != "":
			p.Path, p.Via = PathDirect, pr.Endpoint
			return
		case pr.PeerRelay != "":
			p.Path, p.Via = PathRelayed, "peer relay "+pr.PeerRelay
		case pr.DERPRegionCode != "":
			p.Path, p.Via = PathRelayed, "DERP "+pr.DERPRegionCode
		default:
			p.Path, p.Via = PathRelayed, fmt.Sprintf("DERP region %d", pr.DERPRegionID)
		}
	}
}

func pingError(err error, timeout time.Duration) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("no answer to ping within %v", timeout)
	}
	return err.Error()
}

// devices asks the endpoint at addr (inside the tailnet) for its GPUs.
func devices(ctx context.Context, n Node, addr string, timeout time.Duration) (*pb.DevicesResponse, error) {
	c, err := newClient(addr, n)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return c.Devices(ctx)
}

// serviceError says in a few words why an endpoint did not answer.
func serviceError(err error, timeout time.Duration) string {
	st := status.Convert(err)
	msg := st.Message()
	switch {
	case strings.Contains(msg, "refused"):
		return "connection refused (nothing listens on the port)"
	case st.Code() == codes.DeadlineExceeded:
		return fmt.Sprintf("no answer within %v", timeout)
	case st.Code() == codes.Unavailable:
		if i := strings.LastIndex(msg, "desc = "); i >= 0 {
			msg = strings.Trim(msg[i+len("desc = "):], `"`)
		}
		return msg
	}
	return st.Code().String() + ": " + msg
}

func newClient(addr string, n Node) (*gpusvc.Client, error) {
	return gpusvc.NewClient(addr, n.Dial)
}

func gpuHostOf(d *pb.DevicesResponse, endpoint string) *GPUHost {
	g := &GPUHost{Endpoint: endpoint, Backend: d.GetBackend(), Host: d.GetHost(), SeesUsAs: d.GetCaller(), Status: d.GetStatus(), Devices: []Device{}}
	for _, x := range d.GetDevices() {
		g.Devices = append(g.Devices, Device{
			Index: x.GetIndex(), Name: x.GetName(), UUID: x.GetUuid(), MemoryTotal: x.GetMemoryTotal(), MemoryUsed: x.GetMemoryUsed(),
			Utilization: x.GetUtilizationPercent(), Temperature: x.GetTemperatureC(), PowerMW: x.GetPowerMw(),
			Driver: x.GetDriverVersion(), CUDA: x.GetCudaVersion(),
		})
	}
	return g
}
