// Package hang has a test that never ends: run with a short -timeout, it
// is killed before it reports.
package hang

import (
	"os"
	"testing"
	"time"
)

func TestHang(t *testing.T) {
	if os.Getenv("TESTREPORT_HANG") == "" {
		t.Skip("hangs only when TESTREPORT_HANG is set")
	}
	t.Log("about to hang")
	time.Sleep(time.Hour)
}
