// Package broken does not compile: its failure is a build error.
package broken

import "testing"

func TestBroken(t *testing.T) {
	var n int = "not a number"
	_ = n
}
