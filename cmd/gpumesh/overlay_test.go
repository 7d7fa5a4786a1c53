package main

import (
	"strings"
	"testing"
)

// TestOverlayFlagConflicts: flags that name two overlays, or a TCP
// setting for a userspace TCP, fail before anything is joined, saying why.
func TestOverlayFlagConflicts(t *testing.T) {
	pol := "../../examples/policy.hcl"
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--policy", pol, "--tailscaled", "--wg", "wg0.conf"}, "choose one overlay"},
		{[]string{"serve", "--policy", pol, "--tcp-congestion", "bbr"}, "--tcp-congestion needs --tailscaled or --wg-mode tun"},
		{[]string{"run", "--tcp-congestion", "bbr", "gpu-host", "matrix_mul"}, "--tcp-congestion needs --tailscaled or --wg-mode tun"},
		{[]string{"status", "--tcp-congestion", "bbr"}, "--tcp-congestion needs --tailscaled"},
	}
	for _, tt := range tests {
		out, err := runKeysCmd(t, "", tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("gpumesh %s: %v\n%s\nwant an error containing %q", strings.Join(tt.args, " "), err, out, tt.want)
		}
	}
}
