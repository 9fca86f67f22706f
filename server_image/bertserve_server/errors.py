"""Every way a request can fail, and how each failure travels on each wire — in one place.

Why it exists: the same failure (a full queue, an empty sentence, a server that is draining)
reaches a client over two protocols. HTTP has status codes; the classic ZeroMQ protocol of
bert-as-service 1.10.0 has no error frame at all. Frontends raise or receive a :class:`ServeError`
and ask this module how to answer, so the mapping cannot drift apart between them.

How an error travels over ZeroMQ
--------------------------------
The unmodified ``bert-serving-client==1.10.0`` decodes every answer to an encode request as
``np.frombuffer(frame2, dtype=header["dtype"]).reshape(header["shape"])`` (reference §3.3). An
error reply is therefore a *well-formed* 4-frame answer ``[identity, header, b"", req_id]`` whose
JSON header is::

    {"dtype": "bertserve error [busy]: server busy: ... ; retry later",
     "shape": [0], "tokens": "",
     "error": {"type": "Busy", "reason": "busy", "status": 429, "message": "...", "retry_after": 1.0}}

* The ``dtype`` is deliberately not a numpy type name, so ``BertClient.encode`` raises
  ``TypeError: data type "bertserve error [busy]: ..." not understood`` — the caller sees the
  server's message at once instead of a silent empty result (an ``(0, D)`` array would be
  zipped away unnoticed) or a hang (the client's default timeout is infinite). The client has
  already removed the request from its pending set before decoding, so the same ``BertClient``
  keeps working for the next call; ``ConcurrentBertClient`` returns the client to its pool.
* ``error`` carries the structured form for any other client; ``shape: [0]`` with an empty data
  frame is a consistent empty array for clients that read ``shape`` first.
* ``req_id`` is echoed, so an asynchronous client (``fetch``) matches the error to its request.

Requests whose ``req_id`` cannot be echoed as an integer (wrong frame count, non-digit
``req_id``) cannot be answered — the client would crash parsing the reply's last frame — so they
are dropped, logged and counted; the unmodified client never sends them.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class ServeError(Exception):
    """Base class: a request that will not get embeddings. ``reason`` labels logs and metrics."""

    http_status: ClassVar[int] = 500
    reason: ClassVar[str] = "internal"
    retry_after: ClassVar[float | None] = None
    #: Whether a ZeroMQ client gets an error reply (False: the request is dropped unanswered).
    zmq_reply: ClassVar[bool] = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServeError):  # noqa: N818 - the name is the wire's error type
    """The request itself is wrong (empty list, empty sentence, bad JSON…); retrying will not help."""

    http_status = 400
    reason = "invalid_input"


class RequestTooLarge(InvalidInput):
    """More sentences (or bytes) than the server ever queues at once."""

    http_status = 413
    reason = "too_large"


class Unanswerable(InvalidInput):
    """A ZeroMQ request that cannot be addressed (no usable ``req_id``): logged, counted, dropped."""

    reason = "malformed"
    zmq_reply = False


class NoClassifier(InvalidInput):
    """``/predict`` on a server started without ``-classifier``: there is no head to answer with."""

    http_status = 404
    reason = "no_classifier"


class Busy(ServeError):  # noqa: N818 - the name is the wire's error type
    """The bounded queue is full: back off and retry."""

    http_status = 429
    reason = "busy"
    retry_after = 1.0


class NotReady(ServeError):  # noqa: N818 - the name is the wire's error type
    """The model is still loading or warming up."""

    http_status = 503
    reason = "not_ready"
    retry_after = 5.0


class ShuttingDown(ServeError):  # noqa: N818 - the name is the wire's error type
    """The server is draining after SIGTERM; another replica should take the request."""

    http_status = 503
    reason = "shutting_down"
    retry_after = 1.0


class EncodeFailed(ServeError):  # noqa: N818 - the name is the wire's error type
    """The model raised while computing a batch this request was part of."""

    http_status = 500
    reason = "encode_failed"


class InternalError(ServeError):
    """Handling the request raised something unexpected; the request is answered, the server goes on."""

    http_status = 500
    reason = "internal"


def as_request_error(exc: BaseException) -> ServeError:
    """``exc`` itself if it is a :class:`ServeError`, else an :class:`InternalError` naming it.

    For failures while *handling* a request (parsing, admission, building the answer), as
    opposed to :func:`as_serve_error`, which blames the model.
    """
    if isinstance(exc, ServeError):
        return exc
    text = str(exc)
    if len(text) > 200:
        text = text[:197] + "..."
    return InternalError(f"could not handle the request ({type(exc).__name__}: {text})")


def as_serve_error(exc: BaseException) -> ServeError:
    """``exc`` itself if it is a :class:`ServeError`, else an :class:`EncodeFailed` describing it."""
    if isinstance(exc, ServeError):
        return exc
    return EncodeFailed(f"{type(exc).__name__}: {exc}")


# -- HTTP -----------------------------------------------------------------------------------------


def http_status(err: ServeError) -> int:
    return err.http_status


def http_headers(err: ServeError) -> dict[str, str]:
    """Extra response headers: ``Retry-After`` (whole seconds) for errors worth retrying."""
    if err.retry_after is None:
        return {}
    return {"Retry-After": str(max(1, round(err.retry_after)))}


def http_error_body(err: ServeError) -> dict[str, Any]:
    """bert-as-service's HTTP error shape: ``{"description", "type", "status"}`` (reference §4)."""
    return {"description": err.message, "type": type(err).__name__, "status": err.http_status}


def openai_error_body(err: ServeError) -> dict[str, Any]:
    """The OpenAI API error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if isinstance(err, InvalidInput) else "server_error"
    if isinstance(err, Busy):
        kind = "rate_limit_error"
    return {"error": {"message": err.message, "type": kind, "param": None, "code": err.reason}}


# -- ZeroMQ ---------------------------------------------------------------------------------------

ZMQ_ERROR_DTYPE_PREFIX = "bertserve error"
"""Start of the ``dtype`` of a ZeroMQ error reply; never a valid numpy type name."""


def zmq_error_header(err: ServeError) -> dict[str, Any]:
    """The JSON header of a ZeroMQ error reply (see the module docstring)."""
    detail: dict[str, Any] = {
        "type": type(err).__name__,
        "reason": err.reason,
        "status": err.http_status,
        "message": err.message,
    }
    if err.retry_after is not None:
        detail["retry_after"] = err.retry_after
    return {
        "dtype": f"{ZMQ_ERROR_DTYPE_PREFIX} [{err.reason}]: {err.message}",
        "shape": [0],
        "tokens": "",
        "error": detail,
    }


def zmq_error_frames(identity: bytes, req_id: bytes, err: ServeError) -> list[bytes]:
    """``[identity, header, b"", req_id]``: the 4-frame encode answer carrying ``err``."""
    header = json.dumps(zmq_error_header(err), ensure_ascii=True).encode("ascii")
    return [identity, header, b"", req_id]
