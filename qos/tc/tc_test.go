package tc

import (
	"errors"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/qos"
)

func TestHasCap(t *testing.T) {
	tests := []struct {
		status string
		want   bool
	}{
		{"Name:\tx\nCapEff:\t000001fffeffffff\n", true},
		{"CapEff:\t0000000000001000\n", true},
		{"CapEff:\t0000000000000fff\n", false},
		{"CapEff:\t0000000000000000\n", false},
		{"CapPrm:\tffffffffffffffff\n", false},
		{"CapEff:\tzz\n", false},
	}
	for _, tt := range tests {
		if got := hasCap(strings.NewReader(tt.status), capNetAdmin); got != tt.want {
			t.Errorf("hasCap(%q) = %v, want %v", tt.status, got, tt.want)
		}
	}
}

func TestNoPrivilege(t *testing.T) {
	saved := hasPrivilege
	hasPrivilege = func() bool { return false }
	defer func() { hasPrivilege = saved }()
	cfg := Config{Link: "lo", Rate: 1e6, Classes: []qos.Class{{Name: "gpu", DSCP: dscp.AF41}}}
	if _, err := Install(cfg); !errors.Is(err, ErrNoPrivilege) {
		t.Errorf("Install: %v, want ErrNoPrivilege", err)
	}
	if _, err := Probe(ProbeConfig{}); !errors.Is(err, ErrNoPrivilege) {
		t.Errorf("Probe: %v, want ErrNoPrivilege", err)
	}
}

var gpuBulk = []qos.Class{
	{Name: "bulk", DSCP: dscp.AF11, Priority: 5, Rate: 1e6},
	{Name: "gpu", DSCP: dscp.AF41, Priority: 0},
}

func TestPopulate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
		wantDef string
		classes int
	}{
		{"adds unclassified", Config{Link: "x", Rate: 1e6, Classes: gpuBulk}, false, "unclassified", 3},
		{"dscp 0 class is default", Config{Link: "x", Rate: 1e6, Classes: append(gpuBulk[:2:2], qos.Class{Name: "be", DSCP: dscp.CS0, Priority: 9})}, false, "be", 3},
		{"named default", Config{Link: "x", Rate: 1e6, Classes: gpuBulk, Default: "bulk"}, false, "bulk", 2},
		{"unknown default", Config{Link: "x", Rate: 1e6, Classes: gpuBulk, Default: "nope"}, true, "", 0},
		{"no link", Config{Rate: 1e6, Classes: gpuBulk}, true, "", 0},
		{"no classes", Config{Link: "x", Rate: 1e6}, true, "", 0},
		{"negative rate", Config{Link: "x", Rate: -1, Classes: gpuBulk}, true, "", 0},
		{"rate unknown in netns", Config{Link: "x", Netns: "/run/netns/x", Classes: gpuBulk}, true, "", 0},
		{"share too big", Config{Link: "x", Rate: 1, MinShare: 0.9, Classes: gpuBulk}, true, "", 0},
	}
	for _, tt := range tests {
		got, err := populate(tt.cfg)
		if tt.wantErr != (err != nil) {
			t.Errorf("%s: err = %v", tt.name, err)
			continue
		}
		if err != nil {
			continue
		}
		if got.Default != tt.wantDef || len(got.Classes) != tt.classes {
			t.Errorf("%s: default %q, %d classes; want %q, %d", tt.name, got.Default, len(got.Classes), tt.wantDef, tt.classes)
		}
		if got.Classes[0].Name != "gpu" {
			t.Errorf("%s: classes not in priority order: %+v", tt.name, got.Classes)
		}
	}
}

func TestPlan(t *testing.T) {
	cfg, err := populate(Config{Link: "x", Rate: 100e6, Classes: gpuBulk})
	if err != nil {
		t.Fatal(err)
	}
	got := plan(cfg, nil)
	want := []InstalledClass{
		{Name: "gpu", ClassID: "9d:10", DSCP: dscp.AF41, Filtered: true, Prio: 0, Rate: 80e6, Ceil: 100e6},
		{Name: "bulk", ClassID: "9d:11", DSCP: dscp.AF11, Filtered: true, Prio: 1, Rate: 1e6, Ceil: 1e6},
		{Name: "unclassified", ClassID: "9d:f", Default: true, Prio: 2, Rate: 10e6, Ceil: 100e6},
	}
	if len(got) != len(want) {
		t.Fatalf("plan: %+v", got)
	}
	for i := range want {
		got[i].handle = 0
		if got[i] != want[i] {
			t.Errorf("class %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}

	// Many classes: the assured rates still fit in the link.
	var many []qos.Class
	for i := range 20 {
		d, _ := dscp.Of(uint8(i + 1))
		many = append(many, qos.Class{Name: string(rune('a' + i)), DSCP: d, Priority: i})
	}
	cfg, _ = populate(Config{Link: "x", Rate: 1000, Classes: many})
	var sum int64
	for _, c := range plan(cfg, nil) {
		sum += c.Rate
		if c.Prio > 7 {
			t.Errorf("class %s prio %d > 7", c.Name, c.Prio)
		}
	}
	if sum > 1000 {
		t.Errorf("assured rates sum to %d > link rate 1000", sum)
	}
}

func TestReportString(t *testing.T) {
	cfg, _ := populate(Config{Link: "eth0", Rate: 125e6, Classes: gpuBulk})
	r := Report{Link: "eth0", Rate: cfg.Rate, Root: "9d:", Replaced: "noqueue", Leaf: "pfifo", Classes: plan(cfg, nil)}
	s := r.String()
	for _, want := range []string{"htb 9d: on eth0 at 1Gbit, replacing noqueue", "9d:10", "u32 dsfield AF41", "ceil 8Mbit", "default"} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
	t.Log("\n" + s)
	sup := Support{{Name: "htb"}, {Name: "prio", Err: errNoEnt}, {Name: "u32", Filter: true}, {Name: "flower", Filter: true, Err: errNoEnt}}
	if got, want := sup.String(), "qdiscs: htb (missing: prio); filters: u32 (missing: flower)"; got != want {
		t.Errorf("Support.String() = %q, want %q", got, want)
	}
}
