package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/worker/workerpb"
)

// Config configures a Supervisor. Only Path is required.
type Config struct {
	// Path is the worker binary (gpumesh-gpu).
	Path string
	// Args are passed to every worker before the supervisor's own
	// (--gpu N); e.g. --stand-in.
	Args []string
	// Env is added to the worker's environment (os.Environ()).
	Env []string
	// Dir is where the 0700 socket directory is made; "" means os.TempDir().
	Dir string
	// StartTimeout bounds a worker's start, up to its Hello answer.
	// 0 means 60s (a CUDA context can take seconds to create).
	StartTimeout time.Duration
	// IdleTimeout stops a worker that has had no call in flight and held
	// no buffer for this long. 0 means 5m; negative never.
	IdleTimeout time.Duration
	// StopGrace is how long a stopped worker may take to exit after its
	// stdin closes before it is killed. 0 means 5s.
	StopGrace time.Duration
	// Backoff is the wait before a start after the second crash in a row;
	// it doubles with each further crash up to MaxBackoff. A worker that
	// ran for CrashWindow without crashing starts a new count. 0 means 1s.
	Backoff, MaxBackoff time.Duration
	// SharedMemory is the size of each worker's shared memory for bulk
	// transfers, split in four slots; 0 means 16 MiB, negative none (bulk
	// data then goes through the socket).
	SharedMemory int
	// CrashWindow: 0 means 1m.
	CrashWindow time.Duration
	// MaxWorkersPerGPU bounds the worker processes (CUDA contexts, each
	// hundreds of MiB of device memory) on one GPU. A caller whose worker
	// would exceed it takes the place of an idle worker holding no
	// buffer, or gets gpusvc.ErrBusy. 0 means 8.
	MaxWorkersPerGPU int
	// Logger receives one line per start, crash, failed start and reap;
	// nil discards them.
	Logger *slog.Logger
}

func (c *Config) populate() error {
	if c.Path == "" {
		return errors.New("worker: no worker binary given")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.StartTimeout, 60*time.Second)
	def(&c.IdleTimeout, 5*time.Minute)
	def(&c.StopGrace, 5*time.Second)
	def(&c.Backoff, time.Second)
	def(&c.MaxBackoff, time.Minute)
	def(&c.CrashWindow, time.Minute)
	if c.MaxWorkersPerGPU <= 0 {
		c.MaxWorkersPerGPU = 8
	}
	if c.SharedMemory == 0 {
		c.SharedMemory = 16 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Key names a worker: one GPU, one caller.
type Key struct {
	GPU    int
	Caller string // gpusvc.CallerKey; "" for calls that name none
}

func (k Key) String() string {
	c := k.Caller
	if c == "" {
		c = "(no caller)"
	}
	return fmt.Sprintf("gpu %d worker for %s", k.GPU, c)
}

// Stats counts the supervisor's workers, for metrics.
type Stats struct {
	Live          int    // worker processes running now
	Started       uint64 // starts that answered Hello, restarts included
	Restarts      uint64 // of those, starts after a crash of the same key
	Crashes       uint64 // workers that exited without being asked to
	StartFailures uint64 // starts that failed
	Reaped        uint64 // idle workers stopped
}

// StartError says why a worker could not start: no driver, no device, a
// binary built without CUDA. Reason is the worker's own last words.
type StartError struct {
	Path   string
	Reason string
}

func (e *StartError) Error() string {
	return fmt.Sprintf("worker: %s could not start: %s", e.Path, e.Reason)
}

// ErrStart matches every *StartError with errors.Is.
var ErrStart = errors.New("worker could not start")

func (e *StartError) Is(target error) bool { return target == ErrStart }

// Supervisor runs worker processes, one per GPU and caller, and is the
// node's Backend: it implements gpusvc.Backend, Memory and Modules by
// forwarding every call to the caller's worker, started on first use.
//
// The zero value is not usable; call Start.
type Supervisor struct {
	cfg  Config
	log  *slog.Logger
	dir  string // the 0700 socket directory
	info gpusvc.Info
	mem  bool // workers keep buffers
	mods bool // workers run custom kernels

	wg        sync.WaitGroup // every goroutine the supervisor starts
	done      chan struct{}  // closed by Close: starts in progress give up
	closeOnce sync.Once

	mu      sync.Mutex
	closed  bool               // guarded by mu
	slots   map[Key]*slot      // guarded by mu
	procs   map[*proc]bool     // live processes; guarded by mu
	buffers map[uint64]*bufRef // by node handle; guarded by mu
	next    uint64             // last node handle; guarded by mu
	gen     uint64             // last process number; guarded by mu
	stats   Stats              // guarded by mu
	// testHook, if set (by tests), is called with each event, unlocked;
	// guarded by mu.
	testHook func(event string, k Key)
}

// bufRef is a node handle's buffer in a worker. Guarded by Supervisor.mu.
type bufRef struct {
	p      *proc
	handle uint64 // the worker's
}

// proc is one worker process.
type proc struct {
	key    Key
	n      uint64 // process number, for socket names and logs
	cmd    *exec.Cmd
	stdin  io.WriteCloser // closing it asks the worker to stop
	conn   *grpc.ClientConn
	client pb.WorkerClient
	stderr *tailWriter // the last of its stdout and stderr
	sock   string
	start  time.Time

	exited chan struct{} // closed once the process has been waited for

	shm   []byte   // shared with the worker; nil if none
	slots chan int // free slot offsets in shm
	slot  int      // slot size

	// Guarded by Supervisor.mu:
	ready    bool // answered Hello
	dead     bool
	reason   string // why it exited, once dead
	stopping bool   // asked to stop: its exit is not a crash
	inflight int
	buffers  int
	lastUsed time.Time
	loaded   map[string]bool // module IDs loaded in this process
}

// Start starts the supervisor and one worker for GPU 0 to learn what the
// workers serve. If that worker cannot start, Start returns a *StartError
// (matching ErrStart) with the worker's reason, and nothing is left
// running.
func Start(ctx context.Context, cfg Config) (_ *Supervisor, err error) {
	if err := cfg.populate(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(cfg.Dir, "gpumesh-gpu-")
	if err != nil {
		return nil, fmt.Errorf("worker: socket directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("worker: socket directory: %w", err)
	}
	s := &Supervisor{
		cfg: cfg, log: cfg.Logger, dir: dir, done: make(chan struct{}),
		slots: make(map[Key]*slot), procs: make(map[*proc]bool), buffers: make(map[uint64]*bufRef),
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	p, hello, err := s.spawn(ctx, Key{})
	if err != nil {
		return nil, err
	}
	s.info = infoFromPB(hello.GetInfo())
	s.mem, s.mods = hello.GetMemory(), hello.GetModules()
	s.mu.Lock()
	s.slotOf(Key{}).cur = p
	s.mu.Unlock()
	if cfg.IdleTimeout > 0 {
		s.wg.Go(s.reap)
	}
	return s, nil
}

// Stats returns the supervisor's counters.
func (s *Supervisor) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Live = len(s.procs)
	return st
}

// Pids returns the process IDs of the running workers.
func (s *Supervisor) Pids() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for p := range s.procs {
		out = append(out, p.cmd.Process.Pid)
	}
	return out
}

// Close stops every worker (stdin closed, then killed after StopGrace),
// waits for them, and removes the socket directory. A second Close
// returns net.ErrClosed.
func (s *Supervisor) Close() error {
	err := net.ErrClosed
	s.closeOnce.Do(func() {
		err = nil
		s.mu.Lock()
		s.closed = true
		var ps []*proc
		for p := range s.procs {
			p.stopping = true
			ps = append(ps, p)
		}
		s.mu.Unlock()
		close(s.done)
		for _, p := range ps {
			s.stop(p)
		}
		s.wg.Wait()
		os.RemoveAll(s.dir)
	})
	return err
}

func (s *Supervisor) event(ev string, k Key) {
	s.mu.Lock()
	h := s.testHook
	s.mu.Unlock()
	if h != nil {
		h(ev, k)
	}
}

// spawn starts a worker for k and waits for its Hello.
func (s *Supervisor) spawn(ctx context.Context, k Key) (_ *proc, _ *pb.HelloResponse, err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, fmt.Errorf("worker: %w", net.ErrClosed)
	}
	s.gen++
	n := s.gen
	s.mu.Unlock()
	defer func() {
		if err != nil {
			s.mu.Lock()
			s.stats.StartFailures++
			s.mu.Unlock()
			s.log.Warn("gpu worker could not start", "worker", k.String(), "err", err)
			s.event("start-failed", k)
		}
	}()

	sock := filepath.Join(s.dir, fmt.Sprintf("w%d.sock", n))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("worker: listen: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	lf, err := ln.File()
	ln.Close()
	if err != nil {
		os.Remove(sock)
		return nil, nil, fmt.Errorf("worker: listen: %w", err)
	}
	defer lf.Close()

	args := append(append([]string{}, s.cfg.Args...), "--listen-fd=3", fmt.Sprintf("--gpu=%d", k.GPU))
	cmd := exec.Command(s.cfg.Path, args...)
	cmd.Env = append(os.Environ(), s.cfg.Env...)
	cmd.ExtraFiles = []*os.File{lf}
	cmd.SysProcAttr = sysProcAttr()
	p := &proc{key: k, n: n, cmd: cmd, stderr: newTailWriter(4096), sock: sock, exited: make(chan struct{}), loaded: map[string]bool{}}
	if s.cfg.SharedMemory > 0 {
		// Without shared memory (not Linux) bulk data goes through the socket.
		if f, m, err := newShm(s.cfg.SharedMemory); err == nil {
			defer f.Close()
			p.shm, p.slot = m, s.cfg.SharedMemory/4
			p.slots = make(chan int, 4)
			for i := range 4 {
				p.slots <- i * p.slot
			}
			cmd.ExtraFiles = append(cmd.ExtraFiles, f)
			cmd.Args = append(cmd.Args, "--shm-fd=4", fmt.Sprintf("--shm-size=%d", len(m)))
		}
	}
	// Both streams: gorgonia.org/cu reports a failed cuInit on stdout.
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		os.Remove(sock)
		return nil, nil, fmt.Errorf("worker: %w", err)
	}
	if err := cmd.Start(); err != nil {
		os.Remove(sock)
		unmapShm(p.shm)
		return nil, nil, &StartError{Path: s.cfg.Path, Reason: err.Error()}
	}
	// The worker holds the listener now; with ours closed, a worker that
	// dies leaves nobody listening, and dialing it fails at once.
	lf.Close()
	p.start = time.Now()
	s.mu.Lock()
	p.lastUsed = p.start
	if s.closed {
		s.mu.Unlock()
		cmd.Process.Kill()
		cmd.Wait()
		os.Remove(sock)
		unmapShm(p.shm)
		return nil, nil, fmt.Errorf("worker: %w", net.ErrClosed)
	}
	s.procs[p] = true
	s.wg.Add(1) // before Close's Wait: closed was false under mu
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		s.wait(p)
	}()

	fail := func(err error) (*proc, *pb.HelloResponse, error) {
		s.mu.Lock()
		p.stopping = true
		s.mu.Unlock()
		s.stop(p)
		return nil, nil, err
	}
	p.conn, err = grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)),
		grpc.WithInitialWindowSize(sockWindow),
		grpc.WithInitialConnWindowSize(sockWindow),
		grpc.WithReadBufferSize(sockBuffer),
		grpc.WithWriteBufferSize(sockBuffer),
	)
	if err != nil {
		return fail(fmt.Errorf("worker: dial %s: %w", sock, err))
	}
	p.client = pb.NewWorkerClient(p.conn)

	hctx, cancel := context.WithTimeout(ctx, s.cfg.StartTimeout)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // ends with spawn: stop is closed on return
		select {
		case <-p.exited:
			cancel()
		case <-s.done:
			cancel()
		case <-stop:
		}
	}()
	hello, err := p.client.Hello(hctx, &pb.HelloRequest{}, grpc.WaitForReady(true))
	if err != nil {
		select {
		case <-p.exited:
			s.mu.Lock()
			reason := p.reason
			s.mu.Unlock()
			return fail(&StartError{Path: s.cfg.Path, Reason: reason})
		default:
		}
		if ctx.Err() != nil {
			return fail(ctx.Err())
		}
		return fail(&StartError{Path: s.cfg.Path, Reason: fmt.Sprintf("no answer within %v: %v", s.cfg.StartTimeout, err)})
	}
	s.mu.Lock()
	p.ready, p.lastUsed = true, time.Now()
	s.stats.Started++
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return fail(fmt.Errorf("worker: %w", net.ErrClosed))
	}
	s.log.Info("gpu worker started", "worker", k.String(), "pid", hello.GetPid())
	s.event("started", k)
	return p, hello, nil
}

// wait reaps p's process and records why it ended.
func (s *Supervisor) wait(p *proc) {
	werr := p.cmd.Wait()
	reason := exitReason(werr, p.stderr.String())
	s.mu.Lock()
	p.dead, p.reason = true, reason
	delete(s.procs, p)
	crashed := p.ready && !p.stopping // an exit before Hello is spawn's to report
	sl := s.slots[p.key]
	if crashed {
		s.stats.Crashes++
		if sl != nil {
			if time.Since(p.start) > s.cfg.CrashWindow {
				sl.crashes = 0
			}
			sl.crashes++
			sl.lastCrash, sl.lastReason = time.Now(), reason
		}
	}
	if sl != nil && sl.cur == p {
		sl.cur = nil
	}
	s.mu.Unlock()
	close(p.exited)
	if p.conn != nil {
		p.conn.Close()
	}
	os.Remove(p.sock)
	p.unmapWhenIdle()
	if crashed {
		s.log.Warn("gpu worker crashed; it restarts on its caller's next call", "worker", p.key.String(), "reason", reason)
		s.event("crashed", p.key)
	}
}

// stop asks p to exit and kills it if it has not within StopGrace. The
// caller has set p.stopping. It returns once p has exited.
func (s *Supervisor) stop(p *proc) {
	p.stdin.Close()
	t := time.NewTimer(s.cfg.StopGrace)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// reap stops idle workers until Close.
func (s *Supervisor) reap() {
	tick := time.NewTicker(max(s.cfg.IdleTimeout/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-tick.C:
		}
		var idle []*proc
		s.mu.Lock()
		for p := range s.procs {
			if p.ready && !p.stopping && p.inflight == 0 && p.buffers == 0 && time.Since(p.lastUsed) > s.cfg.IdleTimeout {
				p.stopping = true
				s.stats.Reaped++
				idle = append(idle, p)
			}
		}
		s.pruneLocked()
		s.mu.Unlock()
		for _, p := range idle {
			s.stop(p)
			s.log.Info("idle gpu worker stopped", "worker", p.key.String())
			s.event("reaped", p.key)
		}
	}
}

// unmapWhenIdle unmaps p's shared memory once no transfer uses it: it
// takes every slot back first. p has exited, so transfers end quickly.
func (p *proc) unmapWhenIdle() {
	if p.shm == nil {
		return
	}
	for range cap(p.slots) {
		<-p.slots
	}
	unmapShm(p.shm)
}
