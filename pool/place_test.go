package pool

import (
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/overlay"
)

// ready is a candidate that is ready and allowed, on a direct path, with
// a 10ms time per call.
func ready(name string) Candidate {
	return Candidate{Host: name, State: StateReady, Allowed: true, Path: overlay.PathDirect, RTT: time.Millisecond, Service: 10 * time.Millisecond}
}

func TestRank(t *testing.T) {
	with := func(c Candidate, f func(*Candidate)) Candidate { f(&c); return c }
	tests := []struct {
		name string
		in   []Candidate
		want string // the pick; "" when none is eligible
	}{
		{"least of ours in flight", []Candidate{
			with(ready("a"), func(c *Candidate) { c.Ours = 3 }),
			with(ready("b"), func(c *Candidate) { c.Ours = 1 }),
			with(ready("c"), func(c *Candidate) { c.Ours = 2 }),
		}, "b"},
		{"other callers' queue counts", []Candidate{
			with(ready("a"), func(c *Candidate) { c.Ours = 1; c.Others = 6 }),
			with(ready("b"), func(c *Candidate) { c.Ours = 3 }),
		}, "b"},
		{"a denying host is never picked, however idle", []Candidate{
			with(ready("a"), func(c *Candidate) { c.Allowed = false }),
			with(ready("b"), func(c *Candidate) { c.Ours = 20 }),
		}, "b"},
		{"a suspect host only when no ready one", []Candidate{
			with(ready("a"), func(c *Candidate) { c.State = StateSuspect }),
			with(ready("b"), func(c *Candidate) { c.Ours = 30 }),
		}, "b"},
		{"a suspect host rather than none", []Candidate{
			with(ready("a"), func(c *Candidate) { c.State = StateSuspect }),
			with(ready("b"), func(c *Candidate) { c.State = StateDown }),
		}, "a"},
		{"a down or probing host is never picked", []Candidate{
			with(ready("a"), func(c *Candidate) { c.State = StateProbing }),
			with(ready("b"), func(c *Candidate) { c.State = StateDown }),
		}, ""},
		{"direct beats relayed at equal load", []Candidate{
			with(ready("a"), func(c *Candidate) { c.Path = overlay.PathRelayed }),
			ready("b"),
		}, "b"},
		{"a much shorter queue beats a direct path", []Candidate{
			with(ready("a"), func(c *Candidate) { c.Path = overlay.PathRelayed }),
			with(ready("b"), func(c *Candidate) { c.Ours = 8 }),
		}, "a"},
		{"lower round trip at equal load", []Candidate{
			with(ready("a"), func(c *Candidate) { c.RTT = 30 * time.Millisecond }),
			with(ready("b"), func(c *Candidate) { c.RTT = 2 * time.Millisecond }),
		}, "b"},
		{"a busy GPU costs", []Candidate{
			with(ready("a"), func(c *Candidate) { c.Utilization = 90 }),
			ready("b"),
		}, "b"},
		{"a faster host takes a longer queue", []Candidate{
			with(ready("a"), func(c *Candidate) { c.Ours = 4; c.Service = time.Millisecond }),
			with(ready("b"), func(c *Candidate) { c.Ours = 1 }),
		}, "a"},
		{"at its max_concurrent only when no other is free", []Candidate{
			with(ready("a"), func(c *Candidate) { c.AtLimit = true }),
			with(ready("b"), func(c *Candidate) { c.Ours = 10 }),
		}, "b"},
		{"at its limit beats nothing", []Candidate{
			with(ready("a"), func(c *Candidate) { c.AtLimit = true }),
			with(ready("b"), func(c *Candidate) { c.Allowed = false }),
		}, "a"},
		{"ties: more free memory, then name", []Candidate{
			with(ready("c"), func(c *Candidate) { c.MemoryFree = 1 << 30 }),
			with(ready("b"), func(c *Candidate) { c.MemoryFree = 8 << 30 }),
			with(ready("a"), func(c *Candidate) { c.MemoryFree = 8 << 30 }),
		}, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := append([]Candidate(nil), tt.in...)
			rank(cs)
			got := ""
			if cs[0].eligible() {
				got = cs[0].Host
			}
			if got != tt.want {
				t.Errorf("picked %q, want %q; ranked:", got, tt.want)
				for _, c := range cs {
					t.Logf("  %s: %s", c.Host, c.why())
				}
			}
		})
	}
}
