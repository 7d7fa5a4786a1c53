package metrics

import (
	"context"
	"net/http"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/policy"
)

// Access says who may read the metrics on an overlay listener: the metrics
// name every caller, their calls, bytes and buffers, so on the tailnet
// they are served only to callers the policy grants policy.RightMetrics
// (kernels = ["observe:metrics"] in a rule naming them; "*" never grants
// it). A loopback listener needs no Access: only this machine reaches it.
type Access struct {
	// WhoIs identifies a request's remote overlay address. Required.
	WhoIs gpusvc.WhoIsFunc
	// Policy returns the policy in force, asked on every request; nil or
	// a nil result refuses everyone.
	Policy func() *policy.Policy
	// Logf, if set, hears of each refused request.
	Logf func(format string, args ...any)
}

// Restrict serves h only to requests whose overlay identity the policy
// grants policy.RightMetrics; others get 403 Forbidden with the policy's
// reason, and an address the overlay cannot identify gets 403 too.
func (a Access) Restrict(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		id, err := a.WhoIs(ctx, r.RemoteAddr)
		if err != nil {
			a.refuse(w, r, "the overlay does not know "+r.RemoteAddr)
			return
		}
		var pol *policy.Policy
		if a.Policy != nil {
			pol = a.Policy()
		}
		d := pol.Evaluate(gpusvc.Subject(id), policy.Request{Kernel: policy.RightMetrics})
		if !d.Allow {
			a.refuse(w, r, d.Reason)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (a Access) refuse(w http.ResponseWriter, r *http.Request, why string) {
	if a.Logf != nil {
		a.Logf("metrics: refused %s: %s", r.RemoteAddr, why)
	}
	http.Error(w, "gpumesh: metrics are served to callers the policy grants "+policy.RightMetrics+": "+why, http.StatusForbidden)
}
