"""``/healthz`` stays responsive while a 64 MiB body is parsed and a 10,000-sentence result serialized.

A real ``bert-serving-start`` process (the numpy model) with ``-pooling_strategy NONE``, so the
10,000-sentence answer is 10,000 x 5 x 8 floats of JSON. The liveness probe must never wait
behind that work: the kubelet restarts a pod whose probe times out.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

SENTENCES = 10_000
BODY_BYTES = 64 * 1024 * 1024
PROBE_LIMIT_S = 0.1
#: A shared 2-core machine under load delays an idle probe by 50 ms and, at load averages of 20,
#: by several hundred now and then: so 5 % of the probes may be slower than PROBE_LIMIT_S, none
#: beyond this. Before the fix one probe waited 1.4-1.9 s behind json.loads / tolist /
#: json.dumps on the event loop (and longer on a busier machine).
NOISE_LIMIT_S = 1.0


def big_body() -> bytes:
    sentence = ("hello world " * (BODY_BYTES // SENTENCES // 12))[: BODY_BYTES // SENTENCES - 8]
    body = json.dumps({"id": 1, "texts": [sentence] * SENTENCES}).encode()
    assert BODY_BYTES * 0.95 < len(body) <= BODY_BYTES
    return body


def test_healthz_answers_within_100ms_while_a_64_mib_request_is_parsed_and_answered(fake_process):
    # -max_seq_len 5 keeps WordPiece short (sentences are cut to 5 x 101 characters first).
    server = fake_process(0.0, pooling_strategy="NONE", max_seq_len="5")
    server.wait_ready(60)
    body = big_body()
    session = requests.Session()
    assert session.get(server.url("/healthz"), timeout=5).ok  # connection warm
    result: dict[str, object] = {}

    def post() -> None:
        r = requests.post(
            server.url("/encode"), data=body, headers={"Content-Type": "application/json"}, timeout=120
        )
        result["status"] = r.status_code
        result["content"] = r.content  # parsed after the probing: json.loads would stall this process

    sender = threading.Thread(target=post)
    latencies: list[float] = []
    sender.start()
    slowest = 0.0
    probes = 0
    while sender.is_alive():
        started = time.perf_counter()
        assert session.get(server.url("/healthz"), timeout=5).ok
        slowest = max(slowest, time.perf_counter() - started)
        latencies.append(time.perf_counter() - started)
        probes += 1
        sender.join(0.02)
    assert result["status"] == 200
    rows = json.loads(result["content"])["result"]  # type: ignore[arg-type]
    assert (len(rows), len(rows[0]), len(rows[0][0])) == (SENTENCES, 5, 8)
    assert probes > 10, "the request finished before it could be probed"
    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95)]
    seen = f"{len(latencies)} probes: p95 {p95 * 1000:.0f} ms, slowest {slowest * 1000:.0f} ms"
    assert p95 < PROBE_LIMIT_S, seen
    assert slowest < NOISE_LIMIT_S, seen
