package kubetest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/devnet"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

// AgentTag is the tag the agent node joins with, as the DaemonSet's does.
const AgentTag = "tag:k8s"

// DefaultPolicy lets nodes tagged tag:k8s run every built-in kernel on
// every GPU, and ends their sessions after 2s idle.
const DefaultPolicy = `
version = 1

rule "kubernetes nodes" {
  subjects     = ["tag:k8s"]
  gpus         = ["*"]
  kernels      = ["*"]
  idle_timeout = "2s"
}
`

// Mesh is an embedded tailnet with an agent node and GPU hosts.
type Mesh struct {
	Tailnet *overlaytest.Tailnet
	// Agent is the node the Kubernetes agent runs as, tagged AgentTag.
	Agent *tsnet.Node
	// PolicyFile is the hosts' policy file.
	PolicyFile string
}

// StartMesh starts a tailnet and joins the agent node, named agent, to
// it; AddHost adds GPU hosts. policySrc is the hosts' policy (HCL);
// empty means DefaultPolicy. Everything is closed at tb's cleanup.
func StartMesh(tb testing.TB, agent, policySrc string) *Mesh {
	tb.Helper()
	owners := map[string][]string{AgentTag: nil}
	for _, tag := range devnet.DefaultTags() {
		owners[tag] = nil
	}
	tn, err := overlaytest.Start(overlaytest.Options{TagOwners: owners})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tn.Close() })
	if policySrc == "" {
		policySrc = DefaultPolicy
	}
	path := filepath.Join(tb.TempDir(), "policy.hcl")
	if err := os.WriteFile(path, []byte(policySrc), 0o600); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, err := tn.Join(ctx, agent, AgentTag)
	if err != nil {
		tb.Fatalf("join %s: %v", agent, err)
	}
	tb.Cleanup(func() { a.Close() })
	return &Mesh{Tailnet: tn, Agent: a, PolicyFile: path}
}

// GPUHost is a GPU host on a Mesh: the CPU backend behind the compute
// endpoint, under the mesh's policy file.
type GPUHost struct {
	Name    string
	Node    *tsnet.Node
	Host    *node.Host
	Backend *cpu.Backend
	// AuditPath is the host's audit log (JSON lines, gpusvc/audit).
	AuditPath string

	mu    sync.Mutex
	calls []gpusvc.CallRecord // guarded by mu
	added chan struct{}       // closed and replaced on every call; guarded by mu
}

// AddHost joins a GPU host named name with tags and serves the compute
// endpoint on it. Leave closes it early; otherwise tb's cleanup does.
func (m *Mesh) AddHost(tb testing.TB, name string, tags ...string) *GPUHost {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n, err := m.Tailnet.Join(ctx, name, tags...)
	if err != nil {
		tb.Fatalf("join %s: %v", name, err)
	}
	store, err := policy.NewStore(m.PolicyFile, tb.Logf)
	if err != nil {
		n.Close()
		tb.Fatal(err)
	}
	g := &GPUHost{Name: name, Node: n, Backend: cpu.New(), AuditPath: filepath.Join(tb.TempDir(), "audit.log"), added: make(chan struct{})}
	g.Host, err = node.StartHost(ctx, node.HostConfig{
		Overlay: n, Name: name, Policy: store, Backend: node.BackendConfig{Ready: g.Backend},
		Audit:  &node.AuditConfig{Path: g.AuditPath},
		OnCall: g.record,
	})
	if err != nil {
		n.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(g.Leave)
	return g
}

func (g *GPUHost) record(r gpusvc.CallRecord) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, r)
	close(g.added)
	g.added = make(chan struct{})
}

// Calls returns the calls the host has finished, and a channel closed at
// the next one.
func (g *GPUHost) Calls() ([]gpusvc.CallRecord, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.calls), g.added
}

// HeldBytes is the memory the host's backend holds in resident buffers,
// as its Devices report says.
func (g *GPUHost) HeldBytes(ctx context.Context) uint64 {
	info := g.Backend.Info(ctx)
	var n uint64
	for _, d := range info.Devices {
		n += d.MemoryUsed
	}
	return n
}

// Leave stops the host's endpoint and takes it off the tailnet. Calling
// it again does nothing.
func (g *GPUHost) Leave() {
	g.Host.Close()
	g.Backend.Close() // handed in ready: ours to close, after the host
	g.Node.Close()
}
