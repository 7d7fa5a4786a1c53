// Package qos is the room for quality of service: traffic classes, the
// DSCP code points that mark them on the wire, an application-level
// scheduler that orders bytes by class before they enter the overlay, the
// root-free marking of this process's own UDP sockets (the overlay's outer
// packets), and the marking of the overlay's TCP connections (the inner
// packets) per class, on kernel sockets and gVisor netstack alike.
//
// A Class here mirrors the policy's class (name, DSCP, priority, optional
// rate and burst); the node converts one into the other, so qos imports no
// policy, overlay or GPU code. Host egress shaping with CAP_NET_ADMIN lives
// in the sub-room qos/tc.
package qos
