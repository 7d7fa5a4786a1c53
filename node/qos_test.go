package node_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestQoSClassAndInnerDSCP: the laptop's replies are scheduled in its
// rule's class, paced to the configured link rate, and the host could mark
// the inner TCP connection (no "no inner DSCP" notice in its log).
func TestQoSClassAndInnerDSCP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, nodes := overlaytest.StartNodes(t, "gpu-host", "laptop")
	hostNode, laptopNode := nodes[0], nodes[1]

	path := filepath.Join(t.TempDir(), "policy.hcl")
	if err := os.WriteFile(path, []byte(`
version = 1
class "fast" {
  dscp     = "EF"
  priority = 0
}
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
  class    = "fast"
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(path, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	var log syncBuffer
	host, err := node.StartHost(ctx, node.HostConfig{
		Overlay: hostNode, Name: "gpu-host", Policy: store,
		Logger: slog.New(slog.NewTextHandler(&log, nil)),
		QoS:    &node.QoSConfig{LinkRate: 100 << 20},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	c, err := node.Dial(laptopNode, "gpu-host")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	x := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{4}, []float32{1, 2, 3, 4})}
	if _, err := c.Compute(ctx, "saxpy", kernel.Arg{Kind: kernel.ArgScalar, Scalar: 2}, x, x); err != nil {
		t.Fatal(err)
	}

	st := host.QoSStatus()
	if st.LinkRate != 100<<20 {
		t.Errorf("link rate %d, want %d", st.LinkRate, 100<<20)
	}
	for _, cs := range st.Classes {
		switch {
		case cs.Name == "fast" && cs.Bytes == 0:
			t.Errorf("class fast admitted no bytes: %+v", st.Classes)
		case cs.Name != "fast" && cs.Bytes != 0:
			t.Errorf("class %s admitted %d bytes; the laptop's replies belong to fast", cs.Name, cs.Bytes)
		}
	}
	if strings.Contains(log.String(), "no inner DSCP") {
		t.Errorf("the host could not mark the laptop's connection:\n%s", log.String())
	}
}
