package preface

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/overlay"
)

var trainer = &overlay.Pod{Namespace: "ml", ServiceAccount: "trainer", Name: "trainer-0", UID: "0b9c6e2a-5d1e-4f7a-9c3b-2f1e0d9c8b7a", Allocation: "c-0123456789abcdef0123"}

func TestRoundTrip(t *testing.T) {
	for _, p := range []Preface{
		{Op: Connect},
		{Op: Connect, Pod: trainer},
		{Op: Release, Pod: trainer},
		{Op: Connect, Pod: &overlay.Pod{Namespace: "ml", ServiceAccount: "default", UID: "claim-uid"}},
	} {
		b, err := Encode(p)
		if err != nil {
			t.Fatal(err)
		}
		r := bytes.NewReader(append(b, "PRI * HTTP/2.0"...))
		got, err := Read(r)
		if err != nil {
			t.Fatalf("Read(Encode(%+v)): %v", p, err)
		}
		if got.Op != p.Op || (got.Pod == nil) != (p.Pod == nil) || got.Pod != nil && *got.Pod != *p.Pod {
			t.Errorf("round trip %+v = %+v", p, got)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "PRI * HTTP/2.0" {
			t.Errorf("Read consumed %q of what follows the preface", "PRI * HTTP/2.0"[:14-len(rest)])
		}
	}
}

func frame(body string) []byte {
	b := []byte(Magic)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...)
}

// TestRefusals: every malformed preface is refused with ErrInvalid, and a
// length over MaxBody is refused before its body is read.
func TestRefusals(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   []byte
	}{
		{"an HTTP/2 client", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")},
		{"not JSON", frame("{")},
		{"two objects", frame(`{"op":"connect"}{}`)},
		{"unknown field", frame(`{"op":"connect","admin":true}`)},
		{"unknown op", frame(`{"op":"become-root"}`)},
		{"no op", frame(`{}`)},
		{"release without a pod", frame(`{"op":"release"}`)},
		{"half a pod", frame(`{"op":"connect","namespace":"ml"}`)},
		{"upper-case namespace", frame(`{"op":"connect","namespace":"ML","serviceAccount":"a","podUID":"u"}`)},
		{"no UID", frame(`{"op":"connect","namespace":"ml","serviceAccount":"a","pod":"p"}`)},
		{"UID with a slash", frame(`{"op":"connect","namespace":"ml","serviceAccount":"a","podUID":"../x"}`)},
		{"long UID", frame(`{"op":"connect","namespace":"ml","serviceAccount":"a","podUID":"` + strings.Repeat("a", 65) + `"}`)},
		{"control characters", frame("{\"op\":\"connect\",\"namespace\":\"ml\",\"serviceAccount\":\"a\\n\",\"podUID\":\"u\"}")},
	} {
		_, err := Read(bytes.NewReader(tt.in))
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Read = %v; want ErrInvalid", tt.name, err)
		}
	}
	// A length over MaxBody: refused after reading the 15 bytes of magic
	// and length, never waiting for (or holding) the body.
	hdr := binary.BigEndian.AppendUint16([]byte(Magic), MaxBody+1)
	r := &countingReader{r: io.MultiReader(bytes.NewReader(hdr), blockingReader{t})}
	if _, err := Read(r); !errors.Is(err, ErrTooLong) {
		t.Errorf("oversized: %v; want ErrTooLong", err)
	}
	if r.n != len(hdr) {
		t.Errorf("read %d bytes of an oversized preface; want only its %d-byte header", r.n, len(hdr))
	}
	if _, err := Read(bytes.NewReader(frame(`{"op":"connect"`)[:20])); err == nil || errors.Is(err, ErrInvalid) {
		t.Errorf("a cut-short preface: %v; want an I/O error", err)
	}
	if _, err := Encode(Preface{Op: Connect, Pod: &overlay.Pod{Namespace: "ml"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Encode of half a pod: %v", err)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// blockingReader fails the test if anything reads it: the body of an
// oversized preface must never be read.
type blockingReader struct{ t *testing.T }

func (b blockingReader) Read([]byte) (int, error) {
	b.t.Error("the body of an oversized preface was read")
	return 0, io.EOF
}

func TestReply(t *testing.T) {
	var b bytes.Buffer
	if err := WriteReply(&b, nil); err != nil {
		t.Fatal(err)
	}
	if err := ReadReply(&b); err != nil {
		t.Errorf("ok reply: %v", err)
	}
	b.Reset()
	WriteReply(&b, errors.New(strings.Repeat("é", 400)))
	err := ReadReply(&b)
	var ref *Refused
	if !errors.As(err, &ref) || len(ref.Reason) > MaxReply || !strings.HasPrefix(ref.Reason, "éé") {
		t.Errorf("refusal: %v", err)
	}
	for _, bad := range [][]byte{{0, 0, 1}, {2, 0, 0}, {1, 0xff, 0xff}, {1}} {
		if err := ReadReply(bytes.NewReader(bad)); err == nil || errors.As(err, &ref) && bad[0] != 1 {
			t.Errorf("reply %v: %v; want malformed", bad, err)
		}
	}
}

// FuzzRead: whatever bytes a peer sends, Read never panics, never reads
// more than the preface's own bytes, and anything it accepts is valid and
// encodes to the same preface.
func FuzzRead(f *testing.F) {
	for _, p := range []Preface{{Op: Connect}, {Op: Connect, Pod: trainer}, {Op: Release, Pod: trainer}} {
		b, _ := Encode(p)
		f.Add(b)
	}
	f.Add(frame(`{"op":"connect","namespace":"a","serviceAccount":"b","podUID":"c","pod":"d.e"}`))
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		p, err := Read(r)
		if err != nil {
			return
		}
		used := len(in) - r.Len()
		if used > len(Magic)+2+MaxBody {
			t.Fatalf("read %d bytes", used)
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("accepted an invalid preface: %v", err)
		}
		b, err := Encode(p)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Read(bytes.NewReader(b))
		if err != nil || again.Op != p.Op || (again.Pod == nil) != (p.Pod == nil) || p.Pod != nil && *again.Pod != *p.Pod {
			t.Fatalf("re-encoded %+v reads as %+v, %v", p, again, err)
		}
	})
}

// TestHandshake: the agent's side over a real connection pair: an accepted
// preface returns nil and leaves the connection for gRPC; a refusal comes
// back with the host's reason; a host that never answers is given up on
// when the context ends.
func TestHandshake(t *testing.T) {
	host := func(t *testing.T, c net.Conn, refusal error) {
		t.Helper()
		p, err := Read(c)
		if err != nil {
			t.Error(err)
			return
		}
		if p.Pod == nil || *p.Pod != *trainer {
			t.Errorf("the host read %+v; want the trainer's preface", p)
		}
		if err := WriteReply(c, refusal); err != nil {
			t.Error(err)
		}
	}
	connect := Preface{Op: Connect, Pod: trainer}

	t.Run("accepted", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			host(t, b, nil)
			b.Write([]byte("gRPC"))
		}()
		if err := Handshake(t.Context(), a, connect); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(a, got); err != nil || string(got) != "gRPC" {
			t.Errorf("after the handshake read %q, %v; want the host's next bytes", got, err)
		}
		<-done
	})

	t.Run("refused", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			host(t, b, errors.New("not trusted"))
		}()
		var ref *Refused
		if err := Handshake(t.Context(), a, connect); !errors.As(err, &ref) || ref.Reason != "not trusted" {
			t.Errorf("Handshake = %v; want refused: not trusted", err)
		}
		<-done
	})

	t.Run("the context ends", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if _, err := Read(b); err != nil {
				t.Error(err)
			}
			cancel() // and never answer
		}()
		if err := Handshake(ctx, a, connect); err == nil {
			t.Error("Handshake returned nil from a host that never answered")
		}
		<-done
	})
}
