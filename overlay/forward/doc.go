// Package forward is the local forwarder of a cloud node: it listens on
// loopback and carries each TCP connection into the overlay to a named
// host:port, byte for byte. Programs on the machine (a Python gRPC client
// on localhost:50051) reach a GPU host without knowing about the overlay,
// and the host sees this node's overlay identity, because the connection
// it accepts comes from this node.
//
// A forward listens on loopback only; binding any other address must be
// asked for explicitly (Config.AllowNonLoopback), since whoever can reach
// the listener calls the GPU host as this node.
//
// A host that cannot be reached makes new connections fail at once (they
// are reset after Config.DialTimeout), so gRPC clients see Unavailable and
// reconnect by themselves later. A host that vanishes while connections
// are open is found by a probe (a fresh connection every
// Config.ProbeInterval while any are open), and its connections are reset.
//
// forward imports no GPU or policy code: it knows only a dial function.
package forward
