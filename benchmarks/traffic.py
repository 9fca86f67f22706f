"""Natural-length traffic from many concurrent clients: sentences, the load loop, latency percentiles.

Why it exists: a server is judged by what its users feel, many clients at once sending sentences
of the lengths people write, each waiting for its answer, not by one fixed-shape batch. This
module is the load generator ``bench_server.py`` points at every side alike (our server through
the real ``bert-serving-client`` and through HTTP ``/encode``, and the ONNX Runtime peer through
the same HTTP request), so the sides differ only in the server:

- :func:`natural_token_counts` draws token counts from ``bench_model.make_inputs`` itself (its
  log-normal ``NATURAL_MEDIAN_TOKENS``/``NATURAL_SIGMA``, cut at ``max_seq_len``), so the model
  benchmark and this one mean the same thing by "natural lengths";
- :func:`sentence_of` writes a sentence of words that WordPiece turns into exactly that many
  tokens, so each server's own tokenizer sees real text;
- :func:`run_round` runs closed-loop clients (each sends a request, waits for its answer, sends
  the next) for a fixed time and records every request's latency;
- :func:`percentile` is numpy's default (linear) percentile, without numpy.

Nothing here imports TensorFlow; ``tests/test_bench_traffic.py`` tests the pure parts.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from bench_model import make_inputs

#: [CLS] and [SEP] around every sentence.
SPECIAL_TOKENS = 2

#: Sends one request of sentences and returns how many vectors came back.
Send = Callable[[list[str]], int]
#: Opens one client (a connection, a ``BertClient``) for one load thread and closes it after.
ClientFactory = Callable[[], AbstractContextManager[Send]]


def natural_token_counts(count: int, max_seq_len: int, seed: int) -> list[int]:
    """Token counts ([CLS]/[SEP] included) of ``count`` natural sentences, as ``bench_model`` draws them."""
    _, mask, _ = make_inputs(count, max_seq_len, seed, vocab_size=30522, lengths="natural")
    return [int(n) for n in mask.sum(axis=1)]


def sentence_of(tokens: int, words: Sequence[str], rng: random.Random) -> str:
    """A sentence that tokenizes to ``tokens`` tokens with [CLS]/[SEP]: capitalised words and a full stop.

    ``words`` must each be one WordPiece token (``serving_bench.vocab_words``); the full stop is
    one more. ``tokens`` below 3 cannot be written (a sentence has at least one word).
    """
    pieces = tokens - SPECIAL_TOKENS
    if pieces < 1:
        raise ValueError(f"a sentence needs at least 3 tokens with [CLS]/[SEP], got {tokens}")
    chosen = [rng.choice(words) for _ in range(max(1, pieces - 1))]
    chosen[0] = chosen[0].capitalize()
    return " ".join(chosen) + ("." if pieces > 1 else "")


def natural_sentences(count: int, max_seq_len: int, words: Sequence[str], seed: int) -> list[str]:
    """``count`` sentences of natural lengths (see :func:`natural_token_counts`)."""
    rng = random.Random(seed)
    return [sentence_of(n, words, rng) for n in natural_token_counts(count, max_seq_len, seed)]


def client_requests(
    sentences: Sequence[str], clients: int, per_request: int, requests_per_client: int
) -> list[list[list[str]]]:
    """Each client's own list of requests (``per_request`` sentences each), dealt from ``sentences`` in turn."""
    if not sentences:
        raise ValueError("no sentences to send")
    plan: list[list[list[str]]] = []
    cursor = 0
    for _ in range(clients):
        own = []
        for _ in range(requests_per_client):
            own.append([sentences[(cursor + i) % len(sentences)] for i in range(per_request)])
            cursor += per_request
        plan.append(own)
    return plan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating linearly between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def verdict(
    ratio: float, p99_ms: float, peer_p99_ms: float, target: float, spread: tuple[float, float] | None = None
) -> str:
    """The target line: ``ratio`` x the peer's throughput at a p99 no higher than the peer's; by how much missed.

    ``spread`` (the lowest and highest per-round ratio) is shown beside the ratio: a median near
    the target means little when the rounds disagree.
    """
    misses = []
    if ratio < target:
        misses.append(f"throughput {target - ratio:.2f}x short ({target / ratio - 1:.0%} more needed)")
    if p99_ms > peer_p99_ms:
        misses.append(f"p99 {p99_ms / peer_p99_ms - 1:.0%} above the peer's")
    head = (
        f"{ratio:.2f}x the peer's throughput"
        + (f" (per round {spread[0]:.2f}-{spread[1]:.2f}x)" if spread else "")
        + f" (target {target}x), p99 {p99_ms:.0f} ms vs the peer's "
        f"{peer_p99_ms:.0f} ms: "
    )
    return head + ("**met**" if not misses else "**not met**: " + "; ".join(misses))


@dataclass
class Round:
    """One side under load for a while: what was answered, how fast, and each request's latency."""

    side: str
    sentences: int = 0
    seconds: float = 0.0  # from the start signal to the last answer
    latencies: list[float] = field(default_factory=list)  # seconds, one per request
    server_cpu: float = float("nan")  # CPU seconds the server process spent in the round

    @property
    def throughput(self) -> float:
        return self.sentences / self.seconds if self.seconds else 0.0


def run_round(
    side: str,
    open_client: ClientFactory,
    plan: list[list[list[str]]],
    seconds: float,
    *,
    server_cpu: Callable[[], float] | None = None,
) -> Round:
    """One closed-loop client per entry of ``plan``, all started together, each sending its requests in turn.

    Clients connect before the start signal (connecting is not timed), then send until
    ``seconds`` have passed (each at least one request), cycling through their own requests.
    Any failure (an exception, a wrong number of vectors) stops the round with an error naming
    the side: a benchmark that lost answers must not report a speed.
    """
    start = threading.Barrier(len(plan) + 1)
    lock = threading.Lock()
    result = Round(side)
    errors: list[BaseException] = []
    finished: list[float] = []
    deadline = [0.0]

    def client(requests: list[list[str]]) -> None:
        latencies, sent, last = [], 0, 0.0
        try:
            with open_client() as send:
                start.wait(120)
                for number in range(1_000_000):
                    texts = requests[number % len(requests)]
                    began = time.perf_counter()
                    answered = send(texts)
                    last = time.perf_counter()
                    if answered != len(texts):
                        raise RuntimeError(f"{side}: {answered} vectors for {len(texts)} sentences")
                    latencies.append(last - began)
                    sent += len(texts)
                    if last >= deadline[0]:
                        break
        except BaseException as exc:  # reported by the caller, with the side named
            errors.append(exc)
            start.abort()
        with lock:
            result.latencies += latencies
            result.sentences += sent
            finished.append(last)

    threads = [threading.Thread(target=client, args=(own,), daemon=True) for own in plan]
    for thread in threads:
        thread.start()
    cpu_before = server_cpu() if server_cpu else math.nan
    try:
        began = time.perf_counter()
        deadline[0] = began + seconds
        start.wait(120)
    except threading.BrokenBarrierError:
        pass
    for thread in threads:
        thread.join(seconds + 300)
    if errors or any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"{side}: load round failed: {errors[:1] or 'clients did not finish'}")
    result.seconds = max(finished) - began
    if server_cpu:
        result.server_cpu = server_cpu() - cpu_before
    return result


def http_client(port: int, path: str = "/encode") -> ClientFactory:
    """Clients that POST ``{"id", "texts"}`` over one kept-alive HTTP/1.1 connection each."""

    @contextmanager
    def open_client() -> Iterator[Send]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        number = [0]

        def send(texts: list[str]) -> int:
            number[0] += 1
            body = json.dumps({"id": number[0], "texts": texts}).encode()
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"POST {path}: HTTP {resp.status}: {data[:200]!r}")
            return len(json.loads(data)["result"])

        try:
            yield send
        finally:
            conn.close()

    return open_client


def zmq_client(port: int, port_out: int) -> ClientFactory:
    """Clients that are the real ``bert-serving-client`` 1.10.0 ``BertClient``, one per load thread."""

    @contextmanager
    def open_client() -> Iterator[Send]:
        from bert_serving.client import BertClient

        with BertClient(
            ip="127.0.0.1", port=port, port_out=port_out, check_length=False, timeout=300_000
        ) as bc:
            yield lambda texts: len(bc.encode(texts))

    return open_client
