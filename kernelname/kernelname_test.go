package kernelname

import (
	"slices"
	"testing"
)

// TestBuiltins: the list is sorted, has no duplicates, and IsBuiltin agrees
// with it.
func TestBuiltins(t *testing.T) {
	names := Builtins()
	if !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != len(names) {
		t.Errorf("Builtins() = %v, want sorted and unique", names)
	}
	for _, n := range names {
		if !IsBuiltin(n) {
			t.Errorf("IsBuiltin(%q) = false", n)
		}
	}
	for _, n := range []string{"", "custom:ptx", "observe:metrics", "MATRIX_MUL", "matrix_mul ", "*"} {
		if IsBuiltin(n) {
			t.Errorf("IsBuiltin(%q) = true", n)
		}
	}
	names[0] = "changed"
	if Builtins()[0] == "changed" {
		t.Error("Builtins returns shared state")
	}
}
