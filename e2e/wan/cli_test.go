package wan

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/e2e/wanlab"
	"github.com/gpumesh/gpumesh/internal/testtools"
)

// TestCLIOverTailscaled: the gpumesh binary, as a user runs it, serves
// through the system's tailscaled in A (`serve --tailscaled`) and runs a
// kernel from B the same way (`run --tailscaled`), across the lab's link:
// the host names the laptop by tailscaled's WhoIs, and the policy lets
// only "laptop" in; doctor looks through tailscaled's node too, and a
// plain gRPC client (grpcurl) needs no gpumesh on its side at all, or
// goes through `gpumesh up --tailscaled`'s forward. A second run from B with a policy that names nobody
// is refused.
func TestCLIOverTailscaled(t *testing.T) {
	delay := wanlab.Impairment{Delay: 2 * time.Millisecond}
	lab := wanlab.New(t, wanlab.Config{AtoB: delay, BtoA: delay, Seed: 1})
	tn := start(t, lab.R, "tailnet", envRole+"=tailnet")
	control, err := tn.until("CONTROL ")
	if err != nil {
		t.Fatal(err)
	}
	hostEnv, clientEnv, err := startTailscaleds(t, lab, control)
	if err != nil {
		t.Fatal(err)
	}
	socket := func(env []string) string {
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, envSocket+"="); ok {
				return v
			}
		}
		t.Fatalf("no %s in %q", envSocket, env)
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := testtools.BuildGpumesh(ctx, t)
	pol := filepath.Join(t.TempDir(), "policy.hcl")
	if err := os.WriteFile(pol, []byte(wanPolicy), 0o600); err != nil {
		t.Fatal(err)
	}

	serve := lab.A.Command(bin, "serve", "--tailscaled", "--tailscaled-socket", socket(hostEnv), "--policy", pol)
	serve.Stderr = os.Stderr
	out, err := serve.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		serve.Process.Signal(os.Interrupt)
		serve.Wait()
	})
	lines := bufio.NewScanner(out)
	var serving string
	for lines.Scan() {
		if strings.Contains(lines.Text(), "serving ") {
			serving = lines.Text()
			break
		}
	}
	if !strings.Contains(serving, "serving gpu-host ") || !strings.Contains(serving, "tailscaled at") {
		t.Fatalf("gpumesh serve --tailscaled said %q; want it serving as tailscaled's node gpu-host", serving)
	}
	go func() {
		for lines.Scan() { // drain, so that serve never blocks on stdout
		}
	}()

	run := lab.B.Command(bin, "run", "--tailscaled", "--tailscaled-socket", socket(clientEnv), "gpu-host", "matrix_mul", "--size", "64", "--check")
	got, err := run.CombinedOutput()
	if err != nil || !strings.Contains(string(got), "matches local computation") {
		t.Fatalf("gpumesh run --tailscaled from the laptop: %v\n%s", err, got)
	}
	t.Logf("serve: %s\nrun: %s", serving, got)
	// Any gRPC client on the laptop reaches the host through its own
	// tailscaled, with no gpumesh on that side at all: grpcurl to the
	// host's tailnet address, and the host still knows it is "laptop".
	hostIP := regexp.MustCompile(` on \[([0-9.]+)`).FindStringSubmatch(serving)[1] // "serving gpu-host on [100.64.0.1 fd7a:…]"
	grpcurl := lab.B.Command(testtools.Grpcurl(t), "-plaintext", "-d", `{"kernel": "matrix_mul", "params": {"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}}`,
		hostIP+":50051", "cuda.CUDAService/Compute")
	if got, err := grpcurl.CombinedOutput(); err != nil || !strings.Contains(string(got), "19") || !strings.Contains(string(got), "50") {
		t.Errorf("grpcurl from the laptop straight to %s:50051: %v\n%s", hostIP, err, got)
	}
	// gpumesh up --tailscaled on the laptop: a loopback forward through
	// tailscaled's node, no auth key and no state of its own.
	up := lab.B.Command(bin, "up", "--tailscaled", "--tailscaled-socket", socket(clientEnv), "--state-dir", t.TempDir(),
		"--forward", "127.0.0.1:0=gpu-host")
	up.Stderr = os.Stderr
	upOut, err := up.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		up.Process.Signal(os.Interrupt)
		up.Wait()
	})
	upLines := bufio.NewScanner(upOut)
	var fwd string
	for upLines.Scan() {
		if m := regexp.MustCompile(`forwarding (127\.0\.0\.1:\d+) -> gpu-host`).FindStringSubmatch(upLines.Text()); m != nil {
			fwd = m[1]
		}
		if strings.Contains(upLines.Text(), "ready") {
			break
		}
	}
	go func() {
		for upLines.Scan() { // drain, so that up never blocks on stdout
		}
	}()
	if fwd == "" {
		t.Fatal("gpumesh up --tailscaled printed no forwarding line")
	}
	viaUp := lab.B.Command(testtools.Grpcurl(t), "-plaintext", "-d", `{"kernel": "matrix_mul", "params": {"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}}`,
		fwd, "cuda.CUDAService/Compute")
	if got, err := viaUp.CombinedOutput(); err != nil || !strings.Contains(string(got), "19") || !strings.Contains(string(got), "50") {
		t.Errorf("grpcurl through gpumesh up --tailscaled's forward %s: %v\n%s", fwd, err, got)
	}

	doctor := lab.B.Command(bin, "doctor", "--tailscaled", "--tailscaled-socket", socket(clientEnv), "--host", "gpu-host")
	if got, err := doctor.CombinedOutput(); err != nil || !strings.Contains(string(got), "policy") {
		t.Errorf("gpumesh doctor --tailscaled from the laptop: %v\n%s", err, got)
	} else {
		t.Logf("doctor: %s", got)
	}

	// The same laptop under a policy that names nobody: refused, and the
	// host says whom it refused.
	if err := os.WriteFile(pol, []byte("version = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := serve.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for {
		got, err = lab.B.Command(bin, "run", "--tailscaled", "--tailscaled-socket", socket(clientEnv), "gpu-host", "matrix_mul", "--size", "64").CombinedOutput()
		if err != nil {
			break
		}
		select { // the reload is asynchronous: call again until it has applied
		case <-ctx.Done():
			t.Fatalf("the laptop still runs kernels after the policy dropped it: %s", got)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !strings.Contains(string(got), "PermissionDenied") && !strings.Contains(strings.ToLower(string(got)), "denied") && !strings.Contains(string(got), "refused") {
		t.Errorf("a run the policy refuses failed with %q; want a refusal", got)
	}
	t.Logf("refused: %s", got)
}
