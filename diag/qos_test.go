package diag_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/diag"
)

// TestLocalQoS: the local API answers /v1/qos with the JSON of its QoSFunc
// at each request, 404 (ErrNoQoS) without one, and nothing (ErrNotRunning)
// once closed or where no node ever ran. No tailnet: /v1/qos does not ask
// the node.
func TestLocalQoS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dir := t.TempDir()
	c := diag.LocalClient{Path: diag.SocketPath(dir)}
	if _, err := c.QoS(ctx); !errors.Is(err, diag.ErrNotRunning) {
		t.Fatalf("QoS with no socket = %v; want ErrNotRunning", err)
	}

	api, err := diag.ServeLocal(c.Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	_, err = c.QoS(ctx)
	if !errors.Is(err, diag.ErrNoQoS) || !strings.Contains(err.Error(), "serves no GPUs") {
		t.Fatalf("QoS without a source = %v; want ErrNoQoS saying why", err)
	}

	type class struct {
		Name  string
		Bytes int64
	}
	var calls atomic.Int64
	api.SetQoS(func() any {
		return struct{ Classes []class }{[]class{{"interactive", 100 * calls.Add(1)}, {"bulk", 7}}}
	})
	for i := int64(1); i <= 2; i++ {
		raw, err := c.QoS(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Classes []class }
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatalf("%v: %s", err, raw)
		}
		if len(got.Classes) != 2 || got.Classes[0].Bytes != 100*i || got.Classes[1] != (class{"bulk", 7}) {
			t.Fatalf("QoS #%d = %s", i, raw)
		}
	}

	// Strict: no parameters; a value JSON cannot encode is a 500, not a
	// half-written body.
	if code := getCode(t, c.Path, "/v1/qos?x=1"); code != http.StatusBadRequest {
		t.Errorf("/v1/qos?x=1: %d; want 400", code)
	}
	api.SetQoS(func() any { return func() {} })
	if _, err := c.QoS(ctx); err == nil || errors.Is(err, diag.ErrNoQoS) || !strings.Contains(err.Error(), "500") {
		t.Errorf("QoS of a func = %v; want a 500", err)
	}
	api.SetQoS(nil)
	if _, err := c.QoS(ctx); !errors.Is(err, diag.ErrNoQoS) {
		t.Errorf("QoS after SetQoS(nil) = %v; want ErrNoQoS", err)
	}

	api.Close()
	if _, err := c.QoS(ctx); !errors.Is(err, diag.ErrNotRunning) {
		t.Fatalf("QoS after Close = %v; want ErrNotRunning", err)
	}
	// A socket a dead process left behind: nothing answers.
	ln, err := net.Listen("unix", filepath.Join(dir, "stale.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	stale := diag.LocalClient{Path: filepath.Join(dir, "stale.sock")}
	if _, err := stale.QoS(ctx); !errors.Is(err, diag.ErrNotRunning) {
		t.Fatalf("QoS on a stale socket = %v; want ErrNotRunning", err)
	}
}

// getCode asks the local API at sock for path and returns the status code.
func getCode(t *testing.T, sock, path string) int {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr}).Get("http://gpumesh" + path)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}
