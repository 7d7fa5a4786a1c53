// Package preface is the wire format a gpumesh Kubernetes agent writes at
// the start of every connection it opens to a GPU host, before any gRPC
// byte, and the host's one-frame reply. It says whose connection it is:
// the agent's own, or one of its pods', named from the Kubernetes API
// (namespace, service account, name, UID); or it asks the host to release
// a pod (end its sessions and connections at once).
//
// A host reads a preface only from peers its policy trusts as agents
// (policy's kubernetes block); it refuses a trusted peer's connection
// without a valid one, and anyone else's that starts with Magic.
//
//	client: "GPUMESH-K8S/1" | uint16 n (big endian, n <= MaxBody) | n bytes of JSON
//	host:   status byte (0 ok, 1 refused) | uint16 m (m <= MaxReply) | m bytes of text
//
// The JSON object has the fields op ("connect" or "release"), namespace,
// serviceAccount, pod, podUID and allocation; no others. Without podUID
// (and the other pod fields) a connect is the agent's own connection.
//
// preface imports overlay for its Pod type and policy for the rules of
// Kubernetes names, nothing else of gpumesh.
package preface

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// Magic starts every preface.
const Magic = "GPUMESH-K8S/1"

// MaxBody bounds a preface's JSON; a longer one is refused before its
// body is read. MaxReply bounds the host's reply text.
const (
	MaxBody  = 1024
	MaxReply = 512
)

// Op is what a preface asks.
type Op string

const (
	// Connect: the connection carries gRPC for the pod named (or, with
	// no pod, for the agent itself).
	Connect Op = "connect"
	// Release: the pod named is gone; the host ends its sessions (freeing
	// their buffers) and its connections through this agent at once, and
	// refuses that pod from then on. No gRPC follows.
	Release Op = "release"
)

// Preface is one decoded preface.
type Preface struct {
	Op Op
	// Pod is the pod the connection is for; nil for the agent's own.
	Pod *overlay.Pod
}

// Errors a host's Read returns; each wraps ErrInvalid.
var (
	// ErrInvalid: the bytes are not a valid preface.
	ErrInvalid = errors.New("preface: invalid")
	// ErrNoMagic: the connection does not start with Magic.
	ErrNoMagic = fmt.Errorf("%w: the connection does not start with %s", ErrInvalid, Magic)
	// ErrTooLong: the announced body is over MaxBody.
	ErrTooLong = fmt.Errorf("%w: body over %d bytes", ErrInvalid, MaxBody)
)

// wire is the JSON of a preface.
type wire struct {
	Op             Op     `json:"op"`
	Namespace      string `json:"namespace,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
	Pod            string `json:"pod,omitempty"`
	PodUID         string `json:"podUID,omitempty"`
	Allocation     string `json:"allocation,omitempty"`
}

// Validate checks p as a host does.
func (p Preface) Validate() error {
	switch p.Op {
	case Connect:
	case Release:
		if p.Pod == nil {
			return fmt.Errorf("%w: release names no pod", ErrInvalid)
		}
	default:
		return fmt.Errorf("%w: op %q", ErrInvalid, clip(string(p.Op)))
	}
	if p.Pod == nil {
		return nil
	}
	return validPod(p.Pod)
}

func validPod(pod *overlay.Pod) error {
	switch {
	case !policy.ValidK8sLabel(pod.Namespace):
		return fmt.Errorf("%w: namespace %q", ErrInvalid, clip(pod.Namespace))
	case !policy.ValidK8sName(pod.ServiceAccount):
		return fmt.Errorf("%w: service account %q", ErrInvalid, clip(pod.ServiceAccount))
	case pod.Name != "" && !policy.ValidK8sName(pod.Name):
		return fmt.Errorf("%w: pod name %q", ErrInvalid, clip(pod.Name))
	case !validID(pod.UID):
		return fmt.Errorf("%w: pod UID %q", ErrInvalid, clip(pod.UID))
	case pod.Allocation != "" && !validID(pod.Allocation):
		return fmt.Errorf("%w: allocation %q", ErrInvalid, clip(pod.Allocation))
	}
	return nil
}

// Encode returns p's bytes, Magic first.
func Encode(p Preface) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	w := wire{Op: p.Op}
	if pod := p.Pod; pod != nil {
		w.Namespace, w.ServiceAccount, w.Pod, w.PodUID, w.Allocation = pod.Namespace, pod.ServiceAccount, pod.Name, pod.UID, pod.Allocation
	}
	body, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("preface: %w", err)
	}
	if len(body) > MaxBody {
		return nil, ErrTooLong
	}
	b := make([]byte, 0, len(Magic)+2+len(body))
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...), nil
}

// Read reads one preface from r, Magic first, reading exactly its bytes.
func Read(r io.Reader) (Preface, error) {
	var m [len(Magic)]byte
	if _, err := io.ReadFull(r, m[:]); err != nil {
		return Preface{}, fmt.Errorf("preface: %w", err)
	}
	if string(m[:]) != Magic {
		return Preface{}, ErrNoMagic
	}
	return ReadBody(r)
}

// ReadBody reads the rest of a preface whose Magic was read: the length,
// refused before anything more is read when it is over MaxBody, then the
// body, exactly.
func ReadBody(r io.Reader) (Preface, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return Preface{}, fmt.Errorf("preface: %w", err)
	}
	size := int(binary.BigEndian.Uint16(n[:]))
	if size > MaxBody {
		return Preface{}, ErrTooLong
	}
	var buf [MaxBody]byte
	body := buf[:size]
	if _, err := io.ReadFull(r, body); err != nil {
		return Preface{}, fmt.Errorf("preface: %w", err)
	}
	return Decode(body)
}

// Decode decodes and validates a preface's JSON body: one object with
// known fields only.
func Decode(body []byte) (Preface, error) {
	if len(body) > MaxBody {
		return Preface{}, ErrTooLong
	}
	var w wire
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return Preface{}, fmt.Errorf("%w: %s", ErrInvalid, clip(err.Error()))
	}
	if dec.More() {
		return Preface{}, fmt.Errorf("%w: data after the object", ErrInvalid)
	}
	p := Preface{Op: w.Op}
	if w.Namespace != "" || w.ServiceAccount != "" || w.Pod != "" || w.PodUID != "" || w.Allocation != "" {
		p.Pod = &overlay.Pod{Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Name: w.Pod, UID: w.PodUID, Allocation: w.Allocation}
	}
	if err := p.Validate(); err != nil {
		return Preface{}, err
	}
	return p, nil
}

// Reply statuses.
const (
	replyOK      = 0
	replyRefused = 1
)

// WriteReply writes the host's answer to a preface: ok when refusal is
// nil, else its message, cut to MaxReply bytes.
func WriteReply(w io.Writer, refusal error) error {
	b := []byte{replyOK, 0, 0}
	if refusal != nil {
		msg := clipTo(refusal.Error(), MaxReply)
		b = []byte{replyRefused}
		b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
		b = append(b, msg...)
	}
	_, err := w.Write(b)
	return err
}

// Refused is the host's refusal of a preface, with its reason.
type Refused struct{ Reason string }

func (e *Refused) Error() string { return "the GPU host refused the connection: " + e.Reason }

// ReadReply reads the host's answer: nil when it accepted the preface, a
// *Refused with its reason when it refused it.
func ReadReply(r io.Reader) error {
	var h [3]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return fmt.Errorf("preface: reading the host's reply: %w", err)
	}
	n := int(binary.BigEndian.Uint16(h[1:]))
	switch {
	case h[0] == replyOK && n == 0:
		return nil
	case h[0] != replyRefused || n > MaxReply:
		return fmt.Errorf("preface: the host's reply is malformed (status %d, %d bytes)", h[0], n)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return fmt.Errorf("preface: reading the host's reply: %w", err)
	}
	return &Refused{Reason: strings.ToValidUTF8(string(msg), "?")}
}

// validID: a UID or an allocation: 1 to 64 of [a-z0-9-].
func validID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func clip(s string) string { return clipTo(s, 64) }

// clipTo cuts s to at most n bytes of valid UTF-8.
func clipTo(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Handshake is the agent's side: it writes p on conn and reads the host's
// reply, both before ctx's deadline (10s from now when ctx has none) and
// ctx's end. It returns nil when the host accepted p, a *Refused when it
// refused it; an accepted conn is left without a deadline.
func Handshake(ctx context.Context, conn net.Conn, p Preface) error {
	b, err := Encode(p)
	if err != nil {
		return err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(handshakeTimeout)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return fmt.Errorf("preface: %w", err)
	}
	// A context cancelled early ends the wait too.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(b); err != nil {
		return fmt.Errorf("preface: writing to the GPU host: %w", err)
	}
	if err := ReadReply(conn); err != nil {
		return err
	}
	if !stop() {
		return fmt.Errorf("preface: %w", ctx.Err())
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("preface: %w", err)
	}
	return nil
}

// handshakeTimeout bounds a Handshake whose context has no deadline.
const handshakeTimeout = 10 * time.Second
