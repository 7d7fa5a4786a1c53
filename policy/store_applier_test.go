package policy

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestStoreApplierVeto: a reload that an applier refuses keeps the old
// policy in force, returns an error naming the applier, rolls back the
// appliers that prepared (latest first), commits none, and leaves Updated
// open; an accepted reload commits every applier, in order, with the new
// policy already in force; a removed applier is asked no more.
func TestStoreApplierVeto(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.hcl")
	writeFile(t, path, openPolicy)
	log := newLog()
	st, err := NewStore(path, log.logf)
	if err != nil {
		t.Fatal(err)
	}
	first := st.Current()

	var events []string
	refuse := true
	record := func(name string) Applier {
		return func(old, next *Policy) (func(), func(), error) {
			if old != st.Current() || next == old {
				t.Errorf("%s asked with old %s, next %s; in force %s", name, old.Digest(), next.Digest(), st.Current().Digest())
			}
			if name == "qos" && refuse {
				events = append(events, name+" refuses")
				return nil, nil, errors.New("class \"video\" cannot be shaped")
			}
			events = append(events, name+" prepares")
			commit := func() {
				if st.Current() != next {
					t.Errorf("%s committed before the new policy was in force", name)
				}
				events = append(events, name+" commits")
			}
			return commit, func() { events = append(events, name+" rolls back") }, nil
		}
	}
	cur, removeA := st.AddApplier("audit", record("audit"))
	if cur != first {
		t.Errorf("AddApplier returned %s, want the policy in force %s", cur.Digest(), first.Digest())
	}
	_, removeB := st.AddApplier("routes", record("routes"))
	_, removeQ := st.AddApplier("qos", record("qos"))
	defer removeQ()

	updated := st.Updated()
	writeFile(t, path, tightPolicy)
	err = st.Reload()
	var re *RefusedError
	if !errors.As(err, &re) || re.Applier != "qos" || !strings.Contains(err.Error(), `qos refused the new policy: class "video" cannot be shaped`) {
		t.Fatalf("Reload = %v, want a *RefusedError from qos", err)
	}
	if st.Current() != first {
		t.Error("a refused policy was put in force")
	}
	select {
	case <-updated:
		t.Error("Updated closed by a refused reload")
	default:
	}
	if want := []string{"audit prepares", "routes prepares", "qos refuses", "routes rolls back", "audit rolls back"}; !slices.Equal(events, want) {
		t.Errorf("events %q, want %q", events, want)
	}
	log.waitLine(t, "rejected")

	events, refuse = nil, false
	if err := st.Reload(); err != nil {
		t.Fatal(err)
	}
	second := st.Current()
	if second == first || second.Evaluate(Subject{Node: "laptop"}, relu).Allow {
		t.Error("the accepted policy is not in force")
	}
	select {
	case <-updated:
	default:
		t.Error("Updated not closed by an accepted reload")
	}
	if want := []string{"audit prepares", "routes prepares", "qos prepares", "audit commits", "routes commits", "qos commits"}; !slices.Equal(events, want) {
		t.Errorf("events %q, want %q", events, want)
	}

	removeA()
	removeA() // twice is harmless
	removeB()
	events = nil
	writeFile(t, path, openPolicy)
	if err := st.Reload(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"qos prepares", "qos commits"}; !slices.Equal(events, want) {
		t.Errorf("after removing two appliers: events %q, want %q", events, want)
	}
}
