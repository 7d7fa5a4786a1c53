package audit_test

import (
	"bytes"
	"context"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/audit"
	"github.com/gpumesh/gpumesh/overlay"
)

func record(i int) gpusvc.CallRecord {
	return gpusvc.CallRecord{
		Time:     time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(i) * time.Second),
		Caller:   overlay.Identity{Node: "laptop", FQDN: "laptop.example.ts.net", StableID: "nStable", Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.7")}},
		Method:   "Compute",
		Kernel:   "matrix_mul",
		GPU:      "0",
		BytesIn:  int64(1000 + i),
		BytesOut: 64,
		Duration: 1500 * time.Microsecond,
		Allow:    true,
		Rule:     "laptop",
		Code:     codes.OK,
	}
}

func TestEntryFields(t *testing.T) {
	r := record(0)
	r.Allow, r.Code, r.Err, r.Reason = false, codes.PermissionDenied, "denied by gpu-host's policy", "no rule matches"
	e := audit.EntryOf(r)
	want := audit.Entry{
		Time: r.Time, Caller: "laptop", Node: "laptop", FQDN: "laptop.example.ts.net", StableID: "nStable",
		Addr: "100.64.0.7", Method: "Compute", Kernel: "matrix_mul", GPU: "0", BytesIn: 1000, BytesOut: 64,
		DurationMS: 1.5, Decision: "deny", Rule: "laptop", Reason: "no rule matches", Code: "PermissionDenied",
		Error: "denied by gpu-host's policy",
	}
	if fmt.Sprintf("%+v", e) != fmt.Sprintf("%+v", want) {
		t.Fatalf("EntryOf =\n%+v\nwant\n%+v", e, want)
	}
}

func TestRotationKeepsN(t *testing.T) {
	line := encode(audit.EntryOf(record(0)))
	size := int64(len(line))
	for _, tc := range []struct {
		name      string
		keep      int
		lines     int
		perFile   int
		wantFiles int
	}{
		{"keep 3 of many", 3, 40, 4, 4},
		{"keep 1", 1, 20, 3, 2},
		{"no rotation needed", 3, 3, 4, 1},
		{"keep none", -1, 10, 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.log")
			// Room for perFile lines, not one more (lines differ in length
			// by at most a few digits).
			l, err := audit.Open(path, audit.Options{MaxBytes: size*int64(tc.perFile) + 4, Keep: tc.keep})
			if err != nil {
				t.Fatal(err)
			}
			for i := range tc.lines {
				l.Record(record(i))
			}
			if err := l.Err(); err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("second Close = %v; want net.ErrClosed", err)
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != tc.wantFiles {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Fatalf("files = %v; want %d", names, tc.wantFiles)
			}
			// The newest lines survive, in order, with no gaps: the last
			// (files × perFile) records, the current file possibly short.
			lines, err := audit.Tail(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			last := tc.lines - 1
			for i := len(lines) - 1; i >= 0; i-- {
				e, err := audit.Parse(lines[i])
				if err != nil {
					t.Fatal(err)
				}
				if e.BytesIn != int64(1000+last) {
					t.Fatalf("line %d holds record %d; want %d", i, e.BytesIn-1000, last)
				}
				last--
			}
			for _, e := range ents {
				st, _ := os.Stat(filepath.Join(dir, e.Name()))
				if st.Size() > size*int64(tc.perFile)+4 {
					t.Errorf("%s is %d bytes, over the limit", e.Name(), st.Size())
				}
				if st.Mode().Perm() != 0o600 {
					t.Errorf("%s has mode %v; want 0600", e.Name(), st.Mode().Perm())
				}
			}
			if tc.keep > 0 && tc.lines > tc.perFile*(tc.keep+1) && len(lines) < tc.perFile*tc.keep {
				t.Fatalf("kept %d lines; want at least %d", len(lines), tc.perFile*tc.keep)
			}
		})
	}
}

func encode(e audit.Entry) []byte {
	b, err := stdjson.Marshal(e)
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

func TestConcurrentRecordsAreWholeLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path, audit.Options{MaxBytes: 4096, Keep: 100})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				l.Record(record(g*1000 + i))
			}
		}()
	}
	wg.Wait()
	l.Close()
	lines, err := audit.Tail(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int64]bool{}
	for _, ln := range lines {
		e, err := audit.Parse(ln)
		if err != nil {
			t.Fatalf("%v: %q", err, ln)
		}
		if seen[e.BytesIn] {
			t.Fatalf("record %d twice", e.BytesIn)
		}
		seen[e.BytesIn] = true
	}
	if len(seen) != 400 {
		t.Fatalf("%d records; want 400", len(seen))
	}
}

func TestTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, _ := audit.Open(path, audit.Options{MaxBytes: 1000, Keep: 10})
	for i := range 30 {
		l.Record(record(i))
	}
	l.Close()
	for _, n := range []int{1, 5, 17, 30, 100} {
		lines, err := audit.Tail(path, n)
		if err != nil {
			t.Fatal(err)
		}
		want := min(n, 30)
		if len(lines) != want {
			t.Fatalf("Tail(%d) = %d lines; want %d", n, len(lines), want)
		}
		first, _ := audit.Parse(lines[0])
		if first.BytesIn != int64(1000+30-want) {
			t.Fatalf("Tail(%d) starts at record %d; want %d", n, first.BytesIn-1000, 30-want)
		}
	}
}

func TestFollowAcrossRotation(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path, audit.Options{MaxBytes: 700, Keep: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Record(record(0)) // before following: not seen
	st, _ := os.Stat(path)

	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan int64, 100)
	done := make(chan error, 1)
	go func() {
		done <- audit.Follow(ctx, path, st.Size(), time.Millisecond, func(line []byte) error {
			e, err := audit.Parse(line)
			if err != nil {
				return err
			}
			got <- e.BytesIn - 1000
			return nil
		})
	}()
	// Write one record at a time and wait to see it, so that the log
	// rotates at most once between two polls.
	for i := 1; i <= 12; i++ {
		l.Record(record(i))
		select {
		case n := <-got:
			if n != int64(i) {
				t.Fatalf("followed record %d; want %d", n, i)
			}
		case err := <-done:
			t.Fatalf("Follow ended: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatalf("record %d not followed", i)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".1"); err != nil {
		t.Fatalf("the log never rotated: %v", err)
	}
}

func TestParseStrict(t *testing.T) {
	for _, in := range []string{`{"time":"2025-01-01T00:00:00Z","bogus":1}`, `{} {}`, `not json`} {
		if _, err := audit.Parse([]byte(in)); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
}

func FuzzParse(f *testing.F) {
	line := encode(audit.EntryOf(record(1)))
	f.Add(bytes.TrimSpace(line))
	f.Add([]byte(`{"time":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := audit.Parse(b)
		if err != nil {
			return
		}
		if s := audit.Format(e); strings.ContainsAny(s, "\n\r") {
			t.Fatalf("Format(%+v) = %q: a line break lets a caller forge lines", e, s)
		}
	})
}
