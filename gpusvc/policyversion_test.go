package gpusvc_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/policy"
)

const laptopRelu = `
version = 1
rule "laptop" {
  subjects = ["laptop"]
  gpus     = ["*"]
  kernels  = ["relu"]
}
`

const laptopMatmulOnly = `
version = 1
rule "laptop" {
  subjects = ["laptop"]
  gpus     = ["*"]
  kernels  = ["matrix_mul"]
}
`

// TestPolicyVersionFollowsReloads serves a policy from a store and reloads
// it: Devices and Explain name the policy in force by its version, which
// changes when a reload puts another policy in force and stays when a
// reload is refused (the old policy stays in force, and answers as before).
func TestPolicyVersionFollowsReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.hcl")
	write := func(src string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(laptopRelu)
	store, err := policy.NewStore(path, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	w := startWorldWith(t, laptopRelu, func(c *gpusvc.Config) { c.Policy = store.Current }, "laptop")
	c := w.clients["laptop"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// versions asks Devices and Explain(relu) and checks they agree.
	versions := func(step string) (version string, reluAllowed bool) {
		t.Helper()
		dev, err := c.Devices(ctx)
		if err != nil {
			t.Fatalf("%s: Devices: %v", step, err)
		}
		ex, err := c.Explain(ctx, "relu", "")
		if err != nil {
			t.Fatalf("%s: Explain: %v", step, err)
		}
		if dev.GetPolicyVersion() != ex.GetPolicyVersion() {
			t.Fatalf("%s: Devices says policy %q, Explain %q", step, dev.GetPolicyVersion(), ex.GetPolicyVersion())
		}
		if want := store.Current().Digest(); dev.GetPolicyVersion() != want {
			t.Fatalf("%s: the host reports policy %q; %q is in force", step, dev.GetPolicyVersion(), want)
		}
		return dev.GetPolicyVersion(), ex.GetAllow()
	}

	v1, allowed := versions("first policy")
	if v1 == "" || !allowed {
		t.Fatalf("first policy: version %q, relu allowed %v; want a version, and relu allowed", v1, allowed)
	}

	write(laptopMatmulOnly)
	if err := store.Reload(); err != nil {
		t.Fatalf("reload a valid policy: %v", err)
	}
	v2, allowed := versions("after an accepted reload")
	if v2 == v1 || allowed {
		t.Fatalf("after an accepted reload: version %q (was %q), relu allowed %v; want a new version, and relu denied", v2, v1, allowed)
	}

	for _, refused := range []struct{ name, src string }{
		{"a syntax error", "version = 1\nrule \"laptop\" {\n"},
		{"a failing test", laptopRelu + `
test "laptop may not relu" {
  subject = { node = "laptop" }
  kernel  = "relu"
  expect  = "deny"
}
`},
	} {
		write(refused.src)
		if err := store.Reload(); err == nil {
			t.Fatalf("reload of a policy with %s was accepted", refused.name)
		}
		v, allowed := versions("after a refused reload (" + refused.name + ")")
		if v != v2 || allowed {
			t.Fatalf("after a refused reload (%s): version %q, relu allowed %v; want %q kept, relu still denied", refused.name, v, allowed, v2)
		}
	}

	// Back to the first policy's bytes: the same policy, the same version.
	write(laptopRelu)
	if err := store.Reload(); err != nil {
		t.Fatalf("reload the first policy again: %v", err)
	}
	if v, allowed := versions("back to the first policy"); v != v1 || !allowed {
		t.Fatalf("back to the first policy: version %q, relu allowed %v; want %q, allowed", v, allowed, v1)
	}
}
