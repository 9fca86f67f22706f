"""The authenticated mesh with real ``bert-serving-start`` processes and the real 1.10.0 client.

Two replicas share one mesh secret (``-peer_key_file``); a client's PUSH goes to one and its SUB
to the other, so every answer crosses the mesh. An intruder without the key then pings, forges a
"leaving" for a healthy replica and forges an answer for the client: it gets nothing back, and the
client keeps getting its (correct) answers across the mesh. A third replica with another key
cannot join. And without a usable key file ``-peer_service`` does not start at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import zmq
from bert_serving.client import BertClient
from peer_keys import write_peer_key
from replicas import BERT_SERVING_START, REPLICA_ENV, Cluster, Replica, cluster

from bertserve_server.mesh import wire

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def two(scaleout_model_dir, tmp_path_factory):
    with cluster(scaleout_model_dir, tmp_path_factory.mktemp("mesh-security"), replicas=2, slots=3) as c:
        yield c


def node_id(replica) -> bytes:
    status = requests.get(replica.url("/status/server"), timeout=5).json()
    return status["peers"]["node_id"].encode("ascii")


def crossing_client(two: Cluster) -> BertClient:
    """PUSH to replica 0, SUB on replica 1: every answer must cross the mesh."""
    r0, r1 = two.replicas[:2]
    return BertClient(ip="127.0.0.1", port=r0.port, port_out=r1.port_out, timeout=20000)


def test_forged_peer_messages_without_the_key_get_nothing_and_change_nothing(two: Cluster):
    r0, r1 = two.replicas[:2]
    with crossing_client(two) as bc:
        before = bc.encode(["hello world"])
        context = zmq.Context()
        intruders = []
        try:
            for target in (r0, r1):
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                # Once the replica has refused the handshake the DEALER has no peer left and a
                # send would block for ever: a refused frame is what this test wants, so a send
                # that cannot go anywhere within a second counts as refused.
                sock.setsockopt(zmq.SNDTIMEO, 1000)
                sock.connect(f"tcp://127.0.0.1:{target.peer_port}")
                intruders.append(sock)
            forged_answer = [bc.identity, json.dumps({"dtype": "float32", "shape": [1, 32]}).encode()]
            forged_answer += [np.full(32, 7, np.float32).tobytes(), b"999"]
            for forged in (
                [b"P", b"intruder", b"0"],
                wire.ping(b"intruder", 0),
                wire.leaving(node_id(r1)),
                wire.answer(node_id(r0), 1, forged_answer),
            ):
                for sock in intruders:
                    with contextlib.suppress(zmq.Again):
                        sock.send_multipart(forged)
            assert not any(sock.poll(1000) for sock in intruders), "an unkeyed socket got a reply"
        finally:
            for sock in intruders:
                sock.close()
            context.term()
        # r0 still routes to r1 (a forged "leaving" changed nothing), and nothing forged arrived:
        # the 1.10.0 client parks answers for other req_ids in pending_response.
        for _ in range(5):
            np.testing.assert_allclose(bc.encode(["hello world"]), before, rtol=1e-6)
        assert not bc.pending_response
    for r in (r0, r1):
        assert r.metric("bertserve_peers_connected") == 1
    assert r0.metric("bertserve_peer_answers_forwarded_total") >= 6


def test_a_replica_with_another_key_cannot_join(two: Cluster, tmp_path: Path):
    r0, r1 = two.replicas[:2]
    refused_before = r0.metric("bertserve_peer_frames_rejected_total", reason="handshake")
    other_key = write_peer_key(tmp_path, "other.key")
    stranger = Replica(
        "stranger",
        two.model_dir,
        tmp_path,
        peer_spec=two.peer_spec,
        peer_port=two.peer_ports[2],
        flags=[f"-peer_key_file={other_key}"],
    )
    try:
        deadline = time.monotonic() + 60
        while "failed the mesh handshake" not in stranger.log:
            assert time.monotonic() < deadline, stranger.log[-3000:]
            assert stranger.proc.poll() is None, stranger.log[-3000:]
            time.sleep(0.2)
        assert r0.metric("bertserve_peer_frames_rejected_total", reason="handshake") > refused_before
        for r in (r0, r1):
            assert r.metric("bertserve_peers_connected") == 1
        assert stranger.metric("bertserve_peers_connected") == 0
        with crossing_client(two) as bc:  # the mesh itself is unaffected
            assert bc.encode(["still fine"]).shape == (1, 32)
    finally:
        stranger.stop()


def test_peer_service_without_a_usable_key_file_fails_start_up_in_one_line(scaleout_model_dir, tmp_path):
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    cases = {
        "": "-peer_service needs -peer_key_file=PATH",
        f"-peer_key_file={tmp_path / 'missing'}": "cannot read it",
        f"-peer_key_file={short}": "holds 31 bytes",
    }
    for flag, message in cases.items():
        argv = [BERT_SERVING_START, f"-model_dir={scaleout_model_dir}", "-cpu", "-peer_service=127.0.0.1:1"]
        done = subprocess.run(
            argv + ([flag] if flag else []),
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **REPLICA_ENV},
        )
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and "-peer_key_file" in lines[0] and message in lines[0], done.stderr
