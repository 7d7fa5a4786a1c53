package wg

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/overlay/wg/wgconfig"
)

// member is one node of a test mesh: its name, key and overlay address.
type member struct {
	name string
	priv wgconfig.Key
	addr string // overlay IPv4 address, no prefix length
}

func newMember(t testing.TB, name, addr string) member {
	t.Helper()
	k, err := wgconfig.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return member{name: name, priv: k, addr: addr}
}

// peerOf describes m as a [Peer] of another node; endpoint may be "".
type peerOf struct {
	m         member
	endpoint  string
	keepalive int
}

// conf renders self's wg-quick file listing peers.
func conf(self member, listenPort int, peers ...peerOf) string {
	return confMTU(self, listenPort, 0, peers...)
}

// confMTU is conf with an MTU line, if mtu is not 0.
func confMTU(self member, listenPort, mtu int, peers ...peerOf) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[Interface]\n# Name = %s\nPrivateKey = %s\nAddress = %s/24\nListenPort = %d\n",
		self.name, self.priv, self.addr, listenPort)
	if mtu != 0 {
		fmt.Fprintf(&b, "MTU = %d\n", mtu)
	}
	for _, p := range peers {
		fmt.Fprintf(&b, "\n[Peer]\n# Name = %s\nPublicKey = %s\nAllowedIPs = %s/32\n", p.m.name, p.m.priv.PublicKey(), p.m.addr)
		if p.endpoint != "" {
			fmt.Fprintf(&b, "Endpoint = %s\n", p.endpoint)
		}
		if p.keepalive > 0 {
			fmt.Fprintf(&b, "PersistentKeepalive = %d\n", p.keepalive)
		}
	}
	return b.String()
}

func mustParse(t testing.TB, name, text string) *wgconfig.File {
	t.Helper()
	f, err := wgconfig.Parse(name, []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// startNode creates and brings up a node; the test closes it.
func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// echoServer accepts on ln and echoes each connection until ln closes. It
// reports each accepted connection's remote address on accepted, if not
// nil. The test's cleanup closes ln and waits for the goroutines.
func echoServer(t testing.TB, ln net.Listener, accepted chan<- string) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			if accepted != nil {
				accepted <- c.RemoteAddr().String()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// echoOnce writes msg on c and checks it comes back.
func echoOnce(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
	c.SetDeadline(time.Time{})
}
