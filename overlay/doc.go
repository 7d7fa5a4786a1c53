// Package overlay is the room for the networks gpumesh runs on: a tailnet,
// as a node of gpumesh's own (overlay/tsnet) or through the system's
// tailscaled (overlay/tailscaled), or a static WireGuard mesh
// (overlay/wg). Each gives the rest of gpumesh the same four things:
// listen on the overlay, dial a peer on it, say who is on the other end
// of a connection, and close.
//
// Identity always comes from the overlay, never from anything a peer claims:
// the tailnet's control plane, or the WireGuard peer whose AllowedIPs contain
// the remote address.
//
// overlay imports no GPU, policy or QoS code.
package overlay
