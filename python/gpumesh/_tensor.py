"""numpy arrays to and from the wire's Tensor (row-major, little-endian)."""

import numpy as np

from . import gpumesh_pb2 as pb
from .errors import InvalidArgument, Internal

# The wire's dtypes and their numpy twins. numpy has no bfloat16: such
# results come back as their raw uint16 bit patterns.
DTYPES = {
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_FLOAT16: np.dtype(np.float16),
    pb.DTYPE_BFLOAT16: np.dtype(np.uint16),
    pb.DTYPE_INT32: np.dtype(np.int32),
    pb.DTYPE_UINT8: np.dtype(np.uint8),
}

# (kind, itemsize) of a numpy dtype, in any byte order, to the wire's.
_WIRE = {
    ("f", 4): pb.DTYPE_FLOAT32,
    ("f", 2): pb.DTYPE_FLOAT16,
    ("i", 4): pb.DTYPE_INT32,
    ("u", 1): pb.DTYPE_UINT8,
}

# The host takes tensors of 1 to MAX_DIMS dimensions.
MAX_DIMS = 8


def wire_dtype(dtype):
    """The wire DType for a numpy dtype; InvalidArgument if the host has none."""
    dt = np.dtype(dtype)
    w = _WIRE.get((dt.kind, dt.itemsize))
    if w is None:
        raise InvalidArgument(
            "gpumesh: numpy %s arrays have no gpumesh dtype; the host takes float32, float16, int32 "
            "and uint8 (convert with a.astype(numpy.float32))" % dt, sent=False)
    return w


def numpy_dtype(wire):
    """The numpy dtype for a wire DType (DTYPE_UNSPECIFIED is float32)."""
    if wire == pb.DTYPE_UNSPECIFIED:
        return DTYPES[pb.DTYPE_FLOAT32]
    dt = DTYPES.get(wire)
    if dt is None:
        raise Internal("gpumesh: the host sent a tensor of unknown dtype %d" % wire, sent=False)
    return dt


def as_array(x, what):
    """x as an ndarray the host can take. Lists and tuples become float32."""
    if isinstance(x, np.ndarray):
        arr = x
    elif isinstance(x, (list, tuple)):
        try:
            arr = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InvalidArgument("gpumesh: %s: %s" % (what, e), sent=False) from None
    else:
        raise InvalidArgument("gpumesh: %s: %s is neither a numpy array, a list nor a buffer"
                              % (what, type(x).__name__), sent=False)
    wire_dtype(arr.dtype)
    check_shape(arr.shape, what)
    return arr


def check_shape(shape, what):
    if not 1 <= len(shape) <= MAX_DIMS:
        raise InvalidArgument("gpumesh: %s: shape %s: the host takes 1 to %d dimensions%s"
                              % (what, tuple(shape), MAX_DIMS,
                                 " (pass a Python number for a scalar)" if len(shape) == 0 else ""),
                              sent=False)
    if any(d <= 0 for d in shape):
        raise InvalidArgument("gpumesh: %s: shape %s: every dimension must be positive"
                              % (what, tuple(shape)), sent=False)


def little_endian_bytes(arr):
    """arr's elements, row-major and little-endian."""
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def to_pb(arr):
    """An ndarray (already checked by as_array) as a wire Tensor."""
    return pb.Tensor(dtype=wire_dtype(arr.dtype), shape=arr.shape, data=little_endian_bytes(arr))


def from_bytes(data, wire, shape):
    """A writable ndarray of the given wire dtype and shape over data."""
    dt = numpy_dtype(wire)
    n = 1
    for d in shape:
        n *= d
    if len(data) != n * dt.itemsize:
        raise Internal("gpumesh: the host sent %d bytes for a %s tensor of shape %s (want %d)"
                       % (len(data), dt, tuple(shape), n * dt.itemsize), sent=False)
    return np.frombuffer(data, dtype=dt.newbyteorder("<")).astype(dt).reshape(tuple(shape))


def from_pb(t):
    """A wire Tensor as a writable ndarray."""
    return from_bytes(t.data, t.dtype, list(t.shape))
