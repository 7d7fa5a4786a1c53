package tsnet

import (
	"net/url"
	"os"
	"strconv"

	"tailscale.com/envknob"
)

// A control server reached over plain http:// serves its DERP relay over
// plain HTTP too: Headscale's embedded DERP listens on its HTTP port, and
// so does the embedded dev tailnet's (overlay/devnet). Tailscale dials
// DERP with TLS unless TS_DEBUG_USE_DERP_HTTP is set, so without it such a
// node waits for its home DERP until the join times out. A node of an
// http:// control server therefore dials DERP over plain HTTP, unless the
// environment sets TS_DEBUG_USE_DERP_HTTP itself. The switch is
// process-wide (an envknob), set by the first node that starts.

// derpHTTPEnv is Tailscale's switch for DERP over plain HTTP.
const derpHTTPEnv = "TS_DEBUG_USE_DERP_HTTP"

// DERPOverHTTP says whether a node of the control server at controlURL
// dials its DERP relays over plain HTTP: when the URL is http://, unless
// TS_DEBUG_USE_DERP_HTTP says otherwise; when it is https://, only if
// TS_DEBUG_USE_DERP_HTTP says so.
func DERPOverHTTP(controlURL string) bool {
	if v, ok := os.LookupEnv(derpHTTPEnv); ok {
		b, err := strconv.ParseBool(v)
		return err == nil && b
	}
	return plainHTTP(controlURL)
}

func plainHTTP(controlURL string) bool {
	u, err := url.Parse(controlURL)
	return err == nil && u.Scheme == "http"
}

// setDERPHTTP turns DERP over plain HTTP on for a node of controlURL
// when DERPOverHTTP says so and the environment does not say already.
func setDERPHTTP(controlURL string) {
	if _, ok := os.LookupEnv(derpHTTPEnv); !ok && plainHTTP(controlURL) {
		envknob.Setenv(derpHTTPEnv, "true")
	}
}

// derpHint says what to set when a node heard nothing from its home DERP
// relay and the DERP transport may be why.
func derpHint(controlURL string) string {
	switch over := DERPOverHTTP(controlURL); {
	case plainHTTP(controlURL) && !over:
		return "; a control server on plain http:// serves its DERP relay over plain HTTP: unset " + derpHTTPEnv + " or set it to true"
	case !over:
		return "; if the control server's DERP relay speaks plain HTTP (no TLS), set " + derpHTTPEnv + "=true"
	}
	return "; DERP is dialed over plain HTTP (" + derpHTTPEnv + "=true): if the relay speaks TLS, unset it"
}
