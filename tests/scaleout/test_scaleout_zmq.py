"""The classic two-port protocol across three replicas behind one randomizing balancer.

Three real ``bert-serving-start`` processes peer through ``-peer_service`` (a static list standing
in for the headless Service); a ``TcpBalancer`` standing in for kube-proxy sends every new TCP
connection to a random replica, so a client's PUSH and SUB connections usually land on different
replicas. Eight unmodified ``bert-serving-client`` instances with distinct identities then send
200 requests each, of mixed sizes: every answer must equal one server's answer for the same
input, arrive at the right client for the right request, and none may be lost. Then one replica is
SIGKILLed under load: requests it held fail with the client's own ``TimeoutError`` within the
client's timeout, and everything sent after the cluster noticed succeeds on the survivors.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from bert_serving.client import BertClient
from replicas import Cluster, cluster
from scaleout_load import make_workload, run_clients, summary, vectors_by_text, zmq_worker

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

CLIENTS = 8
REQUESTS = 200
KILL_TIMEOUT_MS = 4000
SETTLE_S = 1.0
"""After a kill, how long clients may still lose requests: the time to notice the dead
connections (milliseconds: the kernel closes them) and re-subscribe elsewhere, with margin."""
AFTER_S = 3.0
"""How long clients keep sending once the kill has settled."""


@pytest.fixture(scope="module")
def three(scaleout_model_dir, tmp_path_factory):
    with cluster(scaleout_model_dir, tmp_path_factory.mktemp("zmq-logs"), replicas=3) as c:
        yield c


@pytest.fixture(scope="module")
def workload():
    return make_workload(CLIENTS, REQUESTS, seed=1)


@pytest.fixture(scope="module")
def expected(three: Cluster, workload):
    """Every sentence's vector from replica 0 alone, bypassing the balancer (and the mesh)."""
    r0 = three.replicas[0]
    with BertClient(ip="127.0.0.1", port=r0.port, port_out=r0.port_out, timeout=60000) as bc:
        return vectors_by_text(bc.encode, workload.sentences)


def test_every_answer_reaches_the_right_client_across_replicas(three: Cluster, workload, expected):
    forwarded_before = sum(r.metric("bertserve_peer_answers_forwarded_total") for r in three.replicas)
    reports = run_clients(zmq_worker(three.client, workload, expected, timeout_ms=60000), CLIENTS)

    assert all(len(r.outcomes) == REQUESTS for r in reports), summary(reports)
    assert all(o.ok for r in reports for o in r.outcomes), summary(reports)
    assert not any(r.stray_ids for r in reports), "answers nobody waited for: " + summary(reports)
    assert len({r.identity for r in reports}) == CLIENTS
    # The balancer really split the connections: answers crossed replicas, and several replicas
    # encoded (each replica getting a connection is likely but not certain with 16 random picks).
    forwarded = sum(r.metric("bertserve_peer_answers_forwarded_total") for r in three.replicas)
    assert forwarded - forwarded_before > 0
    assert sum(r.encoded_ok() > 0 for r in three.replicas[1:]) >= 1
    for r in three.replicas:
        assert r.metric("bertserve_peer_answers_dropped_total", reason="no_subscriber") == 0
        assert r.metric("bertserve_answers_dropped_total", reason="no_subscriber") == 0


def test_a_killed_replica_loses_only_what_it_held_and_the_rest_keep_serving(
    three: Cluster, workload, expected
):
    victim, survivors = three.replicas[1], [three.replicas[0], three.replicas[2]]
    done = threading.Semaphore(0)
    stop = threading.Event()
    killed_at: list[float] = []
    served_before = {r.name: r.encoded_ok() for r in survivors}

    def killer() -> None:
        try:
            for _ in range(CLIENTS * 40):  # some load first
                if not done.acquire(timeout=60):
                    return
            killed_at.append(time.monotonic())
            victim.kill()
            three.remove(victim)
            time.sleep(SETTLE_S + AFTER_S)  # clients keep going well past the kill
        finally:
            stop.set()

    short = make_workload(CLIENTS, REQUESTS, seed=1)  # same sentences: the same expected vectors
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    reports = run_clients(
        zmq_worker(
            three.client,
            short,
            expected,
            timeout_ms=KILL_TIMEOUT_MS,
            progress=done.release,
            stop=stop,
            max_rounds=20,
        ),
        CLIENTS,
    )
    thread.join(timeout=10)
    assert killed_at, "the kill never happened: " + summary(reports)
    kill = killed_at[0]

    assert not any(r.fatal for r in reports), summary(reports)
    outcomes = [o for r in reports for o in r.outcomes]
    assert not any(o.wrong for o in outcomes), summary(reports)
    failed = [o for o in outcomes if o.error]
    for o in failed:
        assert o.error.startswith("TimeoutError"), o.error
        assert o.started < kill + SETTLE_S, (
            f"request {o.index} of client {o.client} sent after the kill failed"
        )
        assert o.ended - o.started < KILL_TIMEOUT_MS / 1000 + 2.0
    # Late answers of timed-out requests are fine; answers for anything else are not.
    assert all(r.stray_ids <= r.timed_out_ids for r in reports), summary(reports)
    after = [o for o in outcomes if o.started > kill + SETTLE_S]
    assert len(after) >= CLIENTS * 5 and all(o.ok for o in after), summary(reports)
    assert {o.client for o in after} == set(range(CLIENTS))
    # The survivors did the work after the kill, and each still answers correctly on its own.
    assert sum(r.encoded_ok() - served_before[r.name] for r in survivors) >= len(after)
    assert victim.proc.poll() is not None
    texts = short.requests[0][0]
    want = np.stack([expected[t] for t in texts])
    for r in survivors:
        with BertClient(ip="127.0.0.1", port=r.port, port_out=r.port_out, timeout=10000) as bc:
            np.testing.assert_allclose(bc.encode(texts), want, rtol=1e-5, atol=1e-5)
    print(f"kill test: {len(failed)} of {len(outcomes)} requests timed out (sent before the kill settled)")
