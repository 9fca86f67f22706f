"""A rolling update under load loses no request: the data path of ``maxSurge``/``maxUnavailable``.

What a Deployment rollout does to each old pod, done here to processes: start the new replica
and wait for ``/readyz``; take the old one out of the Service (the balancer); wait the preStop
sleep; send SIGTERM. Meanwhile unmodified ``bert-serving-client`` instances and HTTP clients keep
encoding. The old replica hands its clients' request connections to the others, finishes what it
accepted, makes its peers stop routing answers to it, and only then closes ``-port_out``; its
subscribers reconnect elsewhere and receive the answers held for them. Every request of every
client must succeed with the right answer: a lost one would surface as the client's
``TimeoutError``.

The peer list reserves six slots (three old, three new), as DNS would list a starting pod; the
mesh ignores slots where nothing listens yet.
"""

from __future__ import annotations

import re
import threading
import time

import polling
import pytest
from bert_serving.client import BertClient
from replicas import cluster
from scaleout_load import (
    ClientReport,
    http_worker,
    make_workload,
    run_clients,
    summary,
    vectors_by_text,
    zmq_worker,
)

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

ZMQ_CLIENTS = 6
HTTP_CLIENTS = 2
PRESTOP_S = 0.3
CLIENT_TIMEOUT_MS = 20000
HANDED_OFF = re.compile(r"handed off (\d+) request connection")


def test_rolling_update_under_load_loses_no_request(scaleout_model_dir, tmp_path):
    workload = make_workload(ZMQ_CLIENTS + HTTP_CLIENTS, 40, seed=3)
    with cluster(scaleout_model_dir, tmp_path, replicas=3, slots=6, flags=["-drain_timeout=20"]) as c:
        r0 = c.replicas[0]
        with BertClient(ip="127.0.0.1", port=r0.port, port_out=r0.port_out, timeout=60000) as bc:
            expected = vectors_by_text(bc.encode, workload.sentences)

        stop = threading.Event()
        lock = threading.Lock()
        progress = [0]

        def tick() -> None:
            with lock:
                progress[0] += 1

        def count() -> int:
            with lock:
                return progress[0]

        zmq_work = zmq_worker(
            c.client,
            workload,
            expected,
            timeout_ms=CLIENT_TIMEOUT_MS,
            stop=stop,
            max_rounds=100,
            pause_s=0.02,
            progress=tick,
        )
        http_work = http_worker(
            c.url(""),
            workload,
            expected,
            timeout_s=CLIENT_TIMEOUT_MS / 1000,
            stop=stop,
            max_rounds=100,
            keep_alive=False,
            pause_s=0.02,
            progress=tick,
        )

        def work(client: int, report: ClientReport) -> None:
            (zmq_work if client < ZMQ_CLIENTS else http_work)(client, report)

        reports: list[ClientReport] = []
        load = threading.Thread(
            target=lambda: reports.extend(run_clients(work, ZMQ_CLIENTS + HTTP_CLIENTS)), daemon=True
        )
        load.start()
        try:
            _wait(lambda: count() >= 50, 60, "clients to get going")
            old = list(c.replicas)
            steps = []
            for replica in old:
                (new,) = c.start(1, timeout=180)
                c.remove(replica)
                time.sleep(PRESTOP_S)
                before = count()
                replica.terminate()
                assert replica.proc.wait(40) == 0, replica.log[-3000:]
                steps.append((replica, new, count() - before))
                mark = count()
                _wait(lambda m=mark: count() >= m + 30, 60, "load on the new replica set")
        finally:
            stop.set()
            load.join(timeout=120)
        assert not load.is_alive()

        assert len(reports) == ZMQ_CLIENTS + HTTP_CLIENTS
        outcomes = [o for r in reports for o in r.outcomes]
        assert all(o.ok for o in outcomes) and not any(r.fatal for r in reports), summary(reports)
        assert not any(r.stray_ids for r in reports), summary(reports)
        assert all(len(r.outcomes) >= 20 for r in reports), [len(r.outcomes) for r in reports]
        for replica, _, _ in steps:
            assert "server stopped" in replica.log and "drain incomplete" not in replica.log
        # The new set served requests.
        assert sum(r.encoded_ok() for r in c.live) > 0
        # Hand-off: each long-lived client's request connection sits on an old replica until one
        # hands it off, so the old replicas together hand off at least one per ZMQ client, and
        # none leaves a connection open.
        handed = [sum(map(int, HANDED_OFF.findall(r.log))) for r in old]
        assert sum(handed) >= ZMQ_CLIENTS, handed
        assert not any("still open after" in r.log for r in old), [r.log[-2000:] for r in old]


def _wait(condition, timeout: float, what: str) -> None:
    polling.wait_for(condition, timeout, what, interval=0.05)
