package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Parse decodes one log line, strictly: unknown fields are an error.
func Parse(line []byte) (Entry, error) {
	var e Entry
	d := json.NewDecoder(bytes.NewReader(line))
	d.DisallowUnknownFields()
	if err := d.Decode(&e); err != nil {
		return Entry{}, fmt.Errorf("audit: parse line: %w", err)
	}
	if d.More() {
		return Entry{}, errors.New("audit: parse line: more than one JSON value")
	}
	return e, nil
}

// Tail returns the last n lines of the log at path (n <= 0: all of them),
// reaching into the rotated files (path.1, path.2, ...) when the current
// one holds fewer. Lines are returned without their newline, oldest first.
func Tail(path string, n int) ([][]byte, error) {
	files := []string{path}
	for i := 1; ; i++ {
		p := path + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err != nil {
			break
		}
		files = append(files, p)
	}
	var out [][]byte // newest file first while collecting
	for fi, p := range files {
		lines, err := readLines(p)
		if err != nil {
			if fi > 0 && errors.Is(err, os.ErrNotExist) {
				break // rotated away while reading
			}
			return nil, err
		}
		out = append(lines, out...)
		if n > 0 && len(out) >= n {
			return out[len(out)-n:], nil
		}
	}
	return out, nil
}

func readLines(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("audit: read %s: %w", path, err)
	}
	var lines [][]byte
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break // a line being written: not complete yet
		}
		if i > 0 {
			lines = append(lines, b[:i])
		}
		b = b[i+1:]
	}
	return lines, nil
}

// Follow calls fn with every complete line appended to the log at path from
// offset from on (use the file's size to see only new lines), following
// the log across rotations, until ctx ends or fn returns an error. It
// checks for new lines every poll (0 means 250ms).
func Follow(ctx context.Context, path string, from int64, poll time.Duration, fn func(line []byte) error) error {
	if poll <= 0 {
		poll = 250 * time.Millisecond
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit: follow %s: %w", path, err)
	}
	defer func() { f.Close() }()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return fmt.Errorf("audit: follow %s: %w", path, err)
	}
	r := bufio.NewReaderSize(f, 64<<10)
	var partial []byte
	// drain reads the file held to its end, handing complete lines to fn.
	drain := func() error {
		for {
			chunk, err := r.ReadBytes('\n')
			if n := len(chunk); n > 0 && chunk[n-1] == '\n' {
				line := append(partial, chunk[:n-1]...)
				partial = nil
				if len(line) > 0 {
					if err := fn(line); err != nil {
						return err
					}
				}
			} else {
				partial = append(partial, chunk...)
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("audit: follow %s: %w", path, err)
			}
		}
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if err := drain(); err != nil {
			return err
		}
		// Rotated? The path then names a new file. The writer closed the
		// old one before renaming it, so what is left in it is complete:
		// read it, then move on. (Lines are lost only if the log rotates
		// twice between two polls.)
		if rotated(f, path) {
			if nf, err := os.Open(path); err == nil {
				if err := drain(); err != nil {
					nf.Close()
					return err
				}
				f.Close()
				f, partial = nf, nil
				r.Reset(f)
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// rotated reports whether path no longer names the open file f.
func rotated(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	if err != nil {
		return false // between the rename and the new file
	}
	return !os.SameFile(a, b)
}

// Format renders an entry as one human-readable line.
func Format(e Entry) string {
	var b strings.Builder
	b.WriteString(e.Time.Local().Format("2006-01-02 15:04:05.000"))
	fmt.Fprintf(&b, " %-16s %-12s", clean(e.Caller), clean(e.Method))
	what := clean(e.Kernel)
	if what == "" {
		what = "-"
	}
	fmt.Fprintf(&b, " %-12s gpu=%-2s %-5s", what, clean(e.GPU), clean(e.Decision))
	if e.Rule != "" {
		fmt.Fprintf(&b, " rule=%s", clean(e.Rule))
	}
	d := time.Duration(e.DurationMS * float64(time.Millisecond)).Round(time.Microsecond)
	fmt.Fprintf(&b, " %s %v in=%s out=%s", clean(e.Code), d, bytesString(e.BytesIn), bytesString(e.BytesOut))
	if e.Error != "" {
		fmt.Fprintf(&b, " err=%q", e.Error)
	}
	return b.String()
}

// clean makes a field safe to print on one line: control characters
// (a forged line break, terminal escapes) become '?'.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return '?'
		}
		return r
	}, s)
}

func bytesString(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + "B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
