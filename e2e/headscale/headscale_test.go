// Package headscale runs gpumesh end to end against a real control server:
// Headscale v0.29.1 (built by `make headscale` into .tools/bin/headscale)
// listening on 127.0.0.1 with its embedded DERP. A GPU host (`gpumesh
// serve`) and its clients (`gpumesh run`, `gpumesh up --forward`) are
// separate processes that join with Headscale's pre-auth keys.
//
// The tests skip when Headscale is not built. They need neither root nor
// any network but loopback: CI runs them in a namespace that has only lo.
package headscale

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// capName is the tailnet app capability gpumesh reads from WhoIs.
const capName = "gpumesh.dev/cap/gpu"

// tailnetPolicy is Headscale's policy. mlGrant says who gets the gpumesh
// capability through group:ml; tag:ml-runner always gets it, so tagging a
// node in Headscale grants it.
func tailnetPolicy(mlGrant bool) string {
	grants := `
    // IP connectivity: members and ML runners reach the GPU host's endpoint.
    { "src": ["autogroup:member", "tag:ml-runner"], "dst": ["tag:gpu"], "ip": ["tcp:50051"] },
    // The gpumesh capability, for tagged ML runners.
    { "src": ["tag:ml-runner"], "dst": ["tag:gpu"], "app": { "` + capName + `": [{ "kernels": ["matrix_mul"], "gpus": ["0"] }] } },`
	if mlGrant {
		grants += `
    // The gpumesh capability, for the ML group.
    { "src": ["group:ml"], "dst": ["tag:gpu"], "app": { "` + capName + `": [{ "kernels": ["matrix_mul"], "gpus": ["0"] }] } },`
	}
	return `// Headscale v0.29.1 policy, written by e2e/headscale
{
  "groups": { "group:ml": ["alice@"] },
  "tagOwners": {
    "tag:gpu": ["group:ml"],
    "tag:ml-runner": ["group:ml"],
  },
  "grants": [` + grants + `
  ],
}
`
}

// hostPolicy is the GPU host's gpumesh policy: it defers to the tailnet.
// Whoever the tailnet grants the capability may run what the capability's
// values allow (matrix_mul on GPU 0), nobody else anything.
const hostPolicy = `version = 1

rule "tailnet-grant" {
  subjects = ["cap:` + capName + `"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`

// tailnet is one Headscale with its users and keys, and a GPU host policy.
type tailnet struct {
	t          *testing.T
	hs         *control
	dir        string // state dirs and files live here
	policyPath string
	alice, bob uint64 // user IDs
	gpuKeyFile string // tagged tag:gpu, owned by alice
	aliceKey   string
	aliceFile  string
	bobKey     string
}

func newTailnet(t *testing.T) *tailnet {
	t.Helper()
	tn := &tailnet{t: t, hs: startControl(t, tailnetPolicy(true)), dir: t.TempDir()}
	tn.alice = tn.hs.createUser("alice")
	tn.bob = tn.hs.createUser("bob")
	_, tn.gpuKeyFile = tn.hs.authKey(tn.alice, "tag:gpu")
	tn.aliceKey, tn.aliceFile = tn.hs.authKey(tn.alice)
	tn.bobKey, _ = tn.hs.authKey(tn.bob)
	tn.policyPath = filepath.Join(tn.dir, "gpumesh-policy.hcl")
	if err := os.WriteFile(tn.policyPath, []byte(hostPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	return tn
}

func (tn *tailnet) stateDir(host string) string { return filepath.Join(tn.dir, "state", host) }

// gpumesh starts `gpumesh ARGS... --control-url URL` with extra env.
func (tn *tailnet) gpumesh(name string, env []string, args ...string) *proc {
	args = append(args, "--control-url", tn.hs.url, "-v")
	return startProc(tn.t, name, append(childEnv(tn.t), env...), gpumeshBin, args...)
}

// serve starts the GPU host with its state dir, and extra flags. Its tag
// (tag:gpu) comes from its pre-auth key: Headscale refuses --advertise-tags
// with a pre-auth key.
func (tn *tailnet) serve(extra ...string) *proc {
	args := append([]string{"serve", "--policy", tn.policyPath, "--hostname", "gpu-host",
		"--state-dir", tn.stateDir("gpu-host"), "--join-timeout", "90s"}, extra...)
	return tn.gpumesh("gpu-host", nil, args...)
}

// run starts `gpumesh run gpu-host KERNEL` as host.
func (tn *tailnet) run(host, kernel string, env []string, extra ...string) *proc {
	args := append([]string{"run", "gpu-host", kernel, "--size", "32", "--hostname", host,
		"--state-dir", tn.stateDir(host), "--join-timeout", "90s"}, extra...)
	return tn.gpumesh(host, env, args...)
}

var servingRE = regexp.MustCompile(`serving gpu-host on \[([^\]]*)\]`)

// hostIPs waits for the GPU host to serve and returns its tailnet addresses.
func hostIPs(t *testing.T, host *proc) string {
	t.Helper()
	line := host.waitLine(t, "gpumesh: serving", 2*time.Minute)
	m := servingRE.FindStringSubmatch(line)
	if m == nil || m[1] == "" {
		t.Fatalf("no tailnet addresses in %q", line)
	}
	return m[1]
}

// expectRun waits for a `gpumesh run` and checks its outcome: ok, or failed
// with a message containing wantErr.
func expectRun(t *testing.T, p *proc, wantErr string) {
	t.Helper()
	code := p.wait(t, 3*time.Minute)
	out := p.out.String()
	switch {
	case wantErr == "" && code != 0:
		t.Fatalf("%s: exit %d, want success:\n%s", p.name, code, tail(out, 3000))
	case wantErr == "" && !strings.Contains(out, "matches local computation"):
		t.Fatalf("%s: no checked result:\n%s", p.name, tail(out, 3000))
	case wantErr != "" && code == 0:
		t.Fatalf("%s: succeeded, want an error containing %q:\n%s", p.name, wantErr, tail(out, 3000))
	case wantErr != "" && !strings.Contains(out, wantErr):
		t.Fatalf("%s: exit %d without %q:\n%s", p.name, code, wantErr, tail(out, 3000))
	}
}

// eventually retries f until it returns nil or d has passed. Each try is a
// real operation (a process run, an RPC), so the loop waits on events.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, d, err)
		}
		<-tick.C
	}
}

func checkMode0700(t *testing.T, dir string) {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("state dir %s has mode %v, want 0700", dir, got)
	}
}

var derpRE = regexp.MustCompile(`derp-(\d+)`)

// checkLocalDERP checks from a node's verbose log that its home DERP is
// Headscale's embedded one (region 999) and that it never spoke of another
// region: no public DERP was dialed.
func checkLocalDERP(t *testing.T, p *proc) {
	t.Helper()
	out := p.out.String()
	if !strings.Contains(out, "home is now derp-999") {
		t.Errorf("%s: no \"home is now derp-999\" in its log", p.name)
	}
	for _, m := range derpRE.FindAllStringSubmatch(out, -1) {
		if m[1] != "999" && m[1] != "0" { // derp-0: none yet
			t.Errorf("%s: its log mentions derp-%s, not Headscale's region 999", p.name, m[1])
			return
		}
	}
	if strings.Contains(out, "bootstrapDNS") {
		t.Errorf("%s: used bootstrap DNS (public DERP servers)", p.name)
	}
}

// session is a long-lived client: `gpumesh up` forwarding a loopback port to
// the GPU host, and a Go client connected through it.
type session struct {
	owner  *testing.T // the test the session lives as long as
	proc   *proc
	client *gpusvc.Client
	addr   string
}

func (tn *tailnet) startSession(host string, extra ...string) *session {
	t := tn.t
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "tcp")))
	args := append([]string{"up", "--forward", addr + "=gpu-host", "--hostname", host,
		"--state-dir", tn.stateDir(host), "--join-timeout", "90s"}, extra...)
	p := tn.gpumesh(host, nil, args...)
	return &session{owner: t, proc: p, addr: addr}
}

// connect waits for the forwarder and connects a client through it.
func (s *session) connect(t *testing.T) {
	t.Helper()
	s.proc.waitLine(t, "gpumesh: ready", 2*time.Minute)
	eventually(t, time.Minute, "connect through the forwarder", func() error {
		c, err := dialSession(s.addr)
		if err != nil {
			return err
		}
		s.client = c
		return nil
	})
	s.owner.Cleanup(func() { s.client.Close() })
}

// dialSession connects a client to the forwarder at addr and checks that
// the host answers.
func dialSession(addr string) (*gpusvc.Client, error) {
	var d net.Dialer
	c, err := gpusvc.NewClient(addr, d.DialContext)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Devices(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// caller is who the host says the session is.
func (s *session) caller() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := s.client.Devices(ctx)
	return d.GetCaller(), err
}

// matmul runs a small matrix_mul through the session and checks the result.
func (s *session) matmul() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f32 := func(v ...float32) kernel.Arg {
		return kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{2, 2}, v)}
	}
	got, err := s.client.Compute(ctx, "matrix_mul", f32(1, 2, 3, 4), f32(5, 6, 7, 8))
	if err != nil {
		return err
	}
	if v := fmt.Sprint(got.Float32s()); v != "[19 22 43 50]" {
		return fmt.Errorf("matrix_mul = %v, want [19 22 43 50]", v)
	}
	return nil
}

func isDenied(err error) bool { return status.Code(err) == codes.PermissionDenied }

// TestTailnet is the end-to-end story, step by step on one Headscale.
func TestTailnet(t *testing.T) {
	need(t)
	t.Parallel()
	tn := newTailnet(t)

	// bob's state dir exists already, too open: gpumesh tightens it.
	if err := os.MkdirAll(tn.stateDir("bob-laptop"), 0o755); err != nil {
		t.Fatal(err)
	}

	host := tn.serve("--authkey-file", tn.gpuKeyFile)
	ips := hostIPs(t, host)
	var ws *session

	t.Run("join and run a remote kernel", func(t *testing.T) {
		// Three clients at once: alice (key from TS_AUTHKEY), bob (key
		// from --authkey), and alice's workstation staying up.
		alice := tn.run("alice-laptop", "matrix_mul", []string{"TS_AUTHKEY=" + tn.aliceKey})
		bob := tn.run("bob-laptop", "matrix_mul", nil, "--authkey", tn.bobKey)
		ws = tn.startSession("alice-ws", "--authkey-file", tn.aliceFile)
		expectRun(t, alice, "")
		// bob's node joined and reached the host, but the tailnet grants him
		// no capability: the host's policy denies him.
		expectRun(t, bob, "PermissionDenied")
		ws.connect(t)
		if err := ws.matmul(); err != nil {
			t.Fatal(err)
		}
		if got, err := ws.caller(); err != nil || !strings.Contains(got, "alice-ws") {
			t.Errorf("host sees the session as %q (%v), want alice-ws", got, err)
		}
		for _, name := range []string{"gpu-host", "alice-laptop", "bob-laptop", "alice-ws"} {
			n := tn.hs.node(name)
			if len(n.IPAddresses) == 0 {
				t.Errorf("headscale: %s has no addresses", name)
			}
		}
		if tags := tn.hs.node("gpu-host").Tags; !contains(tags, "tag:gpu") {
			t.Errorf("headscale: gpu-host tags %v, want tag:gpu", tags)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("capability narrows the grant", func(t *testing.T) {
		// The capability's value allows matrix_mul only.
		expectRun(t, tn.run("alice-laptop", "saxpy", nil), "PermissionDenied")
	})

	t.Run("state dirs are 0700", func(t *testing.T) {
		for _, h := range []string{"gpu-host", "alice-laptop", "bob-laptop", "alice-ws"} {
			checkMode0700(t, tn.stateDir(h))
		}
	})

	t.Run("only the local DERP", func(t *testing.T) {
		checkLocalDERP(t, host)
		checkLocalDERP(t, ws.proc)
	})

	t.Run("restart keeps identity", func(t *testing.T) {
		before := tn.hs.node("gpu-host")
		if err := host.stop(); err != nil {
			t.Fatalf("gpu-host did not stop cleanly: %v", err)
		}
		// No key: the state dir holds the node's identity.
		host = tn.serve()
		if got := hostIPs(t, host); got != ips {
			t.Errorf("after restart gpu-host has %s, want %s", got, ips)
		}
		after := tn.hs.node("gpu-host") // fails if a second node appeared
		if after.ID != before.ID || after.GivenName != before.GivenName {
			t.Errorf("after restart gpu-host is node %s %q, want %s %q", after.ID, after.GivenName, before.ID, before.GivenName)
		}
		// The open session recovers, and alice runs again without a key.
		eventually(t, time.Minute, "session after host restart", ws.matmul)
		expectRun(t, tn.run("alice-laptop", "matrix_mul", nil), "")
	})
	if t.Failed() {
		return
	}

	t.Run("control down, then back", func(t *testing.T) {
		tn.hs.stop()
		// Existing sessions keep working without the control server: the
		// open connection, and a new one over the same node.
		if err := ws.matmul(); err != nil {
			t.Fatalf("open session with Headscale down: %v", err)
		}
		c, err := dialSession(ws.addr)
		if err != nil {
			t.Fatalf("new connection with Headscale down: %v", err)
		}
		c.Close()
		// A new node cannot join: it fails within its join timeout, naming
		// the control server.
		p := tn.run("alice-tablet", "matrix_mul", []string{"TS_AUTHKEY=" + tn.aliceKey}, "--join-timeout", "10s")
		if code := p.wait(t, time.Minute); code == 0 || !strings.Contains(p.out.String(), "join tailnet at "+tn.hs.url) {
			t.Errorf("a new node joined with Headscale down (exit %d):\n%s", code, tail(p.out.String(), 2000))
		}
		tn.hs.start()
		// A node that never joined before joins the restarted Headscale
		// and is served once the host has heard of it.
		eventually(t, 3*time.Minute, "new node after Headscale restart", func() error {
			p := tn.run("alice-desktop", "matrix_mul", []string{"TS_AUTHKEY=" + tn.aliceKey})
			if code := p.wait(t, 3*time.Minute); code != 0 {
				return fmt.Errorf("exit %d: %s", code, tail(p.out.String(), 400))
			}
			return nil
		})
	})
	if t.Failed() {
		return
	}

	hostPID := host.cmd.Process.Pid
	t.Run("tag change in Headscale grants", func(t *testing.T) {
		bob := tn.hs.node("bob-laptop")
		tn.hs.cli("nodes", "tag", "-i", bob.ID.String(), "-t", "tag:ml-runner")
		eventually(t, 2*time.Minute, "bob allowed after tagging", func() error {
			p := tn.run("bob-laptop", "matrix_mul", nil)
			if code := p.wait(t, 3*time.Minute); code != 0 {
				return fmt.Errorf("exit %d: %s", code, tail(p.out.String(), 400))
			}
			return nil
		})
	})

	t.Run("policy change in Headscale revokes", func(t *testing.T) {
		tn.hs.setPolicy(tailnetPolicy(false))
		// The open session's identity is asked again: it is denied without
		// reconnecting, and without restarting the GPU host.
		eventually(t, time.Minute, "alice-ws denied after the grant is removed", func() error {
			err := ws.matmul()
			if isDenied(err) {
				return nil
			}
			return fmt.Errorf("want PermissionDenied, got %v", err)
		})
		expectRun(t, tn.run("alice-laptop", "matrix_mul", nil), "PermissionDenied")
		// bob's tag still grants.
		expectRun(t, tn.run("bob-laptop", "matrix_mul", nil), "")
	})

	if host.cmd.Process.Pid != hostPID || isDone(host) {
		t.Errorf("the GPU host restarted or stopped during the policy changes")
	}

	t.Run("logout", func(t *testing.T) {
		dir := tn.stateDir("alice-laptop")
		logout := func() *proc {
			return tn.gpumesh("logout", nil, "logout", "--state-dir", dir, "--hostname", "alice-laptop")
		}
		p := logout()
		if code := p.wait(t, 2*time.Minute); code != 0 {
			t.Fatalf("logout: exit %d:\n%s", code, tail(p.out.String(), 3000))
		}
		if n := tn.hs.node("alice-laptop"); !n.expired() {
			t.Errorf("headscale: alice-laptop not expired after logout: %+v", n)
		}
		if _, err := os.Stat(filepath.Join(dir, "tailscaled.state")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("state file still there after logout (%v)", err)
		}
		// The next start needs a key, and says so at once.
		expectRun(t, tn.run("alice-laptop", "matrix_mul", nil), "no auth key was given")
		// The failed start left a logged-out state behind: logout cleans it
		// up, and then has nothing left to do.
		p = logout()
		if code := p.wait(t, time.Minute); code != 0 || !strings.Contains(p.out.String(), "already logged out") {
			t.Errorf("second logout: exit %d:\n%s", code, tail(p.out.String(), 2000))
		}
		p = logout()
		if code := p.wait(t, time.Minute); code == 0 || !strings.Contains(p.out.String(), "nothing to log out") {
			t.Errorf("third logout: exit %d:\n%s", code, tail(p.out.String(), 2000))
		}
	})

	t.Run("ephemeral", func(t *testing.T) {
		// Headscale makes a node ephemeral by its key, not by the flag alone.
		// The key's tag grants the capability.
		key := tn.hs.newKey(tn.alice, true, "tag:ml-runner")
		expectRun(t, tn.run("eph-runner", "matrix_mul", []string{"TS_AUTHKEY=" + key.Key}, "--ephemeral"), "")
		// An ephemeral node logs out when its process ends, and Headscale
		// deletes it.
		eventually(t, 30*time.Second, "ephemeral node deleted", func() error {
			if n := tn.hs.lookup("eph-runner"); len(n) != 0 {
				return fmt.Errorf("still listed: %+v", n)
			}
			return nil
		})
	})
}

// lastLine is the last non-empty line of out: a command's error message.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

func isDone(p *proc) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestBadInput: every mistake ends in a clear error and a non-zero exit
// within a bounded time, never a hang.
func TestBadInput(t *testing.T) {
	need(t)
	t.Parallel()
	hs := startControl(t, tailnetPolicy(true))
	alice := hs.createUser("alice")
	good := hs.newKey(alice, false).Key
	expired := hs.newKey(alice, false)
	hs.cli("preauthkeys", "expire", "-i", expired.ID.String())
	// Well formed, but not a key Headscale issued.
	wrong := good[:len(good)-8] + "AAAAAAAA"
	dir := t.TempDir()
	notDir := filepath.Join(dir, "a-file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	policyPath := filepath.Join(dir, "policy.hcl")
	if err := os.WriteFile(policyPath, []byte(hostPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	// A shared directory, like /tmp: refused, and its mode left alone.
	shared := filepath.Join(dir, "shared")
	if err := os.Mkdir(shared, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if fi, err := os.Stat(shared); err != nil {
			t.Error(err)
		} else if fi.Mode().Perm() != 0o777 {
			t.Errorf("the shared state dir's mode was changed to %v", fi.Mode())
		}
	})
	unreachable := fmt.Sprintf("http://127.0.0.1:%d", freePort(t, "tcp"))
	tests := []struct {
		name    string
		control string
		args    []string
		wantErr string
	}{
		{
			name:    "malformed auth key",
			control: hs.url,
			args:    []string{"--authkey", "hskey-auth-0000000000000000-wrongwrongwrongwrongwrong", "--state-dir", filepath.Join(dir, "malformed-key")},
			wantErr: "auth-key",
		},
		{
			name:    "wrong auth key",
			control: hs.url,
			args:    []string{"--authkey", wrong, "--state-dir", filepath.Join(dir, "wrong-key")},
			wantErr: "invalid auth key",
		},
		{
			name:    "expired auth key",
			control: hs.url,
			args:    []string{"--authkey", expired.Key, "--state-dir", filepath.Join(dir, "expired-key")},
			wantErr: "expired",
		},
		{
			name:    "tags asked for with a pre-auth key",
			control: hs.url,
			args:    []string{"--authkey", good, "--advertise-tags", "tag:gpu", "--state-dir", filepath.Join(dir, "tags")},
			wantErr: "requested tags [tag:gpu] are invalid or not permitted",
		},
		{
			name:    "unreachable control URL",
			control: unreachable,
			args:    []string{"--authkey", "hskey-auth-x", "--state-dir", filepath.Join(dir, "unreachable"), "--join-timeout", "10s"},
			wantErr: unreachable,
		},
		{
			name:    "state dir not writable",
			control: hs.url,
			args:    []string{"--authkey", "hskey-auth-x", "--state-dir", filepath.Join(notDir, "state")},
			wantErr: "state dir",
		},
		{
			name:    "state dir shared with other users",
			control: hs.url,
			args:    []string{"--authkey", "hskey-auth-x", "--state-dir", shared},
			wantErr: "is writable by other users (mode 1777)",
		},
		{
			name:    "auth key file missing",
			control: hs.url,
			args:    []string{"--authkey-file", filepath.Join(dir, "no-such-key"), "--state-dir", filepath.Join(dir, "no-key")},
			wantErr: "no-such-key",
		},
		{
			name:    "no key and no state",
			control: hs.url,
			args:    []string{"--state-dir", filepath.Join(dir, "empty"), "--join-timeout", "30s"},
			wantErr: "auth key",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"serve", "--policy", policyPath, "--control-url", tt.control}, tt.args...)
			p := startProc(t, "gpumesh", childEnv(t), gpumeshBin, args...)
			// Bounded: well inside the join timeout the test gives, or the
			// default when it gives none.
			code := p.wait(t, 150*time.Second)
			out := p.out.String()
			if code == 0 {
				t.Fatalf("exit 0, want an error:\n%s", out)
			}
			if !strings.Contains(out, tt.wantErr) {
				t.Errorf("error does not mention %q:\n%s", tt.wantErr, tail(out, 2000))
			}
			t.Logf("exit %d: %s", code, lastLine(out))
		})
	}
}

// TestUnwritableStateDir: a state dir the process may not write (another
// user's, read-only) is refused before joining, with an error naming it.
// The process runs as nobody (uid 65534), so the test needs root: a dir
// the process owns it could make writable, and root writes anywhere.
func TestUnwritableStateDir(t *testing.T) {
	need(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root (runs gpumesh as nobody against a state dir root owns)")
	}
	t.Parallel()
	// nobody must reach the policy: t.TempDir's parent is 0700.
	base, err := os.MkdirTemp("", "gpumesh-e2e-ro-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	policyPath := filepath.Join(base, "policy.hcl")
	if err := os.WriteFile(policyPath, []byte(hostPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "ro")
	if err := os.Mkdir(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	p := startProcAs(t, nobody, "gpumesh", append(childEnv(t), "HOME="+base), gpumeshBin, "serve",
		"--policy", policyPath, "--control-url", "http://127.0.0.1:9", "--authkey", "x", "--state-dir", dir)
	if code := p.wait(t, time.Minute); code == 0 {
		t.Fatal("exit 0 with a read-only state dir")
	}
	// Refused at the state dir, not after trying the (closed) control port.
	if out := p.out.String(); !strings.Contains(out, "state dir") || !strings.Contains(out, dir) {
		t.Errorf("no error naming the state dir %s:\n%s", dir, out)
	}
}
