package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/overlay/wg/wgconfig"
)

// TestWireGuardMode runs `gpumesh serve --wg` and `gpumesh run --wg` over a
// static WireGuard mesh on loopback (netstack data path, no root): a peer
// the policy allows gets a checked result, a known peer it does not name is
// refused.
func TestWireGuardMode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	key := func() wgconfig.Key {
		k, err := wgconfig.NewPrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	host, laptop, ci := key(), key(), key()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()

	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hostConf := write("host.conf", fmt.Sprintf(`[Interface]
# Name = gpu-host
PrivateKey = %s
Address = 10.77.0.1/24
ListenPort = %d

[Peer]
# Name = laptop
PublicKey = %s
AllowedIPs = 10.77.0.2/32

[Peer]
# Name = ci
PublicKey = %s
AllowedIPs = 10.77.0.3/32
`, host, port, laptop.PublicKey(), ci.PublicKey()))
	client := func(name string, k wgconfig.Key, addr string) string {
		return write(name+".conf", fmt.Sprintf(`[Interface]
# Name = %s
PrivateKey = %s
Address = %s/24

[Peer]
# Name = gpu-host
PublicKey = %s
AllowedIPs = 10.77.0.1/32
Endpoint = 127.0.0.1:%d
`, name, k, addr, host.PublicKey(), port))
	}
	laptopConf, ciConf := client("laptop", laptop, "10.77.0.2"), client("ci", ci, "10.77.0.3")
	pol := write("policy.hcl", `
version = 1
rule "laptop" {
  subjects = ["wg:laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
}
`)

	sctx, stop := context.WithCancel(ctx)
	var served sync.WaitGroup
	served.Add(1)
	var serveOut bytes.Buffer
	var serveErr error
	go func() {
		defer served.Done()
		cmd := newRootCmd()
		cmd.SetOut(&serveOut)
		cmd.SetErr(&serveOut)
		cmd.SetArgs([]string{"serve", "--wg", hostConf, "--policy", pol})
		serveErr = cmd.ExecuteContext(sctx)
	}()
	defer func() {
		stop()
		served.Wait()
		if serveErr != nil {
			t.Errorf("serve: %v\n%s", serveErr, serveOut.String())
		}
	}()

	run := func(conf string) (string, error) {
		var out bytes.Buffer
		cmd := newRootCmd()
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs([]string{"run", "gpu-host", "matrix_mul", "--size", "32", "--wg", conf, "--join-timeout", "10s"})
		err := cmd.ExecuteContext(ctx)
		return out.String(), err
	}
	// The host may still be coming up: retry until it answers.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var out string
	for {
		if out, err = run(laptopConf); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("laptop never got a result: %v\n%s", err, out)
		case <-tick.C:
		}
	}
	if !strings.Contains(out, "matches local computation") {
		t.Errorf("laptop's run output: %s", out)
	}
	_, err = run(ciConf)
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(err.Error(), "wg:ci") {
		t.Errorf("ci (a known peer the policy does not name): %v; want PermissionDenied naming wg:ci", err)
	}
	// As gpumesh prints it: the gRPC code by name, not gRPC's own wording.
	if got := errorText(err); !strings.HasPrefix(got, "matrix_mul on gpu-host: PermissionDenied: ") || strings.Contains(got, "rpc error") {
		t.Errorf("ci's error prints as %q; want \"matrix_mul on gpu-host: PermissionDenied: <message>\"", got)
	}
}
