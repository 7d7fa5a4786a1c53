package qos

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dscp"
)

// TestMarkerRemarksAfterRebind: a socket reopened on the port is marked by
// the next pass, on demand and periodically.
func TestMarkerRemarksAfterRebind(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().(*net.UDPAddr)
	var lines []string
	m := NewMarker(MarkerConfig{Port: uint16(addr.Port), Interval: time.Millisecond, Logf: func(f string, a ...any) { lines = append(lines, f) }})
	passes := make(chan int, 1)
	m.applied = func(n int) {
		select {
		case passes <- n:
		default:
		}
	}
	if n, err := m.Mark(); n != 1 || err != nil {
		t.Fatalf("Mark = %d, %v", n, err)
	}
	c.Close()
	c, err = net.ListenUDP("udp4", addr) // the "rebind"
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if tos, _ := dscp.TOSOf(c); tos != 0 {
		t.Fatalf("fresh socket already has TOS %#x", tos)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	for n := 0; n != 1; n = <-passes {
	}
	if tos, _ := dscp.TOSOf(c); tos != 0x88 {
		t.Errorf("rebound socket TOS %#x, want 0x88", tos)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != net.ErrClosed {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
	if st := m.Status(); st.Sockets != 1 || st.DSCP != dscp.AF41 || st.Err != nil {
		t.Errorf("status %+v", st)
	}
	if len(lines) == 0 {
		t.Error("nothing logged")
	}
}

// TestMarkerCS0: a Marker told CS0 marks CS0, not its default AF41 (the
// bug behind `serve --dscp CS0` marking AF41), and clears a DSCP the socket
// had, keeping its ECN bits; only dscp.None picks the default.
func TestMarkerCS0(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	if err := dscp.Mark(c, dscp.EF); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		cfg  dscp.Code
		want dscp.Code
	}{{dscp.CS0, dscp.CS0}, {dscp.None, dscp.AF41}, {dscp.CS0, dscp.CS0}} {
		m := NewMarker(MarkerConfig{Port: port, DSCP: tt.cfg})
		if n, err := m.Mark(); n != 1 || err != nil {
			t.Fatalf("Mark(%v) = %d, %v", tt.cfg, n, err)
		}
		if st := m.Status(); st.DSCP != tt.want {
			t.Errorf("Marker{DSCP: %v} reports %v, want %v", tt.cfg, st.DSCP, tt.want)
		}
		if tos, _ := dscp.TOSOf(c); tos != tt.want.TOS(0) {
			t.Errorf("Marker{DSCP: %v}: socket TOS %#x, want %#x (%v)", tt.cfg, tos, tt.want.TOS(0), tt.want)
		}
		m.Close()
	}
}
