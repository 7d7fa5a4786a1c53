package diag

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/status"
	"tailscale.com/tailcfg"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/pool"
)

// Result is a check's verdict.
type Result string

const (
	OK   Result = "ok"
	Warn Result = "warn" // works, but not as well as it could
	Fail Result = "fail"
)

// Check is one line of Doctor's answer.
type Check struct {
	Name   string `json:"name"`
	Result Result `json:"result"`
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"` // what to do, when not ok
}

// Failed reports whether any check failed.
func Failed(cs []Check) bool {
	for _, c := range cs {
		if c.Result == Fail {
			return true
		}
	}
	return false
}

// pingTries: Doctor pings a host up to this many times, as `tailscale
// ping` does, so that a path still being upgraded gets to become direct.
const pingTries = 5

// Doctor checks, in order: that the node is on the tailnet, that its
// control server answers, and for each GPU host (Options.Hosts, or the
// peers that answer on the port) that it is reachable and by which path,
// that its endpoint answers, that its policy lets this node in, and that
// its GPUs suit the client.
func Doctor(ctx context.Context, n Node, opts Options) []Check {
	opts = opts.withDefaults()
	lc := n.LocalClient()
	if lc == nil {
		return []Check{{Name: "tailnet", Result: Fail, Detail: "the node is not up", Hint: "join the tailnet first"}}
	}
	st, err := lc.Status(ctx)
	if err != nil {
		return []Check{{Name: "tailnet", Result: Fail, Detail: "cannot read the node's status: " + err.Error()}}
	}
	self := selfOf(st)
	var checks []Check
	if self.State != "Running" {
		checks = append(checks, Check{Name: "tailnet", Result: Fail,
			Detail: fmt.Sprintf("%s is not on the tailnet: state %s", self.Name, self.State),
			Hint:   stateHint(self.State)})
	} else {
		checks = append(checks, Check{Name: "tailnet", Result: OK,
			Detail: fmt.Sprintf("%s (%s) is on the tailnet", self.Name, strings.Join(self.Addrs, ", "))})
	}
	if len(self.Health) > 0 {
		checks = append(checks, Check{Name: "health", Result: Warn, Detail: strings.Join(self.Health, "; "),
			Hint: "Tailscale's own health checks report these; run with -v for its logs"})
	}
	controlURL := ""
	if prefs, err := lc.GetPrefs(ctx); err == nil {
		controlURL = prefs.ControlURL
	}
	checks = append(checks, checkControl(ctx, controlURL, opts.Timeout))

	var poolRep *pool.Report
	if opts.Pool != "" {
		if poolRep, opts.Hosts, err = lookPool(ctx, n, opts); err != nil {
			checks = append(checks, Check{Name: "pool " + opts.Pool, Result: Fail, Detail: err.Error()})
		}
	}
	peers := peersOf(st, opts.Hosts)
	var wg sync.WaitGroup
	explains := make([]explained, len(peers))
	for i := range peers {
		p := &peers[i]
		if p.Missing {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tries := pingTries
			if !p.Asked {
				tries = 1 // only finding out whether it serves GPUs
			}
			probe(ctx, n, lc, p, opts, tries)
			if p.GPU != nil {
				explains[i] = explain(ctx, n, net.JoinHostPort(p.ip.String(), strconv.Itoa(opts.Port)), opts)
			}
		}()
	}
	wg.Wait()
	found := 0
	for i, p := range peers {
		if !p.Asked && p.GPU == nil {
			continue // a peer that serves no GPUs, found by looking
		}
		found++
		checks = append(checks, judgeHost(p, explains[i], opts)...)
	}
	if found == 0 {
		checks = append(checks, Check{Name: "gpu hosts", Result: Fail,
			Detail: fmt.Sprintf("no peer answers on port %d", opts.Port),
			Hint:   "name the host (gpumesh doctor --host gpu-host) to see why it does not; on the GPU host, run gpumesh serve"})
	}
	if poolRep != nil {
		checks = append(checks, poolCheck(poolRep))
	}
	return checks
}

func stateHint(state string) string {
	switch state {
	case "NeedsLogin":
		return "the node needs an auth key for its first join (--authkey, --authkey-file or TS_AUTHKEY), or its key expired"
	case "NeedsMachineAuth":
		return "an admin must approve this machine in the tailnet's admin console"
	case "Stopped":
		return "the node was stopped; start it again"
	}
	return "wait for the join to finish, or run with -v for Tailscale's logs"
}

// checkControl asks the control server for its public key, as a node does
// before it logs in: the cheapest request that proves it answers.
func checkControl(ctx context.Context, url string, timeout time.Duration) Check {
	c := Check{Name: "control"}
	if url == "" {
		c.Result, c.Detail = Warn, "the node does not say which control server it uses"
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(url, "/")+"/key?v="+strconv.Itoa(int(tailcfg.CurrentCapabilityVersion)), nil)
	if err != nil {
		c.Result, c.Detail = Fail, fmt.Sprintf("bad control URL %q: %v", url, err)
		return c
	}
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		c.Result, c.Detail = Fail, fmt.Sprintf("%s does not answer: %v", url, errors.Unwrap(err))
		c.Hint = "check that this machine reaches the control server (DNS, firewall, proxy); peers already known keep working for a while without it"
		return c
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		c.Result, c.Detail = Warn, fmt.Sprintf("%s answers %s to a key request", url, res.Status)
		c.Hint = "is this the control server's URL (Tailscale's, or your Headscale's)?"
		return c
	}
	c.Result, c.Detail = OK, url+" answers"
	return c
}

// explained is a host's answer to Explain.
type explained struct {
	res *pb.ExplainResponse
	err error
}

func explain(ctx context.Context, n Node, addr string, opts Options) explained {
	c, err := newClient(addr, n)
	if err != nil {
		return explained{err: err}
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	res, err := c.Explain(ctx, opts.Kernel, opts.GPU)
	return explained{res: res, err: err}
}

// judgeHost turns what was found about one host into checks. A host that
// cannot be reached gets only the check that says so.
func judgeHost(p Peer, ex explained, opts Options) []Check {
	name := p.Name
	peer := Check{Name: "peer " + name}
	switch {
	case p.Missing:
		peer.Result, peer.Detail = Fail, "not in this node's tailnet"
		peer.Hint = "`gpumesh status` lists the peers this node sees: check the name, and that the host joined the same tailnet (same control server)"
		return []Check{peer}
	case p.PingError != "" && !p.Online:
		peer.Result, peer.Detail = Fail, "offline"
		if p.LastSeen != nil {
			peer.Detail += ", last seen " + p.LastSeen.UTC().Format(time.RFC3339)
		}
		peer.Hint = "the control server has not heard from it: is the machine up and `gpumesh serve` running?"
		return []Check{peer}
	case p.PingError != "":
		peer.Result, peer.Detail = Fail, "no answer over the tailnet: "+p.PingError
		peer.Hint = "the host is down, or its network blocks WireGuard: check that `gpumesh serve` runs there and that UDP is not filtered both ways"
		return []Check{peer}
	case p.Path == PathRelayed:
		peer.Result, peer.Detail = Warn, fmt.Sprintf("relayed through %s, %s", p.Via, ms(p.LatencyMS))
		peer.Hint = "it works, but every packet takes a detour: for a direct path let UDP through between the two machines (fix the WireGuard port with --wg-port and open it on the host's firewall)"
	default:
		peer.Result, peer.Detail = OK, fmt.Sprintf("direct (%s), %s", p.Via, ms(p.LatencyMS))
	}
	checks := []Check{peer}

	svc := Check{Name: "service " + name}
	if why, ok := strings.CutPrefix(p.ServiceError, "PermissionDenied: "); ok && p.GPU == nil {
		// A host refuses a node its policy gives nothing before it says
		// anything else: the service answers, the policy check fails.
		svc.Result, svc.Detail = OK, fmt.Sprintf("%s:%d answers, and refuses this node", name, opts.Port)
		pol := Check{Name: "policy " + name, Result: Fail, Detail: strings.TrimPrefix(why, "gpumesh: ")}
		pol.Hint = fmt.Sprintf("ask %s's owner for a rule that names this node; they can check one with `gpumesh policy explain POLICY --as NODE --kernel %s`", name, opts.Kernel)
		return append(checks, svc, pol)
	}
	if p.GPU == nil {
		svc.Result = Fail
		svc.Detail = fmt.Sprintf("%s:%d does not answer: %s", name, opts.Port, p.ServiceError)
		svc.Hint = fmt.Sprintf("is `gpumesh serve` running on %s, on port %d (--port)?", name, opts.Port)
		return append(checks, svc)
	}
	g := p.GPU
	svc.Result = OK
	svc.Detail = fmt.Sprintf("%s answers: %s backend, %s; it sees this node as %q", g.Endpoint, g.Backend, plural(len(g.Devices), "device"), g.SeesUsAs)
	checks = append(checks, svc)

	pol := Check{Name: "policy " + name}
	switch {
	case ex.err != nil:
		pol.Result, pol.Detail = Fail, "cannot ask: "+status.Convert(ex.err).Message()
		pol.Hint = "the host may run an older gpumesh"
	case ex.res.GetAllow():
		pol.Result, pol.Detail = OK, ex.res.GetReason()
		if c := ex.res.GetClass(); c != "" {
			pol.Detail += " (class " + c + ")"
		}
	default:
		pol.Result, pol.Detail = Fail, ex.res.GetReason()
		pol.Hint = fmt.Sprintf("ask %s's owner for a rule that names %q; they can check one with `gpumesh policy explain POLICY --as %s --kernel %s`",
			name, ex.res.GetCaller(), ex.res.GetCaller(), opts.Kernel)
	}
	checks = append(checks, pol)
	return append(checks, judgeGPU(name, g, opts.NeedCUDA))
}

// judgeGPU compares the host's GPUs with what the client needs.
func judgeGPU(name string, g *GPUHost, needCUDA string) Check {
	c := Check{Name: "gpu " + name}
	if g.Backend != "cuda" {
		c.Result, c.Detail = Warn, fmt.Sprintf("no GPU in use: the %s backend runs the built-in kernels (%s)", g.Backend, g.Status)
		c.Hint = "on a machine with an NVIDIA GPU, `gpumesh serve` uses it once the driver is installed"
		if needCUDA != "" {
			c.Result, c.Detail = Fail, fmt.Sprintf("CUDA %s is needed, but %s serves no GPU (%s)", needCUDA, name, g.Status)
		}
		return c
	}
	if len(g.Devices) == 0 {
		c.Result, c.Detail, c.Hint = Fail, "the CUDA backend reports no GPU: "+g.Status, "check nvidia-smi on "+name
		return c
	}
	var parts, short []string
	for _, d := range g.Devices {
		parts = append(parts, fmt.Sprintf("gpu %d %s (driver %s, CUDA %s)", d.Index, d.Name, d.Driver, d.CUDA))
		if needCUDA != "" {
			switch cmp, ok := compareVersions(d.CUDA, needCUDA); {
			case !ok:
				short = append(short, fmt.Sprintf("gpu %d reports CUDA %q", d.Index, d.CUDA))
			case cmp < 0:
				short = append(short, fmt.Sprintf("gpu %d supports CUDA %s", d.Index, d.CUDA))
			}
		}
	}
	c.Detail = strings.Join(parts, "; ")
	if len(short) > 0 {
		c.Result = Fail
		c.Detail = fmt.Sprintf("the client needs CUDA %s: %s", needCUDA, strings.Join(short, ", "))
		c.Hint = fmt.Sprintf("upgrade the NVIDIA driver on %s (a driver supports CUDA up to the version it reports), or build the client for an older CUDA", name)
		return c
	}
	c.Result = OK
	return c
}

// compareVersions compares dotted versions ("12.8" < "12.10"); ok is false
// when either is not one.
func compareVersions(a, b string) (int, bool) {
	pa, oka := splitVersion(a)
	pb, okb := splitVersion(b)
	if !oka || !okb {
		return 0, false
	}
	for i := 0; i < max(len(pa), len(pb)); i++ {
		var x, y int
		if i < len(pa) {
			x = pa[i]
		}
		if i < len(pb) {
			y = pb[i]
		}
		if x != y {
			if x < y {
				return -1, true
			}
			return 1, true
		}
	}
	return 0, true
}

func splitVersion(v string) ([]int, bool) {
	if v == "" {
		return nil, false
	}
	var out []int
	for _, f := range strings.Split(v, ".") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return nil, false
		}
		out = append(out, n)
	}
	return out, true
}

func ms(v float64) string {
	switch {
	case v <= 0:
		return "latency unknown"
	case v < 10:
		return fmt.Sprintf("%.2fms", v)
	default:
		return fmt.Sprintf("%.0fms", v)
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// JoinFailed is Doctor's answer when the node could not even join: the
// join's error, and whether the control server answers at all.
func JoinFailed(ctx context.Context, controlURL string, err error, timeout time.Duration) []Check {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return []Check{
		{Name: "tailnet", Result: Fail, Detail: "cannot join: " + err.Error(),
			Hint: "a first join needs an auth key (--authkey, --authkey-file or TS_AUTHKEY); later ones reuse the state in --state-dir"},
		checkControl(ctx, controlURL, timeout),
	}
}
