package diag

import (
	"net/url"
	"strings"
	"testing"
	"time"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

func TestJudgeHost(t *testing.T) {
	cuda := &GPUHost{Endpoint: "gpu-host:50051", Backend: "cuda", SeesUsAs: "laptop", Devices: []Device{
		{Index: 0, Name: "NVIDIA H200", Driver: "570.86", CUDA: "12.8"},
		{Index: 1, Name: "NVIDIA A100", Driver: "570.86", CUDA: "12.8"},
	}}
	old := &GPUHost{Endpoint: "gpu-host:50051", Backend: "cuda", SeesUsAs: "laptop", Devices: []Device{
		{Index: 0, Name: "Tesla T4", Driver: "535.1", CUDA: "12.2"},
	}}
	allow := explained{res: &pb.ExplainResponse{Allow: true, Reason: `rule "laptop" allows laptop`, Caller: "laptop"}}
	seen := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		p    Peer
		need string
		want []string // "result name" per check, then detail fragments after "|"
	}{
		{"direct, cuda", Peer{Name: "gpu-host", Online: true, Path: PathDirect, Via: "192.0.2.1:41641", LatencyMS: 1.234, GPU: cuda}, "12.4",
			[]string{"ok peer gpu-host|direct (192.0.2.1:41641), 1.23ms", "ok service gpu-host|2 devices", "ok policy gpu-host", "ok gpu gpu-host|gpu 1 NVIDIA A100 (driver 570.86, CUDA 12.8)"}},
		{"relayed", Peer{Name: "gpu-host", Online: true, Path: PathRelayed, Via: "DERP fra", LatencyMS: 31, GPU: cuda}, "",
			[]string{"warn peer gpu-host|relayed through DERP fra, 31ms", "ok service gpu-host", "ok policy gpu-host", "ok gpu gpu-host"}},
		{"old driver", Peer{Name: "gpu-host", Online: true, Path: PathDirect, GPU: old}, "12.4",
			[]string{"ok peer gpu-host|latency unknown", "ok service gpu-host", "ok policy gpu-host", "fail gpu gpu-host|needs CUDA 12.4: gpu 0 supports CUDA 12.2"}},
		{"cuda 12.10 is newer than 12.4", Peer{Name: "gpu-host", Online: true, Path: PathDirect, GPU: &GPUHost{Backend: "cuda", Devices: []Device{{CUDA: "12.10"}}}}, "12.4",
			[]string{"ok peer gpu-host", "ok service gpu-host", "ok policy gpu-host", "ok gpu gpu-host"}},
		{"offline", Peer{Name: "gpu-host", PingError: "no answer", LastSeen: &seen}, "",
			[]string{"fail peer gpu-host|offline, last seen 2025-06-01T12:00:00Z"}},
		{"no service", Peer{Name: "gpu-host", Online: true, Path: PathDirect, ServiceError: "connection refused"}, "",
			[]string{"ok peer gpu-host", "fail service gpu-host|connection refused"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := judgeHost(tc.p, allow, Options{NeedCUDA: tc.need}.withDefaults())
			if len(cs) != len(tc.want) {
				t.Fatalf("%d checks; want %d: %+v", len(cs), len(tc.want), cs)
			}
			for i, w := range tc.want {
				head, frag, _ := strings.Cut(w, "|")
				if got := string(cs[i].Result) + " " + cs[i].Name; got != head || !strings.Contains(cs[i].Detail, frag) {
					t.Errorf("check %d = %s: %s; want %s ... %q", i, got, cs[i].Detail, head, frag)
				}
				if cs[i].Result != OK && cs[i].Hint == "" {
					t.Errorf("check %d (%s) has no hint", i, cs[i].Name)
				}
			}
		})
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
		ok   bool
	}{
		{"12.8", "12.4", 1, true}, {"12.4", "12.4", 0, true}, {"12", "12.0", 0, true},
		{"11.8", "12.0", -1, true}, {"12.10", "12.9", 1, true}, {"", "12", 0, false}, {"12.x", "12", 0, false},
	} {
		got, ok := compareVersions(tc.a, tc.b)
		if got != tc.want || ok != tc.ok {
			t.Errorf("compareVersions(%q, %q) = %d, %v; want %d, %v", tc.a, tc.b, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzOptionsQuery(f *testing.F) {
	f.Add("host=gpu-host&port=50051&timeout=2s&kernel=relu&need_cuda=12.4")
	f.Add("bogus=1")
	f.Fuzz(func(t *testing.T, q string) {
		o, err := optionsFromQuery(parseQuery(q))
		if err != nil {
			return
		}
		back, err := optionsFromQuery(o.query())
		if err != nil {
			t.Fatalf("round trip of %+v: %v", o, err)
		}
		if back.Port != o.Port || back.Timeout != o.Timeout || back.Kernel != o.Kernel || len(back.Hosts) != len(o.Hosts) {
			t.Fatalf("round trip %+v -> %+v", o, back)
		}
	})
}

func parseQuery(q string) map[string][]string {
	v, _ := url.ParseQuery(q)
	return v
}
