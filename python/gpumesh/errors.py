"""Exceptions raised by the gpumesh client.

Every failed call raises a subclass of :class:`Error` chosen by the gRPC
status code, carrying the host's own words in ``reason`` (for a refusal, the
policy's reason; for a quota, the limit and the rule that set it)::

    try:
        gm.relu(x)
    except gpumesh.PermissionDenied as e:
        print("refused:", e.reason)
    except gpumesh.ResourceExhausted as e:
        print("over", e.limit)          # "max_memory", "rate", ...

Checks the client makes before sending (sizes over the caller's
``max_request``, arrays the host cannot take) raise the same classes, with
``sent`` set to False.
"""

import re

import grpc


class Error(Exception):
    """A gpumesh call failed.

    Attributes:
        code: the grpc.StatusCode.
        reason: what the host (or, when ``sent`` is False, the client) said.
        method: the RPC ("Compute", "Write", ...), when known.
        sent: False when the client refused the call before sending it.
        rpc_error: the grpc.RpcError, for a call the host answered.
    """

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, reason, *, code=None, method=None, sent=True):
        super().__init__(reason)
        if code is not None:
            self.code = code
        self.reason = reason
        self.method = method
        self.sent = sent
        self.rpc_error = None

    def __str__(self):
        return self.reason


class InvalidArgument(Error, ValueError):
    """The call's kernel, arguments or shapes are wrong."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDenied(Error):
    """The host's policy refuses this caller the call; ``reason`` says why."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(Error):
    """The host could not tell who is calling."""

    code = grpc.StatusCode.UNAUTHENTICATED


_LIMIT = re.compile(r"\b(max_concurrent|max_memory|max_request|rate|sessions)\b")


class ResourceExhausted(Error):
    """A quota or size limit refused the call.

    ``limit`` names it when the message does: "max_request", "max_memory",
    "max_concurrent", "rate" or "sessions"; None otherwise.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def limit(self):
        m = _LIMIT.search(self.reason)
        return m.group(1) if m else None


class NotFound(Error, LookupError):
    """The session or buffer does not exist (freed, closed or idled out)."""

    code = grpc.StatusCode.NOT_FOUND


class OutOfRange(Error, IndexError):
    """A read or write beyond a buffer's end."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(Error, NotImplementedError):
    """The host cannot do this (e.g. float16 on a CPU-only host)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(Error, ConnectionError):
    """The host (or the forwarder in front of it) cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(Error, TimeoutError):
    """The call did not finish within its timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(Error):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class FailedPrecondition(Error):
    """The host is not in a state to run the call."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Internal(Error):
    """The host failed (a backend or worker error)."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE = {
    cls.code: cls
    for cls in (InvalidArgument, PermissionDenied, Unauthenticated, ResourceExhausted, NotFound,
                OutOfRange, Unimplemented, Unavailable, DeadlineExceeded, Cancelled,
                FailedPrecondition, Internal)
}


def from_rpc_error(err, method=None):
    """The Error subclass for a grpc.RpcError, keeping the host's message."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else None
    reason = details or (code.name if code else str(err))
    cls = _BY_CODE.get(code, Error)
    e = cls(reason, code=code, method=method)
    e.rpc_error = err
    return e
