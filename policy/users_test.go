package policy

import "testing"

// TestUserLogins attacks finding 10: users a control server reports with
// a bare login ("alice", as Headscale does for users made on its CLI) can
// be named, as "alice@" (Headscale's own spelling) or "user:alice"; a bare
// word stays a node name; and a login with a domain is a different user.
func TestUserLogins(t *testing.T) {
	p := mustParse(t, "users.hcl", `
version = 1
rule "alice" {
  subjects = ["alice@"]
  gpus     = ["*"]
  kernels  = ["matrix_mul"]
}
rule "bob" {
  subjects = ["user:bob"]
  gpus     = ["*"]
  kernels  = ["saxpy"]
}
rule "carol" {
  subjects = ["carol@example.com"]
  gpus     = ["*"]
  kernels  = ["relu"]
}
rule "node-dave" {
  subjects = ["dave"]
  gpus     = ["*"]
  kernels  = ["softmax"]
}
test "headscale user alice" {
  subject = { node = "alice-laptop", user = "alice" }
  kernel  = "matrix_mul"
  expect  = "allow"
  rule    = "alice"
}
`)
	for _, tt := range []struct {
		s      Subject
		kernel string
		rule   string // "" when denied
	}{
		{Subject{Node: "alice-laptop", User: "alice"}, "matrix_mul", "alice"},
		{Subject{Node: "alice-laptop", User: "Alice"}, "matrix_mul", "alice"},
		{Subject{User: "alice"}, "matrix_mul", "alice"},
		{Subject{Node: "x", User: "alice@example.com"}, "matrix_mul", ""}, // another login
		{Subject{Node: "x", User: "alice@"}, "matrix_mul", ""},            // no server reports this
		{Subject{Node: "alice"}, "matrix_mul", ""},                        // a node called alice is not the user
		{Subject{Node: "bob-laptop", User: "bob"}, "saxpy", "bob"},
		{Subject{Node: "bob"}, "saxpy", ""},
		{Subject{Node: "c", User: "carol@example.com"}, "relu", "carol"},
		{Subject{Node: "c", User: "carol"}, "relu", ""},
		{Subject{Node: "dave"}, "softmax", "node-dave"},
		{Subject{Node: "laptop", User: "dave"}, "softmax", ""}, // a bare word is a node, never a user
	} {
		d := p.Evaluate(tt.s, Request{Kernel: tt.kernel})
		if d.Allow != (tt.rule != "") || d.Rule != tt.rule {
			t.Errorf("%+v %s: allow %v rule %q (%s), want rule %q", tt.s, tt.kernel, d.Allow, d.Rule, d.Reason, tt.rule)
		}
	}
	for _, r := range p.RunTests() {
		if !r.Pass {
			t.Errorf("test %q: %s", r.Name, r.Message)
		}
	}
}
