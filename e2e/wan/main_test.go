// Package wan measures gpumesh over an impaired WAN link (e2e/wanlab): a
// GPU host in the lab's namespace A, a laptop in B, the overlay's UDP
// packets crossing the lab's stage in R with the delay, loss and rate of
// a matrix of cells. In tailnet mode the embedded tailnet's control, DERP
// and STUN servers run in R, off the impaired path, and the laptop waits
// for a direct path (through the lab, not DERP); in WireGuard mode the two
// nodes are a static mesh (overlay/wg, netstack or kernel TUN).
//
// Each role is this test binary started again inside a namespace (ip netns
// exec) and driven over its stdin and stdout, one line per command:
// JSON operations in, "RESULT" JSON lines out.
//
// BenchmarkWAN is the matrix (make bench-wan); the tests check that both
// modes go direct through the lab. Everything needs root and skips
// otherwise. Nothing leaves the lab's namespaces.
package wan

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/e2e/wanlab"
)

// Environment of a role process.
const (
	envRole    = "GPUMESH_WAN_ROLE"    // tailnet, host or client
	envMode    = "GPUMESH_WAN_MODE"    // tailnet, wg or wgtun
	envControl = "GPUMESH_WAN_CONTROL" // the tailnet's control URL
	envWGConf  = "GPUMESH_WAN_WGCONF"  // the node's wg-quick file (WireGuard modes)
	envTCP     = "GPUMESH_WAN_TCP"     // netstack TCP settings, see tcpSettings
)

// TestMain runs a role when a test started this binary as one.
func TestMain(m *testing.M) {
	var err error
	switch os.Getenv(envRole) {
	case "":
		os.Exit(m.Run())
	case "tailnet":
		err = runTailnet()
	case "host":
		err = runHost(os.Getenv(envMode))
	case "client":
		err = runClient(os.Getenv(envMode))
	default:
		err = fmt.Errorf("unknown role %q", os.Getenv(envRole))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "role:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// proc is a role process, talked to line by line.
type proc struct {
	name string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
}

// start runs this binary as a role inside ns; the test's cleanup closes
// its stdin (the role's signal to stop) and waits for it.
func start(tb testing.TB, ns wanlab.Namespace, name string, env ...string) *proc {
	tb.Helper()
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := ns.Command(self, "-test.run=^$", "-test.bench=^$")
	// quic-go warns that an overlay socket is not a *net.UDPConn.
	cmd.Env = append(append(os.Environ(), "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true"), env...)
	cmd.Stderr = &prefixWriter{prefix: name + ": ", w: os.Stderr}
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, in: in, out: bufio.NewScanner(out)}
	p.out.Buffer(make([]byte, 1<<20), 1<<20)
	tb.Cleanup(p.stop)
	return p
}

// stop closes the role's stdin and waits for it to exit.
func (p *proc) stop() {
	p.in.Close()
	p.cmd.Wait()
}

// until reads lines up to one starting with prefix and returns the rest of it.
func (p *proc) until(prefix string) (string, error) {
	for p.out.Scan() {
		if rest, ok := strings.CutPrefix(p.out.Text(), prefix); ok {
			return rest, nil
		}
	}
	return "", fmt.Errorf("%s exited before saying %q", p.name, prefix)
}

// do sends an operation to a client role and returns its result.
func (p *proc) do(o op) (result, error) {
	b, err := json.Marshal(o)
	if err != nil {
		return result{}, err
	}
	if _, err := fmt.Fprintf(p.in, "%s\n", b); err != nil {
		return result{}, fmt.Errorf("%s: %w", p.name, err)
	}
	line, err := p.until("RESULT ")
	if err != nil {
		return result{}, err
	}
	var r result
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return result{}, fmt.Errorf("%s said %q: %w", p.name, line, err)
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
}

// prefixWriter prefixes each line written to w, so that the roles' logs
// can be told apart.
type prefixWriter struct {
	prefix string
	w      io.Writer
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := strings.IndexByte(string(p.buf), '\n')
		if i < 0 {
			return len(b), nil
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
}
