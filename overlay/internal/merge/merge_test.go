package merge

import (
	"errors"
	"net"
	"testing"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// accepted dials addr and returns what m accepted for it.
func accepted(t *testing.T, m *Listener, addr string) {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	s, err := m.Accept()
	if err != nil {
		t.Fatalf("Accept for %s: %v", addr, err)
	}
	if s.RemoteAddr().String() != c.LocalAddr().String() {
		t.Errorf("Accept returned %v, want the connection from %v", s.RemoteAddr(), c.LocalAddr())
	}
	s.Close()
}

// TestMergesAndReplaces: connections to each listener come out of one
// Accept; after Replace the old listeners are closed, the new ones
// accept, and the replaced ones' end is no error of the merged listener.
func TestMergesAndReplaces(t *testing.T) {
	a, b, c := listen(t), listen(t), listen(t)
	m := Listeners([]net.Listener{a, b}, nil)
	accepted(t, m, a.Addr().String())
	accepted(t, m, b.Addr().String())

	aAddr := a.Addr().String()
	m.Replace([]net.Listener{c})
	if m.Addr().String() != c.Addr().String() {
		t.Errorf("Addr after Replace: %v, want %v", m.Addr(), c.Addr())
	}
	if conn, err := net.Dial("tcp4", aAddr); err == nil {
		conn.Close()
		t.Errorf("a replaced listener at %s still accepts", aAddr)
	}
	accepted(t, m, c.Addr().String()) // fails if a replaced listener's error came first

	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
	if err := m.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	d := listen(t)
	m.Replace([]net.Listener{d})
	if conn, err := net.Dial("tcp4", d.Addr().String()); err == nil {
		conn.Close()
		t.Error("Replace after Close left its listener open")
	}
}

// TestDrop: a connection drop reports is closed and never returned.
func TestDrop(t *testing.T) {
	a := listen(t)
	m := Listeners([]net.Listener{a}, func(net.Conn) bool { return true })
	defer m.Close()
	c, err := net.Dial("tcp4", a.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a dropped connection stayed open")
	}
}
