// Package tcpcc chooses and sets the TCP congestion control of an
// overlay node's kernel sockets. Over a lossy WAN link the congestion
// control decides the throughput: Reno and CUBIC read random loss as
// congestion, BBR does not (e2e/wan/RESULTS.md). A node whose data path
// is the kernel's TCP (overlay/tailscaled, overlay/wg in TUN mode) asks
// for BBR on its own sockets where the kernel offers it, whatever the
// system's default.
package tcpcc

// System is the Choose argument that leaves the system's default.
const System = "system"
