// Package priority measures what QoS does for interactive calls when a bulk
// transfer saturates the GPU host's egress link. The host runs in one
// network namespace, a laptop and a trainer in another, joined by a veth;
// the host shapes its end of the veth to a fixed rate with its own HTB tree
// (the node's --shape-link and --shape-rate), so the link, not the CPU, is
// the bottleneck, as a real uplink would be. The laptop's saxpy calls
// (class interactive) are timed idle and while the trainer reads a
// resident buffer in a loop (class bulk), in three modes:
//
//   - fifo: the tc tree classifies by DSCP only; the node's one WireGuard
//     socket gives every caller's packets the same DSCP, so they share one
//     HTB class, a FIFO.
//   - paced: the same, with the scheduler pacing all classes to 85% of the
//     link (--link-rate), so the queue forms where interactive calls
//     overtake bulk ones.
//   - routed: the node routes each peer's WireGuard endpoint to its class
//     in the tc tree (the default with shaping), so the kernel serves the
//     laptop's packets before the trainer's.
//
// Needs root and ip (iproute2); skips otherwise. The addresses are
// TEST-NET-1 on the benchmark's own veth: nothing leaves its namespaces.
package priority

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tailscale.com/ipn/store/mem"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/e2e/internal/e2etest"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
)

const (
	hostAddr = "192.0.2.1"
	peerAddr = "192.0.2.2"
	hostPort = 41641 // the host's WireGuard UDP port

	// linkRate is the host's shaped egress, bytes/s (64 Mbit/s): well
	// below what the overlay moves on these CPUs, so the link is the
	// bottleneck.
	linkRate = 8 << 20
	bufSize  = 8 << 20 // the trainer's resident buffer
)

const prioPolicy = `
version = 1
class "interactive" {
  dscp     = "EF"
  priority = 0
}
class "bulk" {
  dscp     = "AF11"
  priority = 2
}
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
  class    = "interactive"
}
rule "trainer" {
  subjects = ["trainer"]
  kernels  = ["*"]
  gpus     = ["*"]
  class    = "bulk"
}
`

// TestMain runs a role when the benchmark started this binary as one.
func TestMain(m *testing.M) {
	var err error
	switch os.Getenv("GPUMESH_PRIO_ROLE") {
	case "":
		os.Exit(m.Run())
	case "host":
		err = runHost(os.Getenv("GPUMESH_PRIO_LINK"), os.Getenv("GPUMESH_PRIO_MODE"))
	case "laptop":
		err = runLaptop(os.Getenv("GPUMESH_PRIO_CONTROL"))
	case "trainer":
		err = runTrainer(os.Getenv("GPUMESH_PRIO_CONTROL"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "role:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runHost runs the dev tailnet's servers and the GPU host, shaping link to
// linkRate, in one of the modes (see BenchmarkPriorityShapedLink); prints
// the control URL and serves until stdin closes. On "STATS" it prints the
// scheduler's and tc's per-class counters, on "QUIET" it answers once
// nothing is on its way out, on "ROUTED" once both clients have routes.
func runHost(link, mode string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if mode != "fifo" && mode != "paced" && mode != "routed" {
		return fmt.Errorf("mode %q", mode)
	}
	host, err := e2etest.StartHost(ctx, e2etest.HostOptions{
		Addr: hostAddr, Port: hostPort, Policy: prioPolicy,
		Config: func(n *tsnet.Node, cfg *node.HostConfig) {
			cfg.QoS = &node.QoSConfig{UDPPort: n.UDPPort(), DSCP: dscp.AF41, ShapeLink: link, ShapeRate: linkRate}
			if mode != "routed" {
				// Hide the node's peer paths: every packet is classified
				// by its DSCP, the one the socket gives them all.
				cfg.Overlay = struct{ overlay.Overlay }{n}
			}
			if mode == "paced" {
				cfg.QoS.LinkRate = linkRate * 85 / 100 // room for the headers
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		},
	})
	if err != nil {
		return err
	}
	defer host.Close()
	st := host.QoSStatus()
	if st.Shaping == "" {
		return fmt.Errorf("no tc tree on %s", link)
	}
	if (mode == "paced") != (st.LinkRate > 0) {
		return fmt.Errorf("mode %s but the scheduler's link rate is %d", mode, st.LinkRate)
	}
	fmt.Printf("CONTROL %s\nREADY\n", host.ControlURL)
	// sent counts the bytes the scheduler admitted and the bytes tc sent:
	// while either grows, bulk bytes are still on their way out.
	sent := func() (n int64) {
		st := host.QoSStatus()
		for _, c := range st.Classes {
			n += c.Bytes
		}
		for _, c := range st.ShapingStats {
			n += int64(c.Bytes)
		}
		return n
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "ROUTED" {
			for len(host.QoSStatus().Routes) < 2 {
				time.Sleep(50 * time.Millisecond) // polling the host's routes
			}
			fmt.Println("ROUTED")
			continue
		}
		if sc.Text() == "QUIET" {
			// Bytes the trainer's cancelled reads left in the host's
			// buffers and queues still drain; an idle phase waits until
			// they have.
			for last := int64(-1); sent() != last; {
				last = sent()
				time.Sleep(50 * time.Millisecond) // polling counters
			}
			fmt.Println("QUIET")
			continue
		}
		for _, c := range host.QoSStatus().Classes {
			fmt.Printf("CLASS %s bytes=%d chunks=%d wait-max=%v\n", c.Name, c.Bytes, c.Chunks, c.WaitMax)
		}
		for _, c := range host.QoSStatus().ShapingStats {
			fmt.Printf("CLASS tc:%s bytes=%d packets=%d drops=%d overlimits=%d\n", c.Name, c.Bytes, c.Packets, c.Drops, c.Overlimits)
		}
		fmt.Println("END")
	}
	return nil
}

// join brings up a client node in the peers' namespace and dials the host,
// waiting until the path is direct (over the veth, not the DERP relay).
func join(ctx context.Context, name, controlURL string, port uint16) (*tsnet.Node, *gpusvc.Client, error) {
	n, err := tsnet.New(tsnet.Config{
		Hostname: name, ControlURL: controlURL, Store: new(mem.Store), Ephemeral: true, Port: port,
	})
	if err != nil {
		return nil, nil, err
	}
	if _, err := n.Up(ctx); err != nil {
		n.Close()
		return nil, nil, err
	}
	c, err := node.Dial(n, "gpu-host")
	if err != nil {
		n.Close()
		return nil, nil, err
	}
	for {
		if _, err := c.Compute(ctx, "saxpy", saxpyArgs()...); err != nil {
			c.Close()
			n.Close()
			return nil, nil, err
		}
		st, err := n.LocalClient().Status(ctx)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range st.Peer {
			if p.HostName == "gpu-host" && p.CurAddr != "" {
				return n, c, nil
			}
		}
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("%s: no direct path to gpu-host: %w", name, ctx.Err())
		}
		time.Sleep(50 * time.Millisecond) // polling the path; not a test wait
	}
}

func saxpyArgs() []kernel.Arg {
	x := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{16}, make([]float32, 16))}
	return []kernel.Arg{{Kind: kernel.ArgScalar, Scalar: 2}, x, x}
}

// runLaptop joins and, for each "MEASURE n" on stdin, times n saxpy calls
// and prints "SAMPLES" and their durations in µs.
func runLaptop(controlURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n, c, err := join(ctx, "laptop", controlURL, hostPort+1)
	if err != nil {
		return err
	}
	defer n.Close()
	defer c.Close()
	fmt.Println("READY")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var count int
		if _, err := fmt.Sscanf(sc.Text(), "MEASURE %d", &count); err != nil {
			return fmt.Errorf("laptop: command %q", sc.Text())
		}
		var line strings.Builder
		line.WriteString("SAMPLES")
		for range count {
			t0 := time.Now()
			if _, err := c.Compute(ctx, "saxpy", saxpyArgs()...); err != nil {
				return err
			}
			fmt.Fprintf(&line, " %d", time.Since(t0).Microseconds())
		}
		fmt.Println(line.String())
	}
	return nil
}

// runTrainer joins and uploads a buffer. On "GO" it reads the buffer back
// in a loop, saying "FLOWING" once the first MiB of a round has arrived;
// on "PAUSE" it stops and says "PAUSED". When stdin closes it prints
// "MOVED bytes seconds" over all rounds.
func runTrainer(controlURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n, c, err := join(ctx, "trainer", controlURL, hostPort+2)
	if err != nil {
		return err
	}
	defer n.Close()
	defer c.Close()
	sess, err := c.OpenSession(ctx)
	if err != nil {
		return err
	}
	buf, err := c.Upload(ctx, sess.ID, "", bufSize, bytes.NewReader(make([]byte, bufSize)))
	if err != nil {
		return err
	}
	fmt.Println("READY")
	var (
		moved  int64
		active time.Duration
	)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() != "GO" {
			return fmt.Errorf("trainer: command %q", sc.Text())
		}
		rctx, stop := context.WithCancel(ctx)
		w := &flowWriter{flowing: make(chan struct{})}
		done := make(chan error, 1)
		t0 := time.Now()
		go func() {
			for {
				if _, err := c.Read(rctx, sess.ID, buf, 0, bufSize, w); err != nil {
					done <- err
					return
				}
			}
		}()
		select {
		case <-w.flowing:
			fmt.Println("FLOWING")
		case err := <-done:
			stop()
			return err
		}
		if !sc.Scan() || sc.Text() != "PAUSE" {
			stop()
			<-done
			return fmt.Errorf("trainer: want PAUSE, got %q", sc.Text())
		}
		stop()
		if err := <-done; rctx.Err() == nil {
			return err
		}
		moved += w.n.Load()
		active += time.Since(t0)
		fmt.Println("PAUSED")
	}
	fmt.Printf("MOVED %d %.3f\n", moved, active.Seconds())
	return nil
}

// flowWriter counts what a Read delivers and closes flowing after 1 MiB.
type flowWriter struct {
	n       atomic.Int64
	flowing chan struct{}
	once    sync.Once
}

func (w *flowWriter) Write(p []byte) (int, error) {
	if w.n.Add(int64(len(p))) >= 1<<20 {
		w.once.Do(func() { close(w.flowing) })
	}
	return len(p), nil
}

// proc is a role process the benchmark talks to line by line.
type proc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func start(b testing.TB, ns string, env ...string) *proc {
	b.Helper()
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, self, "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &proc{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	b.Cleanup(func() {
		in.Close()
		cmd.Wait()
	})
	return p
}

// until reads lines up to one starting with prefix and returns it.
func (p *proc) until(prefix string) (string, error) {
	for p.out.Scan() {
		if strings.HasPrefix(p.out.Text(), prefix) {
			return p.out.Text(), nil
		}
	}
	return "", fmt.Errorf("%s: exited before %q", p.cmd.Env[len(p.cmd.Env)-1], prefix)
}

func (p *proc) say(line string) { fmt.Fprintln(p.in, line) }

// hostStats logs the host's scheduler and tc counters.
func hostStats(b testing.TB, host *proc) {
	host.say("STATS")
	for line, err := host.until("CLASS "); err == nil && line != "END"; line, err = host.until("") {
		b.Log(line)
	}
}

// BenchmarkPriorityShapedLink: interactive saxpy p99 from the laptop, idle
// and while the trainer saturates the host's shaped egress, with the
// host's pacing off and on. Goal: loaded ≤ 2× idle with pacing.
func BenchmarkPriorityShapedLink(b *testing.B) {
	pair := e2etest.NewPair(b, "gmp", hostAddr, peerAddr)
	nsA, nsB, vA := pair.NSA, pair.NSB, pair.LinkA
	results := map[string]result{}
	for _, mode := range []string{"fifo", "paced", "routed"} {
		b.Run(mode, func(b *testing.B) {
			// The testing package runs this once with b.N = 1 and again
			// with the real N: measure once, report both times.
			r, ok := results[mode]
			if !ok {
				var err error
				if r, err = measure(b, nsA, nsB, vA, mode); err != nil {
					b.Fatal(err)
				}
				results[mode] = r
			}
			b.ReportMetric(float64(r.idle.Microseconds()), "idle-p99-µs")
			b.ReportMetric(float64(r.loaded.Microseconds()), "loaded-p99-µs")
			// The ratio is of the phases' median p99s: a phase that
			// something else on the machine disturbed moves it less than
			// it moves the p99 over all calls, reported too.
			b.ReportMetric(float64(r.loadedMed)/float64(r.idleMed), "x-idle")
			b.ReportMetric(float64(r.idleMed.Microseconds()), "idle-p99-med-µs")
			b.ReportMetric(float64(r.loadedMed.Microseconds()), "loaded-p99-med-µs")
			b.ReportMetric(float64(r.idle50.Microseconds()), "idle-p50-µs")
			b.ReportMetric(float64(r.loaded50.Microseconds()), "loaded-p50-µs")
			b.ReportMetric(r.bulk/1e6, "bulk-MB/s")
			b.ReportMetric(float64(linkRate)/1e6, "link-MB/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// result is one mode's measurement.
type result struct {
	idle, loaded       time.Duration // interactive p99 over all calls
	idleMed, loadedMed time.Duration // the median of the phases' p99s
	idle50, loaded50   time.Duration // p50 over all calls
	bulk               float64       // bytes/s the trainer moved
}

// calls is how many interactive calls each p99 is taken over, in rounds
// of an idle and a loaded phase each.
const calls, rounds = 1000, 5

func measure(b *testing.B, nsA, nsB, link, mode string) (result, error) {
	host := start(b, nsA, "GPUMESH_PRIO_LINK="+link, "GPUMESH_PRIO_MODE="+mode, "GPUMESH_PRIO_ROLE=host")
	line, err := host.until("CONTROL ")
	if err != nil {
		return result{}, err
	}
	control := strings.TrimPrefix(line, "CONTROL ")
	if _, err := host.until("READY"); err != nil {
		return result{}, err
	}
	laptop := start(b, nsB, "GPUMESH_PRIO_CONTROL="+control, "GPUMESH_PRIO_ROLE=laptop")
	trainer := start(b, nsB, "GPUMESH_PRIO_CONTROL="+control, "GPUMESH_PRIO_ROLE=trainer")
	for _, p := range []*proc{laptop, trainer} {
		if _, err := p.until("READY"); err != nil {
			return result{}, err
		}
	}
	if mode == "routed" {
		host.say("ROUTED")
		if _, err := host.until("ROUTED"); err != nil {
			return result{}, err
		}
	}
	// Idle and loaded phases alternate, so that whatever else the machine
	// does falls on both alike.
	var idle, loaded []time.Duration         // every call
	var idleP99s, loadedP99s []time.Duration // each phase's p99
	sample := func(into, p99s *[]time.Duration) error {
		laptop.say(fmt.Sprintf("MEASURE %d", calls/rounds))
		line, err := laptop.until("SAMPLES")
		if err != nil {
			return err
		}
		var phase []time.Duration
		for _, f := range strings.Fields(line)[1:] {
			us, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return fmt.Errorf("laptop said %q", line)
			}
			phase = append(phase, time.Duration(us)*time.Microsecond)
		}
		*into = append(*into, phase...)
		slices.Sort(phase)
		*p99s = append(*p99s, phase[len(phase)*99/100])
		b.Logf("%s: %d calls: p50 %v p99 %v max %v", mode, len(phase), phase[len(phase)/2], phase[len(phase)*99/100], phase[len(phase)-1])
		return nil
	}
	for round := range rounds {
		if err := sample(&idle, &idleP99s); err != nil {
			return result{}, err
		}
		if round == 0 {
			hostStats(b, host)
		}
		trainer.say("GO")
		if _, err := trainer.until("FLOWING"); err != nil {
			return result{}, err
		}
		if round == 0 {
			if out, err := exec.Command("ip", "netns", "exec", nsA, "tc", "-s", "qdisc", "show", "dev", link).CombinedOutput(); err == nil {
				b.Logf("%s: host egress under load:\n%s", mode, out)
			}
		}
		if err := sample(&loaded, &loadedP99s); err != nil {
			return result{}, err
		}
		trainer.say("PAUSE")
		if _, err := trainer.until("PAUSED"); err != nil {
			return result{}, err
		}
		host.say("QUIET")
		if _, err := host.until("QUIET"); err != nil {
			return result{}, err
		}
		if round == 0 {
			hostStats(b, host)
		}
	}
	trainer.in.Close()
	line, err = trainer.until("MOVED ")
	if err != nil {
		return result{}, err
	}
	var moved int64
	var secs float64
	if _, err := fmt.Sscanf(line, "MOVED %d %f", &moved, &secs); err != nil || secs == 0 {
		return result{}, errors.Join(fmt.Errorf("trainer said %q", line), err)
	}
	hostStats(b, host)
	q := func(ds []time.Duration, p int) time.Duration {
		slices.Sort(ds)
		return ds[len(ds)*p/100]
	}
	return result{
		idle: q(idle, 99), loaded: q(loaded, 99),
		idleMed: q(idleP99s, 50), loadedMed: q(loadedP99s, 50),
		idle50: q(idle, 50), loaded50: q(loaded, 50),
		bulk: float64(moved) / secs,
	}, nil
}

// TestRoutedClasses: with routes, the host's tc tree counts the trainer's
// download in the bulk class and the laptop's replies in the interactive
// class, though the socket gives both the same DSCP.
func TestRoutedClasses(t *testing.T) {
	pair := e2etest.NewPair(t, "gmr", hostAddr, peerAddr)
	host := start(t, pair.NSA, "GPUMESH_PRIO_LINK="+pair.LinkA, "GPUMESH_PRIO_MODE=routed", "GPUMESH_PRIO_ROLE=host")
	line, err := host.until("CONTROL ")
	if err != nil {
		t.Fatal(err)
	}
	control := strings.TrimPrefix(line, "CONTROL ")
	laptop := start(t, pair.NSB, "GPUMESH_PRIO_CONTROL="+control, "GPUMESH_PRIO_ROLE=laptop")
	trainer := start(t, pair.NSB, "GPUMESH_PRIO_CONTROL="+control, "GPUMESH_PRIO_ROLE=trainer")
	for _, p := range []*proc{host, laptop, trainer} {
		if _, err := p.until("READY"); err != nil {
			t.Fatal(err)
		}
	}
	host.say("ROUTED")
	if _, err := host.until("ROUTED"); err != nil {
		t.Fatal(err)
	}
	before := tcPackets(t, host)
	const calls = 50
	trainer.say("GO")
	if _, err := trainer.until("FLOWING"); err != nil { // 1 MiB has arrived
		t.Fatal(err)
	}
	laptop.say(fmt.Sprintf("MEASURE %d", calls))
	if _, err := laptop.until("SAMPLES"); err != nil {
		t.Fatal(err)
	}
	trainer.say("PAUSE")
	if _, err := trainer.until("PAUSED"); err != nil {
		t.Fatal(err)
	}
	after := tcPackets(t, host)
	bulk, inter := after["bulk"]-before["bulk"], after["interactive"]-before["interactive"]
	// 1 MiB needs at least 800 packets of 1280 bytes; each call is answered
	// in at least one packet.
	if bulk < 800 || inter < calls {
		t.Errorf("tc packets while the trainer read and the laptop called: bulk %d (want ≥ 800), interactive %d (want ≥ %d); all: %v",
			bulk, inter, calls, after)
	}
	t.Logf("tc packets: bulk %d, interactive %d", bulk, inter)
}

// tcPackets asks the host for its tc classes' packet counters.
func tcPackets(t *testing.T, host *proc) map[string]int64 {
	t.Helper()
	host.say("STATS")
	out := map[string]int64{}
	for {
		line, err := host.until("")
		if err != nil {
			t.Fatal(err)
		}
		if line == "END" {
			return out
		}
		var name string
		var bytes, packets int64
		if _, err := fmt.Sscanf(line, "CLASS tc:%s bytes=%d packets=%d", &name, &bytes, &packets); err == nil {
			out[name] = packets
		}
	}
}
