package agent_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/gpumesh/gpumesh/kube/agent"
)

func TestParseNodeSelector(t *testing.T) {
	sel, err := agent.ParseNodeSelector("gpumesh.dev/agent=true")
	if err != nil {
		t.Fatal(err)
	}
	r := sel.NodeSelectorTerms[0].MatchExpressions[0]
	if r.Key != "gpumesh.dev/agent" || r.Operator != corev1.NodeSelectorOpIn || len(r.Values) != 1 || r.Values[0] != "true" {
		t.Errorf("selector %+v", sel)
	}
	if sel, err := agent.ParseNodeSelector(""); sel != nil || err != nil {
		t.Errorf("empty = %v, %v; want nil (all nodes)", sel, err)
	}
	for _, bad := range []string{"novalue", "=x", "a b=c", "k=" + string(make([]byte, 64)), "k=v/w"} {
		if _, err := agent.ParseNodeSelector(bad); err == nil {
			t.Errorf("ParseNodeSelector(%q) accepted", bad)
		}
	}
}
