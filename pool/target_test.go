package pool

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/overlay"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		want    Target
		wantErr string
	}{
		{in: "*", want: Target{All: true}},
		{in: "*:50052", want: Target{All: true, Port: 50052}},
		{in: "tag:gpu", want: Target{Tags: []string{"tag:gpu"}}},
		{in: "tag:gpu:50052", want: Target{Tags: []string{"tag:gpu"}, Port: 50052}},
		{in: "gpu-a,gpu-b", want: Target{Names: []string{"gpu-a", "gpu-b"}}},
		{in: "gpu-a,GPU-A", want: Target{Names: []string{"gpu-a"}}},
		{in: "tag:gpu,gpu-c,tag:ml", want: Target{Tags: []string{"tag:gpu", "tag:ml"}, Names: []string{"gpu-c"}}},
		{in: "100.64.0.1,[fd7a:115c:a1e0::1]:7", want: Target{Names: []string{"100.64.0.1", "fd7a:115c:a1e0::1"}, Port: 7}},
		{in: "gpu-a.tail-scale.ts.net", want: Target{Names: []string{"gpu-a.tail-scale.ts.net"}}},
		{in: "", wantErr: "empty"},
		{in: "tag:", wantErr: "is not a tag"},
		{in: "tag:1gpu", wantErr: "is not a tag"},
		{in: "tag:123", wantErr: "is not a tag"},
		{in: "tag:g_pu", wantErr: "is not a tag"},
		{in: "a,,b", wantErr: "empty item"},
		{in: "a,*", wantErr: "stands alone"},
		{in: "tag:gpu:0", wantErr: "port"},
		{in: "tag:gpu:70000", wantErr: "port"},
		{in: ":50051", wantErr: "no target"},
		{in: "fd7a::1", wantErr: "brackets"},
		{in: "gpu a", wantErr: "neither"},
		{in: "-gpu", wantErr: "neither"},
		{in: strings.Repeat("a,", 300) + "a", wantErr: "items"},
		{in: strings.Repeat("a", 5000), wantErr: "bytes"},
	}
	for _, tt := range tests {
		got, err := ParseTarget(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseTarget(%.40q) = %+v, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTarget(%q): %v", tt.in, err)
			continue
		}
		if got.All != tt.want.All || got.Port != tt.want.Port || !slices.Equal(got.Tags, tt.want.Tags) || !slices.Equal(got.Names, tt.want.Names) {
			t.Errorf("ParseTarget(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		back, err := ParseTarget(got.String())
		if err != nil || back.String() != got.String() {
			t.Errorf("ParseTarget(%q).String() = %q does not read back: %+v, %v", tt.in, got.String(), back, err)
		}
	}
	if _, err := ParseTarget(""); !errors.Is(err, ErrNotTarget) {
		t.Errorf("ParseTarget(\"\") = %v, want ErrNotTarget", err)
	}
}

func TestIsTarget(t *testing.T) {
	for s, want := range map[string]bool{
		"*": true, "*:1": true, "tag:gpu": true, "a,b": true,
		"gpu-host": false, "gpu-host:50051": false, "100.64.0.1": false, "": false,
	} {
		if got := IsTarget(s); got != want {
			t.Errorf("IsTarget(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestTargetMatches(t *testing.T) {
	gpuA := overlay.Peer{Name: "gpu-a", FQDN: "gpu-a.gpumesh.ts.net", Tags: []string{"tag:gpu"}, Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.1")}}
	laptop := overlay.Peer{Name: "laptop", Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.9"), netip.MustParseAddr("fd7a::9")}}
	tests := []struct {
		target string
		peer   overlay.Peer
		want   bool
	}{
		{"*", laptop, true},
		{"tag:gpu", gpuA, true},
		{"tag:gpu", laptop, false},
		{"tag:ml,laptop", laptop, true},
		{"GPU-A,x", gpuA, true},
		{"gpu-a.gpumesh.ts.net,x", gpuA, true},
		{"100.64.0.1,x", gpuA, true},
		{"[fd7a::9],x", laptop, true},
		{"100.64.0.2,x", gpuA, false},
	}
	for _, tt := range tests {
		tg, err := ParseTarget(tt.target)
		if err != nil {
			t.Fatal(err)
		}
		if got := tg.Matches(tt.peer); got != tt.want {
			t.Errorf("%q matches %s = %v, want %v", tt.target, tt.peer.Name, got, tt.want)
		}
	}
}

func TestTargetMembers(t *testing.T) {
	ip := func(s string) []netip.Addr { return []netip.Addr{netip.MustParseAddr(s)} }
	peers := []overlay.Peer{
		{Name: "gpu-a", Tags: []string{"tag:gpu"}, Addrs: ip("100.64.0.1"), Online: true},
		{Name: "gpu-b", Tags: []string{"tag:gpu"}, Addrs: ip("100.64.0.2")}, // offline
		{Name: "laptop", Addrs: ip("100.64.0.3"), Online: true},             // not tagged
		{Tags: []string{"tag:gpu"}, Addrs: ip("100.64.0.4"), Online: true},  // no name: its IP
		{Tags: []string{"tag:gpu"}, Online: true},                           // neither
		{Name: "gpu-a", Tags: []string{"tag:gpu"}, Addrs: ip("100.64.0.5"), Online: true},
	}
	tg, err := ParseTarget("tag:gpu")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range tg.Members(peers) {
		got = append(got, m.Name+"="+m.Peer.Addr().String())
	}
	if want := []string{"gpu-a=100.64.0.1", "100.64.0.4=100.64.0.4"}; !slices.Equal(got, want) {
		t.Errorf("Members = %v, want %v", got, want)
	}
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"*", "tag:gpu", "a,b:1", "[fd7a::1]:2", "tag:gpu,tag:ml,x.y", ":", "tag::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := ParseTarget(s)
		if err != nil {
			return
		}
		back, err := ParseTarget(tg.String())
		if err != nil {
			t.Fatalf("%q parsed as %+v, whose String %q does not parse: %v", s, tg, tg.String(), err)
		}
		if back.String() != tg.String() {
			t.Fatalf("%q: String %q reads back as %q", s, tg.String(), back.String())
		}
		if !tg.All && len(tg.Tags)+len(tg.Names) == 0 {
			t.Fatalf("%q parsed to an empty target", s)
		}
	})
}
