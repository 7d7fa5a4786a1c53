// Package worker runs gpumesh's GPU work in separate processes: the
// Supervisor starts and watches gpumesh-gpu workers and is the node's
// gpusvc.Backend (and Memory and Modules), forwarding each call to the
// caller's worker; Serve is the worker side of the protocol.
//
// Why processes. gorgonia.org/cu calls os.Exit when cuInit fails, so the
// main binary must not link it; and a CUDA kernel that faults leaves its
// context unusable for the rest of the process. Callers upload their own
// kernels, so a fault must hurt only the caller who launched it.
//
// Isolation unit: one worker per (GPU, caller identity). A caller's fault
// loses that caller's context (its buffers and in-flight calls), nothing of
// anyone else's. One per session would isolate a caller from themselves as
// well, at the price of a CUDA context (hundreds of MiB, ~100 ms) per
// session; one per GPU would let any caller's bad kernel take the GPU from
// all. The caller comes from gpusvc.CallerKey(ctx), set by the server;
// calls that carry none share one worker per GPU. Inside a worker each
// session gets its own CUDA stream (gpusvc.SessionID). Calls on buffers go
// to the worker holding them, and a buffer of another caller's worker is
// answered like an unknown one.
//
// Transport: gRPC over a Unix socket in a 0700 directory, with a small
// internal protocol (workerpb; regenerate with `go generate
// ./gpusvc/worker/workerpb`). gRPC gives deadlines, cancellation and
// concurrent calls for free; with 64 MiB windows and 1 MiB buffers a
// 1 MiB chunk crosses in one write, several GB/s on loopback (see
// BenchmarkTransfer), an order of magnitude above the overlay. The
// supervisor creates the listening socket and hands it to the worker as
// fd 3, so there is no race on the path and a worker that dies leaves
// nobody listening: calls fail at once instead of hanging.
//
// Lifecycle. Workers start lazily, on a caller's first call (Start starts
// one for GPU 0 to learn the devices, and fails with a *StartError naming
// the worker's reason if it cannot: no driver, no device, a binary built
// without CUDA). A worker that dies is not restarted at once but on its
// caller's next call; calls in flight fail with ErrCrashed (Unavailable)
// naming the exit status and the worker's last stderr line, and its
// buffers answer ErrLost (DataLoss). After ErrFault (a kernel fault) the
// worker answers the faulting call (Aborted) and exits. Two crashes in a
// row start a backoff (Config.Backoff, doubling) during which the caller's
// calls fail fast. Modules a caller loaded are kept by the supervisor and
// loaded again into a restarted worker. Idle workers holding no buffer are
// stopped after Config.IdleTimeout. A worker stops when its stdin closes
// (Close, reaping) or, on Linux, when the node dies (Pdeathsig); Close
// waits for every worker to exit.
//
// worker imports no GPU library: gpusvc/cuda is linked only into the
// cuda-tagged gpumesh-gpu binary.
package worker
