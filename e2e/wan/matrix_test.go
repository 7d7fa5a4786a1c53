package wan

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/e2e/wanlab"
	"github.com/gpumesh/gpumesh/overlay/wg/wgconfig"
)

// The matrix's knobs: go test -bench BenchmarkWAN ./e2e/wan -args -wan.rtt 20 ...
// (make bench-wan WAN='-wan.rtt 20 ...').
var (
	flagModes   = flag.String("wan.modes", "tailnet,wg", "overlays to measure: tailnet, wg (netstack), wgtun (kernel TUN), tailscaled (the system's tailscaled, kernel TCP)")
	flagRTT     = flag.String("wan.rtt", "1,20,80", "round-trip times, ms")
	flagLoss    = flag.String("wan.loss", "0,0.1,1", "loss in each direction, %")
	flagRate    = flag.String("wan.rate", "100,1000", "link rates, Mbit/s")
	flagGoal    = flag.Bool("wan.goal", true, "add the goal cell, 40 ms / 0.5 % / 100 Mbit/s")
	flagCells   = flag.String("wan.cells", "", "only these cells, RTT/loss/rate each (e.g. 40/0.5/100,80/1/1000); overrides -wan.rtt, -wan.loss, -wan.rate and -wan.goal")
	flagOps     = flag.String("wan.ops", "raw,write,read,quic,p99", "what to measure in each cell")
	flagLoads   = flag.String("wan.loads", "same,sep", "p99 under a bulk Read on the same client (same) and on a client of its own (sep)")
	flagStripes = flag.String("wan.stripes", "1", "bulk connections in parallel, one row each (e.g. 1,8)")
	flagBytes   = flag.Int64("wan.bytes", 32<<20, "bytes per bulk transfer, at most")
	flagCap     = flag.Duration("wan.cap", 10*time.Second, "time limit of each transfer and p99 series")
	flagCalls   = flag.Int("wan.calls", 200, "interactive calls per p99 series, at most")
	flagWindow  = flag.Int("wan.window", 0, "gRPC flow-control window of Write and Read clients, MiB (0: gpusvc's 16 MiB)")
	flagTCP     = flag.String("wan.tcp", "", "netstack TCP settings of tailnet and wg (netstack) nodes, e.g. cc=cubic,rbuf=32,sbuf=32,rack=1 (MiB)")
	flagQueue   = flag.Duration("wan.queue", 0, "the bottleneck's buffer, as time at the link rate; 0: one round trip (one bandwidth-delay product), at least 20 ms")
)

// cell is one link condition.
type cell struct {
	rtt  time.Duration
	loss float64 // each direction, fraction
	rate int64   // bits/s
}

func (c cell) String() string {
	return fmt.Sprintf("%s/%g%%/%s", c.rtt, c.loss*100, mbit(c.rate))
}

func (c cell) name() string {
	return fmt.Sprintf("rtt%s-loss%g-%s", c.rtt, c.loss*100, mbit(c.rate))
}

func mbit(r int64) string {
	if r >= 1e9 && r%1e9 == 0 {
		return fmt.Sprintf("%dG", r/1e9)
	}
	return fmt.Sprintf("%dM", r/1e6)
}

// impairment is the cell as each direction of the lab's link: half the
// round trip, the loss and the rate, and a tail-drop buffer of one
// bandwidth-delay product (the classic rule for router buffers), at least
// 20 ms, unless -wan.queue says otherwise.
func (c cell) impairment() wanlab.Impairment {
	q := *flagQueue
	if q == 0 {
		q = max(c.rtt, 20*time.Millisecond)
	}
	return wanlab.Impairment{Delay: c.rtt / 2, Loss: c.loss, Rate: c.rate, Queue: q}
}

// cells lists the cells the flags select.
func cells() ([]cell, error) {
	var out []cell
	if *flagCells != "" {
		for _, s := range strings.Split(*flagCells, ",") {
			f := strings.Split(s, "/")
			if len(f) != 3 {
				return nil, fmt.Errorf("cell %q: want RTT/loss/rate", s)
			}
			c, err := parseCell(f[0], f[1], f[2])
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		return out, nil
	}
	for _, rate := range strings.Split(*flagRate, ",") {
		for _, rtt := range strings.Split(*flagRTT, ",") {
			for _, loss := range strings.Split(*flagLoss, ",") {
				c, err := parseCell(rtt, loss, rate)
				if err != nil {
					return nil, err
				}
				out = append(out, c)
			}
		}
	}
	if *flagGoal {
		out = append(out, cell{rtt: 40 * time.Millisecond, loss: 0.005, rate: 100e6})
	}
	return out, nil
}

func parseCell(rtt, loss, rate string) (cell, error) {
	r, err1 := strconv.ParseFloat(rtt, 64)
	l, err2 := strconv.ParseFloat(loss, 64)
	m, err3 := strconv.ParseFloat(rate, 64)
	if err1 != nil || err2 != nil || err3 != nil || r < 0 || l < 0 || l > 100 || m <= 0 {
		return cell{}, fmt.Errorf("cell %s/%s/%s: want ms/%%/Mbit/s", rtt, loss, rate)
	}
	return cell{rtt: time.Duration(r * float64(time.Millisecond)), loss: l / 100, rate: int64(m * 1e6)}, nil
}

// startMode starts the roles of an overlay mode in the lab (the link
// perfect meanwhile) and returns the client, ready.
func startMode(tb testing.TB, lab *wanlab.Lab, mode string) (*proc, error) {
	tcp := envTCP + "=" + *flagTCP
	var hostEnv, clientEnv []string
	switch mode {
	case "tailnet", "tailscaled":
		tn := start(tb, lab.R, "tailnet", envRole+"=tailnet")
		control, err := tn.until("CONTROL ")
		if err != nil {
			return nil, err
		}
		hostEnv = []string{envControl + "=" + control}
		clientEnv = hostEnv
		if mode == "tailscaled" {
			if hostEnv, clientEnv, err = startTailscaleds(tb, lab, control); err != nil {
				return nil, err
			}
		}
	case "wg", "wgtun":
		dir := tb.TempDir()
		host, laptop, err := wgConfigs(dir)
		if err != nil {
			return nil, err
		}
		hostEnv, clientEnv = []string{envWGConf + "=" + host}, []string{envWGConf + "=" + laptop}
		if mode == "wgtun" {
			cc, err := kernelTCPEnv(lab)
			if err != nil {
				return nil, err
			}
			hostEnv, clientEnv = append(hostEnv, cc...), append(clientEnv, cc...)
		}
	default:
		return nil, fmt.Errorf("unknown mode %q", mode)
	}
	host := start(tb, lab.A, "host", append(hostEnv, envRole+"=host", envMode+"="+mode, tcp)...)
	addr, err := host.until("ADDR ")
	if err != nil {
		return nil, err
	}
	if _, err := host.until("READY"); err != nil {
		return nil, err
	}
	cl := start(tb, lab.B, "client", append(clientEnv, envRole+"=client", envMode+"="+mode, tcp, envHostAddr+"="+addr)...)
	if _, err := cl.until("READY"); err != nil {
		return nil, err
	}
	return cl, nil
}

// wgConfigs writes the host's and the laptop's wg-quick files into dir.
func wgConfigs(dir string) (host, laptop string, err error) {
	hk, err1 := wgconfig.NewPrivateKey()
	lk, err2 := wgconfig.NewPrivateKey()
	if err1 != nil || err2 != nil {
		return "", "", fmt.Errorf("wireguard keys: %v %v", err1, err2)
	}
	files := map[string]string{
		"host.conf": fmt.Sprintf("[Interface]\n# Name = gpu-host\nPrivateKey = %s\nAddress = 10.77.0.1/24\nListenPort = 51820\n\n"+
			"[Peer]\n# Name = laptop\nPublicKey = %s\nAllowedIPs = 10.77.0.2/32\nEndpoint = %s:51820\n", hk, lk.PublicKey(), wanlab.AddrB),
		"laptop.conf": fmt.Sprintf("[Interface]\n# Name = laptop\nPrivateKey = %s\nAddress = 10.77.0.2/24\nListenPort = 51820\n\n"+
			"[Peer]\n# Name = gpu-host\nPublicKey = %s\nAllowedIPs = 10.77.0.1/32\nEndpoint = %s:51820\n", lk, hk.PublicKey(), wanlab.AddrA),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			return "", "", err
		}
	}
	return filepath.Join(dir, "host.conf"), filepath.Join(dir, "laptop.conf"), nil
}

// row is one (mode, cell, stripes) line of the table.
type row struct {
	mode      string
	cell      cell
	stripes   int
	load      [2]string // /proc/loadavg's 1-minute figure before and after
	ping      result
	rawUp     result
	rawDown   result
	write     result
	read      result
	quicUp    result
	quicDown  result
	idle      result
	same, sep result // p99 under load
	errs      []string
}

// measureCell runs the selected operations in one cell, each once the
// lab is quiet.
func measureCell(cl *proc, lab *wanlab.Lab, mode string, c cell) []*row {
	ops := set(*flagOps)
	loads := set(*flagLoads)
	var rows []*row
	var ping result
	for i, s := range strings.Split(*flagStripes, ",") {
		k, _ := strconv.Atoi(s)
		r := &row{mode: mode, cell: c, stripes: max(k, 1), load: [2]string{loadavg(), ""}}
		rows = append(rows, r)
		try := func(into *result, o op) {
			waitQuiet(lab)
			res, err := cl.do(o)
			*into = res
			if err != nil {
				r.errs = append(r.errs, fmt.Sprintf("%s %s: %v", o.Kind, o.Dir, err))
			}
		}
		if i == 0 {
			try(&ping, op{Kind: "ping", Calls: 20, Cap: *flagCap})
		}
		r.ping = ping
		bulk := op{Bytes: *flagBytes, Cap: *flagCap, Stripes: r.stripes, Window: int32(*flagWindow << 20)}
		if ops["raw"] || ops["write"] {
			try(&r.rawUp, with(bulk, "raw", "up"))
		}
		if ops["raw"] || ops["read"] {
			try(&r.rawDown, with(bulk, "raw", "down"))
		}
		if ops["write"] {
			// Writes run to the end: sized to what raw TCP moved in the cap.
			w := with(bulk, "write", "")
			w.Bytes = min(*flagBytes, max(1<<20, int64(r.rawUp.MBps()*1e6*flagCap.Seconds())&^(1<<20-1)))
			try(&r.write, w)
		}
		if ops["read"] {
			try(&r.read, with(bulk, "read", ""))
		}
		if ops["quic"] {
			try(&r.quicUp, with(bulk, "quic", "up"))
			try(&r.quicDown, with(bulk, "quic", "down"))
		}
		if ops["p99"] && i == 0 {
			p := op{Kind: "p99", Calls: *flagCalls, Cap: *flagCap}
			try(&r.idle, p)
			if loads["same"] {
				p.Load = "same"
				try(&r.same, p)
			}
			if loads["sep"] {
				p.Load = "sep"
				try(&r.sep, p)
			}
		}
		r.load[1] = loadavg()
	}
	return rows
}

// waitQuiet waits until the lab carries almost nothing (what the last
// operation left in flight has drained), 15 s at most.
func waitQuiet(lab *wanlab.Lab) {
	count := func() uint64 { ab, ba := lab.Stats(); return ab.In + ba.In }
	last, still := count(), 0
	for range 150 {
		time.Sleep(100 * time.Millisecond) // polling the lab's counters
		cur := count()
		if cur-last < 10 { // keepalives and the like
			if still++; still == 3 {
				return
			}
		} else {
			still = 0
		}
		last = cur
	}
}

func with(o op, kind, dir string) op {
	o.Kind, o.Dir = kind, dir
	return o
}

func set(list string) map[string]bool {
	m := map[string]bool{}
	for _, s := range strings.Split(list, ",") {
		m[strings.TrimSpace(s)] = true
	}
	return m
}

// loadavg is the machine's 1-minute load average.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

// BenchmarkWAN runs the matrix: for each overlay mode, a lab, the roles,
// and every cell; each cell reports its figures as ratios to the link
// rate and to raw TCP in the same cell, and the whole run prints one
// table at the end. Progress lines go to stderr as cells finish.
func BenchmarkWAN(b *testing.B) {
	cs, err := cells()
	if err != nil {
		b.Fatal(err)
	}
	var rows []*row
	for _, mode := range strings.Split(*flagModes, ",") {
		b.Run(mode, func(b *testing.B) {
			lab := wanlab.New(b, wanlab.Config{Seed: 1})
			t0 := time.Now()
			cl, err := startMode(b, lab, mode)
			if err != nil {
				b.Fatal(err)
			}
			fmt.Fprintf(os.Stderr, "%s: roles up in %v\n", mode, time.Since(t0).Round(time.Second))
			for _, c := range cs {
				b.Run(c.name(), func(b *testing.B) {
					if err := lab.Set(c.impairment(), c.impairment()); err != nil {
						b.Fatal(err)
					}
					t0 := time.Now()
					rs := measureCell(cl, lab, mode, c)
					rows = append(rows, rs...)
					ab, ba := lab.Stats()
					for _, r := range rs {
						fmt.Fprintf(os.Stderr, "%s (%v; lab: A→B lost %d overflow %d, B→A lost %d overflow %d)\n",
							strings.Join(r.cells(), " | "), time.Since(t0).Round(time.Second), ab.Lost, ab.Overflow, ba.Lost, ba.Overflow)
						for _, e := range r.errs {
							fmt.Fprintf(os.Stderr, "  error: %s\n", e)
						}
					}
					report(b, rs[0])
				})
			}
			if err := lab.Set(wanlab.Impairment{}, wanlab.Impairment{}); err != nil {
				b.Fatal(err)
			}
		})
	}
	printTable(os.Stdout, rows)
}

// report gives a cell's figures to the testing package.
func report(b *testing.B, r *row) {
	link := float64(r.cell.rate) / 8 / 1e6
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"write-x-link", r.write.MBps() / link}, {"read-x-link", r.read.MBps() / link},
		{"write-x-raw", ratio(r.write.MBps(), r.rawUp.MBps())}, {"read-x-raw", ratio(r.read.MBps(), r.rawDown.MBps())},
		{"quicup-x-raw", ratio(r.quicUp.MBps(), r.rawUp.MBps())}, {"quicdown-x-raw", ratio(r.quicDown.MBps(), r.rawDown.MBps())},
		{"p99same-x-idle", ratio(float64(r.same.P99us), float64(r.idle.P99us))},
		{"p99sep-x-idle", ratio(float64(r.sep.P99us), float64(r.idle.P99us))},
	} {
		b.ReportMetric(f.v, f.name)
	}
	b.ReportMetric(0, "ns/op")
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// cells formats a row's figures: MB/s with the ratio to the link rate
// and, for gpumesh and QUIC, to raw TCP in the same direction.
func (r *row) cells() []string {
	link := float64(r.cell.rate) / 8 / 1e6
	bulk := func(x result, raw *result) string {
		if x.Seconds == 0 {
			return "–"
		}
		s := fmt.Sprintf("%.1f (%.2f", x.MBps(), x.MBps()/link)
		if raw != nil {
			s += fmt.Sprintf(", %.2f", ratio(x.MBps(), raw.MBps()))
		}
		return s + ")"
	}
	ms := func(us int64) string { return fmt.Sprintf("%.1f", float64(us)/1000) }
	p99 := func(x result) string {
		if x.Calls == 0 {
			return "–"
		}
		return fmt.Sprintf("%s (%.1f)", ms(x.P99us), ratio(float64(x.P99us), float64(r.idle.P99us)))
	}
	idle := "–"
	if r.idle.Calls > 0 {
		idle = fmt.Sprintf("%s (%.1f)", ms(r.idle.P99us), ratio(float64(r.idle.P99us), float64(r.ping.P50us)))
	}
	return []string{r.mode, r.cell.rtt.String(), fmt.Sprintf("%g%%", r.cell.loss*100), mbit(r.cell.rate), strconv.Itoa(r.stripes),
		r.load[0] + "→" + r.load[1], ms(r.ping.P50us),
		bulk(r.rawUp, nil), bulk(r.rawDown, nil), bulk(r.write, &r.rawUp), bulk(r.read, &r.rawDown),
		bulk(r.quicUp, &r.rawUp), bulk(r.quicDown, &r.rawDown), idle, p99(r.same), p99(r.sep)}
}

// printTable prints every row as one Markdown table.
func printTable(w io.Writer, rows []*row) {
	head := []string{"mode", "RTT", "loss", "link", "conns", "load", "ping ms",
		"raw↑ MB/s (×link)", "raw↓", "Write (×link, ×raw↑)", "Read (×link, ×raw↓)", "QUIC↑ (×link, ×raw↑)", "QUIC↓ (×link, ×raw↓)",
		"p99 idle ms (×ping)", "p99 bulk same conn (×idle)", "p99 bulk own conn (×idle)"}
	fmt.Fprintf(w, "\n| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat("---|", len(head)))
	for _, r := range rows {
		fmt.Fprintf(w, "| %s |\n", strings.Join(r.cells(), " | "))
	}
	fmt.Fprintln(w)
}
