// Package skips passes, skips and fails in the ways testreport must report.
package skips

import "testing"

func TestPass(t *testing.T) { t.Log("a passing test's log is not shown") }

func TestSkipRoot(t *testing.T) { t.Skip("needs root (network namespaces)") }

func need(t *testing.T) {
	t.Helper()
	t.Skipf("needs %s:\n%s", "a thing", "on two lines")
}

func TestSkipInHelper(t *testing.T) {
	t.Log("logged before the skip")
	need(t)
}

func TestParent(t *testing.T) {
	t.Run("ok", func(t *testing.T) { t.Log("fine") })
	t.Run("gpu", func(t *testing.T) { t.Skip("no GPU here") })
	t.Run("bad", func(t *testing.T) {
		t.Log("why it failed")
		t.Error("boom")
	})
}
