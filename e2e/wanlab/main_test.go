package wanlab

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine running (the
// stage's reader and writer end with Close).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
