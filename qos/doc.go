// Package qos is the room for quality of service: traffic classes, an
// application-level scheduler that orders bytes by class before they enter
// the overlay (its classes replaceable while it runs), a Marker that keeps
// this process's own UDP sockets (the overlay's outer packets) marked with
// a DSCP without privilege, and the marking of the overlay's TCP
// connections (the inner packets) per class, on kernel sockets and gVisor
// netstack alike. Code points and the socket option that carries them are
// package dscp's.
//
// A Class here mirrors the policy's class (name, DSCP, priority, optional
// rate and burst); qos/engine converts one into the other, so qos imports
// no policy, overlay or GPU code. Host egress shaping with CAP_NET_ADMIN
// lives in the sub-room qos/tc; qos/engine runs all of it for a host,
// following the policy.
package qos
