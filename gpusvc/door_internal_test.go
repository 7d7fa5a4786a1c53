package gpusvc

import (
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

// TestServerCodecChecksSizeFirst: a cuda.CUDAService request over its cap
// is never decoded (its Struct stays unallocated); one under it is, and
// every other message is decoded as gRPC's proto codec does.
func TestServerCodecChecksSizeFirst(t *testing.T) {
	params, err := structpb.NewStruct(map[string]any{"x": []any{1, 2, 3}})
	if err != nil {
		t.Fatal(err)
	}
	wire, err := proto.Marshal(&cudapb.ComputeRequest{Kernel: "relu", Params: params})
	if err != nil {
		t.Fatal(err)
	}
	codec := newServerCodec()
	for _, tc := range []struct {
		max     int
		decoded bool
	}{{len(wire) - 1, false}, {len(wire), true}} {
		in := &sizedRequest{msg: new(cudapb.ComputeRequest), max: tc.max}
		if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, in); err != nil {
			t.Fatal(err)
		}
		req := in.msg.(*cudapb.ComputeRequest)
		if in.size != len(wire) || (req.GetParams() != nil) != tc.decoded || (req.GetKernel() == "relu") != tc.decoded {
			t.Errorf("cap %d: size %d, decoded %v; want size %d, decoded %v", tc.max, in.size, req.GetParams() != nil, len(wire), tc.decoded)
		}
	}
	v1, err := proto.Marshal(&pb.ComputeRequest{Kernel: "relu"})
	if err != nil {
		t.Fatal(err)
	}
	var req pb.ComputeRequest
	if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(v1)}, &req); err != nil || req.GetKernel() != "relu" {
		t.Errorf("a gpumesh.v1 request: %v, kernel %q", err, req.GetKernel())
	}
	if codec.Name() != "proto" {
		t.Errorf("codec name %q; want proto", codec.Name())
	}
}
