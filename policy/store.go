package policy

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Store holds the policy in force and swaps it atomically on reload. A new
// policy replaces the old one only if it parses, its tests pass and every
// applier accepts it (AddApplier); callers that already hold the old
// *Policy keep using it, so a reload never breaks a call in flight.
type Store struct {
	path     string
	logf     func(format string, args ...any)
	debounce time.Duration // how long Watch waits for a burst of file events to settle

	cur atomic.Pointer[Policy] // never nil after NewStore

	mu       sync.Mutex    // guards the fields below and serialises reloads
	updated  chan struct{} // closed when cur changes, then replaced
	lastSeen [32]byte      // hash of the source last loaded or rejected
	appliers []*applier    // in the order added
}

// An Applier keeps state derived from the policy (QoS classes, a tc tree,
// routes) in step with it, or vetoes a policy it cannot follow.
//
// Before a new policy is put in force, the store calls each applier with
// the policy in force (old) and the new one (next), in the order they were
// added. The applier checks that it can follow next, and may prepare what
// it needs, while old stays in force; an error refuses next as a whole.
// On success it returns commit, called once next is in force, and
// rollback, called when a later applier refuses next (to undo what it
// prepared); either may be nil. Commit should not fail: what could fail
// belongs in the prepare step.
//
// Appliers run one reload at a time, under the store's lock: they must not
// call Reload, Watch's reloads or AddApplier themselves.
type Applier func(old, next *Policy) (commit, rollback func(), err error)

// applier is an Applier with the name its refusals carry.
type applier struct {
	name  string
	apply Applier
}

// RefusedError is the error of a reload that an applier refused.
type RefusedError struct {
	Applier string // the name given to AddApplier
	Err     error  // the applier's error
}

func (e *RefusedError) Error() string {
	return "policy: " + e.Applier + " refused the new policy: " + e.Err.Error()
}

func (e *RefusedError) Unwrap() error { return e.Err }

// AddApplier makes every later reload ask a before it puts a policy in
// force; name says who refused in the reload's error ("qos"). It returns
// the policy in force once a is registered, which is the old policy a sees
// in its first call: derived state built from it misses no reload. remove
// unregisters a; it is safe to call more than once.
func (s *Store) AddApplier(name string, a Applier) (current *Policy, remove func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ap := &applier{name: name, apply: a}
	s.appliers = append(s.appliers, ap)
	return s.cur.Load(), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if i := slices.Index(s.appliers, ap); i >= 0 {
			s.appliers = slices.Delete(s.appliers, i, i+1)
		}
	}
}

// applyLocked asks every applier about next; if one refuses, those that
// prepared are rolled back, latest first, and its error returned. On
// success it returns the commits to run once next is in force. s.mu is
// held.
func (s *Store) applyLocked(old, next *Policy) (commits []func(), err error) {
	var rollbacks []func()
	for _, a := range s.appliers {
		commit, rollback, err := a.apply(old, next)
		if err != nil {
			for i := len(rollbacks) - 1; i >= 0; i-- {
				rollbacks[i]()
			}
			return nil, &RefusedError{Applier: a.name, Err: err}
		}
		if commit != nil {
			commits = append(commits, commit)
		}
		if rollback != nil {
			rollbacks = append(rollbacks, rollback)
		}
	}
	return commits, nil
}

// NewStore loads the policy at path with LoadChecked and returns a Store
// holding it; an invalid policy, or one whose tests fail, is an error.
// logf receives one line per reload (nil: discard).
func NewStore(path string, logf func(format string, args ...any)) (*Store, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	s := &Store{path: path, logf: logf, debounce: 100 * time.Millisecond, updated: make(chan struct{})}
	p, sum, err := loadChecked(path)
	if err != nil {
		return nil, err
	}
	s.cur.Store(p)
	s.lastSeen = sum
	return s, nil
}

// Current returns the policy in force. It never blocks and never returns nil.
func (s *Store) Current() *Policy { return s.cur.Load() }

// Path is the file the store loads.
func (s *Store) Path() string { return s.path }

// Updated returns a channel that is closed the next time a new policy is put
// in force.
func (s *Store) Updated() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updated
}

// Reload reads the file again. A valid policy whose tests pass and that
// every applier accepts replaces the one in force; otherwise the error
// (with its diagnostics, or a *RefusedError naming the applier that
// refused) is returned and the old policy stays in force.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloadLocked(false)
}

// reloadLocked loads the file; with onlyIfChanged it does nothing when the
// bytes are those last loaded or rejected (a Watch seeing unrelated events).
func (s *Store) reloadLocked(onlyIfChanged bool) error {
	src, err := os.ReadFile(s.path)
	if err != nil {
		err = fmt.Errorf("policy: read %s: %w", s.path, err)
		if !onlyIfChanged || s.lastSeen != ([32]byte{}) {
			s.logf("policy: reload rejected, keeping %s in force: %v", s.cur.Load().Digest(), err)
		}
		s.lastSeen = [32]byte{}
		return err
	}
	sum := sha256.Sum256(src)
	if onlyIfChanged && sum == s.lastSeen {
		return nil
	}
	s.lastSeen = sum
	p, err := parseChecked(s.path, src)
	if err != nil {
		s.logf("policy: reload rejected, keeping %s in force: %v", s.cur.Load().Digest(), err)
		return err
	}
	old := s.cur.Load()
	commits, err := s.applyLocked(old, p)
	if err != nil {
		s.logf("policy: reload rejected, keeping %s in force: %v", old.Digest(), err)
		return err
	}
	s.cur.Store(p)
	for _, commit := range commits {
		commit()
	}
	close(s.updated)
	s.updated = make(chan struct{})
	s.logf("policy: loaded %s (%s, was %s): %d rules, %d tests pass", s.path, p.Digest(), old.Digest(), len(p.rules), len(p.tests))
	return nil
}

// Watch reloads the policy when its file changes, until ctx is done; it
// then returns nil. It watches the file's directory, not the file, because
// editors and config managers replace files by renaming; bursts of events
// are debounced, and events that leave the bytes unchanged do nothing.
// Watch runs in the caller's goroutine and starts none of its own beyond
// fsnotify's, which it closes before returning.
func (s *Store) Watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", s.path, err)
	}
	defer w.Close()
	dirs := []string{filepath.Dir(s.path)}
	if real, err := filepath.EvalSymlinks(s.path); err == nil && filepath.Dir(real) != dirs[0] {
		dirs = append(dirs, filepath.Dir(real)) // a symlinked file: watch its target too
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			return fmt.Errorf("policy: watch %s: %w", d, err)
		}
	}
	// The file may have changed between NewStore and now.
	s.reloadIfChanged()

	var timer *time.Timer
	var fire <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op == fsnotify.Chmod {
				continue // touch, chmod: the bytes did not change
			}
			if timer == nil {
				timer = time.NewTimer(s.debounce)
			} else {
				timer.Reset(s.debounce)
			}
			fire = timer.C
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			s.logf("policy: watch %s: %v", s.path, err)
		case <-fire:
			fire = nil
			s.reloadIfChanged()
		}
	}
}

func (s *Store) reloadIfChanged() {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.reloadLocked(true) // logged by reloadLocked
}

// loadChecked is LoadChecked also returning the source's hash.
func loadChecked(path string) (*Policy, [32]byte, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, [32]byte{}, fmt.Errorf("policy: read %s: %w", path, err)
	}
	p, err := parseChecked(path, src)
	return p, sha256.Sum256(src), err
}

func parseChecked(path string, src []byte) (*Policy, error) {
	p, err := Parse(path, src)
	if err != nil {
		return nil, err
	}
	if err := checkTests(p); err != nil {
		return nil, err
	}
	return p, nil
}
