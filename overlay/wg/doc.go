// Package wg is gpumesh's plain WireGuard overlay: a static peer list read
// from a wg-quick style file (package wgconfig), carried by wireguard-go,
// with no control server.
//
// A Node has two data paths behind the one overlay.Overlay interface:
//
//   - ModeNetstack (the zero value): a userspace TCP/IP stack (gVisor)
//     inside the process. It needs no privileges and only the process
//     itself can use the overlay. Its link to wireguard-go moves packets
//     in batches, as a kernel TUN device with offloads does: 64 KiB TCP
//     segments cut to the MTU in gVisor, every queued packet handed over
//     per read, inbound TCP segments coalesced per flow (GRO).
//   - ModeTUN: a kernel TUN interface configured through netlink (addresses,
//     MTU, routes to the peers' AllowedIPs, link up), so that any program on
//     the host can reach peers' overlay addresses. It needs CAP_NET_ADMIN.
//     Close removes the interface; the kernel removes it too if the process
//     dies, because the interface lives only as long as its file descriptor.
//     Up warns when the kernel gives a TUN device without offloads
//     (one packet per read: a fraction of the throughput).
//
// Identity comes from WireGuard's cryptokey routing: wireguard-go accepts a
// decrypted packet only if its source address lies in the sending peer's
// AllowedIPs, so the peer whose AllowedIPs contain a connection's remote
// address (longest prefix, as wireguard-go routes) is the peer that sent it.
// WhoIs reports that peer's name (from "# Name = ..." in the file) and its
// public key.
//
// The outer UDP packets can carry a DSCP (Config.DSCP): the node wraps the
// conn.Bind it gives wireguard-go and sets IP_TOS / IPV6_TCLASS on the
// sockets the bind opens.
//
// Use:
//
//	n, err := wg.New(wg.Config{Path: "wg0.conf", Mode: wg.ModeTUN, DSCP: dscp.AF41, Logf: logf})
//	if err != nil { ... }
//	if err := n.Up(ctx); err != nil { ... }
//	defer n.Close() // also on SIGTERM: Close removes the TUN interface
//	ln, err := n.Listen("tcp", ":443")    // overlay addresses only
//	id, err := n.WhoIs(ctx, conn.RemoteAddr().String())
//
// In ModeTUN, Listen and Dial use the host's kernel stack in the network
// namespace of the calling thread, which outside tests is the process's.
//
// wg imports overlay and wgconfig, never policy, QoS or GPU code.
package wg
