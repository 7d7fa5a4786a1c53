// Package gpumesh is the Go client of a gpumesh GPU host: run kernels on a
// GPU that is served only inside your tailnet.
//
// A GPU host runs `gpumesh serve`; its policy says which tailnet devices
// may use which GPUs and kernels. A client reaches it one of two ways:
//
//   - Through a local forwarder. On the cloud machine, `gpumesh up
//     --forward localhost:50051=gpu-host` joins the tailnet and forwards a
//     loopback port; then
//
//     c, err := gpumesh.Dial(ctx, "localhost:50051")
//
//   - In-process, with the program itself on the tailnet (an overlay from
//     gpumesh/overlay/tsnet):
//
//     c, err := gpumesh.Dial(ctx, "gpu-host", gpumesh.WithOverlay(node))
//
// Either way the host identifies the caller by its tailnet identity (the
// forwarding node's, in the first case), never by anything the client
// claims, and the traffic is encrypted by the tailnet.
//
// With WithOverlay, the target may also name a pool of hosts: "tag:gpu"
// (the peers carrying that tag), "gpu-a,gpu-b" or "*". Each call then goes
// to a host whose policy allows it, the least loaded, and buffers live in
// one session on one host (package pool; Client.Pool for its hosts):
//
//	c, err := gpumesh.Dial(ctx, "tag:gpu", gpumesh.WithOverlay(node))
//
// A Client runs built-in kernels on inline tensors ([Client.Compute],
// [Client.MatMul]) and keeps data resident on the GPU between calls
// ([Client.Alloc], [Client.Write], [Client.Read], [Client.Free], and
// [Buffer] arguments to Compute). Errors are gRPC status errors:
// status.Code(err) is PermissionDenied when the policy refuses the call,
// ResourceExhausted over a quota, InvalidArgument for a malformed call,
// and Unavailable when the host cannot be reached.
//
// The wire API is gpusvc/gpumeshpb (gpumesh.proto); other languages use it
// directly, as examples/python does.
package gpumesh
