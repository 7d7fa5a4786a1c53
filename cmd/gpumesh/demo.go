package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/examples"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/internal/human"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/devnet"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

func newDemoCmd() *cobra.Command {
	var (
		policyPath string
		size       int
		verbose    bool
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run gpumesh end to end on an embedded tailnet (no account needed)",
		Long: `demo starts a tailnet on 127.0.0.1 (control server, DERP relay, STUN), a
gpu-host serving the compute endpoint with the demo policy, a laptop the policy
allows and a stranger it does not name. The laptop runs a matrix multiply
remotely and checks it locally; the stranger is refused. Nothing leaves this
machine. Exits 0 only if every check held.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			d := &demo{out: cmd.OutOrStdout(), size: size, verbose: verbose}
			if err := d.run(ctx, policyPath); err != nil {
				return &exitError{code: 1, err: err}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&policyPath, "policy", "", "policy for gpu-host (default: the embedded examples/policy.hcl)")
	cmd.Flags().IntVar(&size, "size", 512, "matrix side for the remote matrix multiply")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print the tailnet's and the host's debug logs to stderr")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up after this long")
	return cmd
}

type demo struct {
	out     io.Writer
	size    int
	verbose bool
	checks  int

	mu    sync.Mutex
	calls []gpusvc.CallRecord // what gpu-host saw; guarded by mu
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *demo) ok(format string, args ...any) {
	d.checks++
	d.say("  ✓ "+format, args...)
}

func (d *demo) run(ctx context.Context, policyPath string) error {
	t0 := time.Now()
	// The tailnet's and the host's debug logs, in gpumesh's one style, on
	// stderr with -v; the DERP and STUN servers log through the standard
	// logger, which goes there too (or nowhere).
	debug := logger(d.verbose)
	logf := func(format string, args ...any) { debug.Debug(fmt.Sprintf(format, args...)) }
	log.SetFlags(0)
	log.SetOutput(lineWriter{debug})

	if policyPath == "" {
		dir, err := os.MkdirTemp("", "gpumesh-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		policyPath = filepath.Join(dir, "policy.hcl")
		if err := os.WriteFile(policyPath, examples.DemoPolicy, 0o600); err != nil {
			return err
		}
	}
	store, err := policy.NewStore(policyPath, logf)
	if err != nil {
		return fmt.Errorf("demo policy: %w", err)
	}

	d.say("gpumesh demo: a tailnet on 127.0.0.1; nothing leaves this machine")
	tn, err := devnet.Start(devnet.Options{Logf: logf})
	if err != nil {
		return err
	}
	defer tn.Close()
	d.say("  tailnet   control %s, DERP and STUN on 127.0.0.1 only", tn.ControlURL)

	names := []string{"gpu-host", "laptop", "stranger"}
	tags := map[string][]string{"gpu-host": {"tag:gpu"}}
	nodes := make(map[string]*tsnet.Node)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := tn.Join(ctx, name, tags[name]...)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s joining: %w", name, err))
				return
			}
			nodes[name] = n
		}()
	}
	wg.Wait()
	for _, n := range nodes {
		defer n.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, name := range names {
		d.say("  %-9s %v", name, nodes[name].Addrs())
	}

	host, err := node.StartHost(ctx, node.HostConfig{
		Overlay: nodes["gpu-host"], Name: "gpu-host", Policy: store, Logger: debug,
		QoS: &node.QoSConfig{UDPPort: nodes["gpu-host"].UDPPort()},
		OnCall: func(r gpusvc.CallRecord) {
			d.mu.Lock()
			d.calls = append(d.calls, r)
			d.mu.Unlock()
		},
	})
	if err != nil {
		return err
	}
	defer host.Close()
	d.say("  gpu-host serves the compute endpoint on tailnet port %d, policy %s (%d nodes up in %s)",
		gpusvc.DefaultPort, filepath.Base(policyPath), len(nodes), human.Duration(time.Since(t0)))
	d.say("")

	// 1. The endpoint exists only inside the tailnet.
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(gpusvc.DefaultPort)), time.Second); err == nil {
		c.Close()
		return errors.New("the endpoint answered on 127.0.0.1: it must exist only inside the tailnet")
	}
	d.ok("127.0.0.1:%d refuses connections: the endpoint exists only inside the tailnet", gpusvc.DefaultPort)

	// 2. laptop, allowed: devices, a matrix multiply and a saxpy, checked locally.
	laptop, err := node.Dial(nodes["laptop"], "gpu-host")
	if err != nil {
		return err
	}
	defer laptop.Close()
	dev, err := laptop.Devices(ctx)
	if err != nil {
		return fmt.Errorf("laptop → gpu-host Devices: %w", err)
	}
	if dev.GetCaller() != "laptop" {
		return fmt.Errorf("gpu-host identified the laptop as %q", dev.GetCaller())
	}
	d.ok("laptop → gpu-host Devices: backend %s, %d device(s); the host says the caller is %q (from WhoIs, not the request)",
		dev.GetBackend(), len(dev.GetDevices()), dev.GetCaller())

	for _, k := range []struct {
		name string
		size int
	}{{"matrix_mul", d.size}, {"saxpy", 16}} {
		args, err := randomInputs(k.name, k.size)
		if err != nil {
			return err
		}
		var line stringWriter
		if err := runAndReport(ctx, &line, laptop, "gpu-host", k.name, args, true); err != nil {
			return fmt.Errorf("laptop → gpu-host: %w", err)
		}
		d.ok("laptop → gpu-host %s", line.trim())
	}

	// 3. stranger, not in the policy: refused.
	stranger, err := node.Dial(nodes["stranger"], "gpu-host")
	if err != nil {
		return err
	}
	defer stranger.Close()
	args, _ := randomInputs("matrix_mul", 8)
	_, err = stranger.Compute(ctx, "matrix_mul", args...)
	if status.Code(err) != codes.PermissionDenied {
		return fmt.Errorf("stranger → gpu-host matrix_mul: got %v, want PermissionDenied", err)
	}
	d.ok("stranger → gpu-host matrix_mul refused: %s", errorText(err))

	// 4. What the host recorded, attributed by tailnet identity.
	d.say("")
	d.say("gpu-host call log (identity from the tailnet):")
	calls := d.callsOnceRecorded(ctx, "stranger")
	seen := map[string]bool{}
	for _, r := range calls {
		verdict := "allow (rule " + strconv.Quote(r.Rule) + ")"
		if !r.Allow {
			verdict = "deny: " + r.Reason
		}
		d.say("  %-9s %-8s %-10s %-17s %-7s %s", r.Caller.Node, r.Method, r.Kernel, r.Code, human.Duration(r.Duration), verdict)
		seen[r.Caller.Node+"/"+r.Kernel+"/"+r.Code.String()] = true
		seen[r.Caller.Node+"/"+r.Code.String()] = true
	}
	// The host refuses the stranger before reading anything it sends: its
	// line names the caller and the policy's reason, no kernel.
	for _, want := range []string{"laptop/matrix_mul/OK", "laptop/saxpy/OK", "stranger/PermissionDenied"} {
		if !seen[want] {
			return fmt.Errorf("gpu-host's log lacks %s", want)
		}
	}
	d.ok("every call is in the host's log under the caller's tailnet name")

	// 5. QoS: the host's WireGuard packets carry AF41; replies were scheduled by class.
	qs := host.QoSStatus()
	if qs.Marking == nil || qs.Marking.Err != nil || qs.Marking.Sockets == 0 {
		return fmt.Errorf("outer DSCP marking on gpu-host did not take: %+v", qs.Marking)
	}
	var classes []string
	for _, c := range qs.Classes {
		if c.Bytes > 0 {
			classes = append(classes, fmt.Sprintf("%s %d bytes", c.Name, c.Bytes))
		}
	}
	d.ok("gpu-host marks its %d WireGuard UDP socket(s) on port %d with DSCP %s; replies scheduled by class: %s",
		qs.Marking.Sockets, qs.Marking.Port, qs.Marking.DSCP, strings.Join(classes, ", "))
	d.say("")
	d.say("demo: PASS, %d checks held in %s", d.checks, human.Duration(time.Since(t0)))
	return nil
}

// stringWriter collects one line of output.
type stringWriter struct{ b []byte }

func (w *stringWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }
func (w *stringWriter) trim() string {
	s := string(w.b)
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}

// callsOnceRecorded returns the host's call records once one from node is
// among them, or after a few seconds: the host records a refusal at
// admission from a goroutine of its own, so its line may follow the answer.
func (d *demo) callsOnceRecorded(ctx context.Context, node string) []gpusvc.CallRecord {
	deadline := time.Now().Add(5 * time.Second)
	for {
		d.mu.Lock()
		calls := append([]gpusvc.CallRecord(nil), d.calls...)
		d.mu.Unlock()
		for _, r := range calls {
			if r.Caller.Node == node {
				return calls
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return calls
		}
		time.Sleep(10 * time.Millisecond)
	}
}
