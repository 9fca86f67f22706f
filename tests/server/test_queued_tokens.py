"""The queue's bound in tokens (``-max_queued_tokens``), through a real server process.

``-max_queue_size`` counts sentences, but a sentence costs 3 to ``max_seq_len`` tokens (up to the
model's positions with ``-max_seq_len NONE``), and tokens are what the queue holds in memory and
the device spends time on. The server process here is ``bert-serving-start``'s own code path
with the numpy fake model, each device batch taking 2 s, so a request stays queued while others
arrive. Clients are the unmodified 1.10.0 client (which raises numpy's TypeError or ValueError
for the error reply, depending on the message) and plain HTTP.

Each sentence below is one WordPiece token: ``[CLS] hello [SEP]`` = 3 tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from server_harness import wait_until
from server_process import ServerProcess, start_fake_process

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LIMIT = 60
TOKENS_PER_SENTENCE = 3


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_fake_process(tmp_path, 2.0, max_queued_tokens=str(LIMIT))
    try:
        proc.wait_ready(60)
        yield proc
    finally:
        proc.stop()


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """One sample of ``GET /metrics`` (0 when absent), whatever the label order."""
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in requests.get(server.url("/metrics"), timeout=5).text.splitlines():
        sample, _, value = line.rpartition(" ")
        base, _, rest = sample.partition("{")
        if base == name and sorted(p for p in rest.rstrip("}").split(",") if p) == want:
            return float(value)
    return 0.0


def refused(server: ServerProcess, frontend: str, outcome: str) -> float:
    return metric(server, "bertserve_requests_total", frontend=frontend, kind="encode", outcome=outcome)


def hold_queue(server: ServerProcess, sentences: int) -> tuple[threading.Thread, dict[str, Any]]:
    """An HTTP request that keeps ``sentences`` x 3 tokens queued while its batch runs (2 s)."""
    result: dict[str, Any] = {}

    def post() -> None:
        r = requests.post(server.url("/encode"), json={"id": 1, "texts": ["hello"] * sentences}, timeout=30)
        result["status"], result["body"] = r.status_code, r.json()

    thread = threading.Thread(target=post)
    thread.start()
    wait_until(
        lambda: metric(server, "bertserve_queue_depth_tokens") == sentences * TOKENS_PER_SENTENCE,
        10,
        "the first request's tokens to be queued",
    )
    return thread, result


def test_a_request_over_the_whole_token_bound_is_too_large(server: ServerProcess) -> None:
    too_many = LIMIT // TOKENS_PER_SENTENCE + 1  # within -max_queue_size, over -max_queued_tokens
    with server.client() as bc:
        with pytest.raises(
            (TypeError, ValueError), match=r"bertserve error \[too_large\].*-max_queued_tokens"
        ):
            bc.encode(["hello"] * too_many)
        assert bc.encode(["hello"] * (LIMIT // TOKENS_PER_SENTENCE)).shape[0] == LIMIT // 3
    r = requests.post(server.url("/encode"), json={"id": 2, "texts": ["hello"] * too_many}, timeout=30)
    assert r.status_code == 413 and "-max_queued_tokens" in r.json()["description"], r.text
    assert refused(server, "zmq", "too_large") == 1 and refused(server, "http", "too_large") == 1
    assert metric(server, "bertserve_queue_depth_tokens") == 0


def test_a_full_token_queue_refuses_as_busy_and_keeps_serving(server: ServerProcess) -> None:
    first, result = hold_queue(server, 12)  # 36 of 60 tokens
    try:
        with server.client() as bc:
            with pytest.raises(
                (TypeError, ValueError), match=rf"\[busy\].*36 tokens queued.*-max_queued_tokens={LIMIT}"
            ):
                bc.encode(["hello"] * 9)  # 27 more: over the bound
            r = requests.post(server.url("/encode"), json={"id": 3, "texts": ["hello"] * 9}, timeout=30)
            assert r.status_code == 429 and r.headers["Retry-After"] == "1", r.text
            assert f"-max_queued_tokens={LIMIT}" in r.json()["description"], r.text
            # Well under -max_queue_size (10,000 sentences): only the token bound refused them.
            assert refused(server, "zmq", "busy") == 1 and refused(server, "http", "busy") == 1
            first.join(30)
            assert result["status"] == 200 and len(result["body"]["result"]) == 12  # the held one completes
            assert metric(server, "bertserve_queue_depth_tokens") == 0
            assert bc.encode(["hello"] * 9).shape[0] == 9  # and the queue has room again
    finally:
        first.join(30)
