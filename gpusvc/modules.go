package gpusvc

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/policy"
)

// Custom code: LoadModule needs custom:ptx or custom:cuda (by the source
// given) and Launch the right the module was loaded under, on the GPU
// concerned. A session holds at most maxModulesPerSession modules.

// errCustomNeedsCUDA is the answer to LoadModule and Launch on a backend
// without Modules.
var errCustomNeedsCUDA = status.Error(codes.Unimplemented,
	"gpumesh: custom kernels need a CUDA host: `gpumesh serve` on a machine with an NVIDIA GPU and the gpumesh-gpu worker; this host serves the built-in kernels only")

// customCall is what LoadModule and Launch share: the backend's modules,
// the GPU, the caller's session.
type customCall struct {
	mods Modules
	dev  device
	sess *session
}

// custom is the preamble of LoadModule and Launch, after their own bounds:
// it resolves the GPU and the caller's session.
func (s *Server) custom(c *call, gpu string, session uint64) (customCall, error) {
	mods, ok := s.cfg.Backend.(Modules)
	if !ok {
		return customCall{}, errCustomNeedsCUDA
	}
	dev, err := c.resolveGPU(s, gpu)
	if err != nil {
		return customCall{}, err
	}
	sess, err := s.sessions.use(c, session)
	if err != nil {
		return customCall{}, err
	}
	return customCall{mods: mods, dev: dev, sess: sess}, nil
}

// LoadModule loads PTX or CUDA C into the caller's session.
func (s *Server) LoadModule(ctx context.Context, req *pb.LoadModuleRequest) (*pb.LoadModuleResponse, error) {
	c := callOf(ctx)
	c.in = int64(proto.Size(req))
	var src ModuleSource
	switch v := req.GetSource().(type) {
	case *pb.LoadModuleRequest_Ptx:
		c.kernel, src.PTX = policy.KernelCustomPTX, v.Ptx
	case *pb.LoadModuleRequest_Cuda:
		c.kernel, src.CUDA = policy.KernelCustomCUDA, v.Cuda
	}
	if c.kernel == "" || (len(src.PTX) == 0 && src.CUDA == "") {
		return nil, status.Error(codes.InvalidArgument, "gpumesh: load module: no ptx or cuda source")
	}
	cc, err := s.custom(c, req.GetGpu(), req.GetSession())
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, policy.Request{Kernel: c.kernel, GPU: cc.dev.name, GPUUUID: cc.dev.uuid, Bytes: c.in}); err != nil {
		return nil, err
	}
	if err := s.sessions.moduleRoom(cc.sess); err != nil {
		return nil, err
	}
	mid, log, cached, err := cc.mods.LoadModule(backendCtx(ctx, c, cc.sess.id), cc.dev.index, src)
	if err != nil {
		if log != "" {
			return nil, status.Errorf(status.Code(statusOf(err)), "gpumesh: load module: %v\n%s", err, bounded(log, 16<<10))
		}
		return nil, statusOf(fmt.Errorf("load module: %w", err))
	}
	if err := s.sessions.addModule(cc.sess, moduleKey{gpu: cc.dev.index, id: mid}, c.kernel); err != nil {
		return nil, err
	}
	return &pb.LoadModuleResponse{Module: mid, Cached: cached, Log: log}, nil
}

// Launch runs a function of a module loaded in the caller's session.
func (s *Server) Launch(ctx context.Context, req *pb.LaunchRequest) (*pb.LaunchResponse, error) {
	c := callOf(ctx)
	c.in = int64(proto.Size(req))
	module, err := checkName("module", req.GetModule())
	if err != nil {
		return nil, err
	}
	fn, err := checkName("function", req.GetFunction())
	if err != nil {
		return nil, err
	}
	if fn == "" {
		return nil, status.Error(codes.InvalidArgument, "gpumesh: launch: no function name")
	}
	if n := len(req.GetArgs()); n > maxArgs {
		return nil, status.Errorf(codes.InvalidArgument, "gpumesh: %d arguments; at most %d", n, maxArgs)
	}
	cc, err := s.custom(c, req.GetGpu(), req.GetSession())
	if err != nil {
		return nil, err
	}
	key := moduleKey{gpu: cc.dev.index, id: module}
	right, ok := s.sessions.module(cc.sess, key)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "gpumesh: module %q is not loaded on gpu %s in session %d", module, cc.dev.name, cc.sess.id)
	}
	c.kernel = right
	if err := s.authorize(c, policy.Request{Kernel: right, GPU: cc.dev.name, GPUUUID: cc.dev.uuid, Bytes: c.in}); err != nil {
		return nil, err
	}
	args, _, err := s.kernelArgs(c, cc.dev, cc.sess.id, req.GetArgs(), 0)
	if err != nil {
		return nil, err
	}
	l := Launch{
		GPU: cc.dev.index, Module: key.id, Function: fn,
		Grid: dim3(req.GetGrid()), Block: dim3(req.GetBlock()), SharedMemBytes: req.GetSharedMemBytes(), Args: args,
	}
	t0 := time.Now()
	if err := cc.mods.Launch(backendCtx(ctx, c, cc.sess.id), l); err != nil {
		return nil, statusOf(fmt.Errorf("launch %s: %w", l.Function, err))
	}
	return &pb.LaunchResponse{ComputeNanos: time.Since(t0).Nanoseconds()}, nil
}

// dim3 reads a launch dimension; a missing or 0 component is 1.
func dim3(d *pb.Dim3) [3]uint32 {
	one := func(v uint32) uint32 { return max(v, 1) }
	return [3]uint32{one(d.GetX()), one(d.GetY()), one(d.GetZ())}
}
