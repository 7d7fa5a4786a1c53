package gpusvc

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// FuzzResolveGPU: any GPU name resolves to a device of the host or is
// refused; every spelling of an index names that index; the refusal's
// message stays short whatever the name.
func FuzzResolveGPU(f *testing.F) {
	d := &devices{list: []device{{index: 0, name: "0", uuid: "GPU-aaaa"}, {index: 1, name: "1", uuid: "GPU-bbbb"}}}
	for _, s := range []string{"", "0", "00", "+0", "-0", "1", "+01", "-1", "2", "GPU-aaaa", "gpu-BBBB", "0x1", " 1", "++1", "99999999999999999999", strings.Repeat("9", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		dev, err := d.resolve(name)
		if err != nil {
			if len(err.Error()) > 300 {
				t.Fatalf("a refusal of %d bytes", len(err.Error()))
			}
			return
		}
		if dev != d.list[0] && dev != d.list[1] {
			t.Fatalf("%q resolved to %+v, not a device of the host", name, dev)
		}
		if i, perr := strconv.ParseInt(name, 10, 32); perr == nil && int64(dev.index) != i {
			t.Fatalf("%q resolved to device %d", name, dev.index)
		}
	})
}

// FuzzBounded: a string cut for a record is short, valid UTF-8, and free
// of control characters.
func FuzzBounded(f *testing.F) {
	for _, s := range []string{"", "relu", "\xff\xfe", "a\nb\x00", strings.Repeat("é", 100)} {
		f.Add(s, 10)
	}
	f.Fuzz(func(t *testing.T, s string, n int) {
		n = min(max(n, 0), 1000)
		b := bounded(s, n)
		if len(b) > n+len("…") || !utf8.ValidString(b) {
			t.Fatalf("bounded(%q, %d) = %q", s, n, b)
		}
		if strings.IndexFunc(b, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
			t.Fatalf("bounded(%q, %d) = %q keeps a control character", s, n, b)
		}
	})
}

// allocBackend allocates every output it is asked for, as the CPU backend
// does, and fills nothing: what an unbounded output costs, it costs.
type allocBackend struct{}

func (allocBackend) Info(context.Context) Info {
	return Info{Backend: "alloc", Devices: []Device{{Index: 0, UUID: "GPU-aaaa"}}}
}
func (allocBackend) Close() error { return nil }
func (allocBackend) Compute(_ context.Context, c Call) (kernel.Tensor, error) {
	n, err := shapeBytes(c.OutShape, kernel.Float32)
	if err != nil {
		return kernel.Tensor{}, err
	}
	return kernel.Tensor{DType: kernel.Float32, Shape: c.OutShape, Data: make([]byte, n)}, nil
}

// FuzzCompute decodes any bytes as a ComputeRequest and runs it through
// the server's Compute pipeline (no network): it must not panic, a result
// must fit the response limit, and whatever the call held must be given
// back when it ends.
func FuzzCompute(f *testing.F) {
	srv, err := NewServer(Config{
		Backend: allocBackend{}, Policy: policy.AllowAllForTest, MaxMemory: 64 << 20, MaxResponseBytes: 1 << 20,
		WhoIs: func(context.Context, string) (overlay.Identity, error) { return overlay.Identity{}, nil },
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(srv.Stop)
	who := newCaller(overlay.Identity{Node: "fuzzer", StableID: "fuzzer"})
	tensor := func(shape ...int64) *pb.Arg {
		n := int64(4)
		for _, d := range shape {
			n *= d
		}
		return &pb.Arg{Value: &pb.Arg_Tensor{Tensor: &pb.Tensor{Shape: shape, Data: make([]byte, n)}}}
	}
	for _, req := range []*pb.ComputeRequest{
		{Kernel: "matrix_mul", Args: []*pb.Arg{tensor(2, 3), tensor(3, 2)}},
		{Kernel: "matrix_mul", Args: []*pb.Arg{tensor(1024, 1), tensor(1, 1024)}},
		{Kernel: "relu", Gpu: "+0", Args: []*pb.Arg{tensor(8)}},
		{Kernel: "saxpy", Args: []*pb.Arg{{Value: &pb.Arg_Scalar{Scalar: 2}}, tensor(4), tensor(4)}},
		{Kernel: "relu", Session: 1, Args: []*pb.Arg{{Value: &pb.Arg_Buffer{Buffer: &pb.BufferRef{Id: 1, Shape: []int64{1 << 40}}}}}},
	} {
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.ComputeRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		c := &call{start: time.Now(), method: "Compute", who: who}
		res, err := srv.compute(context.Background(), c, &req)
		for i := len(c.undo) - 1; i >= 0; i-- {
			c.undo[i]()
		}
		c.replied()
		if err == nil && proto.Size(res) > 1<<20+1024 {
			t.Fatalf("a result of %d bytes under a 1 MiB limit", proto.Size(res))
		}
		if held, _ := srv.quotas.memory(); held != 0 {
			t.Fatalf("the call ended holding %d bytes of the budget", held)
		}
	})
}

// TestBuiltinsAgree: the kernels the policy knows are the kernels there are.
func TestBuiltinsAgree(t *testing.T) {
	if got, want := kernel.Names(), policy.BuiltinKernels(); !slices.Equal(got, want) {
		t.Errorf("kernel.Names() = %v; policy.BuiltinKernels() = %v", got, want)
	}
}

// TestCapabilitiesShown: Explain shows the capabilities the host sees the
// caller hold, sorted and bounded.
func TestCapabilitiesShown(t *testing.T) {
	caps := map[string][]json.RawMessage{
		"gpumesh.dev/cap/gpu": {json.RawMessage(`{"kernels":["relu"]}`), json.RawMessage(strings.Repeat("x", 5000))},
		"example.com/cap/a":   nil,
	}
	got := capabilitiesPB(overlay.Identity{Node: "n", Caps: caps})
	if len(got) != 2 || got[0].GetName() != "example.com/cap/a" || got[1].GetName() != "gpumesh.dev/cap/gpu" {
		t.Fatalf("capabilities %v", got)
	}
	v := got[1].GetValues()
	if len(v) != 2 || v[0] != `{"kernels":["relu"]}` || len(v[1]) > maxCapValueBytes+len("…") {
		t.Errorf("values %q", v)
	}
}
