package gpumesh_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh"
)

func dialForwarder(t *testing.T) *gpumesh.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := gpumesh.Dial(ctx, forwarderAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDial(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	for _, tc := range []struct {
		name   string
		target string
		opts   []gpumesh.Option
		caller string
		code   codes.Code
		msg    string
	}{
		{name: "forwarder", target: forwarderAddr, caller: "cloud"},
		{name: "overlay by name", target: "gpu-host", opts: []gpumesh.Option{gpumesh.WithOverlay(laptop)}, caller: "laptop"},
		{name: "overlay with port", target: "gpu-host:50051", opts: []gpumesh.Option{gpumesh.WithOverlay(laptop)}, caller: "laptop"},
		{name: "nothing listening", target: closedAddr, code: codes.Unavailable},
		{name: "empty target", target: "", msg: "empty target"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := gpumesh.Dial(ctx, tc.target, tc.opts...)
			if tc.caller == "" {
				if err == nil {
					c.Close()
					t.Fatal("Dial succeeded")
				}
				if tc.code != codes.OK && status.Code(err) != tc.code {
					t.Errorf("Dial: %v; want %v", err, tc.code)
				}
				if !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), "gpumesh: ") {
					t.Errorf("Dial: %v; want a gpumesh error containing %q", err, tc.msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Host() != "gpu-host" || c.Caller() != tc.caller {
				t.Errorf("host %q caller %q; want gpu-host, %s", c.Host(), c.Caller(), tc.caller)
			}
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := c.Close(); !errors.Is(err, net.ErrClosed) {
				t.Errorf("second Close = %v; want net.ErrClosed", err)
			}
		})
	}
}

func TestMatMul(t *testing.T) {
	c := dialForwarder(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		a, b [][]float32
		want string
		err  string
	}{
		{name: "2x3 by 3x2", a: [][]float32{{1, 2, 3}, {4, 5, 6}}, b: [][]float32{{7, 8}, {9, 10}, {11, 12}}, want: "[[58 64] [139 154]]"},
		{name: "1x1", a: [][]float32{{3}}, b: [][]float32{{-2}}, want: "[[-6]]"},
		{name: "row by column", a: [][]float32{{1, 2, 3}}, b: [][]float32{{1}, {1}, {1}}, want: "[[6]]"},
		{name: "inner dimensions differ", a: [][]float32{{1, 2}}, b: [][]float32{{1, 2}}, err: "inner dimensions differ"},
		{name: "ragged", a: [][]float32{{1, 2}, {3}}, b: [][]float32{{1}, {1}}, err: "row 1 has 1 columns"},
		{name: "empty", a: nil, b: [][]float32{{1}}, err: "empty matrix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.MatMul(ctx, tc.a, tc.b)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("MatMul = %v, %v; want an error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != tc.want {
				t.Fatalf("MatMul = %v; want %s", got, tc.want)
			}
		})
	}
}

func TestComputeErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dialForwarder(t)
	// A node the host's policy gives nothing is refused at once, with the
	// policy's reason, before the host reads anything it sends.
	_, err := gpumesh.Dial(ctx, "gpu-host", gpumesh.WithOverlay(stranger))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no rule names stranger") {
		t.Errorf("a stranger's Dial: %v; want PermissionDenied with the policy's reason", err)
	}
	for _, tc := range []struct {
		name   string
		client *gpumesh.Client
		kernel string
		args   []gpumesh.Arg
		code   codes.Code
	}{
		{"unknown kernel", c, "conv9d", []gpumesh.Arg{gpumesh.F32([]int64{1}, []float32{1})}, codes.InvalidArgument},
		{"bad shapes", c, "matrix_mul", []gpumesh.Arg{gpumesh.F32([]int64{2}, []float32{1, 2}), gpumesh.F32([]int64{2}, []float32{1, 2})}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.Compute(ctx, tc.kernel, tc.args...)
			if status.Code(err) != tc.code {
				t.Fatalf("Compute: %v; want %v", err, tc.code)
			}
		})
	}
}

// TestBuffers exercises Upload, Alloc, Write, Read, Free and compute on a
// resident buffer.
func TestBuffers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dialForwarder(t)
	data := bytes.Repeat([]byte("0123456789abcdef"), 200_000) // 3.2 MB: several chunks
	buf, err := c.Upload(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	back, err := c.Read(ctx, buf, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatalf("read back %d bytes that differ from the %d uploaded", len(back), len(data))
	}
	if err := c.Write(ctx, buf, 16, []byte("ZZ")); err != nil {
		t.Fatal(err)
	}
	part, err := c.Read(ctx, buf, 14, 6)
	if err != nil {
		t.Fatal(err)
	}
	if string(part) != "efZZ23" {
		t.Fatalf("Read after Write = %q; want efZZ23", part)
	}

	x := gpumesh.F32([]int64{4}, []float32{-2, -1, 1, 2})
	xb, err := c.Alloc(ctx, uint64(len(x.Tensor.Data)))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, xb, 0, x.Tensor.Data); err != nil {
		t.Fatal(err)
	}
	y, err := c.Compute(ctx, "relu", gpumesh.BufferArg(xb, 4))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(y.Float32s()) != "[0 0 1 2]" {
		t.Fatalf("relu on a buffer = %v; want [0 0 1 2]", y.Float32s())
	}
	for _, b := range []gpumesh.Buffer{buf, xb} {
		if err := c.Free(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Read(ctx, buf, 0, 0); err == nil {
		t.Fatal("Read of a freed buffer succeeded")
	}
}

// TestCloseEndsSession: Close closes the client's session on the host, and
// the client refuses buffer calls afterwards.
func TestCloseEndsSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := gpumesh.Dial(ctx, forwarderAddr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Alloc(ctx, 1024); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close with an open session: %v", err)
	}
	if _, err := c.Alloc(ctx, 1024); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Alloc after Close = %v; want net.ErrClosed", err)
	}
}
