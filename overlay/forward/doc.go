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
// forward imports no GPU or policy code: it knows only a dial function.
package forward
