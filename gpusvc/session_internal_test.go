package gpusvc

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// fakeMemory counts live buffers; Free records the order of frees.
type fakeMemory struct {
	mu    sync.Mutex
	next  uint64
	live  map[uint64]int64
	freed []uint64
}

func newFakeMemory() *fakeMemory { return &fakeMemory{live: map[uint64]int64{}} }

func (m *fakeMemory) Alloc(_ context.Context, _ int, n int64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.next++
	m.live[m.next] = n
	return m.next, nil
}

func (m *fakeMemory) Free(_ context.Context, h uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.live[h]; !ok {
		return fmt.Errorf("fake: %d: %w", h, ErrNoBuffer)
	}
	delete(m.live, h)
	m.freed = append(m.freed, h)
	return nil
}

func (m *fakeMemory) WriteAt(context.Context, uint64, int64, []byte) error { return nil }
func (m *fakeMemory) ReadAt(context.Context, uint64, int64, []byte) error  { return nil }

func (m *fakeMemory) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.live)
}

func testTable(t *testing.T) (*sessions, *fakeMemory) {
	mem := newFakeMemory()
	tab := newSessions(mem, newQuotas(1<<30), slog.New(slog.DiscardHandler), time.Minute)
	t.Cleanup(tab.close)
	return tab, mem
}

// testCall is a call by node, decided by a rule with maxMemory.
func testCall(node string, maxMemory int64) *call {
	return &call{who: newCaller(overlay.Identity{Node: node, StableID: "id-" + node}), decided: true,
		decision: policy.Decision{Allow: true, Rule: "r", Limits: policy.Limits{MaxMemory: maxMemory}}}
}

// finish ends c as the server does: what it holds is given back.
func finish(c *call) {
	for i := len(c.undo) - 1; i >= 0; i-- {
		c.undo[i]()
	}
	c.undo = nil
}

func mustAlloc(t *testing.T, tab *sessions, s *session, c *call, n uint64) uint64 {
	t.Helper()
	b, err := tab.alloc(context.Background(), c, device{name: "0"}, n)
	if err != nil {
		t.Fatal(err)
	}
	id, err := tab.publish(s, b)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// heldBy reports the bytes the identity key holds.
func heldBy(tab *sessions, key string) int64 {
	q := tab.quotas
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.held[key]
}

// buffered is what n bytes of buffer count against quotas.
func buffered(n int64) int64 { return n + bufferOverhead }

// A buffer freed (or whose session ends) while a transfer uses it is
// released when the transfer ends, and its quota with it.
func TestSessionsPinnedFree(t *testing.T) {
	for _, end := range []string{"free", "close session", "stop"} {
		t.Run(end, func(t *testing.T) {
			tab, mem := testTable(t)
			c := testCall("laptop", 1000)
			s, err := tab.open(c.who, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			id := mustAlloc(t, tab, s, c, 60)
			reader := testCall("laptop", 1000)
			if _, err := tab.pin(reader, s, id); err != nil {
				t.Fatal(err)
			}
			switch end {
			case "free":
				err = tab.remove(s, id)
			case "close session":
				err = tab.end("id-laptop", s.id)
			case "stop":
				tab.close()
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tab.pin(testCall("laptop", 0), s, id); status.Code(err) != codes.NotFound {
				t.Errorf("pin after %s: %v; want NotFound", end, err)
			}
			if mem.count() != 1 || heldBy(tab, "id-laptop") != buffered(60) {
				t.Fatalf("while pinned: %d live, %d held; want the buffer kept", mem.count(), heldBy(tab, "id-laptop"))
			}
			finish(reader)
			finish(reader) // twice is harmless
			if mem.count() != 0 || heldBy(tab, "id-laptop") != 0 {
				t.Fatalf("after unpin: %d live, %d held; want none", mem.count(), heldBy(tab, "id-laptop"))
			}
		})
	}
}

func TestSessionsPublishAfterEnd(t *testing.T) {
	tab, mem := testTable(t)
	c := testCall("laptop", 0)
	s, _ := tab.open(c.who, 0, nil)
	b, err := tab.alloc(context.Background(), c, device{name: "0"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := tab.end("id-laptop", s.id); err != nil {
		t.Fatal(err)
	}
	if _, err := tab.publish(s, b); status.Code(err) != codes.NotFound {
		t.Fatalf("publish into an ended session: %v; want NotFound", err)
	}
	if mem.count() != 0 {
		t.Fatal("the unpublished buffer was not freed")
	}
}

// expire is driven with explicit times: no waiting.
func TestSessionsExpire(t *testing.T) {
	tab, mem := testTable(t)
	c := testCall("laptop", 0)
	short, _ := tab.open(c.who, time.Second, nil)
	long, _ := tab.open(c.who, time.Hour, nil)
	mustAlloc(t, tab, short, c, 1)
	mustAlloc(t, tab, long, c, 1)
	now := time.Now()

	// In use: not reaped, however long.
	user := testCall("laptop", 0)
	if _, err := tab.use(user, short.id); err != nil {
		t.Fatal(err)
	}
	if next := tab.expire(now.Add(time.Minute)); next.IsZero() {
		t.Error("no next deadline with the long session open")
	}
	if n, _ := tab.count(); n != 2 {
		t.Fatalf("%d sessions after expire with one in use; want 2", n)
	}
	finish(user)
	next := tab.expire(time.Now().Add(2 * time.Second))
	if n, b := tab.count(); n != 1 || b != 1 || mem.count() != 1 {
		t.Fatalf("after the short idle: %d sessions, %d buffers, %d live; want 1, 1, 1", n, b, mem.count())
	}
	if want := long.last.Add(time.Hour); !next.Equal(want) {
		t.Errorf("next deadline %v; want the long session's %v", next, want)
	}
	if _, err := tab.use(testCall("laptop", 0), short.id); status.Code(err) != codes.NotFound {
		t.Errorf("use of the expired session: %v; want NotFound", err)
	}
}

func TestSessionsOwnerAndLimits(t *testing.T) {
	tab, _ := testTable(t)
	c := testCall("laptop", buffered(100))
	other := testCall("other", 0)
	s, _ := tab.open(c.who, 0, nil)
	mustAlloc(t, tab, s, c, 100)
	if _, err := tab.use(other, s.id); status.Code(err) != codes.NotFound {
		t.Errorf("another owner's session: %v; want NotFound", err)
	}
	if _, err := tab.alloc(context.Background(), c, device{name: "0"}, 1); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("alloc over max_memory: %v; want ResourceExhausted", err)
	}
	for i := 1; i < maxSessionsPerCaller; i++ {
		if _, err := tab.open(c.who, 0, nil); err != nil {
			t.Fatalf("session %d: %v", i+1, err)
		}
	}
	if _, err := tab.open(c.who, 0, nil); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("session over the cap: %v; want ResourceExhausted", err)
	}
	if _, err := tab.open(other.who, 0, nil); err != nil {
		t.Errorf("another caller is not limited by laptop's sessions: %v", err)
	}
	tab.close()
	if _, err := tab.open(other.who, 0, nil); status.Code(err) != codes.Unavailable {
		t.Errorf("open after close: %v; want Unavailable", err)
	}
}
