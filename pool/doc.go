// Package pool makes many GPU hosts answer to one name. A pool target
// ("tag:gpu", "gpu-a,gpu-b", "*"; see Target) names peers of the overlay
// this process has joined; the pool finds them in the overlay's own peer
// list (overlay.PeerLister), keeps the ones whose compute endpoint answers
// a Devices probe, and places work on them:
//
//   - a stateless call (Compute, MatMul) on the host where it would finish
//     first: among the hosts whose policy allows this caller the kernel
//     (asked with Explain, cached for Config.ExplainTTL, forgotten when a
//     probe sees the host put another policy in force, or when the host
//     refuses a call), the one with the least work queued (this
//     pool's calls in flight there, plus other callers' calls as the host
//     reports them) times its time per call, plus the round trip, a
//     relayed path costing more than a direct one;
//   - a session (OpenSession) on one host for its whole life, with its
//     buffers: its calls never move, and fail with ErrHostLost, naming the
//     host, once that host is lost;
//   - a connection (Dial, for a forwarder) on the host with the fewest of
//     this pool's connections, calls and sessions, so that every call a
//     client makes on that connection, a session's included, stays there.
//
// Hosts come and go with the peer list, without a restart. A host that
// stops answering becomes suspect (no new work) at its first failed probe
// or call, is lost after Config.DownAfter without an answer (its calls and
// connections are ended, its sessions fail), and is probed again every
// Config.RetryInterval.
//
// Failover: a stateless call that fails because its host is unavailable is
// tried once more on another host when the call provably did not run (the
// connection was never established, or the host refused it under its
// policy) or when its kernel is idempotent. Every built-in kernel is a
// pure function of its inputs, so running one twice gives the same result
// and changes nothing on the host but its call log (the host records both
// calls); Config.Idempotent can narrow that. A call that used a session's
// buffers is never retried elsewhere.
//
// pool imports the overlay interface and gpusvc's client, never server,
// policy or backend code.
package pool
