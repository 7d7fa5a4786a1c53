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

Exit status: 0 when every result checks out, 1 otherwise.
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


def check_matmul(stub, size, timeout):
    # The worked example first: [[1 2 3] [4 5 6]] × [[7 8] [9 10] [11 12]].
    res = stub.Compute(pb.ComputeRequest(
        kernel="matrix_mul",
        args=[pb.Arg(tensor=tensor([2, 3], [1, 2, 3, 4, 5, 6])),
              pb.Arg(tensor=tensor([3, 2], [7, 8, 9, 10, 11, 12]))],
    ), timeout=timeout)
    out = res.outputs[0]
    if list(out.shape) != [2, 2] or floats(out) != [58, 64, 139, 154]:
        print("matrix_mul 2x3 @ 3x2: got shape %s %s; want [2, 2] [58, 64, 139, 154]"
              % (list(out.shape), floats(out)))
        return False
    print("matrix_mul 2x3 @ 3x2 = %s ok" % floats(out))

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
        print("matrix_mul %dx%d: result differs from the local computation" % (size, size))
        return False
    print("matrix_mul %dx%d ok (%.3f ms on the host)" % (size, size, res.compute_nanos / 1e6))
    return True


def unimplemented(err):
    return isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNIMPLEMENTED


def check_buffers(stub, timeout):
    """Upload a vector into a GPU buffer, read it back, compute on it."""
    try:
        session = stub.OpenSession(pb.OpenSessionRequest(), timeout=timeout).session
    except grpc.RpcError as err:
        if unimplemented(err):
            print("buffers: skipped, the host does not support sessions yet (%s)" % err.details())
            return True
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
                return True
            raise
        if wrote.bytes != len(data):
            print("buffers: Write reports %d bytes; want %d" % (wrote.bytes, len(data)))
            return False
        back = b"".join(r.data for r in stub.Read(
            pb.ReadRequest(session=session, buffer=wrote.buffer, chunk_bytes=1500), timeout=timeout))
        if back != data:
            print("buffers: read back %d bytes that differ from the %d uploaded" % (len(back), len(data)))
            return False
        print("buffers: uploaded and read back %d bytes in buffer %d ok" % (len(data), wrote.buffer))

        try:
            res = stub.Compute(pb.ComputeRequest(
                kernel="relu", session=session,
                args=[pb.Arg(buffer=pb.BufferRef(id=wrote.buffer, dtype=pb.DTYPE_FLOAT32, shape=[len(values)]))],
            ), timeout=timeout)
        except grpc.RpcError as err:
            if unimplemented(err):
                print("buffers: compute on a resident buffer skipped (%s)" % err.details())
            else:
                raise
        else:
            want = [max(v, 0.0) for v in values]
            if floats(res.outputs[0]) != want:
                print("buffers: relu of the resident buffer is wrong")
                return False
            print("buffers: relu on the resident buffer ok")
        stub.Free(pb.FreeRequest(session=session, buffer=wrote.buffer), timeout=timeout)
        return True
    finally:
        try:
            stub.CloseSession(pb.CloseSessionRequest(session=session), timeout=timeout)
        except grpc.RpcError:
            pass


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="localhost:50051",
                   help="the gpumesh forwarder (default localhost:50051)")
    p.add_argument("--size", type=int, default=32, help="side of the random matrices")
    p.add_argument("--timeout", type=float, default=30, help="seconds per call")
    args = p.parse_args()

    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.GPUStub(channel)
        try:
            dev = stub.Devices(pb.DevicesRequest(), timeout=args.timeout)
            print("host %s, backend %s, %d GPU(s); the host sees me as %s"
                  % (dev.host, dev.backend, len(dev.devices), dev.caller))
            ok = check_matmul(stub, args.size, args.timeout)
            ok = check_buffers(stub, args.timeout) and ok
        except grpc.RpcError as err:
            print("gpumesh call failed: %s: %s" % (err.code().name, err.details()), file=sys.stderr)
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                print("is `gpumesh up --forward %s=GPU-HOST` running, and the host up?" % args.target,
                      file=sys.stderr)
            return 1
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
