package headscale

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	gpumeshBin   string // built once in TestMain
	headscaleBin string // .tools/bin/headscale (make headscale)
	skipReason   string // why every test skips; empty when they run
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	root, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	headscaleBin = os.Getenv("GPUMESH_HEADSCALE")
	if headscaleBin == "" {
		headscaleBin = filepath.Join(root, ".tools", "bin", "headscale")
	}
	switch {
	case testing.Short():
		skipReason = "end-to-end Headscale tests do not run with -short"
	case !isExecutable(headscaleBin):
		skipReason = fmt.Sprintf("needs Headscale at %s: run `make headscale` (make test does; or set GPUMESH_HEADSCALE)", headscaleBin)
	}
	if skipReason != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "gpumesh-e2e-headscale-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Other users may run the binary (TestUnwritableStateDir runs it as nobody).
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	gpumeshBin = filepath.Join(dir, "gpumesh")
	build := exec.Command("go", "build", "-o", gpumeshBin, "./cmd/gpumesh")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e/headscale: go build ./cmd/gpumesh: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func need(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// freePort returns a TCP (or UDP) port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T, network string) int {
	t.Helper()
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	default:
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
}

// output collects a process's stdout and stderr line by line and lets a test
// wait for a line.
type output struct {
	mu      sync.Mutex
	buf     bytes.Buffer  // guarded by mu
	changed chan struct{} // closed and replaced on every write; guarded by mu
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// find returns the first complete line containing substr at or after byte
// offset from, and the offset just past it.
func (o *output) find(substr string, from int) (line string, next int, changed <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	b := o.buf.Bytes()
	for off := from; off < len(b); {
		end := bytes.IndexByte(b[off:], '\n')
		if end < 0 {
			break
		}
		l := string(b[off : off+end])
		off += end + 1
		if strings.Contains(l, substr) {
			return l, off, nil
		}
	}
	return "", from, o.changed
}

// proc is a child process (gpumesh or headscale) with its output.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *output
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result; set before done closes
}

func startProc(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	return startProcAs(t, nil, name, env, bin, args...)
}

// startProcAs starts a process as the user cred names (nil: this one).
func startProcAs(t *testing.T, cred *syscall.Credential, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: newOutput(), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	if cred != nil {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- output of %s (%s):\n%s", name, strings.Join(p.cmd.Args, " "), tail(p.out.String(), 6000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// waitLine waits for a line of output containing substr, for up to d; it
// fails if the process exits first.
func (p *proc) waitLine(t *testing.T, substr string, d time.Duration) string {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		line, _, changed := p.out.find(substr, 0)
		if changed == nil {
			return line
		}
		select {
		case <-changed:
		case <-p.done:
			if line, _, changed := p.out.find(substr, 0); changed == nil {
				return line
			}
			t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, p.err, substr, tail(p.out.String(), 4000))
		case <-timer.C:
			t.Fatalf("%s did not print %q within %v:\n%s", p.name, substr, d, tail(p.out.String(), 4000))
		}
	}
}

// wait waits up to d for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s still running after %v (a hang):\n%s", p.name, d, tail(p.out.String(), 4000))
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	default:
		t.Fatalf("%s: %v", p.name, p.err)
		return -1
	}
}

// stop sends SIGTERM, then SIGKILL after a grace period, and waits.
func (p *proc) stop() error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

func (p *proc) signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// control is a Headscale server on 127.0.0.1 with its embedded DERP.
type control struct {
	t          *testing.T
	dir        string
	configPath string
	policyPath string
	url        string // http://127.0.0.1:PORT, an IP literal: no DNS, no bootstrap DNS
	proc       *proc  // the running server; nil while stopped
}

const controlConfig = `server_url: {{URL}}
listen_addr: 127.0.0.1:{{HTTP}}
metrics_listen_addr: 127.0.0.1:{{METRICS}}
grpc_listen_addr: 127.0.0.1:{{GRPC}}
grpc_allow_insecure: false
noise:
  private_key_path: {{DIR}}/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: "hs"
    region_name: "Headscale Embedded DERP"
    stun_listen_addr: "127.0.0.1:{{STUN}}"
    private_key_path: {{DIR}}/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: 127.0.0.1
  urls: []
  paths: []
  auto_update_enabled: false
  update_frequency: 24h
disable_check_updates: true
node:
  ephemeral:
    inactivity_timeout: 30m
database:
  type: sqlite
  sqlite:
    path: {{DIR}}/db.sqlite
    write_ahead_log: true
log:
  level: info
policy:
  mode: file
  path: {{POLICY}}
dns:
  magic_dns: true
  base_domain: tailnet.test
  override_local_dns: false
  nameservers:
    global: []
unix_socket: {{DIR}}/headscale.sock
unix_socket_permission: "0770"
`

// startControl writes Headscale's configuration and policy and starts it.
func startControl(t *testing.T, policy string) *control {
	t.Helper()
	dir := t.TempDir()
	httpPort := freePort(t, "tcp")
	c := &control{
		t:          t,
		dir:        dir,
		configPath: filepath.Join(dir, "config.yaml"),
		policyPath: filepath.Join(dir, "policy.hujson"),
		url:        fmt.Sprintf("http://127.0.0.1:%d", httpPort),
	}
	cfg := strings.NewReplacer(
		"{{URL}}", c.url,
		"{{HTTP}}", strconv.Itoa(httpPort),
		"{{METRICS}}", strconv.Itoa(freePort(t, "tcp")),
		"{{GRPC}}", strconv.Itoa(freePort(t, "tcp")),
		"{{STUN}}", strconv.Itoa(freePort(t, "udp")),
		"{{DIR}}", dir,
		"{{POLICY}}", c.policyPath,
	).Replace(controlConfig)
	if err := os.WriteFile(c.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.policyPath, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start()
	return c
}

// start runs the server and waits until it answers /health.
func (c *control) start() {
	t := c.t
	t.Helper()
	c.proc = startProc(t, "headscale", childEnv(t), headscaleBin, "-c", c.configPath, "serve")
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(60 * time.Second)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(c.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-tick.C:
		case <-c.proc.done:
			t.Fatalf("headscale exited: %v\n%s", c.proc.err, tail(c.proc.out.String(), 4000))
		case <-deadline:
			t.Fatalf("headscale not healthy after 60s (last: %v)", err)
		}
	}
}

// stop stops the server (SIGTERM) and waits for it.
func (c *control) stop() {
	c.t.Helper()
	c.proc.stop()
	c.proc = nil
}

// cli runs a headscale command against the server and returns its output.
func (c *control) cli(args ...string) []byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, headscaleBin, append([]string{"-c", c.configPath}, args...)...)
	cmd.Env = childEnv(c.t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("headscale %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

func (c *control) cliJSON(v any, args ...string) {
	c.t.Helper()
	out := c.cli(append(args, "-o", "json")...)
	if err := json.Unmarshal(out, v); err != nil {
		c.t.Fatalf("headscale %s: decode %q: %v", strings.Join(args, " "), out, err)
	}
}

// createUser creates a user and returns its ID.
func (c *control) createUser(name string) uint64 {
	c.t.Helper()
	var u struct {
		ID json.Number `json:"id"`
	}
	c.cliJSON(&u, "users", "create", name)
	id, err := strconv.ParseUint(u.ID.String(), 10, 64)
	if err != nil {
		c.t.Fatalf("user %s: id %q: %v", name, u.ID, err)
	}
	return id
}

// authKey creates a reusable pre-auth key for user, with tags when given,
// and writes it to a 0600 file whose path it returns.
func (c *control) authKey(user uint64, tags ...string) (key, file string) {
	c.t.Helper()
	k := c.newKey(user, false, tags...)
	f, err := os.CreateTemp(c.dir, "authkey-")
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(k.Key + "\n"); err != nil {
		c.t.Fatal(err)
	}
	return k.Key, f.Name()
}

// preAuthKey is a key as `headscale preauthkeys create -o json` shows it.
type preAuthKey struct {
	ID  json.Number `json:"id"`
	Key string      `json:"key"`
}

func (c *control) newKey(user uint64, ephemeral bool, tags ...string) preAuthKey {
	c.t.Helper()
	args := []string{"preauthkeys", "create", "-u", strconv.FormatUint(user, 10), "--reusable", "-e", "1h"}
	if ephemeral {
		args = append(args, "--ephemeral")
	}
	if len(tags) > 0 {
		args = append(args, "--tags", strings.Join(tags, ","))
	}
	var k preAuthKey
	c.cliJSON(&k, args...)
	if k.Key == "" {
		c.t.Fatal("headscale returned an empty pre-auth key")
	}
	return k
}

// hsNode is a node as `headscale nodes list -o json` shows it.
type hsNode struct {
	ID          json.Number `json:"id"`
	Name        string      `json:"name"`
	GivenName   string      `json:"given_name"`
	IPAddresses []string    `json:"ip_addresses"`
	Tags        []string    `json:"tags"`
	Online      bool        `json:"online"`
	Expiry      *struct {
		Seconds int64 `json:"seconds"`
	} `json:"expiry"`
}

// expired says whether Headscale has expired the node's key.
func (n hsNode) expired() bool {
	return n.Expiry != nil && n.Expiry.Seconds != 0 && time.Unix(n.Expiry.Seconds, 0).Before(time.Now())
}

func (c *control) nodes() []hsNode {
	c.t.Helper()
	var ns []hsNode
	c.cliJSON(&ns, "nodes", "list")
	return ns
}

// lookup returns the nodes called name.
func (c *control) lookup(name string) []hsNode {
	c.t.Helper()
	var found []hsNode
	for _, n := range c.nodes() {
		if n.GivenName == name || n.Name == name {
			found = append(found, n)
		}
	}
	return found
}

// node returns the one node called name.
func (c *control) node(name string) hsNode {
	c.t.Helper()
	found := c.lookup(name)
	if len(found) != 1 {
		c.t.Fatalf("headscale has %d nodes named %q, want 1: %+v", len(found), name, c.nodes())
	}
	return found[0]
}

// setPolicy rewrites the policy file and makes Headscale reload it (SIGHUP;
// Headscale does not watch the file).
func (c *control) setPolicy(policy string) {
	c.t.Helper()
	if err := os.WriteFile(c.policyPath, []byte(policy), 0o600); err != nil {
		c.t.Fatal(err)
	}
	if err := c.proc.signal(syscall.SIGHUP); err != nil {
		c.t.Fatal(err)
	}
}

// childEnv is the environment of every child process: Tailscale's switches
// for a machine with only loopback, and nothing inherited that could point a
// node elsewhere. It does not set TS_DEBUG_USE_DERP_HTTP: Headscale's
// embedded DERP speaks plain HTTP, and gpumesh dials it so by itself
// because the control URL is http://, which every test here proves.
func childEnv(t *testing.T) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "TS_") || k == "HOME" || k == "XDG_CONFIG_HOME" || k == "XDG_RUNTIME_DIR" {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"HOME="+t.TempDir(),
		// A running node makes itself known here, not in /run/gpumesh.
		"XDG_RUNTIME_DIR="+t.TempDir(),
		// Inside a namespace with only loopback a non-test binary would
		// decide the network is down and never come up.
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1",
		// A slip to Tailscale's own control server panics instead of dialing.
		"TS_PANIC_IF_HIT_MAIN_CONTROL=1",
	)
}
