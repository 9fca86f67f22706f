"""Client load for the scale-out tests: many real clients, mixed request sizes, every answer checked.

Why it exists: "every answer correct, none lost, none delivered to the wrong client" needs a
workload whose answers identify their request. Each request starts with a sentence used by no
other request (its *head*), followed by sentences from a shared pool; so the first row of an
answer names exactly one (client, request), and an answer delivered to the wrong client or for
the wrong request cannot match. Expected vectors are computed once by one replica directly
(``vectors_by_text``), so "correct" means "what a single server answers for the same input".

Clients are the unmodified ``bert-serving-client`` (ZeroMQ) and ``requests`` (HTTP), each in its
own thread, each ZeroMQ client with its own identity. Every loop is bounded by its request list
or by ``max_rounds``.
"""

from __future__ import annotations

import base64
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests

from bertserve_server.model.synthetic import DEFAULT_VOCAB

WORDS = tuple(dict.fromkeys(t for t in DEFAULT_VOCAB if not t.startswith(("[", "#")) and t.isalpha()))
"""The synthetic vocabulary's whole words, so that sentences tokenize to known pieces."""
SIZES = (1, 1, 1, 2, 2, 3, 4, 5, 8, 12, 16, 24, 32)
"""Sentences per request: mostly small, some large (the mix real clients send)."""
RTOL = ATOL = 1e-5
"""Same tolerance as the single-server end-to-end tests: only float summation order may differ."""


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


@dataclass
class Workload:
    """``requests[client][i]`` is the texts of request ``i`` of ``client``; ``sentences`` every distinct one."""

    requests: list[list[list[str]]]
    sentences: list[str]


def make_workload(clients: int, per_client: int, *, seed: int = 0, pool_size: int = 200) -> Workload:
    rng = random.Random(seed)
    seen: set[str] = set()

    def unique(lo: int, hi: int) -> str:
        for _ in range(10000):
            text = _sentence(rng, lo, hi)
            if text not in seen:
                seen.add(text)
                return text
        raise AssertionError("could not draw a unique sentence")

    pool = [unique(1, 40) for _ in range(pool_size)]
    plan = []
    for _ in range(clients):
        mine = []
        for _ in range(per_client):
            size = rng.choice(SIZES)
            mine.append([unique(3, 12)] + [rng.choice(pool) for _ in range(size - 1)])
        plan.append(mine)
    return Workload(plan, sorted(seen))


def vectors_by_text(
    encode: Callable[[list[str]], np.ndarray], sentences: Sequence[str]
) -> dict[str, np.ndarray]:
    """Each sentence's vector from ``encode`` (one server, asked directly), keyed by the sentence.

    Not ``server_harness.expected_vectors`` (an array computed in-process row by row): here the
    reference is whatever one real replica answers, so any sentence's answer can be checked later.
    """
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(sentences), 128):
        chunk = list(sentences[start : start + 128])
        for text, vector in zip(chunk, encode(chunk), strict=True):
            out[text] = np.asarray(vector)
    return out


def mismatch(got: Any, texts: Sequence[str], expected: dict[str, np.ndarray]) -> str | None:
    """Why ``got`` is not the answer for ``texts`` (``None`` when it is)."""
    want = np.stack([expected[t] for t in texts])
    got = np.asarray(got)
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if not np.allclose(got, want, rtol=RTOL, atol=ATOL):
        return f"values differ by up to {float(np.max(np.abs(got - want))):.3g} (head {texts[0]!r})"
    return None


@dataclass
class Outcome:
    client: int
    index: int
    size: int
    started: float
    ended: float
    error: str | None = None
    wrong: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.wrong is None


@dataclass
class ClientReport:
    client: int
    identity: bytes
    outcomes: list[Outcome] = field(default_factory=list)
    timed_out_ids: set[int] = field(default_factory=set)
    stray_ids: set[int] = field(default_factory=set)
    fatal: str | None = None


def run_clients(worker: Callable[[int, ClientReport], None], clients: int) -> list[ClientReport]:
    """Run ``worker(client, report)`` in one thread per client; every thread is joined."""
    reports = [ClientReport(c, b"") for c in range(clients)]
    threads = [
        threading.Thread(target=_guard, args=(worker, c, reports[c]), name=f"client-{c}", daemon=True)
        for c in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
        if t.is_alive():
            raise AssertionError(f"{t.name} did not finish")
    return reports


def _guard(worker: Callable[[int, ClientReport], None], client: int, report: ClientReport) -> None:
    try:
        worker(client, report)
    except BaseException as exc:  # reported, never lost in a thread
        report.fatal = f"{type(exc).__name__}: {exc}"


def _run_requests(
    client: int,
    report: ClientReport,
    workload: Workload,
    attempt: Callable[[list[str], int, Outcome], None],
    *,
    stop: threading.Event | None,
    max_rounds: int,
    pause_s: float,
    progress: Callable[[], None] | None,
) -> None:
    """The loop both workers share: one outcome per request, in order, until ``stop``.

    ``attempt`` sends one request and records a wrong answer or an error on the outcome.
    Without ``stop``: one pass. With ``stop``: passes until it is set (at most ``max_rounds``).
    """
    index = 0
    for _ in range(max_rounds):
        for texts in workload.requests[client]:
            if stop is not None and stop.is_set():
                return
            outcome = Outcome(client, index, len(texts), time.monotonic(), 0.0)
            attempt(texts, index, outcome)
            outcome.ended = time.monotonic()
            report.outcomes.append(outcome)
            index += 1
            if progress is not None:
                progress()
            if pause_s:
                time.sleep(pause_s)
        if stop is None:
            break


def zmq_worker(
    make_client: Callable[..., Any],
    workload: Workload,
    expected: dict[str, np.ndarray],
    *,
    timeout_ms: int,
    stop: threading.Event | None = None,
    max_rounds: int = 1,
    pause_s: float = 0.0,
    progress: Callable[[], None] | None = None,
) -> Callable[[int, ClientReport], None]:
    """A worker running one real ``BertClient`` (distinct identity) through its request list.

    Without ``stop``: one pass. With ``stop``: passes until it is set (at most ``max_rounds``).
    """

    def work(client: int, report: ClientReport) -> None:
        report.identity = f"client-{client:02d}-{uuid.uuid4()}".encode("ascii")
        bc = make_client(identity=report.identity, timeout=timeout_ms)

        def attempt(texts: list[str], index: int, outcome: Outcome) -> None:
            try:
                outcome.wrong = mismatch(bc.encode(texts), texts, expected)
            except TimeoutError as exc:
                outcome.error = f"TimeoutError: {str(exc)[:60]}"
                report.timed_out_ids.add(bc.request_id)

        try:
            _run_requests(
                client,
                report,
                workload,
                attempt,
                stop=stop,
                max_rounds=max_rounds,
                pause_s=pause_s,
                progress=progress,
            )
        finally:
            report.stray_ids = set(bc.pending_response)
            bc.close()

    return work


def http_worker(
    base_url: str,
    workload: Workload,
    expected: dict[str, np.ndarray],
    *,
    timeout_s: float,
    stop: threading.Event | None = None,
    max_rounds: int = 1,
    keep_alive: bool = True,
    pause_s: float = 0.0,
    progress: Callable[[], None] | None = None,
) -> Callable[[int, ClientReport], None]:
    """A worker alternating ``POST /encode`` and ``POST /v1/embeddings`` (float and base64)."""

    def work(client: int, report: ClientReport) -> None:
        session = requests.Session() if keep_alive else None

        def attempt(texts: list[str], index: int, outcome: Outcome) -> None:
            try:
                got = _http_encode(session, base_url, texts, route=index % 3, timeout_s=timeout_s)
                outcome.wrong = mismatch(got, texts, expected)
            except (requests.RequestException, HttpError) as exc:
                outcome.error = f"{type(exc).__name__}: {str(exc)[:120]}"

        try:
            _run_requests(
                client,
                report,
                workload,
                attempt,
                stop=stop,
                max_rounds=max_rounds,
                pause_s=pause_s,
                progress=progress,
            )
        finally:
            if session is not None:
                session.close()

    return work


class HttpError(Exception):
    """A non-200 answer."""


def _http_encode(
    session: requests.Session | None, base_url: str, texts: list[str], *, route: int, timeout_s: float
) -> np.ndarray:
    post = session.post if session is not None else requests.post
    if route == 0:
        r = post(f"{base_url}/encode", json={"id": 1, "texts": texts}, timeout=timeout_s)
        if r.status_code != 200:
            raise HttpError(f"/encode {r.status_code}: {r.text[:200]}")
        return np.asarray(r.json()["result"], dtype=np.float32)
    fmt = "float" if route == 1 else "base64"
    r = post(f"{base_url}/v1/embeddings", json={"input": texts, "encoding_format": fmt}, timeout=timeout_s)
    if r.status_code != 200:
        raise HttpError(f"/v1/embeddings {r.status_code}: {r.text[:200]}")
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    if fmt == "float":
        return np.asarray([d["embedding"] for d in data], dtype=np.float32)
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])


def summary(reports: Sequence[ClientReport]) -> str:
    """A short description of what failed, for assertion messages."""
    lines = []
    for report in reports:
        bad = [o for o in report.outcomes if not o.ok]
        if report.fatal or bad or report.stray_ids - report.timed_out_ids:
            lines.append(
                f"client {report.client}: fatal={report.fatal} bad={len(bad)} "
                f"first={[(o.index, o.error, o.wrong) for o in bad[:3]]} "
                f"strays={sorted(report.stray_ids - report.timed_out_ids)[:5]}"
            )
    return "\n".join(lines) or "all good"
