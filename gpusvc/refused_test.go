package gpusvc_test

import (
	"context"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// TestRefusedStreamFreesItsConn checks that a stream the host refuses when
// its headers arrive (a peer the policy gives nothing) holds nothing once
// its connection is gone, even when the client gave it a long deadline.
// gRPC's transport gives such a stream a context with a timer for the
// client's deadline (grpc-timeout, up to years) and never cancels it; the
// timer, in the runtime's timer heap, held that context, and through it the
// connection, its network stack's endpoint and buffers and the peer's
// identity, until the deadline passed. The attack test's strangers, with
// the test's 10-minute deadline, kept every gpu-host of a -count=3 run
// alive this way.
//
// It runs on loopback TCP with a fixed identity: what it checks is gRPC's
// and the host's, not the overlay's.
func TestRefusedStreamFreesItsConn(t *testing.T) {
	pol, err := policy.Parse("refused.hcl", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	stranger := overlay.Identity{Node: "stranger", StableID: "nstranger"}
	srv, err := gpusvc.NewServer(gpusvc.Config{
		Backend: cpu.New(),
		WhoIs: func(context.Context, string) (overlay.Identity, error) {
			return stranger, nil
		},
		Policy: func() *policy.Policy { return pol },
		Host:   "gpu-host",
	})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &freeWatchListener{Listener: inner}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Stop()
		<-served
	}()

	cc, err := grpc.NewClient("passthrough:///"+inner.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	api := pb.NewGPUClient(cc)
	for range 3 {
		_, err := api.Devices(ctx, &pb.DevicesRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("a stranger's Devices: %v; want PermissionDenied", err)
		}
	}
	cc.Close()
	eventually(t, "the host sees the connection closed", func() bool { return srv.Load().Conns == 0 })
	if n := ln.accepted.Load(); n != 1 {
		t.Fatalf("%d connections accepted; want 1", n)
	}

	ln.waitFreed(t)
}

// freeWatchListener counts the connections it accepted and those of them
// garbage collected since.
type freeWatchListener struct {
	net.Listener
	accepted, freed atomic.Int64
}

// watchedConn is what the server gets: nothing but the server's own
// references keep it alive.
type watchedConn struct{ net.Conn }

func (l *freeWatchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepted.Add(1)
	w := &watchedConn{Conn: c}
	runtime.AddCleanup(w, func(freed *atomic.Int64) { freed.Add(1) }, &l.freed)
	return w, nil
}

// waitFreed collects garbage until every connection accepted so far is
// freed, failing the test after 20s.
func (l *freeWatchListener) waitFreed(t testing.TB) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		runtime.GC()
		if l.freed.Load() >= l.accepted.Load() {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("%d of the %d connections the host accepted are still held after they closed", l.accepted.Load()-l.freed.Load(), l.accepted.Load())
		}
	}
}
