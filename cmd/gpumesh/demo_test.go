package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestDemo runs `gpumesh demo` in-process: it exits non-zero unless every
// check held, so this fails when any of them does.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := newRootCmd()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"demo", "--size", "128"})
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"refuses connections: the endpoint exists only inside the tailnet",
		`the host says the caller is "laptop"`,
		"matches local computation",
		"stranger → gpu-host matrix_mul refused: PermissionDenied",
		"with DSCP AF41",
		"demo: PASS",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}
