package wan

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// The QUIC prototype: quic-go over the overlay's UDP (tsnet's or the
// WireGuard netstack's ListenPacket), one stream per transfer, speaking
// the raw service. TLS is a self-signed certificate the client does not
// check: the overlay already authenticates both ends.

const quicALPN = "gpumesh-wan-bench"

// quicConfig fits the overlay: packets start at quic-go's minimum (1200
// bytes of UDP payload fit tsnet's 1280-byte MTU), flow-control windows
// may grow past a 1 Gbit/s × 80 ms path's 10 MB.
func quicConfig() *quic.Config {
	return &quic.Config{
		InitialPacketSize:          1200,
		HandshakeIdleTimeout:       30 * time.Second,
		MaxIdleTimeout:             60 * time.Second,
		KeepAlivePeriod:            10 * time.Second,
		MaxStreamReceiveWindow:     32 << 20,
		MaxConnectionReceiveWindow: 64 << 20,
		MaxIncomingStreams:         1000,
	}
}

// quicServer accepts QUIC connections and serves the raw service on each
// of their streams.
type quicServer struct {
	tr *quic.Transport
	ln *quic.Listener
	wg sync.WaitGroup
}

func newQUICServer(pc net.PacketConn) (*quicServer, error) {
	tlsConf, err := selfSigned()
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	ln, err := tr.Listen(tlsConf, quicConfig())
	if err != nil {
		tr.Close()
		return nil, err
	}
	return &quicServer{tr: tr, ln: ln}, nil
}

// serve accepts until ctx ends or the server closes, then waits for its
// connections' goroutines.
func (s *quicServer) serve(ctx context.Context) {
	defer s.wg.Wait()
	for {
		c, err := s.ln.Accept(ctx)
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.CloseWithError(0, "")
			var sw sync.WaitGroup
			defer sw.Wait()
			for {
				st, err := c.AcceptStream(ctx)
				if err != nil {
					return
				}
				sw.Add(1)
				go func() {
					defer sw.Done()
					serveRaw(st)
				}()
			}
		}()
	}
}

func (s *quicServer) close() {
	s.ln.Close()
	s.tr.Close() // closes the connections, ending their AcceptStream
}

// quicStream is a client's stream as a halfCloser.
type quicStream struct{ *quic.Stream }

func (q quicStream) CloseWrite() error { return q.Stream.Close() }
func (q quicStream) Close() error {
	q.CancelRead(0)
	q.CancelWrite(0)
	return nil
}

// quicClient dials QUIC connections to the host over one UDP socket.
type quicClient struct {
	tr  *quic.Transport
	dst net.Addr
}

func (q *quicClient) dial(ctx context.Context) (*quic.Conn, error) {
	return q.tr.Dial(ctx, q.dst, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{quicALPN}}, quicConfig())
}

// selfSigned returns a server TLS configuration with a fresh certificate.
func selfSigned() (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gpu-host"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos: []string{quicALPN}}, nil
}
