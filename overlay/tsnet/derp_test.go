package tsnet

import (
	"os"
	"strings"
	"testing"
)

// TestDERPOverHTTP: a node of an http:// control server dials DERP over
// plain HTTP unless TS_DEBUG_USE_DERP_HTTP says otherwise; an https://
// one only when it says so; and a node that heard nothing from its home
// DERP is told what to set.
func TestDERPOverHTTP(t *testing.T) {
	for _, tt := range []struct {
		url  string
		env  string // "-": unset
		want bool
		hint string
	}{
		{"http://127.0.0.1:8080", "-", true, "if the relay speaks TLS, unset it"},
		{"http://hs.lan:8080", "false", false, "unset TS_DEBUG_USE_DERP_HTTP or set it to true"},
		{"http://hs.lan:8080", "true", true, "if the relay speaks TLS"},
		{"https://login.example.com", "-", false, "set TS_DEBUG_USE_DERP_HTTP=true"},
		{"https://hs.example.com", "1", true, "if the relay speaks TLS"},
		{"https://hs.example.com", "junk", false, "set TS_DEBUG_USE_DERP_HTTP=true"},
	} {
		t.Setenv(derpHTTPEnv, tt.env)
		if tt.env == "-" {
			os.Unsetenv(derpHTTPEnv)
		}
		if got := DERPOverHTTP(tt.url); got != tt.want {
			t.Errorf("%s with %s=%s: DERPOverHTTP = %v; want %v", tt.url, derpHTTPEnv, tt.env, got, tt.want)
		}
		if h := derpHint(tt.url); !strings.Contains(h, tt.hint) {
			t.Errorf("%s with %s=%s: hint %q; want %q in it", tt.url, derpHTTPEnv, tt.env, h, tt.hint)
		}
	}
}
