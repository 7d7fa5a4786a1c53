package audit_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/audit"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

const e2ePolicy = `
version = 1
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
}
`

// marker fills tensors and buffers: the log must hold neither it nor its
// base64 form.
var marker = []byte("TENSOR-DATA-MUST-NOT-BE-LOGGED!!") // 32 bytes: 8 float32s

// TestEveryCallOnce: a GPU host on the embedded tailnet writes its audit log
// while an allowed node (laptop) and an unknown one (stranger) make calls,
// many at once; afterwards every call is in the log exactly once, under
// the identity the tailnet gives its caller, and no tensor data is.
func TestEveryCallOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	nodes := map[string]*tsnet.Node{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for _, name := range []string{"gpu-host", "laptop", "stranger"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := tn.Join(ctx, name)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			nodes[name] = n
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for _, n := range nodes {
		defer n.Close()
	}
	for err := range errs {
		t.Fatal(err)
	}

	dir := t.TempDir()
	polPath := filepath.Join(dir, "policy.hcl")
	if err := os.WriteFile(polPath, []byte(e2ePolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(polPath, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "audit.log")
	// Small files: the run rotates several times, and Tail reads across.
	alog, err := audit.Open(logPath, audit.Options{MaxBytes: 8 << 10, Keep: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer alog.Close()
	cfg := node.HostConfig{Overlay: nodes["gpu-host"], Name: "gpu-host", Policy: store}
	cfg.AddOnCall(alog.Record)
	host, err := node.StartHost(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	hostClosed := false
	defer func() {
		if !hostClosed {
			host.Close()
		}
	}()

	client := func(name string) *gpusvc.Client {
		c, err := node.Dial(nodes[name], "gpu-host")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	laptop, stranger := client("laptop"), client("stranger")
	vec := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{8}, Data: marker}}

	type key struct{ caller, method, kernel, decision, code string }
	// The laptop's client asks for its limits once, before its first call.
	want := map[key]int{{"laptop", "Devices", "", "allow", "OK"}: 1}
	var wantMu sync.Mutex
	expect := func(k key) {
		wantMu.Lock()
		want[k]++
		wantMu.Unlock()
	}

	const parallel = 8
	var calls sync.WaitGroup
	callErrs := make(chan error, 100)
	for g := range parallel {
		calls.Add(1)
		go func() {
			defer calls.Done()
			for i := range 5 {
				k := []string{"relu", "saxpy"}[(g+i)%2]
				var err error
				if k == "relu" {
					_, err = laptop.Compute(ctx, "relu", vec)
				} else {
					_, err = laptop.ComputeUnary(ctx, &pb.ComputeRequest{Kernel: "saxpy",
						Args: gpusvc.ArgsToPB([]kernel.Arg{{Kind: kernel.ArgScalar, Scalar: 2}, vec, vec})})
				}
				if err != nil {
					callErrs <- fmt.Errorf("laptop %s: %w", k, err)
					continue
				}
				expect(key{"laptop", "Compute", k, "allow", "OK"})
			}
			// The stranger is refused: each refusal is logged too. The
			// host refuses a peer its policy gives nothing before reading
			// any of its requests: the client's first one, asking for its
			// limits (Devices), is what the log shows, without a kernel.
			_, err := stranger.Compute(ctx, "relu", vec)
			if status.Code(err) != codes.PermissionDenied {
				callErrs <- fmt.Errorf("stranger's call: %v; want PermissionDenied", err)
			}
			expect(key{"stranger", "Devices", "", "deny", "PermissionDenied"})
		}()
	}
	calls.Wait()
	close(callErrs)
	for err := range callErrs {
		t.Fatal(err)
	}

	// Resident buffers: each step is one line.
	sess, err := laptop.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	expect(key{"laptop", "OpenSession", "", "allow", "OK"})
	buf, err := laptop.Upload(ctx, sess.ID, "", uint64(len(marker)), bytes.NewReader(marker))
	if err != nil {
		t.Fatal(err)
	}
	expect(key{"laptop", "Write", "", "allow", "OK"})
	var back bytes.Buffer
	if _, err := laptop.Read(ctx, sess.ID, buf, 0, 0, &back); err != nil || !bytes.Equal(back.Bytes(), marker) {
		t.Fatalf("read back %q, %v", back.Bytes(), err)
	}
	expect(key{"laptop", "Read", "", "allow", "OK"})
	if err := laptop.Free(ctx, sess.ID, buf); err != nil {
		t.Fatal(err)
	}
	expect(key{"laptop", "Free", "", "none", "OK"})
	if err := laptop.CloseSession(ctx, sess.ID); err != nil {
		t.Fatal(err)
	}
	expect(key{"laptop", "CloseSession", "", "none", "OK"})
	if _, err := stranger.OpenSession(ctx); err == nil {
		t.Fatal("stranger opened a session")
	}
	expect(key{"stranger", "OpenSession", "", "deny", "PermissionDenied"})

	// Stop the host: every call has finished and been recorded.
	host.Close()
	hostClosed = true
	if err := alog.Err(); err != nil {
		t.Fatal(err)
	}

	lines, err := audit.Tail(logPath, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(logPath + ".1"); err != nil {
		t.Errorf("the log never rotated during the run: %v", err)
	}
	got := map[key]int{}
	ids := map[string]string{"laptop": nodes["laptop"].Addrs()[0].String(), "stranger": nodes["stranger"].Addrs()[0].String()}
	for _, ln := range lines {
		e, err := audit.Parse(ln)
		if err != nil {
			t.Fatal(err)
		}
		got[key{e.Caller, e.Method, e.Kernel, e.Decision, e.Code}]++
		if e.Node != e.Caller || e.StableID == "" || !strings.HasPrefix(e.FQDN, e.Caller+".") {
			t.Errorf("line names its caller badly: %s", ln)
		}
		if e.Addr != ids[e.Caller] {
			t.Errorf("%s's address in the log is %s; the tailnet gave it %s", e.Caller, e.Addr, ids[e.Caller])
		}
		if e.Method == "Compute" && e.Decision == "allow" && (e.Rule != "laptop" || e.BytesIn == 0 || e.BytesOut != 32) {
			t.Errorf("allowed call without its rule or sizes: %s", ln)
		}
		if e.Time.IsZero() || e.Time.After(time.Now()) {
			t.Errorf("bad time: %s", ln)
		}
	}
	if fmt.Sprint(sorted(got)) != fmt.Sprint(sorted(want)) {
		t.Fatalf("log holds\n%v\nwant\n%v", sorted(got), sorted(want))
	}
	for _, f := range append([]string{logPath}, rotatedFiles(logPath)...) {
		b, _ := os.ReadFile(f)
		if bytes.Contains(b, marker) || bytes.Contains(b, []byte(base64.StdEncoding.EncodeToString(marker)[:20])) {
			t.Fatalf("%s holds tensor data", f)
		}
	}
}

func rotatedFiles(path string) []string {
	var out []string
	for i := 1; ; i++ {
		p := path + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err != nil {
			return out
		}
		out = append(out, p)
	}
}

func sorted[K comparable](m map[K]int) []string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%v×%d", k, v))
	}
	sort.Strings(out)
	return out
}
