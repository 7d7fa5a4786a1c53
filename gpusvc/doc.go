// Package gpusvc is gpumesh's compute service: the gRPC API (gpumeshpb),
// the server that attributes every call to the caller's overlay identity
// and enforces the policy's decision and quotas, the client, and the
// Backend interface that the CPU backend (gpusvc/cpu) and the CUDA worker
// (gpusvc/cuda) implement.
//
// # The order of a call
//
// Every call, whatever its method, goes through the same steps, in this
// order, kept by construction: gRPC's handshake and tap handle, one unary
// and one stream interceptor (pipeline.go), and the handlers' shared
// helpers (call.resolveGPU, Server.authorize, sessions.alloc):
//
//  1. Identify. The handshake asks the overlay who holds the connection's
//     remote address (WhoIs; never anything the request says) and caches
//     the answer with its policy subject prepared, asking again after
//     Config.IdentityTTL. From a Kubernetes agent the policy trusts, and
//     only from one, it then reads a bounded preface, with a deadline,
//     naming the pod the connection is for (pods.go, gpusvc/preface). Before any message of a stream is read, the tap
//     handle refuses a peer the policy gives no right at all
//     (policy.Admits) and one over its caps on connections and open
//     streams. The interceptor begins the call with the caller it names.
//  2. Bound every number and string the request carries before anything
//     is allocated for it: names (maxNameBytes), argument counts, shapes
//     (rank, dimensions, overflow-checked products), output sizes, chunk
//     sizes, buffer and module counts.
//  3. Resolve names to canonical ones: a GPU named by index in any
//     spelling, by UUID or not at all is one device, index and UUID; a
//     session or buffer ID is the caller's own or does not exist.
//  4. Authorize: one policy decision per call, on the canonical request.
//     The same decision sets the connection's QoS class (ClassSetter),
//     takes the quota slot (max_concurrent, rate, per identity and rule)
//     and is recorded.
//  5. Allocate, against the caller's max_memory and the host's budget
//     (Config.MaxMemory), and pin the buffers the call reads.
//  6. Run, with a context that ends with the call.
//  7. Record: the interceptor reports every call once to Config.OnCall,
//     however it ended (refused, malformed, not found, panicked), with its
//     caller; calls refused before they were read are recorded too, at a
//     bounded rate per caller (CallRecord.Suppressed counts the rest).
//
// gpusvc imports overlay only for its Identity type and policy for its
// decisions; it never imports a GPU library (those live in worker binaries).
package gpusvc
