"""The bounded queue between frontends and devices: admission, batching, reassembly.

Why it exists: bert-as-service 1.10.0 ran every request (or 256-sentence chunk of one) as its own
device batch and queued without limit (reference §5.3). Here requests from any client and any
frontend meet in one queue, counted in *sentences*:

* **Admission** (:meth:`Batcher.reserve`): a request that would push the queue above
  ``-max_queue_size`` sentences is refused at once with :class:`~bertserve_server.errors.Busy`
  (one larger than the whole queue with ``RequestTooLarge``); after :meth:`Batcher.close` new
  requests get ``ShuttingDown``. Sentences differ in length (3 to ``max_seq_len`` tokens, and
  with ``-max_seq_len NONE`` up to the model's positions), so the queue is bounded in *tokens*
  too: once a request is tokenized, :meth:`Batcher.enqueue` refuses it the same way when the
  tokens of every request not yet answered would exceed ``-max_queued_tokens``, before its
  output array is allocated. Nothing grows without bound.
* **Batching** (:meth:`Batcher.next_batch`, called by each worker): rows of different requests
  are merged into one device batch of at most ``-max_batch_size`` sentences. The oldest request
  leads, small requests (``<= -priority_batch_size`` sentences) get a head start of
  :data:`PRIORITY_HEAD_START_S`, so they overtake big ones without starving them. Rows are
  grouped by token length: a row joins a batch only while padding stays under half the batch's
  token positions (short sequences always join: per-call overhead dominates there). The encoder
  leaves padding out of its position-wise layers, but attention and memory still scale with the
  padded length. A partial batch waits at most ``-max_wait_ms`` for company.
* **Reassembly** (:meth:`Batcher.complete`): each row's vector is written back at its original
  index, so a request split over several batches, or merged with others, comes back in request
  order; the request's future resolves when its last row is done.
* **Tasks**: with ``-classifier`` a request is either for embeddings (``encode``) or for the
  classifier head's logits (``classify``, ``/predict``). Both share the queue, admission and
  priorities; a device batch holds rows of one task only, since each runs its own function.

Every wait has a timeout and every loop checks a stop flag, so shutdown never hangs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bertserve_server.encoder import CLASSIFY, ENCODE, Batch, Task, TokenizedInput, pad_batch
from bertserve_server.errors import Busy, EncodeFailed, RequestTooLarge, ServeError, ShuttingDown
from bertserve_server.metrics import Metrics

#: Seconds by which a small request (``<= -priority_batch_size`` sentences) is treated as older
#: than it is. Small requests overtake big ones queued up to this long before them; a big request
#: waiting longer than this is served first again, so nothing starves.
PRIORITY_HEAD_START_S = 1.0
#: A row joins a batch only if real tokens stay at least this fraction of the padded positions…
MIN_PADDING_EFFICIENCY = 0.5
#: …unless the batch's padded length stays at or below this many tokens.
SHORT_SEQUENCE = 32
#: Rows examined per batch when looking for company for the leading request.
MAX_SCAN_FACTOR = 4


@dataclass(eq=False)
class Reservation:
    """Queue capacity held for one request; :attr:`future` resolves to its embeddings."""

    size: int
    future: Future[np.ndarray] = field(default_factory=Future)
    reserved_at: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Pending:
    reservation: Reservation
    items: list[TokenizedInput]
    lengths: list[int]
    key: float
    arrival: float
    output: np.ndarray
    rows: list[int]  # row indices not yet batched, ascending by length
    remaining: int
    task: Task = ENCODE
    tokens: int = 0
    started: bool = False
    done: bool = False


@dataclass(eq=False)
class DeviceBatch:
    """One padded batch for a worker, and where each of its rows belongs."""

    batch: Batch
    parts: list[tuple[_Pending, list[int]]]
    formed_at: float
    task: Task = ENCODE

    @property
    def size(self) -> int:
        return self.batch.size


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


@dataclass
class QueueBound:
    """One admission bound of the queue: what it counts, its flag and limit, how much is queued now.

    Why an object: the sentence bound (``-max_queue_size``) and the token bound
    (``-max_queued_tokens``) are checked, counted and exported alike; each carries what differs
    (the unit and flag its errors name, the limit, the gauge that shows it). Guarded by the
    batcher's lock.
    """

    unit: str
    flag: str
    limit: int
    gauge: _Gauge
    queued: int = 0

    def set(self, queued: int) -> None:
        self.queued = queued
        self.gauge.set(queued)


class Batcher:
    """Thread-safe; frontends call :meth:`reserve`/:meth:`enqueue`, workers :meth:`next_batch`."""

    def __init__(
        self,
        *,
        width: int = 0,
        dtype: str = "float32",
        max_batch_size: int = 256,
        priority_batch_size: int = 16,
        max_queue_size: int = 10000,
        max_queued_tokens: int = 1_000_000,
        max_wait_ms: float = 2.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_queued_tokens < 1:
            raise ValueError("max_batch_size, max_queue_size and max_queued_tokens must be >= 1")
        self.width = width
        self.dtype = np.dtype(dtype)
        self.classify_width = 0  # labels of the classifier head; 0 = no head
        self.max_batch_size = max_batch_size
        self.priority_batch_size = priority_batch_size
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []  # requests with unbatched rows
        # Sentences reserved and not yet answered; tokens of enqueued requests not yet answered.
        self._sentences = QueueBound("sentences", "-max_queue_size", max_queue_size, self.metrics.queue_depth)
        self._tokens = QueueBound(
            "tokens", "-max_queued_tokens", max_queued_tokens, self.metrics.queue_tokens
        )
        self._closed = False
        self._stopped = False

    def set_output(self, width: int, dtype: str, *, num_labels: int = 0) -> None:
        """The encoder's vector width and dtype (and head size), known once the model is loaded."""
        self.width = width
        self.dtype = np.dtype(dtype)
        self.classify_width = num_labels

    # -- admission -------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Sentences accepted and not yet answered."""
        with self._cond:
            return self._sentences.queued

    @property
    def queued_tokens(self) -> int:
        """Tokens of enqueued requests not yet answered."""
        with self._cond:
            return self._tokens.queued

    @property
    def closed(self) -> bool:
        return self._closed

    def reserve(self, size: int) -> Reservation:
        """Hold room for ``size`` sentences, or raise ``Busy``/``RequestTooLarge``/``ShuttingDown``."""
        self._admit(size, self._sentences, new_request=True)
        return Reservation(size)

    def cancel(self, reservation: Reservation, error: ServeError) -> None:
        """Give back a reservation that will not be enqueued, failing its future with ``error``."""
        self._release(reservation.size)
        if not reservation.future.done():
            reservation.future.set_exception(error)

    def enqueue(
        self,
        reservation: Reservation,
        items: list[TokenizedInput],
        out_seq_len: int | None = None,
        *,
        task: Task = ENCODE,
    ) -> None:
        """Queue tokenized rows. ``out_seq_len`` is ``T`` of a ``[n, T, D]`` answer (NONE pooling).

        ``task=CLASSIFY`` asks for the classifier head's float32 logits ``[n, num_labels]``.
        """
        if len(items) != reservation.size:
            raise ValueError(f"reserved {reservation.size} rows, got {len(items)}")
        if not items:
            raise ValueError("nothing to enqueue")
        if task == CLASSIFY and not self.classify_width:
            raise ValueError("no classifier head is loaded")
        lengths = [len(item) for item in items]
        shape: tuple[int, ...] = (len(items), self.width)
        dtype = self.dtype
        if task == CLASSIFY:
            shape, dtype = (len(items), self.classify_width), np.dtype(np.float32)
        elif out_seq_len is not None:
            shape = (len(items), out_seq_len, self.width)
        tokens = sum(lengths)
        self._admit(tokens, self._tokens)  # before the output array is allocated
        now = self._clock()
        small = len(items) <= self.priority_batch_size
        try:
            output = np.zeros(shape, dtype=dtype)
        except MemoryError:
            self._release_tokens(tokens)
            raise
        pending = _Pending(
            reservation=reservation,
            items=items,
            lengths=lengths,
            key=now - (PRIORITY_HEAD_START_S if small else 0.0),
            arrival=now,
            output=output,
            rows=sorted(range(len(items)), key=lengths.__getitem__),
            remaining=len(items),
            task=task,
            tokens=tokens,
        )
        with self._cond:
            if self._stopped:
                self._release_locked(reservation.size, tokens)
                error = ShuttingDown("server stopped before the request could run")
                reservation.future.set_exception(error)
                return
            self._pending.append(pending)
            self._cond.notify()

    # -- workers ---------------------------------------------------------------------------------

    def next_batch(self, timeout: float = 0.1) -> DeviceBatch | None:
        """The next device batch, or None after ``timeout`` seconds without one (or once stopped)."""
        with self._cond:
            deadline = self._clock() + timeout
            while not self._stopped:
                now = self._clock()
                if self._pending:
                    ready_at = min(p.arrival for p in self._pending) + self.max_wait_s
                    queued = sum(len(p.rows) for p in self._pending)
                    if queued >= self.max_batch_size or now >= ready_at or self._closed:
                        return self._form_batch_locked(now)
                    wake = min(deadline, ready_at)
                else:
                    wake = deadline
                if now >= deadline:
                    return None
                self._cond.wait(max(0.0, wake - now))
            return None

    def _form_batch_locked(self, now: float) -> DeviceBatch:
        order = sorted(self._pending, key=lambda p: p.key)
        head = order[0]
        parts: list[tuple[_Pending, list[int]]] = []
        taken = head.rows[: self.max_batch_size]
        head.rows = head.rows[len(taken) :]
        parts.append((head, taken))
        count = len(taken)
        longest = max(head.lengths[i] for i in taken)
        real = sum(head.lengths[i] for i in taken)
        scanned = 0
        budget = MAX_SCAN_FACTOR * self.max_batch_size
        for other in order[1:]:
            if count >= self.max_batch_size or scanned >= budget:
                break
            if other.task != head.task:
                continue
            chosen: list[int] = []
            keep: list[int] = []
            for row in other.rows:
                scanned += 1
                length = other.lengths[row]
                padded = max(longest, length)
                fits = count < self.max_batch_size and scanned <= budget
                efficient = padded <= SHORT_SEQUENCE or (real + length) >= MIN_PADDING_EFFICIENCY * padded * (
                    count + 1
                )
                if fits and efficient:
                    chosen.append(row)
                    count += 1
                    real += length
                    longest = padded
                else:
                    keep.append(row)
            if chosen:
                other.rows = keep
                parts.append((other, chosen))
        self._pending = [p for p in self._pending if p.rows]
        items = [p.items[i] for p, rows in parts for i in rows]
        batch = pad_batch(items, longest)
        for pending, _ in parts:
            if not pending.started:
                pending.started = True
                self.metrics.queue_seconds.observe(max(0.0, now - pending.arrival))
        self.metrics.batch_size.observe(len(items))
        self.metrics.batch_padding.observe(1.0 - real / float(len(items) * longest))
        return DeviceBatch(batch=batch, parts=parts, formed_at=now, task=head.task)

    def complete(self, device_batch: DeviceBatch, embeddings: np.ndarray) -> None:
        """Write a batch's vectors back into their requests; resolve requests that are whole."""
        if embeddings.shape[0] != device_batch.size:
            self.fail(
                device_batch,
                EncodeFailed(
                    f"encoder returned {embeddings.shape[0]} rows for a batch of {device_batch.size}"
                ),
            )
            return
        finished: list[_Pending] = []
        offset = 0
        for pending, rows in device_batch.parts:
            chunk = embeddings[offset : offset + len(rows)]
            offset += len(rows)
            if pending.done:
                continue
            index = np.asarray(rows)
            if pending.output.ndim == 3:
                seq = min(pending.output.shape[1], chunk.shape[1])
                pending.output[index, :seq] = chunk[:, :seq]
            else:
                pending.output[index] = chunk
            with self._cond:
                pending.remaining -= len(rows)
                if pending.remaining == 0 and not pending.done:
                    pending.done = True
                    self._release_locked(pending.reservation.size, pending.tokens)
                    finished.append(pending)
        for pending in finished:
            if not pending.reservation.future.done():
                pending.reservation.future.set_result(pending.output)

    def fail(self, device_batch: DeviceBatch, error: ServeError) -> None:
        """Fail every request that has rows in ``device_batch`` (their other rows are dropped)."""
        self._fail_requests([p for p, _ in device_batch.parts], error)

    def _fail_requests(self, requests: list[_Pending], error: ServeError) -> None:
        failed: list[_Pending] = []
        with self._cond:
            for pending in requests:
                if pending.done:
                    continue
                pending.done = True
                pending.rows = []
                self._release_locked(pending.reservation.size, pending.tokens)
                failed.append(pending)
            self._pending = [p for p in self._pending if p.rows]
        for pending in failed:
            if not pending.reservation.future.done():
                pending.reservation.future.set_exception(error)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new requests (``ShuttingDown``); queued ones still run. Batches stop waiting."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until every accepted request is answered; False if ``timeout`` passed first."""
        deadline = self._clock() + timeout
        with self._cond:
            while self._sentences.queued > 0:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def stop(self) -> None:
        """Stop handing out batches and fail whatever is still queued with ``ShuttingDown``."""
        with self._cond:
            self._closed = True
            self._stopped = True
            leftovers = list(self._pending)
            self._cond.notify_all()
        self._fail_requests(leftovers, ShuttingDown("server stopped before the request could run"))

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _release(self, size: int) -> None:
        with self._cond:
            self._release_locked(size)

    def _release_locked(self, size: int, tokens: int = 0) -> None:
        self._sentences.set(self._sentences.queued - size)
        self._tokens.set(self._tokens.queued - tokens)
        self._cond.notify_all()

    def _admit(self, amount: int, bound: QueueBound, *, new_request: bool = False) -> None:
        """Count ``amount`` sentences or tokens into the queue, or raise naming the bound's flag.

        One check for both bounds: larger than the whole queue is ``RequestTooLarge`` (retrying
        cannot help), more than the room left is ``Busy`` (retrying later can). A closed queue
        takes no ``new_request`` (``ShuttingDown``); the tokens of one reserved before the close
        are still counted in, since accepted requests still run.
        """
        unit, flag, limit = bound.unit, bound.flag, bound.limit
        if amount > limit:
            raise RequestTooLarge(
                f"request of {amount} {unit} exceeds the server's queue of {limit} {unit} ({flag}); "
                "split it into smaller requests"
            )
        with self._cond:
            if new_request and self._closed:
                raise ShuttingDown("server is shutting down; send the request to another replica")
            queued = bound.queued
            if queued + amount > limit:
                raise Busy(
                    f"server busy: {queued} {unit} queued, room for {limit - queued} "
                    f"({flag}={limit}); retry later"
                )
            bound.set(queued + amount)

    def _release_tokens(self, tokens: int) -> None:
        with self._cond:
            self._release_locked(0, tokens)
