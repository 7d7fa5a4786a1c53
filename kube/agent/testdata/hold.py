#!/usr/bin/env python3
"""A pod's process in the kube tests. It reaches its GPU only through
GPUMESH_TARGET and GPUMESH_GPU, as the agent set them: it checks a matrix
product, keeps a resident buffer on the GPU host, prints "holding", and
waits for its stdin to close; then it calls once more and prints how that
went ("after: OK" or "after: UNAVAILABLE").

    hold.py EXAMPLES_DIR    (examples/python: compute.py and the stubs)
"""

import os
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402

import gpumesh_pb2 as pb  # noqa: E402
import gpumesh_pb2_grpc as pb_grpc  # noqa: E402
from compute import Report, check_matmul  # noqa: E402


def main():
    target = os.environ["GPUMESH_TARGET"]
    gpu = os.environ["GPUMESH_GPU"]
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GPUStub(channel)
        dev = stub.Devices(pb.DevicesRequest(), timeout=60)
        print("host %s, backend %s; the host sees me as %s" % (dev.host, dev.backend, dev.caller))
        report = Report()
        check_matmul(stub, 8, 60, report)
        if report.passed == 0 or report.failed or report.refused:
            return 1
        session = stub.OpenSession(pb.OpenSessionRequest(), timeout=60).session
        data = bytes(range(256)) * 1024  # 256 KiB
        wrote = stub.Write(iter([pb.WriteRequest(session=session, alloc_bytes=len(data), gpu=gpu, data=data)]), timeout=60)
        print("holding %d bytes in buffer %d of session %d" % (wrote.bytes, wrote.buffer, session), flush=True)
        sys.stdin.read()
        try:
            stub.Devices(pb.DevicesRequest(), timeout=10)
            print("after: OK", flush=True)
        except grpc.RpcError as err:
            print("after: %s" % err.code().name, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
