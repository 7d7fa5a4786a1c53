package worker

import (
	"fmt"
	"strings"
	"sync"
)

// exitReason describes how a worker ended: its exit status and its last
// line on stderr.
func exitReason(err error, stderr string) string {
	st := "exited"
	if err != nil {
		st = err.Error()
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if last := strings.TrimSpace(lines[len(lines)-1]); last != "" {
		return fmt.Sprintf("%s (%s)", last, st)
	}
	return st
}

// tailWriter keeps the last bytes written to it.
type tailWriter struct {
	mu  sync.Mutex
	max int
	buf []byte // guarded by mu
}

func newTailWriter(n int) *tailWriter { return &tailWriter{max: n} }

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
