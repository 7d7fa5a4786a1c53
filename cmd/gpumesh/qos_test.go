package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/qos"
	"github.com/gpumesh/gpumesh/qos/tc"
)

var updateQoS = flag.Bool("update-qos", false, "rewrite testdata/qos_*.txt")

// fakeQoS is what a host with two busy classes, failing outer marking and
// an HTB tree on eth0 reports.
func fakeQoS(t *testing.T) node.QoSStatus {
	t.Helper()
	classes := []qos.Class{
		{Name: "interactive", DSCP: dscp.AF41, Priority: 1},
		{Name: "bulk", DSCP: dscp.AF11, Priority: 2, Rate: 12_500_000},
	}
	plan, err := tc.Plan(tc.Config{Link: "eth0", Rate: 125_000_000, Classes: classes, Default: "bulk"})
	if err != nil {
		t.Fatal(err)
	}
	return node.QoSStatus{
		Marking: &qos.MarkerStatus{Port: 41641, DSCP: dscp.AF41, Sockets: 2,
			At: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC), Err: errors.New("setsockopt IP_TOS: operation not permitted")},
		LinkRate: 7130316,
		Classes: []qos.ClassStats{
			{Name: "interactive", DSCP: dscp.AF41, Priority: 1, Bytes: 1 << 20, Chunks: 64, Queued: 1,
				WaitSum: 64*150*time.Microsecond + 64*465, WaitMax: 2 * time.Millisecond},
			{Name: "bulk", DSCP: dscp.AF11, Priority: 2, Rate: 12_500_000, Bytes: 50 << 20, Chunks: 800, Queued: 3,
				WaitSum: 800 * 3 * time.Millisecond, WaitMax: 40 * time.Millisecond, ThrottleSum: 1500 * time.Millisecond},
		},
		Shaping: plan.String(),
		ShapingStats: []tc.ClassStats{
			{Name: "interactive", ClassID: "9d:10", Bytes: 1100000, Packets: 800},
			{Name: "bulk", ClassID: "9d:f", Bytes: 53000000, Packets: 36000, Drops: 12, Overlimits: 4000, Backlog: 3000},
		},
		Routes: []tc.PeerRoute{
			{Addr: netip.MustParseAddrPort("192.0.2.2:41641"), Class: "interactive"},
			{Addr: netip.MustParseAddrPort("[2001:db8::3]:41641"), Class: "bulk"},
		},
	}
}

// TestQoSStatus: `gpumesh qos status --state-dir DIR` shows the live QoS of
// the node whose local API answers in DIR, as text or JSON; where a node
// has no QoS or none runs, it says so in one line and probes this host.
func TestQoSStatus(t *testing.T) {
	busy := fakeQoS(t)
	bare := node.QoSStatus{Classes: []qos.ClassStats{{Name: "default", DSCP: dscp.AF41, Priority: 1}}}
	noNode := errors.New("no node")
	tests := []struct {
		name   string
		qos    any // the node's QoSFunc's value; nil: a node without QoS; noNode: no node
		args   []string
		golden string // testdata/qos_NAME.txt
		want   []string
		err    string
	}{
		{name: "live", qos: diag.LiveQoSOf(busy), golden: "status_live"},
		{name: "live bare", qos: diag.LiveQoSOf(bare), golden: "status_bare"},
		{name: "live and policy", qos: diag.LiveQoSOf(bare), args: []string{"--policy", "POLICY"},
			want: []string{"live QoS of the node at STATE/gpumesh.sock\n", "classes (POLICY):\n", "  interactive  AF41 (34)  1"}},
		{name: "no QoS", qos: nil, args: []string{"--probe=false"},
			want: []string{"node at STATE/gpumesh.sock: diag: the node reports no QoS: this node serves no GPUs", "; probing this host\nouter marking: "}},
		{name: "no node", qos: noNode, args: []string{"--probe=false"},
			want: []string{"no running node found at STATE/gpumesh.sock; probing this host\nouter marking: ", "classes: none given"}},
		{name: "no node json", qos: noNode, args: []string{"--json"}, err: "--json shows a running node's live QoS: diag: no running gpumesh node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			state := filepath.Join(dir, "state")
			os.Mkdir(state, 0o700)
			pol := filepath.Join(dir, "policy.hcl")
			os.WriteFile(pol, []byte("version = 1\nclass \"interactive\" {\n  dscp = \"AF41\"\n  priority = 1\n}\n"), 0o600)
			if tt.qos != noNode {
				api, err := diag.ServeLocal(diag.SocketPath(state), nil)
				if err != nil {
					t.Fatal(err)
				}
				defer api.Close()
				if tt.qos != nil {
					api.SetQoS(func() any { return tt.qos })
				}
			}
			args := []string{"qos", "status", "--state-dir", state}
			for _, a := range tt.args {
				args = append(args, strings.ReplaceAll(a, "POLICY", pol))
			}
			out, err := runKeysCmd(t, "", args...)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v; want %q\n%s", err, tt.err, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			out = strings.ReplaceAll(strings.ReplaceAll(out, state, "STATE"), pol, "POLICY")
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if tt.golden != "" {
				qosGolden(t, "qos_"+tt.golden+".txt", out)
				// The same status as JSON, every field, the marker's error as text.
				js, err := runKeysCmd(t, "", "qos", "status", "--json", "--state-dir", state)
				if err != nil {
					t.Fatalf("--json: %v\n%s", err, js)
				}
				qosGolden(t, "qos_"+tt.golden+".json", js)
				var got diag.LiveQoS
				if err := json.Unmarshal([]byte(js), &got); err != nil {
					t.Fatalf("--json: %v\n%s", err, js)
				}
				if !reflect.DeepEqual(got, tt.qos) {
					t.Errorf("--json round trip = %+v; want %+v", got, tt.qos)
				}
			}
		})
	}
}

func qosGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateQoS {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update-qos)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (-update-qos rewrites it):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// TestQoSStatusOnHost: a host on an embedded tailnet serving its local
// API, as serve starts it; after the laptop's calls, `gpumesh qos status`
// shows bytes in the laptop's class.
func TestQoSStatusOnHost(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, nodes := overlaytest.StartNodes(t, "gpu-host", "laptop")
	hostNode, laptop := nodes[0], nodes[1]

	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.hcl")
	os.WriteFile(pol, []byte(`
version = 1
class "interactive" {
  dscp     = "AF41"
  priority = 1
}
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["relu"]
  gpus     = ["*"]
  class    = "interactive"
}
`), 0o600)
	store, err := policy.NewStore(pol, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "gpu-host")
	os.Mkdir(state, 0o700)
	host, err := node.StartHost(ctx, node.HostConfig{Overlay: hostNode, Name: "gpu-host", Policy: store, QoS: &node.QoSConfig{},
		LocalAPI: &node.LocalAPIConfig{StateDir: state, RuntimeDir: filepath.Join(dir, "run")}})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()

	c, err := node.Dial(laptop, "gpu-host")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{4}, []float32{-1, 2, -3, 4})}
	for range 3 {
		if _, err := c.Compute(ctx, "relu", v); err != nil {
			t.Fatal(err)
		}
	}

	out, err := runKeysCmd(t, "", "qos", "status", "--probe=false", "--state-dir", state)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var row []string
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "interactive" {
			row = f
		}
	}
	// NAME DSCP (N) PRIORITY RATE BYTES ...: RATE is "-" without a cap.
	if len(row) < 6 || row[1] != "AF41" || row[4] != "-" || row[5] == "0B" {
		t.Fatalf("no interactive row with bytes > 0:\n%s", out)
	}
	for _, w := range []string{"outer marking: off\n", "host shaping: not installed\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}
