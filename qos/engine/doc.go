// Package engine runs a GPU host's quality of service as one part: the
// scheduler built from the policy's classes, the marker of the overlay's
// outer UDP packets, the host shaping (package qos/tc) and its per-peer
// routes, and the class of every live caller connection. All of it
// follows the policy store: a new policy rebuilds the classes, the tc tree
// and the routes and moves each connection to its caller's new class, or
// is refused as a whole when the kernel will not take it.
//
// The engine knows callers as policy subjects and peers by the functions
// its Config is given (overlay.PeerPath is the one overlay type it
// takes), so it imports no GPU or node code; the node converts an overlay
// identity into a subject and hands in its overlay's PeerPaths.
package engine
