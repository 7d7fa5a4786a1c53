package node_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/overlay/wg"
	"github.com/gpumesh/gpumesh/policy"
)

// TestHostConfigValidate: every mistake is refused before anything
// starts, naming what is wrong; the configurations serve uses pass.
func TestHostConfigValidate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.hcl")
	if err := os.WriteFile(path, []byte(openPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ov overlay.Overlay = &tsnet.Node{} // never started: Validate starts nothing
	tailnet := &node.JoinConfig{Tailnet: &tsnet.Config{Hostname: "gpu-host", ControlURL: "http://127.0.0.1:1"}}
	base := node.HostConfig{Overlay: ov, Policy: store}
	tests := []struct {
		name string
		cfg  node.HostConfig
		err  string // "" means valid
	}{
		{"ready overlay", base, ""},
		{"joins a tailnet, every part", node.HostConfig{Join: tailnet, Policy: store, Backend: node.BackendConfig{Kind: node.BackendAuto},
			Server: gpusvc.Config{MaxRequestBytes: 1 << 20}, QoS: &node.QoSConfig{NoOuterMarking: true},
			Audit: &node.AuditConfig{Path: "audit.log", Keep: 3}, Metrics: &node.MetricsConfig{Listen: "tailnet:9090"},
			LocalAPI: &node.LocalAPIConfig{}}, ""},
		{"metrics on loopback", node.HostConfig{Overlay: ov, Policy: store, Metrics: &node.MetricsConfig{Listen: "localhost:9090"}}, ""},
		{"metrics on IPv6 loopback", node.HostConfig{Overlay: ov, Policy: store, Metrics: &node.MetricsConfig{Listen: "[::1]:9090"}}, ""},
		{"no overlay", node.HostConfig{Policy: store}, "needs an overlay"},
		{"two overlays", node.HostConfig{Overlay: ov, Join: tailnet, Policy: store}, "not both"},
		{"no policy", node.HostConfig{Overlay: ov}, "needs a policy"},
		{"join nothing", node.HostConfig{Join: &node.JoinConfig{}, Policy: store}, "exactly one"},
		{"join both", node.HostConfig{Join: &node.JoinConfig{Tailnet: tailnet.Tailnet, WireGuard: &wg.Config{}}, Policy: store}, "exactly one"},
		{"port", node.HostConfig{Overlay: ov, Policy: store, Port: 70000}, "port 70000"},
		{"backend", node.HostConfig{Overlay: ov, Policy: store, Backend: node.BackendConfig{Kind: "rocm"}}, `backend "rocm"`},
		{"ready backend", node.HostConfig{Overlay: ov, Policy: store, Backend: node.BackendConfig{Ready: cpu.New()}}, ""},
		{"ready backend and a kind", node.HostConfig{Overlay: ov, Policy: store, Backend: node.BackendConfig{Ready: cpu.New(), Kind: node.BackendCUDA}}, "no kind or worker"},
		{"server backend", node.HostConfig{Overlay: ov, Policy: store, Server: gpusvc.Config{Host: "x"}}, "the host's to set"},
		{"server on-call", node.HostConfig{Overlay: ov, Policy: store, Server: gpusvc.Config{OnCall: func(gpusvc.CallRecord) {}}}, "use HostConfig's"},
		{"request size", node.HostConfig{Overlay: ov, Policy: store, Server: gpusvc.Config{MaxRequestBytes: -1}}, "max request size"},
		{"qos rate", node.HostConfig{Overlay: ov, Policy: store, QoS: &node.QoSConfig{LinkRate: -1}}, "QoS rates"},
		{"audit path", node.HostConfig{Overlay: ov, Policy: store, Audit: &node.AuditConfig{}}, "needs a path"},
		{"audit keep", node.HostConfig{Overlay: ov, Policy: store, Audit: &node.AuditConfig{Path: "a", Keep: -1}}, "to keep -1"},
		{"audit size", node.HostConfig{Overlay: ov, Policy: store, Audit: &node.AuditConfig{Path: "a", MaxBytes: -5}}, "audit log size"},
		{"local API without a state dir", node.HostConfig{Overlay: ov, Policy: store, LocalAPI: &node.LocalAPIConfig{}}, "needs a state dir"},
	}
	for _, addr := range []string{"0.0.0.0:9090", ":9090", "192.0.2.1:9090", "example.com:9090"} {
		tests = append(tests, struct {
			name string
			cfg  node.HostConfig
			err  string
		}{"metrics at " + addr, node.HostConfig{Overlay: ov, Policy: store, Metrics: &node.MetricsConfig{Listen: addr}}, "not a loopback address"})
	}
	for _, addr := range []string{"9090", "tailnet:", "tailnet:0", "tailnet:99999"} {
		tests = append(tests, struct {
			name string
			cfg  node.HostConfig
			err  string
		}{"metrics at " + addr, node.HostConfig{Overlay: ov, Policy: store, Metrics: &node.MetricsConfig{Listen: addr}}, "tailnet:PORT"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("Validate = %v; want valid", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("Validate = %v; want an error with %q", err, tt.err)
			}
		})
	}
}

// TestAddObservers: observers added to a configuration run in the order
// added, none replacing another.
func TestAddObservers(t *testing.T) {
	var got []string
	var cfg node.HostConfig
	cfg.AddOnCall(func(gpusvc.CallRecord) { got = append(got, "call 1") })
	cfg.AddOnCall(func(gpusvc.CallRecord) { got = append(got, "call 2") })
	cfg.AddOnServer(func(*gpusvc.Server) { got = append(got, "server 1") })
	cfg.AddOnServer(func(*gpusvc.Server) { got = append(got, "server 2") })
	cfg.OnCall(gpusvc.CallRecord{})
	cfg.OnServer(nil)
	if want := "call 1,call 2,server 1,server 2"; strings.Join(got, ",") != want {
		t.Errorf("observers ran %v; want %s", got, want)
	}
}
