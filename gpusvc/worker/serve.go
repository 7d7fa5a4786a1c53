package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/worker/workerpb"
)

// Transport tuning for the Unix socket: large windows and buffers let one
// 1 MiB chunk cross without flow-control round trips.
// faultGrace bounds a worker's graceful stop.
const faultGrace = 2 * time.Second

const (
	sockWindow = 64 << 20
	sockBuffer = 1 << 20
)

// Serve is the worker side: it serves b over the protocol on ln until ctx
// is done (graceful: calls in flight finish) or a call reports ErrFault,
// after which it answers that call, stops, and returns the fault: a CUDA
// context is unusable after a fault, so the process must exit and the
// supervisor starts a fresh one.
//
// shm, if not nil, is the shared memory the node passed for bulk
// transfers (MapShared).
func Serve(ctx context.Context, ln net.Listener, b gpusvc.Backend, shm []byte) error {
	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(math.MaxInt32),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.InitialWindowSize(sockWindow),
		grpc.InitialConnWindowSize(sockWindow),
		grpc.ReadBufferSize(sockBuffer),
		grpc.WriteBufferSize(sockBuffer),
	)
	w := &workerServer{b: b, shm: shm, faulted: make(chan struct{})}
	w.mem, _ = b.(gpusvc.Memory)
	w.mods, _ = b.(gpusvc.Modules)
	pb.RegisterWorkerServer(srv, w)

	var wg sync.WaitGroup
	stopped := make(chan struct{})
	wg.Go(func() {
		select {
		case <-ctx.Done():
		case <-w.faulted:
		case <-stopped:
			return
		}
		// Calls in flight get faultGrace to finish (after a fault they
		// fail fast on the lost context), then the server stops hard.
		t := time.AfterFunc(faultGrace, srv.Stop)
		defer t.Stop()
		srv.GracefulStop()
	})
	err := srv.Serve(ln)
	close(stopped)
	wg.Wait()
	select {
	case <-w.faulted:
		return w.fault
	default:
	}
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("worker: serve: %w", err)
	}
	return nil
}

type workerServer struct {
	pb.UnimplementedWorkerServer
	b    gpusvc.Backend
	mem  gpusvc.Memory  // nil if b keeps no buffers
	mods gpusvc.Modules // nil if b runs no custom kernels
	shm  []byte         // shared with the node; nil if none

	faultOnce sync.Once
	faulted   chan struct{} // closed on the first ErrFault
	fault     error         // set before faulted is closed
}

// check converts a backend error, noting a fault.
func (w *workerServer) check(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrFault) {
		w.faultOnce.Do(func() {
			w.fault = err
			close(w.faulted)
		})
	}
	return toStatus(err)
}

func (w *workerServer) Hello(ctx context.Context, _ *pb.HelloRequest) (*pb.HelloResponse, error) {
	return &pb.HelloResponse{
		Pid: int32(os.Getpid()), Info: infoToPB(w.b.Info(ctx)), Memory: w.mem != nil, Modules: w.mods != nil,
	}, nil
}

func (w *workerServer) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.InfoResponse, error) {
	return &pb.InfoResponse{Info: infoToPB(w.b.Info(ctx))}, nil
}

func (w *workerServer) Compute(ctx context.Context, req *pb.ComputeRequest) (*pb.ComputeResponse, error) {
	ctx = gpusvc.WithSession(ctx, req.GetSession())
	t, err := w.b.Compute(ctx, gpusvc.Call{
		Kernel: req.GetKernel(), GPU: int(req.GetGpu()), Args: argsFromPB(req.GetArgs()),
		Out: req.GetOut(), OutShape: req.GetOutShape(),
	})
	if err != nil {
		return nil, w.check(err)
	}
	return &pb.ComputeResponse{Out: tensorToPB(t)}, nil
}

var errNoMemory = status.Error(codes.Unimplemented, gpusvc.ErrUnsupported.Error()+": resident buffers")

func (w *workerServer) Alloc(ctx context.Context, req *pb.AllocRequest) (*pb.AllocResponse, error) {
	if w.mem == nil {
		return nil, errNoMemory
	}
	ctx = gpusvc.WithSession(ctx, req.GetSession())
	h, err := w.mem.Alloc(ctx, int(req.GetGpu()), req.GetBytes())
	if err != nil {
		return nil, w.check(err)
	}
	return &pb.AllocResponse{Handle: h}, nil
}

func (w *workerServer) Free(ctx context.Context, req *pb.FreeRequest) (*pb.FreeResponse, error) {
	if w.mem == nil {
		return nil, errNoMemory
	}
	return &pb.FreeResponse{}, w.check(w.mem.Free(ctx, req.GetHandle()))
}

func (w *workerServer) WriteAt(ctx context.Context, req *pb.WriteAtRequest) (*pb.WriteAtResponse, error) {
	if w.mem == nil {
		return nil, errNoMemory
	}
	return &pb.WriteAtResponse{}, w.check(w.mem.WriteAt(ctx, req.GetHandle(), req.GetOffset(), req.GetData()))
}

// maxRead bounds one ReadAt; the node reads in chunks of at most this.
const maxRead = 64 << 20

func (w *workerServer) ReadAt(ctx context.Context, req *pb.ReadAtRequest) (*pb.ReadAtResponse, error) {
	if w.mem == nil {
		return nil, errNoMemory
	}
	n := req.GetLength()
	if n < 0 || n > maxRead {
		return nil, status.Errorf(codes.InvalidArgument, "read of %d bytes: at most %d at a time", n, maxRead)
	}
	p := make([]byte, n)
	if err := w.mem.ReadAt(ctx, req.GetHandle(), req.GetOffset(), p); err != nil {
		return nil, w.check(err)
	}
	return &pb.ReadAtResponse{Data: p}, nil
}

func (w *workerServer) LoadModule(ctx context.Context, req *pb.LoadModuleRequest) (*pb.LoadModuleResponse, error) {
	if w.mods == nil {
		return nil, status.Error(codes.Unimplemented, gpusvc.ErrUnsupported.Error()+": custom kernels")
	}
	id, log, cached, err := w.mods.LoadModule(ctx, int(req.GetGpu()), gpusvc.ModuleSource{PTX: req.GetPtx(), CUDA: req.GetCuda()})
	if err != nil {
		// The compiler's log explains a failed build: keep it.
		if log != "" {
			err = fmt.Errorf("%w\n%s", err, log)
		}
		return nil, w.check(err)
	}
	return &pb.LoadModuleResponse{Id: id, Log: log, Cached: cached}, nil
}

func (w *workerServer) Launch(ctx context.Context, req *pb.LaunchRequest) (*pb.LaunchResponse, error) {
	if w.mods == nil {
		return nil, status.Error(codes.Unimplemented, gpusvc.ErrUnsupported.Error()+": custom kernels")
	}
	ctx = gpusvc.WithSession(ctx, req.GetSession())
	err := w.mods.Launch(ctx, gpusvc.Launch{
		GPU: int(req.GetGpu()), Module: req.GetModule(), Function: req.GetFunction(),
		Grid: dim(req.GetGrid()), Block: dim(req.GetBlock()), SharedMemBytes: req.GetSharedMemBytes(),
		Args: argsFromPB(req.GetArgs()),
	})
	return &pb.LaunchResponse{}, w.check(err)
}

// shmSpan returns the shared memory a ShmRequest names.
func (w *workerServer) shmSpan(req *pb.ShmRequest) ([]byte, error) {
	if w.mem == nil {
		return nil, errNoMemory
	}
	off, n := req.GetShmOffset(), req.GetLength()
	if w.shm == nil || off < 0 || n < 0 || off+n > int64(len(w.shm)) {
		return nil, status.Errorf(codes.InvalidArgument, "shared memory [%d, +%d) outside the %d bytes shared", off, n, len(w.shm))
	}
	return w.shm[off : off+n], nil
}

func (w *workerServer) WriteShm(ctx context.Context, req *pb.ShmRequest) (*pb.ShmResponse, error) {
	p, err := w.shmSpan(req)
	if err != nil {
		return nil, err
	}
	return &pb.ShmResponse{}, w.check(w.mem.WriteAt(ctx, req.GetHandle(), req.GetOffset(), p))
}

func (w *workerServer) ReadShm(ctx context.Context, req *pb.ShmRequest) (*pb.ShmResponse, error) {
	p, err := w.shmSpan(req)
	if err != nil {
		return nil, err
	}
	return &pb.ShmResponse{}, w.check(w.mem.ReadAt(ctx, req.GetHandle(), req.GetOffset(), p))
}
