"""The client: connect, kernels on numpy arrays, sessions and buffers."""

import math
import threading
import time

import grpc
import numpy as np

from . import _tensor
from . import errors
from . import gpumesh_pb2 as pb
from . import gpumesh_pb2_grpc as pb_grpc

# The built-in kernels, by the host's name, and the client's method for each.
KERNELS = {
    "matrix_mul": "matmul",
    "reduce_sum": "reduce_sum",
    "relu": "relu",
    "saxpy": "saxpy",
    "softmax": "softmax",
    "transpose": "transpose",
}

# Write chunks, unless the caller's max_request is smaller.
DEFAULT_CHUNK_BYTES = 1 << 20

# A request larger than this is checked against the caller's max_request
# (from the host's Explain) before it is sent; smaller ones are sent as they
# are and, if over the limit, refused by the host.
CHECK_OVER_BYTES = 64 << 10

# How long the caller's limits, as Explain told them, are trusted. The host's
# policy may be reloaded at any time; the host's own check is what counts.
LIMITS_TTL_SECONDS = 5.0


def connect(target="localhost:50051", *, timeout=60.0, options=()):
    """A Client of the gpumesh host behind target.

    target is usually the forwarder of `gpumesh up --forward
    localhost:50051=GPU-HOST`. timeout is the default per call, in seconds.
    options are extra grpc channel options.
    """
    return Client(target, timeout=timeout, options=options)


class Client:
    """A connection to one gpumesh host. Use it as a context manager, or
    call close(): that also closes the default session (see upload())."""

    def __init__(self, target, *, timeout=60.0, options=()):
        opts = [
            # Results can be large; the host caps what it accepts.
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ] + list(options)
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=opts)
        # stub is the raw gpumesh.v1.GPU stub, for what this client does not wrap.
        self.stub = pb_grpc.GPUStub(self._channel)
        self._mu = threading.Lock()
        self._limits = {}  # (kind, kernel, gpu) -> (expiry, ExplainResponse or None); guarded by _mu
        self._session = None  # the default session; guarded by _mu
        self._closed = False  # guarded by _mu

    # --- lifecycle -----------------------------------------------------------

    def close(self):
        """Close the default session (freeing its buffers) and the channel."""
        with self._mu:
            if self._closed:
                return
            self._closed = True
            session, self._session = self._session, None
        try:
            if session is not None:
                session.close()
        except errors.Error:
            pass  # the host frees it anyway when the connection goes
        finally:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- plumbing ------------------------------------------------------------

    def _rpc(self, method, request, timeout=None):
        try:
            return getattr(self.stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise errors.from_rpc_error(err, method) from None

    def _explain_cached(self, kernel, gpu):
        """The host's Explain for kernel on gpu, cached for LIMITS_TTL_SECONDS;
        None when the host has no Explain."""
        key = ("kernel", kernel, gpu or "")
        now = time.monotonic()
        with self._mu:
            hit = self._limits.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            ex = self.explain(kernel, gpu=gpu)
        except errors.Unimplemented:
            ex = None
        with self._mu:
            self._limits[key] = (now + LIMITS_TTL_SECONDS, ex)
        return ex

    def _resident_explain(self, gpu):
        """The decision that governs resident buffers on gpu: like the host,
        the first built-in kernel the policy allows there; None if none."""
        for k in sorted(KERNELS):
            ex = self._explain_cached(k, gpu)
            if ex is None:
                return None
            if ex.allow:
                return ex
        return None

    def _check_size(self, request, kernel, gpu):
        n = request.ByteSize()
        if n <= CHECK_OVER_BYTES:
            return
        ex = self._explain_cached(kernel, gpu)
        if ex is None or not ex.allow:
            return  # the host decides, and says why
        limit = ex.limits.max_request_bytes
        if 0 < limit < n:
            raise errors.ResourceExhausted(
                'gpumesh: request of %d bytes is over %s\'s max_request of %d bytes (rule "%s"); '
                "not sent: upload large arrays with upload() and pass the buffers"
                % (n, ex.caller, limit, ex.rule), method="Compute", sent=False)

    def write_chunk_bytes(self, gpu=None):
        """The size of Write chunks for this caller: DEFAULT_CHUNK_BYTES, or
        the caller's max_request when the host's policy sets a smaller one."""
        ex = self._resident_explain(gpu)
        limit = ex.limits.max_request_bytes if ex is not None else 0
        if limit <= 0:
            return DEFAULT_CHUNK_BYTES
        return max(1, min(DEFAULT_CHUNK_BYTES, limit))

    # --- the host ------------------------------------------------------------

    def devices(self):
        """The host's backend and GPUs (a gpumesh.v1.DevicesResponse: host,
        backend, caller, devices, status)."""
        return self._rpc("Devices", pb.DevicesRequest())

    def explain(self, kernel, gpu=None):
        """How the host's policy decides for this caller (a
        gpumesh.v1.ExplainResponse: allow, rule, reason, class, caller,
        limits)."""
        return self._rpc("Explain", pb.ExplainRequest(kernel=kernel, gpu=gpu or ""))

    # --- kernels -------------------------------------------------------------

    def compute(self, kernel, *args, gpu=None, out=None, timeout=None):
        """Run a built-in kernel and return its result as an ndarray.

        Each argument is a numpy array (float32, float16, int32 or uint8), a
        list (taken as float32), a Buffer (resident on the host), or a
        Python number (a scalar). With out=Buffer the result stays on the
        host in that buffer, which is returned.
        """
        req = pb.ComputeRequest(kernel=kernel, gpu=gpu or "")
        session = None

        def use(s):
            nonlocal session
            if session is not None and s is not session:
                raise errors.InvalidArgument(
                    "gpumesh: %s: buffers of two sessions in one call" % kernel, sent=False)
            session = s

        for i, a in enumerate(args):
            what = "%s argument %d" % (kernel, i)
            if isinstance(a, Buffer):
                use(a.session)
                req.args.add(buffer=a._ref(what))
            elif isinstance(a, (bool, np.bool_)):
                raise errors.InvalidArgument("gpumesh: %s: a bool is not a number" % what, sent=False)
            elif isinstance(a, (int, np.integer)):
                req.args.add(int=int(a))
            elif isinstance(a, (float, np.floating)):
                req.args.add(scalar=float(a))
            else:
                req.args.add(tensor=_tensor.to_pb(_tensor.as_array(a, what)))
        if out is not None:
            if not isinstance(out, Buffer):
                raise errors.InvalidArgument("gpumesh: %s: out must be a Buffer" % kernel, sent=False)
            use(out.session)
            out._ref("%s out" % kernel)
            req.out_buffer = out.id
        if session is not None:
            req.session = session.id
        self._check_size(req, kernel, gpu)
        res = self._rpc("Compute", req, timeout)
        if not res.outputs:
            raise errors.Internal("gpumesh: %s: the host returned no output" % kernel, sent=False)
        t = res.outputs[0]
        if out is not None:
            out._retype(_tensor.numpy_dtype(t.dtype), tuple(t.shape))
            return out
        return _tensor.from_pb(t)

    def matmul(self, a, b, *, gpu=None, out=None, timeout=None):
        """C = A·B for A of shape (m, k) and B of shape (k, n) (matrix_mul)."""
        return self.compute("matrix_mul", a, b, gpu=gpu, out=out, timeout=timeout)

    def saxpy(self, alpha, x, y, *, gpu=None, out=None, timeout=None):
        """alpha·x + y for a scalar alpha and arrays x, y of as many elements."""
        return self.compute("saxpy", alpha, x, y, gpu=gpu, out=out, timeout=timeout)

    def reduce_sum(self, x, *, gpu=None, out=None, timeout=None):
        """The sum of all elements of x, as an array of shape (1,)."""
        return self.compute("reduce_sum", x, gpu=gpu, out=out, timeout=timeout)

    def softmax(self, x, *, gpu=None, out=None, timeout=None):
        """softmax over the last axis of x."""
        return self.compute("softmax", x, gpu=gpu, out=out, timeout=timeout)

    def relu(self, x, *, gpu=None, out=None, timeout=None):
        """max(x, 0), element-wise."""
        return self.compute("relu", x, gpu=gpu, out=out, timeout=timeout)

    def transpose(self, a, *, gpu=None, out=None, timeout=None):
        """Aᵀ for a 2-D A of 4-byte elements."""
        return self.compute("transpose", a, gpu=gpu, out=out, timeout=timeout)

    # --- sessions and buffers ------------------------------------------------

    def session(self):
        """A new Session on the host: it owns buffers, and closing it (or
        leaving its with block) frees them all."""
        res = self._rpc("OpenSession", pb.OpenSessionRequest())
        return Session(self, res.session, res.idle_timeout_ms / 1000.0)

    def _default_session(self):
        with self._mu:
            if self._closed:
                raise errors.Cancelled("gpumesh: the client is closed", sent=False)
            cur = self._session
        if cur is not None and not cur.closed:
            return cur
        new = self.session()
        with self._mu:
            cur = self._session
            if cur is None or cur.closed:
                self._session = new
                cur = None
        if cur is not None:  # another thread opened one first
            new.close()
            return cur
        return new

    def upload(self, array, *, gpu=None):
        """Upload an array into a new Buffer of the client's default session
        (opened on first use, closed with the client)."""
        return self._default_session().upload(array, gpu=gpu)

    def alloc(self, shape, dtype=np.float32, *, gpu=None):
        """A new Buffer of the default session for an array of shape and dtype
        (write() or a kernel's out= fills it)."""
        return self._default_session().alloc(shape, dtype, gpu=gpu)


class Session:
    """A session on the host. Its buffers live until freed, until the
    session is closed, or until it idles out (idle_timeout seconds)."""

    def __init__(self, client, session_id, idle_timeout):
        self.client = client
        self.id = session_id
        self.idle_timeout = idle_timeout
        self.closed = False

    def __repr__(self):
        return "<gpumesh.Session %d%s>" % (self.id, " closed" if self.closed else "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the session; the host frees (and zeroes) all its buffers."""
        if self.closed:
            return
        self.closed = True
        try:
            self.client._rpc("CloseSession", pb.CloseSessionRequest(session=self.id))
        except errors.NotFound:
            pass  # idled out already: nothing is left to free

    def _check_open(self):
        if self.closed:
            raise errors.NotFound("gpumesh: session %d is closed" % self.id, sent=False)

    def alloc(self, shape, dtype=np.float32, *, gpu=None):
        """A new Buffer for an array of shape and dtype (write() or a kernel's
        out= fills it)."""
        self._check_open()
        shape = tuple(int(d) for d in np.atleast_1d(shape))
        _tensor.check_shape(shape, "alloc")
        dt = np.dtype(dtype)
        _tensor.wire_dtype(dt)
        n = math.prod(shape) * dt.itemsize
        res = self.client._rpc("Alloc", pb.AllocRequest(session=self.id, gpu=gpu or "", bytes=n))
        return Buffer(self, res.buffer, shape, dt, gpu)

    def upload(self, array, *, gpu=None):
        """Upload an array (numpy, or a list taken as float32) into a new
        Buffer. Chunks follow the caller's max_request."""
        self._check_open()
        arr = _tensor.as_array(array, "upload")
        data = _tensor.little_endian_bytes(arr)
        ex = self.client._resident_explain(gpu)
        if ex is not None and 0 < ex.limits.max_memory < len(data):
            raise errors.ResourceExhausted(
                'gpumesh: upload of %d bytes is over %s\'s max_memory of %d bytes (rule "%s"); not sent'
                % (len(data), ex.caller, ex.limits.max_memory, ex.rule), method="Write", sent=False)
        first = pb.WriteRequest(session=self.id, alloc_bytes=len(data), gpu=gpu or "")
        res = self._write(first, data, gpu)
        if res.bytes != len(data):
            raise errors.Internal("gpumesh: upload: the host took %d of %d bytes" % (res.bytes, len(data)),
                                  method="Write", sent=True)
        return Buffer(self, res.buffer, arr.shape, arr.dtype.newbyteorder("="), gpu)

    def _write(self, first, data, gpu):
        chunk = self.client.write_chunk_bytes(gpu)
        view = memoryview(data)

        def messages():
            first.data = bytes(view[:chunk])
            yield first
            for off in range(chunk, len(view), chunk):
                yield pb.WriteRequest(data=bytes(view[off:off + chunk]))

        try:
            return self.client.stub.Write(messages(), timeout=self.client.timeout)
        except grpc.RpcError as err:
            raise errors.from_rpc_error(err, "Write") from None

    def _read(self, buffer_id, nbytes):
        out = bytearray(nbytes)
        off = 0
        try:
            for r in self.client.stub.Read(pb.ReadRequest(session=self.id, buffer=buffer_id),
                                           timeout=self.client.timeout):
                n = len(r.data)
                if off + n > nbytes:
                    raise errors.Internal("gpumesh: download: the host sent more than %d bytes" % nbytes,
                                          method="Read", sent=True)
                out[off:off + n] = r.data
                off += n
        except grpc.RpcError as err:
            raise errors.from_rpc_error(err, "Read") from None
        if off != nbytes:
            raise errors.Internal("gpumesh: download: the host sent %d of %d bytes" % (off, nbytes),
                                  method="Read", sent=True)
        return bytes(out)


class Buffer:
    """A buffer resident on the host, holding an array of shape and dtype.

    Pass it to a kernel instead of an array to compute without sending the
    data again. Use it as a context manager, or call free(), to free it.
    """

    def __init__(self, session, buffer_id, shape, dtype, gpu):
        self.session = session
        self.id = buffer_id
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.gpu = gpu
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        self.freed = False

    def __repr__(self):
        return "<gpumesh.Buffer %d of session %d: %s %s%s>" % (
            self.id, self.session.id, self.dtype, self.shape, " freed" if self.freed else "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def _check(self, what):
        if self.freed:
            raise errors.NotFound("gpumesh: %s: buffer %d is freed" % (what, self.id), sent=False)
        self.session._check_open()

    def _ref(self, what):
        self._check(what)
        return pb.BufferRef(id=self.id, dtype=_tensor.wire_dtype(self.dtype), shape=self.shape)

    def _retype(self, dtype, shape):
        if math.prod(shape) * dtype.itemsize == self.nbytes:
            self.dtype, self.shape = dtype, shape

    def download(self):
        """The buffer's contents as an ndarray of its shape and dtype."""
        self._check("download")
        data = self.session._read(self.id, self.nbytes)
        return _tensor.from_bytes(data, _tensor.wire_dtype(self.dtype), self.shape)

    def write(self, array):
        """Overwrite the buffer with an array of the same number of bytes."""
        self._check("write")
        arr = _tensor.as_array(array, "write")
        data = _tensor.little_endian_bytes(arr)
        if len(data) != self.nbytes:
            raise errors.InvalidArgument("gpumesh: write: %d bytes into a buffer of %d" % (len(data), self.nbytes),
                                         sent=False)
        self.session._write(pb.WriteRequest(session=self.session.id, buffer=self.id), data, self.gpu)
        self.dtype, self.shape = arr.dtype.newbyteorder("="), tuple(arr.shape)

    def free(self):
        """Free the buffer on the host (zeroed there). Freeing twice, or after
        the session closed, does nothing."""
        if self.freed:
            return
        self.freed = True
        if self.session.closed:
            return
        try:
            self.session.client._rpc("Free", pb.FreeRequest(session=self.session.id, buffer=self.id))
        except errors.NotFound:
            pass  # the session idled out: the host freed it already
