// Package gpusvc is gpumesh's compute service: the gRPC API (gpumeshpb),
// the server that attributes every call to the caller's overlay identity
// and enforces the policy's decision and quotas, the client, and the
// Backend interface that the CPU backend (gpusvc/cpu) and the CUDA worker
// (gpusvc/cuda) implement.
//
// Identity is never taken from the request: the server asks the overlay
// who holds the connection's remote address (WhoIs) when the connection is
// made and again whenever that answer is older than Config.IdentityTTL.
//
// gpusvc imports overlay only for its Identity type and policy for its
// decisions; it never imports a GPU library (those live in worker binaries).
package gpusvc
