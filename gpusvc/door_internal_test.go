package gpusvc

import (
	"slices"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

// TestServerCodecChecksSizeFirst: a cuda.CUDAService request over its cap
// is never decoded (its Struct stays unallocated); one under it is kept in
// its wire form where plain, decoded where not, and every other message is
// decoded as gRPC's proto codec does.
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
		kept := in.plain && in.wire.Kernel() == "relu" // kept in its wire form
		if in.size != len(wire) || kept != tc.decoded || req.GetParams() != nil || req.GetKernel() != "" {
			t.Errorf("cap %d: size %d, kept %v, decoded %v; want size %d, kept %v, not decoded", tc.max, in.size, kept, req.GetParams() != nil, len(wire), tc.decoded)
		}
	}
	// A request not in the plain form (here the kernel twice) is decoded.
	twice := protowire.AppendString(protowire.AppendTag(slices.Clone(wire), 1, protowire.BytesType), "softmax")
	in := &sizedRequest{msg: new(cudapb.ComputeRequest), max: len(twice)}
	if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(twice)}, in); err != nil {
		t.Fatal(err)
	}
	if req := in.msg.(*cudapb.ComputeRequest); in.plain || req.GetKernel() != "softmax" || req.GetParams() == nil {
		t.Errorf("a request with its kernel twice: plain %v, decoded %v", in.plain, req)
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
