// Package audit writes the GPU host's audit log: one JSON line per finished
// call, answering "who used my GPU, for what, when". Lines go to a file
// rotated by size, keeping a fixed number of old files (FILE.1 the newest,
// FILE.N the oldest).
//
// A line holds what gpusvc.CallRecord holds and nothing the caller sent:
// no tensor data, no buffer contents, no module source. It imports gpusvc
// for the record type only, and no overlay or network code.
package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
)

// Defaults for Options' zero values.
const (
	DefaultMaxBytes = 100 << 20
	DefaultKeep     = 5
)

// Options tune the log. The zero value works: rotate at 100 MiB, keep 5
// old files.
type Options struct {
	// MaxBytes is the size at which the file is rotated; a line never
	// straddles two files. 0 means DefaultMaxBytes; negative never rotates.
	MaxBytes int64
	// Keep is how many rotated files are kept. 0 means DefaultKeep; a
	// negative value keeps none (the file is truncated on rotation).
	Keep int
	// OnError, if set, hears of write and rotation failures, which Record
	// cannot return. nil drops them; Err reports the first one.
	OnError func(error)
}

// Entry is one line of the log, in JSON. Field names are part of the log's
// format: add fields, never rename them.
type Entry struct {
	Time     time.Time `json:"time"`
	Caller   string    `json:"caller"` // the short node name, or stable ID
	Node     string    `json:"node,omitempty"`
	FQDN     string    `json:"fqdn,omitempty"`
	StableID string    `json:"stable_id,omitempty"`
	User     string    `json:"user,omitempty"`
	Tags     []string  `json:"tags,omitempty"`
	Addr     string    `json:"addr,omitempty"` // the caller's first overlay address
	// Pod is the Kubernetes pod the call came from, through the node
	// above (a trusted agent); absent for other callers.
	Pod        *Pod    `json:"pod,omitempty"`
	Method     string  `json:"method"`
	Kernel     string  `json:"kernel,omitempty"`
	GPU        string  `json:"gpu,omitempty"`
	BytesIn    int64   `json:"bytes_in"`
	BytesOut   int64   `json:"bytes_out"`
	DurationMS float64 `json:"duration_ms"`
	Decision   string  `json:"decision"` // "allow", "deny", or "none": the call ended before the policy was asked, or needs no decision (Free, CloseSession)
	Rule       string  `json:"rule,omitempty"`
	Reason     string  `json:"reason,omitempty"`
	Code       string  `json:"code"` // the gRPC code, "OK" on success
	Error      string  `json:"error,omitempty"`
	// Suppressed counts attempts like this one by the same caller, refused
	// before they were read, that have no line of their own (at most ten
	// such lines a second are written per caller).
	Suppressed int64 `json:"suppressed,omitempty"`
}

// Pod is a caller's Kubernetes pod, as its agent named it.
type Pod struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"service_account"`
	Name           string `json:"name,omitempty"`
	UID            string `json:"uid"`
	Allocation     string `json:"allocation,omitempty"`
}

// EntryOf turns a call record into a log entry.
func EntryOf(r gpusvc.CallRecord) Entry {
	e := Entry{
		Time:       r.Time.UTC(),
		Caller:     r.Caller.String(),
		Node:       r.Caller.Node,
		FQDN:       r.Caller.FQDN,
		StableID:   r.Caller.StableID,
		User:       r.Caller.User,
		Tags:       r.Caller.Tags,
		Method:     r.Method,
		Kernel:     r.Kernel,
		GPU:        r.GPU,
		BytesIn:    r.BytesIn,
		BytesOut:   r.BytesOut,
		DurationMS: float64(r.Duration.Microseconds()) / 1000,
		Decision:   "none",
		Rule:       r.Rule,
		Reason:     r.Reason,
		Code:       r.Code.String(),
		Error:      r.Err,
		Suppressed: r.Suppressed,
	}
	switch {
	case r.Allow:
		e.Decision = "allow"
	case r.Reason != "":
		e.Decision = "deny" // every policy decision carries its reason
	}
	if len(r.Caller.Addrs) > 0 {
		e.Addr = r.Caller.Addrs[0].String()
	}
	if p := r.Caller.Pod; p != nil {
		e.Pod = &Pod{Namespace: p.Namespace, ServiceAccount: p.ServiceAccount, Name: p.Name, UID: p.UID, Allocation: p.Allocation}
	}
	return e
}

// Log is an open audit log. Its methods are safe for concurrent use.
type Log struct {
	path string
	max  int64
	keep int
	onEr func(error)

	mu     sync.Mutex
	f      *os.File // nil once closed; guarded by mu
	size   int64    // bytes in f; guarded by mu
	err    error    // first write or rotation error; guarded by mu
	closed bool     // guarded by mu
}

// Open opens (appending to) or creates the log at path, mode 0600.
func Open(path string, opts Options) (*Log, error) {
	if path == "" {
		return nil, errors.New("audit: a log path is required")
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.Keep == 0 {
		opts.Keep = DefaultKeep
	}
	l := &Log{path: path, max: opts.MaxBytes, keep: max(opts.Keep, 0), onEr: opts.OnError}
	f, size, err := openFile(path)
	if err != nil {
		return nil, err
	}
	l.f, l.size = f, size
	return l, nil
}

func openFile(path string) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("audit: open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("audit: open %s: %w", path, err)
	}
	return f, st.Size(), nil
}

// Path is the current log file's path.
func (l *Log) Path() string { return l.path }

// Record appends r as one line. It has the signature of
// gpusvc.Config.OnCall; failures go to Options.OnError and Err.
func (l *Log) Record(r gpusvc.CallRecord) {
	if err := l.Write(EntryOf(r)); err != nil && !errors.Is(err, net.ErrClosed) {
		l.mu.Lock()
		if l.err == nil {
			l.err = err
		}
		l.mu.Unlock()
		if l.onEr != nil {
			l.onEr(err)
		}
	}
}

// Write appends e as one line, rotating first if the line would take the
// file over MaxBytes. After Close it returns net.ErrClosed.
func (l *Log) Write(e Entry) error {
	line, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("audit: encode: %w", err)
	}
	line = append(line, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return net.ErrClosed
	}
	if l.f == nil {
		// A failed rotation left no file: try again.
		if l.f, l.size, err = openFile(l.path); err != nil {
			return err
		}
	}
	if l.max > 0 && l.size > 0 && l.size+int64(len(line)) > l.max {
		if err := l.rotateLocked(); err != nil {
			return err
		}
	}
	n, err := l.f.Write(line)
	l.size += int64(n)
	if err != nil {
		return fmt.Errorf("audit: write %s: %w", l.path, err)
	}
	return nil
}

// rotateLocked shifts FILE.i to FILE.i+1 (dropping FILE.keep), moves FILE
// to FILE.1 and starts a new FILE.
func (l *Log) rotateLocked() error {
	if err := l.f.Close(); err != nil {
		l.f = nil
		return fmt.Errorf("audit: rotate %s: %w", l.path, err)
	}
	l.f = nil
	if l.keep == 0 {
		if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("audit: rotate %s: %w", l.path, err)
		}
	} else {
		old := func(i int) string { return l.path + "." + strconv.Itoa(i) }
		if err := os.Remove(old(l.keep)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("audit: rotate %s: %w", l.path, err)
		}
		for i := l.keep - 1; i >= 1; i-- {
			if err := os.Rename(old(i), old(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("audit: rotate %s: %w", l.path, err)
			}
		}
		if err := os.Rename(l.path, old(1)); err != nil {
			return fmt.Errorf("audit: rotate %s: %w", l.path, err)
		}
	}
	f, size, err := openFile(l.path)
	if err != nil {
		return err
	}
	l.f, l.size = f, size
	return nil
}

// Err returns the first error Record met, if any.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Sync flushes the file to disk.
func (l *Log) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	return l.f.Sync()
}

// Close closes the file. Records after Close are dropped. A second Close
// returns net.ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return net.ErrClosed
	}
	l.closed = true
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("audit: close %s: %w", l.path, err)
	}
	return nil
}
