package tcpcc

import (
	"net"
	"strings"
	"testing"
)

func TestChoose(t *testing.T) {
	if cc, err := Choose(System); cc != "" || err != nil {
		t.Errorf(`System: %q, %v; want the default ("")`, cc, err)
	}
	cc, err := Choose("")
	if wantBBR := Offered("bbr"); err != nil || (cc == "bbr") != wantBBR {
		t.Errorf(`"": %q, %v; BBR offered: %v`, cc, err, wantBBR)
	}
	if _, err := Choose("no-such-cc"); err == nil || !strings.Contains(err.Error(), `"no-such-cc"`) {
		t.Errorf("an unknown congestion control: %v; want an error naming it", err)
	}
}

// TestControl: a dialed connection and one its listener accepts both run
// the congestion control Control set, not the system's default.
func TestControl(t *testing.T) {
	want := Other()
	if want == "" {
		t.Skipf("needs a TCP congestion control other than the default %s that this process may set; the kernel offers %v", Default(), Available())
	}
	lc := net.ListenConfig{Control: Control(want)}
	ln, err := lc.Listen(t.Context(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: Control(want)}
	c, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, conn := range map[string]net.Conn{"dialed": c, "accepted": s} {
		if got, err := Of(conn.(*net.TCPConn)); err != nil || got != want {
			t.Errorf("%s connection runs %q (%v); want %q (the default is %s)", name, got, err, want, Default())
		}
	}
	plain, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if got, _ := Of(plain.(*net.TCPConn)); got != Default() {
		t.Errorf("a connection without Control runs %q; want the default %q", got, Default())
	}
}
