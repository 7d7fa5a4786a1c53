package gpusvc_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/audit"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/preface"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

// The pods' world: a GPU host on the embedded tailnet whose policy trusts
// the nodes tagged tag:k8s as Kubernetes agents; two agents, and a rogue
// node (tag:rogue) that the policy grants kernels but does not trust.

const podPolicy = `
version = 1
kubernetes {
  trusted_agents = ["tag:k8s"]
}
rule "trainers" {
  subjects     = ["k8s:ml/trainer"]
  gpus         = ["*"]
  kernels      = ["*"]
  max_memory   = "1MiB"
  idle_timeout = "1h"
}
rule "web" {
  subjects = ["k8s:web/*"]
  gpus     = ["*"]
  kernels  = ["relu"]
}
rule "rogue" {
  subjects = ["tag:rogue"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`

type podWorld struct {
	nodes   map[string]*tsnet.Node
	backend *cpu.Backend
	srv     *gpusvc.Server
	rec     *recorder
	audit   string
	pol     atomic.Pointer[policy.Policy]
}

func startPods(t *testing.T) *podWorld {
	t.Helper()
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn := overlaytest.New(t, overlaytest.Options{TagOwners: map[string][]string{"tag:k8s": nil, "tag:rogue": nil, "tag:gpu": nil}})
	w := &podWorld{nodes: map[string]*tsnet.Node{}, rec: &recorder{}, backend: cpu.New()}
	pol, err := policy.Parse("pods.hcl", []byte(podPolicy))
	if err != nil {
		t.Fatal(err)
	}
	w.pol.Store(pol)
	joins := map[string][]string{"gpu-host": {"tag:gpu"}, "agent-1": {"tag:k8s"}, "agent-2": {"tag:k8s"}, "rogue": {"tag:rogue"}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for name, tags := range joins {
		wg.Go(func() {
			n, err := tn.Join(ctx, name, tags...)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			w.nodes[name] = n
			t.Cleanup(func() { n.Close() })
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	w.audit = t.TempDir() + "/audit.log"
	log, err := audit.Open(w.audit, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	host := w.nodes["gpu-host"]
	w.srv, err = gpusvc.NewServer(gpusvc.Config{
		Backend: w.backend, WhoIs: host.WhoIs, Policy: w.pol.Load, Host: "gpu-host",
		MaxConnsPerCaller: maxConns,
		MaxConnsPerAgent:  maxAgentConns,
		OnCall: func(r gpusvc.CallRecord) {
			w.rec.add(r)
			log.Record(r)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := host.Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		w.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		w.srv.Stop()
		<-served
		log.Close()
	})
	return w
}

// maxConns is the pods' world's connection cap per caller, maxAgentConns
// per trusted agent (its pods and itself together).
const (
	maxConns      = 8
	maxAgentConns = 12
)

var hostAddr = "gpu-host:" + strconv.Itoa(gpusvc.DefaultPort)

// dialRaw opens a connection from node to the host and writes raw
// first, as an agent (or an attacker) would, and returns the connection.
func (w *podWorld) dialRaw(t *testing.T, node string, raw []byte) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := w.nodes[node].Dial(ctx, "tcp", hostAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if len(raw) > 0 {
		if _, err := c.Write(raw); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// reply reads the host's answer to a preface.
func reply(t *testing.T, c net.Conn) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	return preface.ReadReply(c)
}

func encode(t *testing.T, p preface.Preface) []byte {
	t.Helper()
	b, err := preface.Encode(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// client is a compute client whose every connection from node starts with
// the preface for pod (nil: the agent's own).
func (w *podWorld) client(t *testing.T, node string, pod *overlay.Pod) *gpusvc.Client {
	t.Helper()
	c, err := gpusvc.NewClient(hostAddr, func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := w.nodes[node].Dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		b, err := preface.Encode(preface.Preface{Op: preface.Connect, Pod: pod})
		if err == nil {
			_, err = conn.Write(b)
		}
		if err == nil {
			err = preface.ReadReply(conn)
		}
		if err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func trainer(name, uid string) *overlay.Pod {
	return &overlay.Pod{Namespace: "ml", ServiceAccount: "trainer", Name: name, UID: uid, Allocation: "c-" + uid}
}

// release asks the host, as agent, to release pod, and returns its answer.
func (w *podWorld) release(t *testing.T, agent string, pod *overlay.Pod) error {
	t.Helper()
	c := w.dialRaw(t, agent, encode(t, preface.Preface{Op: preface.Release, Pod: pod}))
	return reply(t, c)
}

func (w *podWorld) held() uint64 {
	var n uint64
	for _, d := range w.backend.Info(context.Background()).Devices {
		n += d.MemoryUsed
	}
	return n
}

// TestPodIdentity: a trusted agent's preface makes the connection its
// pod's: the policy decides by the pod's namespace and service account,
// Devices names the pod, the audit log names both the node and the pod,
// metrics' caller names both; the agent's own connection is admitted to
// Devices but runs no kernel.
func TestPodIdentity(t *testing.T) {
	w := startPods(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod := trainer("trainer-0", "uid-a")
	c := w.client(t, "agent-1", pod)
	dev, err := c.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if dev.GetCaller() != "k8s:ml/trainer-0 via agent-1" {
		t.Errorf("Devices names the caller %q; want the pod through its agent", dev.GetCaller())
	}
	mark := w.rec.mark()
	if _, err := c.Compute(ctx, "matrix_mul", f32([]int64{2, 2}), f32([]int64{2, 2})); err != nil {
		t.Fatalf("the trainer pod's matrix_mul: %v", err)
	}
	recs := w.rec.since(mark)
	if len(recs) != 1 || recs[0].Rule != "trainers" || recs[0].Caller.Pod == nil || recs[0].Caller.Pod.UID != "uid-a" || recs[0].Caller.Node != "agent-1" {
		t.Fatalf("records %+v; want one matrix_mul by the pod through agent-1, under rule trainers", recs)
	}

	web := w.client(t, "agent-1", &overlay.Pod{Namespace: "web", ServiceAccount: "frontend", Name: "web-0", UID: "uid-w"})
	if _, err := web.Compute(ctx, "relu", f32([]int64{4})); err != nil {
		t.Errorf("a web pod's relu: %v", err)
	}
	if _, err := web.Compute(ctx, "matrix_mul", f32([]int64{2, 2}), f32([]int64{2, 2})); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a web pod's matrix_mul: %v; want PermissionDenied", err)
	}
	self := w.client(t, "agent-1", nil)
	if dev, err := self.Devices(ctx); err != nil || dev.GetCaller() != "agent-1" {
		t.Errorf("the agent's own Devices: %v, %v; want answered, as agent-1", dev.GetCaller(), err)
	}
	if _, err := self.Compute(ctx, "relu", f32([]int64{4})); status.Code(err) != codes.PermissionDenied {
		t.Errorf("the agent's own relu: %v; want PermissionDenied (no rule names it)", err)
	}

	// The audit log's lines name the node and the pod.
	var found bool
	forAudit(t, w.audit, func(e audit.Entry) {
		if e.Method == "Compute" && e.Kernel == "matrix_mul" && e.Pod != nil && e.Pod.Name == "trainer-0" {
			found = true
			if e.Node != "agent-1" || e.Pod.Namespace != "ml" || e.Pod.ServiceAccount != "trainer" || e.Pod.UID != "uid-a" || e.Caller != "k8s:ml/trainer-0 via agent-1" {
				t.Errorf("audit line %+v, pod %+v", e, e.Pod)
			}
		}
	})
	if !found {
		t.Error("no audit line for the pod's matrix_mul")
	}
}

// forAudit calls f for every line of the audit log, once the server has
// written what it recorded.
func forAudit(t *testing.T, path string, f func(audit.Entry)) {
	t.Helper()
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		var e audit.Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		f(e)
	}
}

// TestPodPrefaceAttacks: only a trusted agent may name a pod; a trusted
// agent must; whatever it sends is bounded; each refusal is recorded once.
func TestPodPrefaceAttacks(t *testing.T) {
	w := startPods(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connects := func(mark int, node string) []gpusvc.CallRecord {
		var out []gpusvc.CallRecord
		for _, r := range w.rec.since(mark) {
			if r.Method == "connect" && r.Caller.Node == node {
				out = append(out, r)
			}
		}
		return out
	}

	t.Run("an untrusted node naming a pod is refused and recorded once", func(t *testing.T) {
		mark := w.rec.mark()
		c := w.dialRaw(t, "rogue", encode(t, preface.Preface{Op: preface.Connect, Pod: trainer("trainer-0", "uid-a")}))
		err := reply(t, c)
		var ref *preface.Refused
		if !errors.As(err, &ref) || !strings.Contains(ref.Reason, "not a Kubernetes agent gpu-host's policy trusts") {
			t.Fatalf("rogue's preface: %v; want refused as untrusted", err)
		}
		recs := waitRecords(t, w, func() []gpusvc.CallRecord { return connects(mark, "rogue") }, 1)
		if recs[0].Code != codes.PermissionDenied || recs[0].Caller.Pod != nil {
			t.Errorf("record %+v; want PermissionDenied under rogue's own name", recs[0])
		}
		// rogue's ordinary calls, gRPC from its first byte, still work.
		plain, err := gpusvc.NewClient(hostAddr, w.nodes["rogue"].Dial)
		if err != nil {
			t.Fatal(err)
		}
		defer plain.Close()
		if dev, err := plain.Devices(ctx); err != nil || dev.GetCaller() != "rogue" {
			t.Errorf("rogue's plain Devices: %v, %v", dev.GetCaller(), err)
		}
		if got := connects(mark, "rogue"); len(got) != 1 {
			t.Errorf("%d connect records for rogue; want the one refusal", len(got))
		}
	})

	t.Run("a trusted agent without a preface is refused", func(t *testing.T) {
		mark := w.rec.mark()
		plain, err := gpusvc.NewClient(hostAddr, w.nodes["agent-1"].Dial)
		if err != nil {
			t.Fatal(err)
		}
		defer plain.Close()
		if _, err := plain.Devices(ctx); status.Code(err) != codes.Unavailable {
			t.Errorf("agent-1's plain gRPC: %v; want the connection refused", err)
		}
		recs := waitRecords(t, w, func() []gpusvc.CallRecord { return connects(mark, "agent-1") }, 1)
		if !strings.Contains(recs[0].Err, "must start with its preface") {
			t.Errorf("record %+v", recs[0])
		}
	})

	t.Run("a malformed preface is refused", func(t *testing.T) {
		for _, body := range []string{`{"op":"connect","namespace":"ml"}`, `{"op":"connect","admin":true}`, `not json`} {
			raw := binary.BigEndian.AppendUint16([]byte(preface.Magic), uint16(len(body)))
			c := w.dialRaw(t, "agent-1", append(raw, body...))
			var ref *preface.Refused
			if err := reply(t, c); !errors.As(err, &ref) || !strings.Contains(ref.Reason, "preface: invalid") {
				t.Errorf("preface %s: %v; want refused as invalid", body, err)
			}
		}
	})

	t.Run("an oversized preface is refused on its length", func(t *testing.T) {
		// Only the header: a host that waited for the 65535 bytes would
		// answer (after its deadline) with a read error, not this; it
		// reads a body into a fixed 1 KiB buffer, never more (the codec's
		// TestRefusals proves the body is not even read).
		raw := binary.BigEndian.AppendUint16([]byte(preface.Magic), 0xffff)
		// A few times, not many: with 50 dials in a row, about one run in
		// ten had a dial time out at a random iteration. Likely cause: the
		// host closes each refused connection first, so its side sits in
		// TIME_WAIT, and the embedded tailnet's netstack drops a SYN that
		// reuses such a 4-tuple (a random ephemeral port) past the
		// dial's deadline.
		for range 3 {
			c := w.dialRaw(t, "agent-1", raw)
			var ref *preface.Refused
			if err := reply(t, c); !errors.As(err, &ref) || !strings.Contains(ref.Reason, "body over 1024 bytes") {
				t.Fatalf("oversized preface: %v; want refused on its length", err)
			}
			c.Close()
		}
	})

	t.Run("a pod cannot claim another pod's identity after its agent's preface", func(t *testing.T) {
		// The agent wrote pod A's preface; the pod's own bytes follow. A
		// second preface from the pod, naming pod B, is not read as one:
		// gRPC reads it, fails, and the connection ends without a call.
		a := encode(t, preface.Preface{Op: preface.Connect, Pod: trainer("trainer-0", "uid-a")})
		c := w.dialRaw(t, "agent-1", a)
		if err := reply(t, c); err != nil {
			t.Fatal(err)
		}
		mark := w.rec.mark()
		c.Write(encode(t, preface.Preface{Op: preface.Connect, Pod: trainer("trainer-1", "uid-b")}))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				break // the host ended the connection
			}
		}
		for _, r := range w.rec.since(mark) {
			if r.Caller.Pod != nil && r.Caller.Pod.UID == "uid-b" {
				t.Errorf("a call was recorded as pod B: %+v", r)
			}
		}
	})

	t.Run("an untrusted node's silent connections take its connection slots", func(t *testing.T) {
		// The host waits up to 10s for a connection's first bytes; a node
		// that is not a trusted agent holds its slot while it does, so one
		// connection over the cap is refused at once (recorded), not left
		// waiting with the others.
		mark := w.rec.mark()
		for range maxConns + 1 {
			w.dialRaw(t, "rogue", nil)
		}
		recs := waitRecords(t, w, func() []gpusvc.CallRecord { return connects(mark, "rogue") }, 1)
		if recs[0].Code != codes.ResourceExhausted {
			t.Errorf("record %+v; want rogue's connection over the cap refused as ResourceExhausted", recs[0])
		}
	})

	t.Run("a trusted agent's silent connections take its agent-wide slots", func(t *testing.T) {
		// A compromised agent could name a new pod on every connection,
		// each pod with slots of its own: the agent-wide cap is taken
		// before its preface is read, so the connection over it is
		// refused at once, and the slots come back when they close.
		mark := w.rec.mark()
		var silent []net.Conn
		for range maxAgentConns + 1 {
			silent = append(silent, w.dialRaw(t, "agent-2", nil))
		}
		recs := waitRecords(t, w, func() []gpusvc.CallRecord { return connects(mark, "agent-2") }, 1)
		if recs[0].Code != codes.ResourceExhausted || !strings.Contains(recs[0].Err, "Kubernetes agent") {
			t.Errorf("record %+v; want agent-2's connection over its agent-wide cap refused as ResourceExhausted, naming the agent", recs[0])
		}
		for _, c := range silent {
			c.Close()
		}
		c := w.client(t, "agent-2", trainer("trainer-9", "uid-slots"))
		var err error
		for range 100 { // the host notices the closed connections as their reads end
			if _, err = c.Compute(ctx, "relu", f32([]int64{4})); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("a pod of agent-2 after its silent connections closed: %v", err)
		}
	})
}

// waitRecords waits until get returns n records (refusals are recorded by
// a goroutine of their own), and returns them.
func waitRecords(t *testing.T, w *podWorld, get func() []gpusvc.CallRecord, n int) []gpusvc.CallRecord {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if recs := get(); len(recs) >= n {
			return recs
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("waiting for %d records; have %+v", n, get())
		}
	}
}

// TestPodQuotasAndRelease: two pods of one service account have quotas and
// sessions of their own; the same UID named by another agent is another
// caller; releasing a pod frees its buffers and closes its connections at
// once, refuses it from then on, and leaves the other pod alone; an agent
// the policy stops trusting has its pods' calls refused.
func TestPodQuotasAndRelease(t *testing.T) {
	w := startPods(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	podA, podB := trainer("trainer-0", "uid-a"), trainer("trainer-1", "uid-b")
	a, b := w.client(t, "agent-1", podA), w.client(t, "agent-1", podB)
	sa, err := a.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Alloc(ctx, sa.ID, "0", 700<<10); err != nil {
		t.Fatal(err)
	}
	if sa.IdleTimeout != time.Hour {
		t.Errorf("session idle timeout %v; want the rule's 1h", sa.IdleTimeout)
	}
	if _, err := a.Alloc(ctx, sa.ID, "0", 400<<10); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("pod A over its 1MiB: %v; want ResourceExhausted", err)
	}
	sb, err := b.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Alloc(ctx, sb.ID, "0", 700<<10); err != nil {
		t.Fatalf("pod B's first 700KiB (its own quota): %v", err)
	}
	if _, err := b.Alloc(ctx, sa.ID, "0", 1); status.Code(err) != codes.NotFound {
		t.Errorf("pod B allocating in pod A's session: %v; want NotFound", err)
	}
	other := w.client(t, "agent-2", podA) // the same UID, named by another agent
	if _, err := other.Alloc(ctx, sa.ID, "0", 1); status.Code(err) != codes.NotFound {
		t.Errorf("agent-2 naming pod A's UID in its session: %v; want NotFound", err)
	}
	if _, err := w.client(t, "agent-1", nil).Alloc(ctx, sa.ID, "0", 1); status.Code(err) == codes.OK {
		t.Error("the agent's own connection reached pod A's session")
	}
	before := w.held()
	if before < 1400<<10 {
		t.Fatalf("the host holds %d bytes; want both pods' buffers", before)
	}

	// An untrusted node cannot release pod A.
	if err := w.release(t, "rogue", podA); err == nil {
		t.Fatal("rogue released pod A")
	}
	if w.held() != before {
		t.Fatal("rogue's release freed something")
	}
	// Its agent releases pod A: its buffer is freed before the answer.
	mark := w.rec.mark()
	if err := w.release(t, "agent-1", podA); err != nil {
		t.Fatalf("release: %v", err)
	}
	if got := w.held(); got != before-700<<10 {
		t.Errorf("after the release the host holds %d bytes; want %d (pod B's only)", got, before-700<<10)
	}
	recs := w.rec.since(mark)
	if len(recs) != 1 || recs[0].Method != "release" || recs[0].Caller.Pod == nil || recs[0].Caller.Pod.UID != "uid-a" ||
		!strings.Contains(recs[0].Reason, "1 sessions and 1 buffers freed") {
		t.Errorf("release records %+v", recs)
	}
	if _, err := a.Devices(ctx); err == nil {
		t.Error("pod A's connection still answers after its release")
	}
	if _, err := w.client(t, "agent-1", podA).Devices(ctx); err == nil || !strings.Contains(err.Error(), "released") {
		t.Errorf("pod A after its release: %v; want refused as released", err)
	}
	if _, err := b.Alloc(ctx, sb.ID, "0", 100<<10); err != nil {
		t.Errorf("pod B after A's release: %v", err)
	}

	// The policy stops trusting the agents: pod B's next call is refused.
	w.pol.Store(policy.AllowAllForTest())
	if _, err := b.Devices(ctx); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "no longer a Kubernetes agent the policy trusts") {
		t.Errorf("pod B after the policy stopped trusting agent-1: %v; want Unauthenticated", err)
	}
}
