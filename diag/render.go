package diag

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/gpumesh/gpumesh/internal/human"
	"github.com/gpumesh/gpumesh/pool"
)

// WriteStatus renders r as text: this node, then the GPU hosts with their
// path, latency and GPUs, then the other peers.
func WriteStatus(w io.Writer, r Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "this node: %s %s, %s\n", r.Self.Name, addrs(r.Self.Addrs), strings.ToLower(r.Self.State))
	for _, h := range r.Self.Health {
		fmt.Fprintf(&b, "  health: %s\n", h)
	}
	var hosts, others []Peer
	if r.Self.GPU != nil { // a GPU host lists itself among the GPU hosts
		hosts = append(hosts, Peer{Name: r.Self.Name, Addrs: r.Self.Addrs, Path: "this node", GPU: r.Self.GPU})
	}
	for _, p := range r.Peers {
		if p.GPU != nil || p.Asked || p.Missing {
			hosts = append(hosts, p)
		} else {
			others = append(others, p)
		}
	}
	if len(hosts) == 0 {
		b.WriteString("no GPU hosts answer\n")
	} else {
		b.WriteString("GPU hosts:\n")
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		for _, p := range hosts {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", p.Name, addrs(p.Addrs), pathOf(p), serviceOf(p))
		}
		tw.Flush()
		for _, p := range hosts {
			if p.GPU == nil {
				continue
			}
			for _, d := range p.GPU.Devices {
				fmt.Fprintf(&b, "  %s gpu %d: %s\n", p.Name, d.Index, deviceLine(d))
			}
		}
	}
	if r.Pool != nil {
		if err := pool.WriteReport(&b, *r.Pool); err != nil {
			return err
		}
	}
	if len(others) > 0 {
		b.WriteString("other peers:\n")
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		for _, p := range others {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", p.Name, addrs(p.Addrs), pathOf(p))
		}
		tw.Flush()
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func addrs(a []string) string {
	if len(a) == 0 {
		return "-"
	}
	return strings.Join(a, ",")
}

func pathOf(p Peer) string {
	switch {
	case p.Missing:
		return "not in the tailnet"
	case p.PingError != "" && !p.Online:
		return "offline"
	case p.PingError != "":
		return "unreachable"
	case p.Path == PathDirect:
		return "direct " + ms(p.LatencyMS)
	case p.Path == PathRelayed:
		return "relayed (" + p.Via + ") " + ms(p.LatencyMS)
	}
	return p.Path
}

func serviceOf(p Peer) string {
	switch {
	case p.GPU != nil:
		return fmt.Sprintf("%s backend, %s", p.GPU.Backend, plural(len(p.GPU.Devices), "device"))
	case p.Missing || p.PingError != "":
		return "-"
	case p.ServiceError != "":
		return "no answer on the compute port"
	}
	return "-"
}

func deviceLine(d Device) string {
	parts := []string{d.Name}
	if d.MemoryTotal > 0 {
		parts = append(parts, fmt.Sprintf("memory %s of %s used", human.Bytes(d.MemoryUsed), human.Bytes(d.MemoryTotal)))
	} else {
		parts = append(parts, fmt.Sprintf("%s in buffers", human.Bytes(d.MemoryUsed)))
	}
	if d.Driver != "" || d.CUDA != "" {
		parts = append(parts, fmt.Sprintf("%d%% busy", d.Utilization), fmt.Sprintf("%d°C", d.Temperature),
			fmt.Sprintf("%.0fW", float64(d.PowerMW)/1000), "driver "+d.Driver, "CUDA "+d.CUDA)
	}
	return strings.Join(parts, ", ")
}

// WriteChecks renders checks as text: one line each, "ok", "warn" or
// "fail", the hint on the next line.
func WriteChecks(w io.Writer, cs []Check) error {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, c := range cs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Result, c.Name, c.Detail)
		if c.Hint != "" && c.Result != OK {
			fmt.Fprintf(tw, "\t\thint: %s\n", c.Hint)
		}
	}
	tw.Flush()
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON renders v (a Report, checks, or any command's JSON output)
// as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}
