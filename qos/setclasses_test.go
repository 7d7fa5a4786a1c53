package qos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"

	"github.com/gpumesh/gpumesh/dscp"
)

// classSetter is what gpusvc asserts on the connection node.WrapConn
// returns; Scheduler.Conn's must satisfy it.
type classSetter interface{ SetClass(string) }

// readAll drains c until it closes, so writes to its pipe end complete.
func drain(t *testing.T, c net.Conn) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() { io.Copy(io.Discard, c) })
	t.Cleanup(func() { c.Close(); wg.Wait() })
}

// TestConnSetClass: a live connection moved with SetClass has its next
// chunks counted in the new class; "" and a name the scheduler lacks count
// in the default class; the old class keeps what it counted.
func TestConnSetClass(t *testing.T) {
	s, err := NewScheduler([]Class{
		{Name: "interactive", DSCP: dscp.EF, Priority: 0},
		{Name: "bulk", DSCP: dscp.AF11, Priority: 2},
		{Name: "default", DSCP: dscp.AF41, Priority: 1},
	}, Options{DefaultClass: "default", ChunkSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	drain(t, b)
	c := s.Conn(a, "bulk")
	defer c.Close()
	cs, ok := c.(classSetter)
	if !ok {
		t.Fatalf("%T has no SetClass(string)", c)
	}
	write := func(n int) {
		t.Helper()
		if m, err := c.Write(make([]byte, n)); err != nil || m != n {
			t.Fatalf("Write(%d) = %d, %v", n, m, err)
		}
	}
	write(250)
	cs.SetClass("interactive")
	write(120)
	cs.SetClass("")
	write(7)
	cs.SetClass("video") // not a class here
	write(3)
	want := map[string]int64{"bulk": 250, "interactive": 120, "default": 10}
	if got := bytesOf(s); !mapsEqual(got, want) {
		t.Errorf("bytes per class %v, want %v", got, want)
	}
	chunks := map[string]int64{}
	for _, st := range s.Stats() {
		chunks[st.Name] = st.Chunks
	}
	if want := map[string]int64{"bulk": 3, "interactive": 2, "default": 2}; !mapsEqual(chunks, want) {
		t.Errorf("chunks per class %v, want %v", chunks, want)
	}
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestSetClassesMovesWaiters: a chunk waiting in a class that SetClasses
// removes is admitted through the default class; a class that stays keeps
// its counters and takes its new priority; a renamed class starts at zero.
func TestSetClassesMovesWaiters(t *testing.T) {
	s, err := NewScheduler([]Class{
		{Name: "a", DSCP: dscp.EF, Priority: 0},
		{Name: "b", DSCP: dscp.AF21, Priority: 1},
		{Name: "default", DSCP: dscp.AF41, Priority: 2},
	}, Options{DefaultClass: "default", Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	queued := make(chan string, 4)
	s.onQueued = func(c string) { queued <- c }

	hold, err := s.Wait(context.Background(), "a", 10) // takes the one slot
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Writer(io.Discard, "b").Write(make([]byte, 100))
		done <- err
	}()
	if c := <-queued; c != "b" {
		t.Fatalf("queued in %q, want b", c)
	}
	// b goes, a is renamed a2 and becomes the least urgent.
	if err := s.SetClasses([]Class{
		{Name: "default", DSCP: dscp.AF41, Priority: 2},
		{Name: "a2", DSCP: dscp.EF, Priority: 3},
	}); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st[0].Name != "default" || st[0].Queued != 1 {
		t.Errorf("after SetClasses: %+v, want the b chunk queued in default", st)
	}
	hold()
	if err := <-done; err != nil {
		t.Fatalf("the write waiting in a removed class failed: %v", err)
	}
	if got, want := bytesOf(s), map[string]int64{"default": 100, "a2": 0}; !mapsEqual(got, want) {
		t.Errorf("bytes per class %v, want %v", got, want)
	}
	var names []string
	for _, c := range s.Classes() {
		names = append(names, c.Name)
	}
	if !slices.Equal(names, []string{"default", "a2"}) {
		t.Errorf("classes %v, want [default a2], most urgent first", names)
	}

	// A surviving class keeps its counters.
	if err := s.SetClasses([]Class{
		{Name: "default", DSCP: dscp.CS0, Priority: 0, Rate: 1 << 30},
		{Name: "a2", DSCP: dscp.EF, Priority: 1},
	}); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st[0].Name != "default" || st[0].Bytes != 100 || st[0].DSCP != dscp.CS0 || st[0].Rate != 1<<30 {
		t.Errorf("surviving class: %+v, want its 100 bytes and the new DSCP and rate", st[0])
	}
}

// TestSetClassesRefused: a class set that is invalid, or lacks the default
// class, is refused as a whole; the classes in force stay.
func TestSetClassesRefused(t *testing.T) {
	s, err := NewScheduler(testClasses, Options{DefaultClass: "bulk"})
	if err != nil {
		t.Fatal(err)
	}
	before := s.Classes()
	for _, bad := range [][]Class{
		nil,
		{{Name: "bulk", DSCP: dscp.AF11}, {Name: "bulk", DSCP: dscp.EF}},
		{{Name: "bulk", DSCP: dscp.AF11}, {Name: "x"}}, // no DSCP
		{{Name: "bulk", DSCP: dscp.AF11}, {Name: "x", DSCP: dscp.EF, Burst: 5}},
		{{Name: "interactive", DSCP: dscp.EF}}, // no default class
	} {
		err := s.SetClasses(bad)
		if !errors.Is(err, ErrInvalidClass) && !errors.Is(err, ErrNoDefaultClass) {
			t.Errorf("SetClasses(%v) = %v, want a refusal", bad, err)
		}
		if got := s.Classes(); !slices.Equal(got, before) {
			t.Fatalf("after a refused SetClasses: %v, want %v", got, before)
		}
	}
}

// TestSetClassesWhileWriting: writers on connections of every class, moved
// between classes with SetClass, while SetClasses adds, renames and removes
// classes under them: no write fails and every byte arrives. Run with
// -race.
func TestSetClassesWhileWriting(t *testing.T) {
	sets := [][]Class{
		{{Name: "a", DSCP: dscp.EF}, {Name: "b", DSCP: dscp.AF21, Priority: 1}, {Name: "default", DSCP: dscp.AF41, Priority: 2}},
		{{Name: "a", DSCP: dscp.EF, Priority: 2}, {Name: "c", DSCP: dscp.AF31, Priority: 1, Rate: 1 << 30}, {Name: "default", DSCP: dscp.AF41}},
		{{Name: "c", DSCP: dscp.AF31}, {Name: "default", DSCP: dscp.CS0, Priority: 1}},
		{{Name: "default", DSCP: dscp.AF41}},
	}
	s, err := NewScheduler(sets[0], Options{DefaultClass: "default", ChunkSize: 512, Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	const writers, writes, size = 6, 40, 3000
	names := []string{"a", "b", "c", "default", ""}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	received := make([]int, writers)
	for i := range writers {
		a, b := net.Pipe()
		wg.Go(func() { // the far end
			n, _ := io.Copy(io.Discard, b)
			received[i] = int(n)
		})
		wg.Go(func() {
			defer a.Close()
			c := s.Conn(a, names[i%len(names)])
			msg := bytes.Repeat([]byte{byte(i)}, size)
			for j := range writes {
				if n, err := c.Write(msg); err != nil || n != size {
					errs <- fmt.Errorf("writer %d write %d: %d, %w", i, j, n, err)
					return
				}
				c.(classSetter).SetClass(names[(i+j)%len(names)])
			}
		})
	}
	stop := make(chan struct{})
	var flip sync.WaitGroup
	flip.Go(func() {
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.SetClasses(sets[i%len(sets)]); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(stop)
	flip.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, n := range received {
		if n != writes*size {
			t.Errorf("writer %d: far end received %d bytes, want %d", i, n, writes*size)
		}
	}
}
