// Package wanlab is an impaired-link lab: two network namespaces, A and B,
// joined through a router namespace R in which every packet between them
// passes through a userspace stage that delays, jitters, drops (randomly or
// in bursts), reorders, duplicates and rate-limits it, deterministically for
// a given seed. Tests and benchmarks put an overlay node in A and another
// in B and measure what a WAN does to them; the overlay's UDP packets take
// the direct path through R, as they would through the internet.
//
// The kernel here has no netem, so the stage is this process: R routes
// everything arriving from A or B into a TUN device, the stage reads each
// packet, decides its fate with a Line (the model of one direction, usable
// on its own with synthetic timestamps) and writes it back into the TUN
// device when it is due, whence R forwards it to its destination.
// Addresses on R itself (a tailnet's control, DERP and STUN servers run
// there) are reached without passing the stage.
//
// Starting a lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for the
// namespaces) and ip(8); New skips a test that has neither. Nothing the lab
// carries leaves the namespaces it created.
//
// wanlab imports no gpumesh package; only tests and benchmarks use it.
package wanlab
