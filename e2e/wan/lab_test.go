package wan

import (
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/e2e/wanlab"
)

// TestThroughLab: in each overlay mode the laptop reaches the host
// through the lab's stage (in tailnet mode on a direct path, not DERP;
// the client role waits for one), so the overlay feels the lab's delay:
// no round trip is shorter than it, and gpumesh Write and Read work
// across it.
func TestThroughLab(t *testing.T) {
	for _, mode := range []string{"tailnet", "tailscaled", "wg", "wgtun"} {
		t.Run(mode, func(t *testing.T) {
			delay := wanlab.Impairment{Delay: 5 * time.Millisecond}
			lab := wanlab.New(t, wanlab.Config{AtoB: delay, BtoA: delay, Seed: 1})
			cl, err := startMode(t, lab, mode)
			if err != nil {
				t.Fatal(err)
			}
			ping, err := cl.do(op{Kind: "ping", Calls: 10, Cap: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			if ping.P50us < 10_000 {
				t.Errorf("overlay round trip p50 %dµs; the lab delays 5 ms each way", ping.P50us)
			}
			for _, o := range []op{{Kind: "write", Bytes: 1 << 20, Cap: time.Minute}, {Kind: "read", Bytes: 1 << 20, Cap: time.Minute}} {
				r, err := cl.do(o)
				if err != nil || r.Bytes != 1<<20 {
					t.Errorf("%s 1 MiB through the lab: %d bytes, %v", o.Kind, r.Bytes, err)
				}
			}
			ab, ba := lab.Stats()
			// 1 MiB each way is at least 700 packets at an MTU of 1500 or less.
			if ab.Out < 700 || ba.Out < 700 {
				t.Errorf("the stage carried %d packets A→B and %d B→A; want ≥ 700 each", ab.Out, ba.Out)
			}
			t.Logf("%s: ping p50 %.1f ms; stage carried %d packets A→B, %d B→A", mode, float64(ping.P50us)/1000, ab.Out, ba.Out)
		})
	}
}
