package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc/metrics"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

// Finding 7: metrics on a tailnet address answered every peer, with
// per-caller calls, bytes and buffers. Now only callers the policy grants
// observe:metrics read them; kernels = ["*"] does not grant it.
func TestMetricsOnTailnetNeedTheRight(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	_, nodes := overlaytest.StartNodes(t, "gpu-host", "scraper", "laptop", "stranger")
	host := nodes[0]
	pol, err := policy.Parse("metrics.hcl", []byte(`
version = 1
rule "scraper" {
  subjects = ["scraper"]
  gpus     = ["*"]
  kernels  = ["observe:metrics"]
}
rule "laptop" {
  subjects = ["laptop"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`))
	if err != nil {
		t.Fatal(err)
	}
	m, err := metrics.New(metrics.Config{NoRuntime: true})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := host.Listen("tcp", ":9090")
	if err != nil {
		t.Fatal(err)
	}
	access := metrics.Access{WhoIs: host.WhoIs, Policy: func() *policy.Policy { return pol }, Logf: t.Logf}
	srv := &http.Server{Handler: access.Restrict(m.Handler()), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Error(err)
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, want := range []int{http.StatusOK, http.StatusForbidden, http.StatusForbidden} {
		from := nodes[i+1]
		c := &http.Client{Transport: &http.Transport{DialContext: from.Dial}}
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://gpu-host:9090/metrics", nil)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		c.CloseIdleConnections()
		name := []string{"scraper", "laptop", "stranger"}[i]
		if res.StatusCode != want {
			t.Errorf("%s: %s; want %d", name, res.Status, want)
		}
		if want == http.StatusForbidden && (!strings.Contains(string(body), "observe:metrics") || strings.Contains(string(body), "gpumesh_")) {
			t.Errorf("%s's refusal: %q", name, body)
		}
	}
}
