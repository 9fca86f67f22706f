"""The HTTP API (``-http_port``): bert-as-service's ``/encode``, OpenAI embeddings, probes, metrics.

Why it exists: 1.10.0's HTTP proxy was a Flask development server in front of a pool of ZeroMQ
clients without timeouts (reference §4). Here aiohttp serves straight from the same
``EncodeService`` as the ZeroMQ frontend, on its own event loop thread:

* ``POST /encode`` — ``{"id", "texts", "is_tokenized"}`` → ``{"id", "result", "status": 200}``;
  errors ``{"description", "type", "status"}`` (400 for bad input, as 1.10.0).
* ``GET /status/server`` — the SHOW_STATUS document + ``"status": 200``; ``GET /status/client`` —
  this frontend's own counters in the shape 1.10.0's pooled client reported.
* ``POST /v1/embeddings`` — OpenAI-compatible (``input`` string or list, ``model``,
  ``encoding_format`` ``float``/``base64``, ``usage``), OpenAI error bodies.
* ``POST /predict`` (``-classifier``) — ``{"inputs", "raw_scores"}`` → per input the head's labels
  with softmax probabilities (or logits), best first; Text Embeddings Inference's request shape.
* ``GET /healthz`` (the process is alive), ``GET /readyz`` (model loaded and warmed up, not
  draining; 503 otherwise), ``GET /metrics`` (Prometheus).

Overload is explicit: a full queue answers 429 with ``Retry-After``; more than
``-http_max_connect`` encodes in flight also answers 429; loading or draining answers 503.
HTTP binds before the model loads, so the probes answer during start-up.

Optional API key: when the environment variable ``BERTSERVE_API_KEY`` is set (from a Secret; never
a flag, since arguments are visible to everyone on the node, and never logged), the encode and
status routes require ``Authorization: Bearer <key>`` (compared in constant time; 401 with
``WWW-Authenticate: Bearer`` otherwise). The probes stay open (the kubelet carries no key);
``/metrics`` stays open unless ``-protect_metrics``. Each route declares its access in
:meth:`HttpFrontend.routes`, the one table to extend.

The event loop only moves bytes: decoding and validating bodies larger than
:data:`OFFLOAD_BYTES` and serializing large results run on a small thread pool, so ``/healthz``
answers while a 64 MiB body is parsed. Any exception while handling a request is a JSON error
(400 for what the client sent, 500 otherwise), never a bare traceback page.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
from aiohttp import web

from bertserve_api.contract import API_KEY_ENV, SERVER_VERSION, PoolingStrategy, ServerConfig
from bertserve_server.classifier import ranked
from bertserve_server.errors import (
    Busy,
    InvalidInput,
    RequestTooLarge,
    ServeError,
    as_request_error,
    http_error_body,
    http_headers,
    openai_error_body,
)
from bertserve_server.metrics import CONTENT_TYPE, Metrics
from bertserve_server.service import EncodeAnswer, EncodeService, PredictAnswer
from bertserve_server.status import StatusBook
from bertserve_server.validation import decode_json, validate_examples, validate_texts

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Access = Literal["open", "key", "metrics"]
T = TypeVar("T")
Answer = TypeVar("Answer", EncodeAnswer, PredictAnswer)

OFFLOAD_BYTES = 256 * 1024
"""Bodies (and results, as float count x 8) above this are parsed/serialized off the event loop."""


@dataclass(frozen=True)
class Route:
    """One HTTP route: ``access`` is ``open`` (probes), ``key`` (API key when one is set) or
    ``metrics`` (open unless ``-protect_metrics``)."""

    method: str
    path: str
    handler: Handler
    access: Access


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return _json_bytes(json.dumps(data).encode("utf-8"), status, headers)


def _json_bytes(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


CHUNK_BYTES = 1 << 20
"""Large bodies are read, decoded, serialized and written in pieces of about this size."""


def vectors_json(array: np.ndarray) -> bytes:
    """``array`` as a JSON array of numbers: every value exactly, each in its shortest form.

    Why orjson, not ``json.dumps(array.tolist())``: ``tolist`` widens float32 to Python floats,
    which print with up to 17 digits (``0.1257302165031433`` for the float32 ``0.12573022``).
    orjson writes float32 (and float16) values straight from the array in the shortest form
    that reads back to the same bits: half the bytes, about 25x less server CPU per answer, and
    less for every client to parse. A client that casts the numbers to float32 gets the model's
    vectors bit for bit. NaN (no JSON number) is written as ``null``.
    """
    return orjson.dumps(np.ascontiguousarray(array), option=orjson.OPT_SERIALIZE_NUMPY)


#: The most bytes one value takes in :func:`vectors_json` (``-1.1754944e-38,``), to size pieces.
MAX_NUMBER_BYTES = 16


def _row_pieces(array: np.ndarray) -> list[bytes]:
    """:func:`vectors_json` of ``array``; above :data:`OFFLOAD_BYTES` in pieces of whole rows.

    One call for a 10,000-row result would hold the GIL (and so stall the event loop) for the
    whole serialization; in pieces of about :data:`CHUNK_BYTES`, other threads get their turns
    and no single copy of the whole body is made.
    """
    if array.ndim == 0 or int(array.size) * 8 <= OFFLOAD_BYTES:
        return [vectors_json(array)]
    row_bytes = max(1, int(array[0].size) * MAX_NUMBER_BYTES)
    step = max(1, CHUNK_BYTES // row_bytes)
    pieces = [b"["]
    for start in range(0, len(array), step):
        rows = vectors_json(array[start : start + step])[1:-1]  # without the enclosing brackets
        pieces.append(rows if start == 0 else b"," + rows)
    pieces.append(b"]")
    return pieces


def _parse_body(chunks: list[bytes]) -> Any:
    """Decode (strict UTF-8) and parse a body received as chunks; big ones in slices."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        text = "".join([*(decoder.decode(chunk) for chunk in chunks), decoder.decode(b"", final=True)])
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"request body is not valid UTF-8 JSON: {exc}") from None
    return decode_json(text, "send a JSON object", "request body is not valid UTF-8 JSON")


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class HttpFrontend:
    """aiohttp on ``-bind_host:-http_port`` in a thread of its own."""

    def __init__(
        self,
        config: ServerConfig,
        service: EncodeService,
        status: StatusBook,
        metrics: Metrics,
        *,
        model_name: str | None = None,
        api_key: str | None = None,
    ) -> None:
        if config.http_port is None:
            raise ValueError("HttpFrontend needs -http_port")
        self.config = config
        self.service = service
        self.status = status
        self.metrics = metrics
        self.model_name = model_name or Path(config.tuned_model_dir or config.model_dir).name or "bert"
        self.port: int = config.http_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._slots = config.http_max_connect
        self._in_flight = 0  # encodes waiting for the model (bounded by -http_max_connect)
        self._open = 0  # encode/embeddings handlers not yet returned (the drain waits for these)
        self._num_request = 0
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self._api_key: bytes | None = key.strip().encode("utf-8") or None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="http-work")
        self._access: dict[tuple[str, str], Access] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """Every route with its access rule: the one table to extend."""
        return [
            Route("POST", "/encode", self.encode, "key"),
            Route("GET", "/status/server", self.status_server, "key"),
            Route("GET", "/status/client", self.status_client, "key"),
            Route("POST", "/v1/embeddings", self.embeddings, "key"),
            Route("POST", "/predict", self.predict, "key"),
            Route("GET", "/healthz", self.healthz, "open"),
            Route("GET", "/readyz", self.readyz, "open"),
            Route("GET", "/metrics", self.metrics_text, "metrics"),
        ]

    def build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_request_bytes,
            middlewares=[self._close_when_draining, self._cors_middleware, self._auth_middleware],
        )
        for route in self.routes():
            app.router.add_route(route.method, route.path, route.handler)
            self._access[(route.method, route.path)] = route.access
        return app

    def start(self, timeout: float = 10.0) -> None:
        """Bind and serve in a background thread; bind errors are raised here."""
        self._thread = threading.Thread(target=self._serve, name="http-frontend", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("HTTP frontend did not start")
        if self._start_error is not None:
            raise OSError(
                f"cannot bind -http_port {self.config.bind_host}:{self.port}: {self._start_error}; "
                "choose a free port with -http_port"
            ) from self._start_error
        logger.info(
            "HTTP: listening on %s:%d (API key %s)",
            self.config.bind_host,
            self.port,
            f"required, from ${API_KEY_ENV}" if self._api_key else "not set: encode routes are open",
        )

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup())
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._cleanup())
            loop.close()

    async def _setup(self) -> None:
        self._runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.bind_host, self.port, reuse_address=True)
        await site.start()

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def flush(self, timeout: float) -> bool:
        """Wait until no encode request is being answered (used by the drain)."""
        deadline = time.monotonic() + timeout
        while self._open > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- middleware ------------------------------------------------------------------------------

    def _allowed_origin(self, origin: str | None) -> str | None:
        allowed = [o.strip() for o in self.config.cors.split(",") if o.strip()]
        if "*" in allowed:
            return "*"
        if origin and origin in allowed:
            return origin
        return None

    @web.middleware
    async def _close_when_draining(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Once the server drains, every answer closes its connection (``Connection: close``).

        Why: behind a Service a client's kept-alive connection stays on the pod it first
        reached. A draining pod refuses new work (503 ``ShuttingDown``); if it kept the
        connection open, every later request on it would get 503 until the pod exits. Closed,
        the client's next request, its retry included, opens a new connection, which the Service
        sends to a pod that is not draining. Work accepted before the drain is still answered.
        Answers that are raised rather than returned (the router's 404 and 405) are turned into
        responses here, so they close their connection too.
        """
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if not self.service.batcher.closed:
                raise
            response = web.Response(status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers)
        if self.service.batcher.closed:
            response.force_close()
        return response

    @web.middleware
    async def _cors_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        response: web.StreamResponse
        if preflight:
            response = web.Response(status=204)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = exc
        allowed = self._allowed_origin(request.headers.get("Origin"))
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = allowed
            if allowed != "*":
                response.headers["Vary"] = "Origin"
            if preflight:
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                    "Access-Control-Request-Headers", "Content-Type"
                )
        if isinstance(response, web.HTTPException):
            raise response
        return response

    def _needs_key(self, request: web.Request) -> bool:
        if self._api_key is None:
            return False
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else request.path
        access = self._access.get((request.method, path))
        if access == "open":
            return False
        if access == "metrics":
            return self.config.protect_metrics
        return True  # "key", and anything unknown (404s do not reveal what exists)

    def _authorized(self, request: web.Request) -> bool:
        assert self._api_key is not None
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credential.strip().encode("utf-8"), self._api_key)

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._needs_key(request) and not self._authorized(request):
            self._count("auth", "unauthorized")
            message = "missing or wrong API key: send the header Authorization: Bearer <key>"
            body: dict[str, Any] = {"description": message, "type": "Unauthorized", "status": 401}
            if request.path.startswith("/v1/"):
                body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                  "code": "invalid_api_key"}}  # fmt: skip
            return _json(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="bertserve"'})
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:  # the last net: a JSON 500, and the server keeps serving
            logger.exception("HTTP %s %s failed", request.method, request.path)
            err = as_request_error(exc)
            return _json(http_error_body(err), status=err.http_status)

    async def _off_loop(self, work: Callable[[], T]) -> T:
        """Run CPU-heavy ``work`` (parsing, serializing) on the pool, not on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    # -- shared request plumbing -----------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> dict[str, Any]:
        """A JSON object body (or, for /encode, a form with repeated ``texts`` fields)."""
        try:
            if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                form = await request.post()
                body: dict[str, Any] = {"texts": [str(v) for v in form.getall("texts", [])]}
                if "id" in form:
                    body["id"] = str(form["id"])
                if "is_tokenized" in form:
                    body["is_tokenized"] = _as_bool(form["is_tokenized"])
                return body
            chunks = await self._read_chunks(request)
        except web.HTTPRequestEntityTooLarge:
            raise RequestTooLarge(
                f"request body exceeds the limit of {self.config.max_request_bytes} bytes "
                "(-max_request_bytes); split it"
            ) from None
        if sum(len(chunk) for chunk in chunks) > OFFLOAD_BYTES:
            data = await self._off_loop(lambda: _parse_body(chunks))
        else:
            data = _parse_body(chunks)
        if not isinstance(data, dict):
            raise InvalidInput(f"request body must be a JSON object, got {type(data).__name__}")
        return data

    async def _read_chunks(self, request: web.Request) -> list[bytes]:
        """The body as received, never joined on the loop (one 64 MiB copy would stall it)."""
        limit = self.config.max_request_bytes
        too_large = RequestTooLarge(
            f"request body exceeds the limit of {limit} bytes (-max_request_bytes); split it"
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return chunks

    async def _respond(self, request: web.Request, pieces: list[bytes]) -> web.StreamResponse:
        """A JSON answer from byte pieces; big ones are streamed piece by piece."""
        if len(pieces) == 1:
            return _json_bytes(pieces[0])
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = sum(len(piece) for piece in pieces)
        allowed = self._allowed_origin(request.headers.get("Origin"))
        if allowed:  # headers cannot change once streaming starts: CORS is set here, not after
            response.headers["Access-Control-Allow-Origin"] = allowed
            if allowed != "*":
                response.headers["Vary"] = "Origin"
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
        await response.write_eof()
        return response

    async def _run_encode(self, texts: Any, is_tokenized: bool | None, client: str) -> EncodeAnswer:
        return await self._admit(lambda: self.service.submit(texts, is_tokenized=is_tokenized), texts, client)

    async def _admit(self, submit: Callable[[], Future[Answer]], rows: list[Any], client: str) -> Answer:
        """Run one model request under ``-http_max_connect`` (encode and predict share the slots)."""
        if self._in_flight >= self._slots:
            raise Busy(
                f"too many concurrent HTTP encode requests ({self._in_flight}, "
                f"-http_max_connect={self._slots}); "
                "retry later"
            )
        self._in_flight += 1
        self._num_request += 1
        try:
            if len(rows) * 64 > OFFLOAD_BYTES:  # validation walks every element: off the loop
                future = await self._off_loop(submit)
            else:
                future = submit()
            self.status.statistic.record(client, len(rows), system=False)
            return await asyncio.wrap_future(future)
        finally:
            self._in_flight -= 1

    def _count(self, kind: str, outcome: str) -> None:
        self.metrics.count("http", kind, outcome)

    def _error(self, kind: str, err: ServeError, *, openai: bool = False) -> web.Response:
        self._count(kind, err.reason)
        logger.warning("HTTP %s answered %d %s: %s", kind, err.http_status, type(err).__name__, err.message)
        body = openai_error_body(err) if openai else http_error_body(err)
        return _json(body, status=err.http_status, headers=http_headers(err))

    def _done(self, kind: str, answer: EncodeAnswer | PredictAnswer, started: float) -> None:
        self._count(kind, "ok")
        rows = answer.embeddings if isinstance(answer, EncodeAnswer) else answer.logits
        self.metrics.sentences.labels(frontend="http").inc(rows.shape[0])
        self.metrics.request_seconds.labels(frontend="http").observe(time.perf_counter() - started)

    # -- bert-as-service API ---------------------------------------------------------------------

    async def encode(self, request: web.Request) -> web.StreamResponse:
        self._open += 1
        try:
            return await self._encode(request)
        finally:
            self._open -= 1

    async def _encode(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
            if "texts" not in body:
                raise InvalidInput('missing "texts": send {"id": ..., "texts": [...], "is_tokenized": false}')
            is_tokenized = _as_bool(body.get("is_tokenized", False))
            answer = await self._run_encode(body["texts"], is_tokenized, f"http:{request.remote}")
        except Exception as exc:
            return self._error("encode", as_request_error(exc))
        request_id = body.get("id")

        def serialize() -> list[bytes]:
            head = f'{{"id": {json.dumps(request_id)}, "result": '.encode()
            pieces = [head, *_row_pieces(answer.embeddings), b', "status": 200}']
            return pieces if self._large(answer) else [b"".join(pieces)]

        pieces = await self._off_loop(serialize) if self._large(answer) else serialize()
        self._done("encode", answer, started)
        return await self._respond(request, pieces)

    @staticmethod
    def _large(answer: EncodeAnswer) -> bool:
        return int(answer.embeddings.size) * 8 > OFFLOAD_BYTES

    # -- classifier head (-classifier) -------------------------------------------------------------

    async def predict(self, request: web.Request) -> web.Response:
        self._open += 1
        try:
            return await self._predict(request)
        finally:
            self._open -= 1

    async def _predict(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
            if "inputs" not in body:
                raise InvalidInput(
                    'missing "inputs": send {"inputs": "text"}, {"inputs": ["text_a", "text_b"]} '
                    "or an array of those"
                )
            raw_scores = body.get("raw_scores", False)
            if not isinstance(raw_scores, bool):
                raise InvalidInput(f"raw_scores must be true or false, got {raw_scores!r}")
            examples, batched = validate_examples(body["inputs"])
            answer = await self._admit(
                lambda: self.service.submit_predict(examples), examples, f"http:{request.remote}"
            )
        except Exception as exc:
            return self._error("predict", as_request_error(exc))
        self._done("predict", answer, started)
        results = ranked(answer.logits, answer.labels, raw_scores=raw_scores)
        return _json(results if batched else results[0])

    async def status_server(self, request: web.Request) -> web.Response:
        self.status.statistic.record(f"http:{request.remote}", 0, system=True)
        self._count("status", "ok")
        document = self.status.document(f"http:{request.remote}", with_statistic=True)
        return _json({**document, "status": 200})

    async def status_client(self, request: web.Request) -> web.Response:
        self._count("client_status", "ok")
        return _json(
            {
                "identity": "http",
                "num_request": self._num_request,
                "num_pending_request": self._in_flight,
                "pending_request": [],
                "output_fmt": "list",
                "port": self.config.port,
                "port_out": self.config.port_out,
                "server_ip": self.config.bind_host,
                "client_version": SERVER_VERSION,
                "timeout": -1,
                "max_concurrency": self._slots,
                "status": 200,
            }
        )

    # -- OpenAI embeddings -----------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        self._open += 1
        try:
            return await self._embeddings(request)
        finally:
            self._open -= 1

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
            texts = self._openai_inputs(body)
            encoding = body.get("encoding_format", "float") or "float"
            if encoding not in ("float", "base64"):
                raise InvalidInput(f'encoding_format must be "float" or "base64", got {encoding!r}')
            if self.config.pooling_strategy == PoolingStrategy.NONE:
                raise InvalidInput(
                    "this server uses -pooling_strategy NONE (one vector per token); use POST /encode"
                )
            dimensions = body.get("dimensions")
            if dimensions is not None and dimensions != self.service.batcher.width:
                raise InvalidInput(
                    f"dimensions={dimensions} is not supported: this model returns {self.service.batcher.width}"
                )
            answer = await self._run_encode(texts, False, f"openai:{request.remote}")
        except Exception as exc:
            return self._error("embeddings", as_request_error(exc), openai=True)
        model = body.get("model") or self.model_name

        def serialize() -> bytes:
            vectors = answer.embeddings.astype(np.float32)
            data = []
            for index, vector in enumerate(vectors):
                value: Any
                if encoding == "base64":
                    value = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                else:
                    value = vector  # written by orjson as vectors_json does
                data.append({"object": "embedding", "index": index, "embedding": value})
            usage = {"prompt_tokens": answer.num_tokens, "total_tokens": answer.num_tokens}
            document = {"object": "list", "data": data, "model": model, "usage": usage}
            return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)

        payload = await self._off_loop(serialize) if self._large(answer) else serialize()
        self._done("embeddings", answer, started)
        return _json_bytes(payload)

    @staticmethod
    def _openai_inputs(body: dict[str, Any]) -> list[str]:
        if "input" not in body:
            raise InvalidInput('missing "input": a string or an array of strings')
        value = body["input"]
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
            raise InvalidInput("token-id arrays are not supported; send text")
        texts, _ = validate_texts(value, is_tokenized=False)
        return texts

    # -- probes and metrics ----------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        reason = self.service.unready_reason()
        if reason is None:
            return _json({"status": "ready"})
        return _json({"status": "not ready", "reason": reason}, status=503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response
