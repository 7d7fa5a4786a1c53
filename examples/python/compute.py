#!/usr/bin/env python3
"""Run a matrix multiply on a gpumesh GPU host from Python.

On the cloud machine, `gpumesh up --forward localhost:50051=gpu-host` joins
the tailnet and forwards localhost:50051 to the GPU host; this script then
talks plain gRPC to localhost, as any Python program would. The GPU host
sees the call come from the cloud node's tailnet identity.

    python3 compute.py                       # localhost:50051
    python3 compute.py --target 127.0.0.1:6000 --size 64

It needs only Debian's python3-grpcio and python3-protobuf (no numpy):
tensors are packed as little-endian float32 with `struct`.

What the host's policy does not allow this node (asked with Explain before
each kernel, or refused with PERMISSION_DENIED) is reported with the
policy's reason and skipped: under a least-privilege policy the script
checks what it may do and says what it may not.

Exit status: 0 when every check the policy allows ran and checked out (at
least one); 1 when a result was wrong, a call failed otherwise, or the
policy allowed nothing.
"""

import argparse
import random
import struct
import sys

import grpc

import gpumesh_pb2 as pb
import gpumesh_pb2_grpc as pb_grpc


def tensor(shape, values):
    """A float32 tensor: row-major, little-endian."""
    return pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=shape,
                     data=struct.pack("<%df" % len(values), *values))


def floats(t):
    """The values of a float32 tensor."""
    return list(struct.unpack("<%df" % (len(t.data) // 4), t.data))


def matmul(a, b, n, k, m):
    """a (n×k) times b (k×m), in plain Python, to check the host's answer."""
    out = [0.0] * (n * m)
    for i in range(n):
        for p in range(k):
            x = a[i * k + p]
            if x == 0.0:
                continue
            row = p * m
            for j in range(m):
                out[i * m + j] += x * b[row + j]
    return out


def close(got, want, tol=1e-3):
    return len(got) == len(want) and all(
        abs(g - w) <= tol * max(1.0, abs(w)) for g, w in zip(got, want))


class Report:
    """Counts the checks that passed, failed, and were refused by the policy."""

    def __init__(self):
        self.passed = self.failed = self.refused = 0

    def ok(self, line):
        print(line)
        self.passed += 1

    def fail(self, line):
        print(line)
        self.failed += 1

    def refuse(self, what, reason):
        print("%s: refused by the host's policy: %s" % (what, reason))
        self.refused += 1


def denied(err):
    return isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.PERMISSION_DENIED


def unimplemented(err):
    return isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNIMPLEMENTED


def refusal(stub, kernel, timeout):
    """The policy's reason when it does not allow this node kernel, else None.
    Asking first keeps refused calls out of the host's audit log."""
    try:
        ex = stub.Explain(pb.ExplainRequest(kernel=kernel), timeout=timeout)
    except grpc.RpcError as err:
        if unimplemented(err):
            return None  # an older host: just try
        raise
    return None if ex.allow else ex.reason


def check_matmul(stub, size, timeout, report):
    reason = refusal(stub, "matrix_mul", timeout)
    if reason is not None:
        report.refuse("matrix_mul", reason)
        return
    try:
        # The worked example first: [[1 2 3] [4 5 6]] × [[7 8] [9 10] [11 12]].
        res = stub.Compute(pb.ComputeRequest(
            kernel="matrix_mul",
            args=[pb.Arg(tensor=tensor([2, 3], [1, 2, 3, 4, 5, 6])),
                  pb.Arg(tensor=tensor([3, 2], [7, 8, 9, 10, 11, 12]))],
        ), timeout=timeout)
    except grpc.RpcError as err:
        if denied(err):
            report.refuse("matrix_mul", err.details())
            return
        raise
    out = res.outputs[0]
    if list(out.shape) != [2, 2] or floats(out) != [58, 64, 139, 154]:
        report.fail("matrix_mul 2x3 @ 3x2: got shape %s %s; want [2, 2] [58, 64, 139, 154]"
                    % (list(out.shape), floats(out)))
        return
    report.ok("matrix_mul 2x3 @ 3x2 = %s ok" % floats(out))

    # Then a random square one, checked against Python's own arithmetic.
    rnd = random.Random(42)
    a = [rnd.uniform(-1, 1) for _ in range(size * size)]
    b = [rnd.uniform(-1, 1) for _ in range(size * size)]
    res = stub.Compute(pb.ComputeRequest(
        kernel="matrix_mul",
        args=[pb.Arg(tensor=tensor([size, size], a)),
              pb.Arg(tensor=tensor([size, size], b))],
    ), timeout=timeout)
    # Compare with the float32-rounded inputs the host saw.
    a32 = floats(tensor([size * size], a))
    b32 = floats(tensor([size * size], b))
    want = matmul(a32, b32, size, size, size)
    if not close(floats(res.outputs[0]), want):
        report.fail("matrix_mul %dx%d: result differs from the local computation" % (size, size))
        return
    report.ok("matrix_mul %dx%d ok (%.3f ms on the host)" % (size, size, res.compute_nanos / 1e6))


def check_buffers(stub, timeout, report):
    """Upload a vector into a GPU buffer, read it back, compute on it."""
    try:
        session = stub.OpenSession(pb.OpenSessionRequest(), timeout=timeout).session
    except grpc.RpcError as err:
        if unimplemented(err):
            print("buffers: skipped, the host does not support sessions yet (%s)" % err.details())
            return
        if denied(err):
            report.refuse("buffers", err.details())
            return
        raise
    try:
        values = [float(i % 7 - 3) for i in range(1024)]
        data = struct.pack("<%df" % len(values), *values)

        def chunks(size=1000):  # odd-sized chunks on purpose
            first = True
            for off in range(0, len(data), size):
                if first:
                    yield pb.WriteRequest(session=session, alloc_bytes=len(data), data=data[off:off + size])
                    first = False
                else:
                    yield pb.WriteRequest(data=data[off:off + size])

        try:
            wrote = stub.Write(chunks(), timeout=timeout)
        except grpc.RpcError as err:
            if unimplemented(err):
                print("buffers: skipped, the host does not support uploads yet (%s)" % err.details())
                return
            raise
        if wrote.bytes != len(data):
            report.fail("buffers: Write reports %d bytes; want %d" % (wrote.bytes, len(data)))
            return
        back = b"".join(r.data for r in stub.Read(
            pb.ReadRequest(session=session, buffer=wrote.buffer, chunk_bytes=1500), timeout=timeout))
        if back != data:
            report.fail("buffers: read back %d bytes that differ from the %d uploaded" % (len(back), len(data)))
            return
        report.ok("buffers: uploaded and read back %d bytes in buffer %d ok" % (len(data), wrote.buffer))

        check_relu(stub, session, wrote.buffer, values, timeout, report)
        stub.Free(pb.FreeRequest(session=session, buffer=wrote.buffer), timeout=timeout)
    finally:
        try:
            stub.CloseSession(pb.CloseSessionRequest(session=session), timeout=timeout)
        except grpc.RpcError:
            pass


def check_relu(stub, session, buffer, values, timeout, report):
    """relu on the resident buffer, if the policy allows relu."""
    what = "buffers: relu on the resident buffer"
    reason = refusal(stub, "relu", timeout)
    if reason is not None:
        report.refuse(what, reason)
        return
    try:
        res = stub.Compute(pb.ComputeRequest(
            kernel="relu", session=session,
            args=[pb.Arg(buffer=pb.BufferRef(id=buffer, dtype=pb.DTYPE_FLOAT32, shape=[len(values)]))],
        ), timeout=timeout)
    except grpc.RpcError as err:
        if unimplemented(err):
            print("%s skipped (%s)" % (what, err.details()))
            return
        if denied(err):
            report.refuse(what, err.details())
            return
        raise
    want = [max(v, 0.0) for v in values]
    if floats(res.outputs[0]) != want:
        report.fail("%s is wrong" % what)
        return
    report.ok("%s ok" % what)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="localhost:50051",
                   help="the gpumesh forwarder (default localhost:50051)")
    p.add_argument("--size", type=int, default=32, help="side of the random matrices")
    p.add_argument("--timeout", type=float, default=30, help="seconds per call")
    args = p.parse_args()

    report = Report()
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.GPUStub(channel)
        try:
            try:
                dev = stub.Devices(pb.DevicesRequest(), timeout=args.timeout)
            except grpc.RpcError as err:
                if not denied(err):
                    raise
                # The host refuses a node its policy names nowhere before
                # reading anything it sends: nothing else can be tried.
                report.refuse("host", err.details())
                print("NOTHING CHECKED: the host's policy allows this node nothing")
                return 1
            print("host %s, backend %s, %d GPU(s); the host sees me as %s"
                  % (dev.host, dev.backend, len(dev.devices), dev.caller))
            check_matmul(stub, args.size, args.timeout, report)
            check_buffers(stub, args.timeout, report)
        except grpc.RpcError as err:
            print("gpumesh call failed: %s: %s" % (err.code().name, err.details()), file=sys.stderr)
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                print("is `gpumesh up --forward %s=GPU-HOST` running, and the host up?" % args.target,
                      file=sys.stderr)
            return 1
    summary = "%d checks passed, %d refused by the host's policy, %d failed" % (
        report.passed, report.refused, report.failed)
    if report.failed:
        print("FAILED: " + summary)
        return 1
    if not report.passed:
        print("NOTHING CHECKED: the host's policy allows this node none of these calls (%s)" % summary)
        return 1
    print("OK: " + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
