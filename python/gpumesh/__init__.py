"""gpumesh: run GPU kernels on a gpumesh host from Python, on numpy arrays.

    import numpy as np
    import gpumesh

    with gpumesh.connect("localhost:50051") as gm:   # `gpumesh up --forward`
        c = gm.matmul(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32))
        with gm.upload(np.arange(8, dtype=np.float32)) as x:   # resident on the host
            y = gm.relu(x)                                     # computed there
            print(x.download(), y)
                                                                # x freed here

The host sees the call come from your overlay identity, and its policy
decides; refusals raise gpumesh.PermissionDenied with the policy's reason,
quotas gpumesh.ResourceExhausted naming the limit.

dtypes: numpy float32, float16, int32 and uint8 map to the wire's DTYPE_*;
lists become float32; other dtypes (float64, int64) are refused before
sending: convert them with a.astype(numpy.float32).
"""

from ._client import (CHECK_OVER_BYTES, DEFAULT_CHUNK_BYTES, KERNELS, LIMITS_TTL_SECONDS, Buffer,
                      Client, Session, connect)
from ._tensor import DTYPES, MAX_DIMS, wire_dtype
from .errors import (Cancelled, DeadlineExceeded, Error, FailedPrecondition, Internal,
                     InvalidArgument, NotFound, OutOfRange, PermissionDenied, ResourceExhausted,
                     Unauthenticated, Unavailable, Unimplemented)

__version__ = "0.1.0"

__all__ = [
    "connect", "Client", "Session", "Buffer", "KERNELS", "DTYPES", "MAX_DIMS", "wire_dtype",
    "DEFAULT_CHUNK_BYTES", "CHECK_OVER_BYTES", "LIMITS_TTL_SECONDS",
    "Error", "InvalidArgument", "PermissionDenied", "Unauthenticated", "ResourceExhausted",
    "NotFound", "OutOfRange", "Unimplemented", "Unavailable", "DeadlineExceeded", "Cancelled",
    "FailedPrecondition", "Internal",
]
