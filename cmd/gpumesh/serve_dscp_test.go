package main

import (
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/qos"
)

// TestServeDSCPFlag: `serve --dscp` takes any code point, CS0 included
// (it used to mean "unset" and mark AF41), and "off" leaves the packets
// unmarked; what it sets is what the host's marker marks.
func TestServeDSCPFlag(t *testing.T) {
	tests := []struct {
		flag string
		want dscp.Code
		err  string
	}{
		{flag: "AF41", want: dscp.AF41},
		{flag: "CS0", want: dscp.CS0},
		{flag: "cs0", want: dscp.CS0},
		{flag: "0", want: dscp.CS0},
		{flag: "BE", want: dscp.CS0},
		{flag: "ef", want: dscp.EF},
		{flag: "off", want: dscp.None},
		{flag: "EF2", err: `did you mean "EF"?`},
		{flag: "64", err: "out of range 0-63"},
	}
	for _, tt := range tests {
		cfg, err := qosConfig(tt.flag, "", "", "")
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.HasPrefix(err.Error(), "--dscp: ") {
				t.Errorf("--dscp %s: %v, want an error with %q", tt.flag, err, tt.err)
			}
			continue
		}
		if err != nil || cfg.DSCP != tt.want {
			t.Errorf("--dscp %s: DSCP %v, %v; want %v", tt.flag, cfg.DSCP, err, tt.want)
			continue
		}
		if tt.want == dscp.None {
			continue // serve turns outer marking off
		}
		if m := qos.NewMarker(qos.MarkerConfig{Port: 9, DSCP: cfg.DSCP}); m.Status().DSCP != tt.want {
			t.Errorf("--dscp %s: the marker marks %v, want %v", tt.flag, m.Status().DSCP, tt.want)
		}
	}
}
