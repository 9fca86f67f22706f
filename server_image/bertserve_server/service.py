"""What both frontends call to encode: validate → admit → tokenize → batch → answer.

Why it exists: the ZeroMQ and HTTP frontends differ only in how bytes arrive and leave. The steps
in between — the checks of ``validation``, admission into the bounded queue, WordPiece on a
small thread pool (so a 4 000-sentence request does not stall a frontend's I/O loop), the answer
shape for NONE pooling — are the same, and live here once. The service is the frontends' only
way to the model: it hands tokenized rows to the :class:`~bertserve_server.batcher.Batcher`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from bertserve_api.contract import PoolingStrategy, ServerConfig
from bertserve_server.batcher import Batcher, Reservation
from bertserve_server.encoder import CLASSIFY, ENCODE, Task, TokenizedInput
from bertserve_server.errors import NoClassifier, NotReady, RequestTooLarge, ServeError, as_serve_error
from bertserve_server.metrics import Metrics
from bertserve_server.validation import Example, validate_texts

logger = logging.getLogger(__name__)


class Tokenizer(Protocol):
    """Turns validated texts into rows: ``[CLS] a [SEP] (b [SEP])``, truncated, masked."""

    def tokenize_batch(self, texts: Sequence[Any], is_tokenized: bool = False) -> list[TokenizedInput]: ...

    def tokenize_examples(self, examples: Sequence[Example]) -> list[TokenizedInput]:
        """Classifier inputs, as ``run_classifier.py``'s ``convert_single_example``."""
        ...


@dataclass(frozen=True)
class EncodeAnswer:
    """Embeddings in request order (``[n, D]`` or ``[n, T, D]``) and each row's tokens."""

    embeddings: np.ndarray
    tokens: list[list[str]]

    @property
    def num_tokens(self) -> int:
        """Real (unpadded) token positions, ``[CLS]``/``[SEP]`` included: OpenAI ``usage``."""
        return sum(len(t) for t in self.tokens)


@dataclass(frozen=True)
class PredictAnswer:
    """The classifier head's float32 logits ``[n, num_labels]`` in request order, and the labels."""

    logits: np.ndarray
    labels: list[str]
    tokens: list[list[str]]


Answer = TypeVar("Answer", EncodeAnswer, PredictAnswer)


class EncodeService:
    """Thread-safe; ``submit`` returns at once with a future (errors it can see early are raised)."""

    def __init__(
        self,
        config: ServerConfig,
        batcher: Batcher,
        tokenizer: Tokenizer,
        *,
        max_position_embeddings: int,
        metrics: Metrics | None = None,
        tokenize_threads: int = 2,
    ) -> None:
        self.config = config
        self.batcher = batcher
        self.tokenizer = tokenizer
        self.max_position_embeddings = max_position_embeddings
        self.metrics = metrics or batcher.metrics
        self._pool = ThreadPoolExecutor(max_workers=tokenize_threads, thread_name_prefix="tokenize")
        self._ready = threading.Event()
        self._gates: list[Callable[[], str | None]] = []
        #: Label names of the classifier head (``-classifier``); empty when there is none.
        self.labels: list[str] = []

    # -- readiness -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.unready_reason() is None

    def add_readiness_gate(self, gate: Callable[[], str | None]) -> None:
        """Also require ``gate()`` to return ``None`` to be ready; otherwise it says why not.

        Scale-out peering uses this: a replica that cannot route answers to its peers yet must
        not receive clients, although its model is loaded.
        """
        self._gates.append(gate)

    def unready_reason(self) -> str | None:
        """``None`` when ready; else ``loading``, ``draining`` or a gate's reason (for ``/readyz``)."""
        if self.batcher.closed:
            return "draining"
        if not self._ready.is_set():
            return "loading"
        for gate in self._gates:
            reason = gate()
            if reason:
                return reason
        return None

    def set_ready(self) -> None:
        self._ready.set()
        self.metrics.ready.set(1)

    def set_not_ready(self) -> None:
        self._ready.clear()
        self.metrics.ready.set(0)

    # -- encoding --------------------------------------------------------------------------------

    def submit(self, texts: Any, *, is_tokenized: bool | None = None) -> Future[EncodeAnswer]:
        """Validate and admit ``texts`` now (raising ``ServeError``), encode them in the background."""
        if not self._ready.is_set() and not self.batcher.closed:
            raise NotReady("model is still loading or warming up; retry shortly")
        rows, tokenized = validate_texts(texts, is_tokenized)
        self.check_output_bytes(len(rows), self._known_seq_len())
        reservation = self.batcher.reserve(len(rows))
        answer: Future[EncodeAnswer] = Future()
        self._pool.submit(
            self._tokenize_and_enqueue,
            reservation,
            lambda: self.tokenizer.tokenize_batch(rows, tokenized),
            ENCODE,
            EncodeAnswer,
            answer,
        )
        return answer

    def submit_predict(self, examples: list[Example]) -> Future[PredictAnswer]:
        """Admit validated classifier inputs now (raising ``ServeError``), run the head in the background.

        Same queue, admission and batching as ``submit``; rows are tokenized as
        ``run_classifier.py`` does and batched only with other classifier rows.
        """
        if not self._ready.is_set() and not self.batcher.closed:
            raise NotReady("model is still loading or warming up; retry shortly")
        if not self.labels:
            raise NoClassifier(
                "this server has no classifier head: start it with -classifier on a run_classifier.py "
                "checkpoint (BertServer spec.serving.classifier.enabled: true)"
            )
        size = len(examples) * len(self.labels) * 4  # float32 logits
        if size > self.config.max_response_bytes:
            raise RequestTooLarge(
                f"the result ({len(examples)} x {len(self.labels)} float32 = {size} bytes) would exceed "
                f"-max_response_bytes={self.config.max_response_bytes}; split the request"
            )
        reservation = self.batcher.reserve(len(examples))
        answer: Future[PredictAnswer] = Future()
        labels = list(self.labels)
        self._pool.submit(
            self._tokenize_and_enqueue,
            reservation,
            lambda: self.tokenizer.tokenize_examples(examples),
            CLASSIFY,
            lambda result, tokens: PredictAnswer(result, labels, tokens),
            answer,
        )
        return answer

    def _known_seq_len(self) -> int | None:
        """``T`` of a NONE-pooling answer when it is known before tokenizing (1 otherwise)."""
        if self.config.pooling_strategy != PoolingStrategy.NONE:
            return 1
        if self.config.max_seq_len is not None:
            return self.config.max_seq_len
        if self.config.fixed_embed_length:
            return self.max_position_embeddings
        return None  # per request: checked again once the request is tokenized

    def check_output_bytes(self, rows: int, seq_len: int | None) -> None:
        """Refuse (``too_large``) a result larger than ``-max_response_bytes``, before it is allocated.

        ``seq_len`` is ``T`` for NONE pooling (1 for pooled vectors); ``None`` means "not known
        yet": the check then assumes one position per row, the least the answer can take.
        """
        width = self.batcher.width
        if not width:
            return
        size = rows * (seq_len or 1) * width * self.batcher.dtype.itemsize
        if size > self.config.max_response_bytes:
            shape = f"{rows} x {seq_len} x {width}" if seq_len and seq_len > 1 else f"{rows} x {width}"
            raise RequestTooLarge(
                f"the result ({shape} {self.batcher.dtype.name} = {size} bytes) would exceed "
                f"-max_response_bytes={self.config.max_response_bytes}; split the request"
            )

    def _out_seq_len(self, items: list[TokenizedInput]) -> int | None:
        """``T`` of a NONE-pooling answer: ``-max_seq_len``, or per request when it is NONE."""
        if self.config.pooling_strategy != PoolingStrategy.NONE:
            return None
        if self.config.max_seq_len is not None:
            return self.config.max_seq_len
        if self.config.fixed_embed_length:
            return self.max_position_embeddings
        return max(len(item) for item in items)

    def _tokenize_and_enqueue(
        self,
        reservation: Reservation,
        tokenize: Callable[[], list[TokenizedInput]],
        task: Task,
        make_answer: Callable[[np.ndarray, list[list[str]]], Answer],
        answer: Future[Answer],
    ) -> None:
        started = time.perf_counter()
        try:
            items = tokenize()
        except Exception as exc:  # a tokenizer bug must answer this request, not kill the pool
            logger.exception("tokenization failed for a request of %d sentences", reservation.size)
            error = as_serve_error(exc)
            self.batcher.cancel(reservation, error)
            answer.set_exception(error)
            return
        self.metrics.tokenize_seconds.observe(time.perf_counter() - started)
        tokens = [list(item.tokens) for item in items]

        def finish(done: Future[np.ndarray]) -> None:
            error = done.exception()
            if error is not None:
                answer.set_exception(as_serve_error(error))
            else:
                answer.set_result(make_answer(done.result(), tokens))

        reservation.future.add_done_callback(finish)
        try:
            out_seq_len = self._out_seq_len(items) if task == ENCODE else None
            if task == ENCODE:
                self.check_output_bytes(len(items), out_seq_len)
            self.batcher.enqueue(reservation, items, out_seq_len, task=task)
        except Exception as exc:
            error = exc if isinstance(exc, ServeError) else as_serve_error(exc)
            self.batcher.cancel(reservation, error)

    def encode(
        self, texts: Any, *, is_tokenized: bool | None = None, timeout: float | None = None
    ) -> EncodeAnswer:
        """Blocking convenience for tests and tools."""
        return self.submit(texts, is_tokenized=is_tokenized).result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=False)
