"""HTTP (``/encode``) and OpenAI (``/v1/embeddings``) routes across three replicas behind one balancer.

Each HTTP request is answered on the connection that carried it, so these routes need no
peering; what must hold is that they work through the same Service as the classic ports, with
the same answers as one server, and that a replica dying under load costs only the requests it
was processing (a connection error, at once), never the ones sent after the balancer dropped it.
"""

from __future__ import annotations

import threading
import time

import pytest
from replicas import Cluster, cluster
from scaleout_load import http_worker, make_workload, run_clients, summary, vectors_by_text

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

CLIENTS = 8
REQUESTS = 60
TIMEOUT_S = 30.0
SETTLE_S = 1.0
AFTER_S = 3.0
"""How long clients keep sending once the kill has settled."""


@pytest.fixture(scope="module")
def three(scaleout_model_dir, tmp_path_factory):
    with cluster(scaleout_model_dir, tmp_path_factory.mktemp("http-logs"), replicas=3) as c:
        yield c


@pytest.fixture(scope="module")
def workload():
    return make_workload(CLIENTS, REQUESTS, seed=2)


@pytest.fixture(scope="module")
def expected(three: Cluster, workload):
    """Every sentence's vector from replica 0 alone, over its own ``/encode``."""
    import numpy as np
    import requests

    def encode(texts: list[str]) -> np.ndarray:
        r = requests.post(three.replicas[0].url("/encode"), json={"id": 0, "texts": texts}, timeout=60)
        r.raise_for_status()
        return np.asarray(r.json()["result"], dtype=np.float32)

    return vectors_by_text(encode, workload.sentences)


def test_http_and_openai_routes_through_the_balancer_equal_one_server(three: Cluster, workload, expected):
    served_before = {r.name: r.encoded_ok("http") for r in three.replicas}
    # Half the clients keep connections alive, half open one per request: both spread over replicas.
    reports = run_clients(
        lambda c, report: http_worker(
            three.url(""), workload, expected, timeout_s=TIMEOUT_S, keep_alive=c % 2 == 0
        )(c, report),
        CLIENTS,
    )
    assert all(len(r.outcomes) == REQUESTS for r in reports), summary(reports)
    assert all(o.ok for r in reports for o in r.outcomes), summary(reports)
    assert all(r.encoded_ok("http") > served_before[r.name] for r in three.replicas)


def test_a_killed_replica_fails_only_its_own_http_requests(three: Cluster, workload, expected):
    victim, survivors = three.replicas[2], three.replicas[:2]
    done = threading.Semaphore(0)
    stop = threading.Event()
    killed_at: list[float] = []

    def killer() -> None:
        try:
            for _ in range(CLIENTS * 12):
                if not done.acquire(timeout=60):
                    return
            killed_at.append(time.monotonic())
            victim.kill()
            three.remove(victim)
            time.sleep(SETTLE_S + AFTER_S)  # clients keep going well past the kill
        finally:
            stop.set()

    served_before = {r.name: r.encoded_ok("http") for r in survivors}
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    reports = run_clients(
        lambda c, report: http_worker(
            three.url(""),
            workload,
            expected,
            timeout_s=TIMEOUT_S,
            keep_alive=c % 2 == 0,
            progress=done.release,
            stop=stop,
            max_rounds=20,
        )(c, report),
        CLIENTS,
    )
    thread.join(timeout=10)
    assert killed_at, "the kill never happened: " + summary(reports)
    kill = killed_at[0]
    outcomes = [o for r in reports for o in r.outcomes]
    assert not any(r.fatal for r in reports), summary(reports)
    assert not any(o.wrong for o in outcomes), summary(reports)
    for o in outcomes:
        if o.error:
            # The connection to the dead replica broke: a clear error at once, not a hang.
            assert o.started < kill + SETTLE_S, f"{o.error} for a request sent after the kill"
            assert o.ended - o.started < 5.0, o.error
            assert "Connection" in o.error or "RemoteDisconnected" in o.error, o.error
    after = [o for o in outcomes if o.started > kill + SETTLE_S]
    assert len(after) >= CLIENTS * 5 and all(o.ok for o in after), summary(reports)
    assert {o.client for o in after} == set(range(CLIENTS))
    assert all(r.encoded_ok("http") > served_before[r.name] for r in survivors)
