package pool

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Report is a pool as `gpumesh status` shows it: its hosts, and where it
// would place a kernel now and why.
type Report struct {
	Target    string     `json:"target"`
	Kernel    string     `json:"kernel"`
	Hosts     []HostInfo `json:"hosts"`
	Placement Placement  `json:"placement"`
}

// Look starts a pool with cfg, waits for its first probes and reports
// where it would place kernelName. It places nothing, and closes the pool
// before it returns.
func Look(ctx context.Context, cfg Config, kernelName string) (Report, error) {
	p, err := New(cfg)
	if err != nil {
		return Report{}, err
	}
	defer p.Close()
	if err := p.Wait(ctx); err != nil && ctx.Err() != nil {
		return Report{}, err
	}
	// No ready host is shown in the report, host by host.
	return Report{Target: p.Target().String(), Kernel: kernelName, Hosts: p.Hosts(), Placement: p.Explain(ctx, kernelName)}, nil
}

// WriteReport renders r as text: the pick and why, then each host.
func WriteReport(w io.Writer, r Report) error {
	var b strings.Builder
	pick := r.Placement.Pick
	if pick == "" {
		pick = "no host"
	}
	fmt.Fprintf(&b, "pool %s, for %s: %s\n  why: %s\n", r.Target, r.Kernel, pick, r.Placement.Why)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	shown := make(map[string]bool)
	for _, c := range r.Placement.Candidates {
		shown[c.Host] = true
		why := c.why()
		if c.State != StateReady {
			why = c.Reason
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", c.Host, c.State, why)
	}
	for _, h := range r.Hosts {
		if !shown[h.Name] {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", h.Name, h.State, h.Err)
		}
	}
	tw.Flush()
	_, err := io.WriteString(w, b.String())
	return err
}
