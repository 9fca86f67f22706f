"""Client-facing isolation and bounds, against a real ``bert-serving-start`` process and the 1.10.0 client.

One process (``fake_serve.py``: the production ``serve()`` with the numpy model) serves most of
these tests; it runs with an HTTP API key in ``BERTSERVE_API_KEY``, ``-heartbeat_timeout=1``, a
64 KiB request limit and a response limit of 1,000 pooled vectors, so every bound is reachable
with small requests.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import zmq
from bert_serving.client import BertClient
from server_harness import fake_server, wait_until
from server_process import ServerProcess, start_fake_process

from bertserve_api.contract import API_KEY_ENV

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

API_KEY = "test-key-" + "k" * 32
AUTH = {"Authorization": f"Bearer {API_KEY}"}
WIDTH = 8  # the fake model's vector width (float32)
MAX_VECTORS = 1000
MAX_REQUEST_BYTES = 65536


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_fake_process(
        tmp_path_factory.mktemp("isolation"),
        0.0,
        env={API_KEY_ENV: API_KEY},
        heartbeat_timeout="1",
        max_request_bytes=str(MAX_REQUEST_BYTES),
        max_response_bytes=str(MAX_VECTORS * WIDTH * 4),
    )
    try:
        proc.wait_ready(60)
        yield proc
    finally:
        proc.stop()


def metric(proc: ServerProcess, name: str, **labels: str) -> float:
    """One sample from ``GET /metrics`` (0 when absent)."""
    text = requests.get(proc.url("/metrics"), timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def new_identity() -> bytes:
    return str(uuid.uuid4()).encode("ascii")  # what the 1.10.0 client uses


class Wire:
    """A bare PUSH/SUB pair with a 36-byte identity, for frames the real client never sends."""

    def __init__(self, proc: ServerProcess, identity: bytes | None = None) -> None:
        self.identity = identity or new_identity()
        self.context = zmq.Context()
        self.push = self.context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(f"tcp://127.0.0.1:{proc.port}")
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.identity)
        self.sub.connect(f"tcp://127.0.0.1:{proc.port_out}")
        self.send(b"SHOW_CONFIG", b"0", b"0")  # the answer proves the subscription is in place
        assert self.recv(10000) is not None, "no SHOW_CONFIG answer"

    def send(self, payload: bytes, req_id: bytes, msg_len: bytes) -> None:
        self.push.send_multipart([self.identity, payload, req_id, msg_len])

    def recv(self, timeout_ms: int = 5000) -> list[bytes] | None:
        return list(self.sub.recv_multipart()) if self.sub.poll(timeout_ms) else None

    def close(self) -> None:
        self.push.close()
        self.sub.close()
        self.context.term()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_of(frames: list[bytes]) -> dict:
    return json.loads(frames[1])["error"]


# -- part 1: exact-identity delivery -------------------------------------------------------------


def test_a_tap_on_the_empty_topic_or_a_short_prefix_receives_nothing(served):
    victim = new_identity()
    refused_before = metric(served, "bertserve_subscriptions_refused_total")
    context = zmq.Context()
    taps = []
    try:
        for topic in (b"", victim[:8]):
            tap = context.socket(zmq.SUB)
            tap.setsockopt(zmq.LINGER, 0)
            tap.setsockopt(zmq.SUBSCRIBE, topic)
            tap.connect(f"tcp://127.0.0.1:{served.port_out}")
            taps.append(tap)
        wait_until(
            lambda: metric(served, "bertserve_subscriptions_refused_total") >= refused_before + 2,
            10,
            "both tap subscriptions refused",
        )
        texts = ["hello world", "the quick brown fox"]
        with (
            BertClient(
                ip="127.0.0.1", port=served.port, port_out=served.port_out, identity=victim, timeout=10000
            ) as bc,
            BertClient(ip="127.0.0.1", port=served.port, port_out=served.port_out, timeout=10000) as other,
        ):
            for _ in range(3):
                mine = bc.encode(texts)
                assert mine.shape == (2, WIDTH)
                np.testing.assert_array_equal(mine, other.encode(texts))
        # Every answer was published before the clients received it: a tap would have it by now.
        for tap in taps:
            assert tap.poll(200) == 0, "a tap received another client's answer"
    finally:
        for tap in taps:
            tap.close()
        context.term()
    assert "refused a subscription" in served.log


# -- part 8: heartbeats end a vanished client's subscription ---------------------------------------


class FreezableProxy:
    """Forwards one TCP connection until :meth:`freeze`; then passes nothing, yet closes nothing.

    That is what a client whose node vanished looks like to the server: no FIN, no RST, silence.
    """

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", self._target))
        self._sockets += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.05)
        while not self._frozen.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data or self._frozen.is_set():
                return
            dst.sendall(data)

    def freeze(self) -> None:
        self._frozen.set()

    def close(self) -> None:
        self._frozen.set()
        for sock in self._sockets:
            sock.close()


def test_a_vanished_clients_subscription_expires_within_the_heartbeat_timeout(served):
    subscribed = "bertserve_zmq_subscribed_identities"
    wait_until(lambda: metric(served, subscribed) == 0, 10, "no subscriptions left from other tests")
    proxy = FreezableProxy(served.port_out)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, new_identity())
    sub.connect(f"tcp://127.0.0.1:{proxy.port}")
    try:
        wait_until(lambda: metric(served, subscribed) == 1, 10, "the subscription")
        proxy.freeze()
        # -heartbeat_timeout=1: the server pings, hears nothing back, drops the connection and
        # with it the subscription (without heartbeats it would live until TCP keepalive, ~2 h).
        wait_until(lambda: metric(served, subscribed) == 0, 5, "the subscription to expire")
    finally:
        sub.close()
        context.term()
        proxy.close()


# -- part 4: HTTP API key ----------------------------------------------------------------------


def test_the_api_key_guards_encode_and_status_but_not_probes_or_metrics(served):
    body = {"id": 1, "texts": ["hello world"]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = requests.post(served.url("/encode"), json=body, headers=headers, timeout=10)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.json()["type"] == "Unauthorized"
    r = requests.post(served.url("/encode"), json=body, headers=AUTH, timeout=10)
    assert r.status_code == 200 and len(r.json()["result"][0]) == WIDTH
    r = requests.post(served.url("/v1/embeddings"), json={"input": "hi"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert requests.post(served.url("/v1/embeddings"), json={"input": "hi"}, headers=AUTH, timeout=10).ok
    for path in ("/status/server", "/status/client"):
        assert requests.get(served.url(path), timeout=10).status_code == 401
        assert requests.get(served.url(path), headers=AUTH, timeout=10).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert requests.get(served.url(path), timeout=10).status_code == 200
    assert API_KEY not in served.log
    assert "k" * 32 not in served.log


def test_protect_metrics_puts_metrics_behind_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    with fake_server(tmp_path, http_port=0, protect_metrics=True) as server:
        base = f"http://127.0.0.1:{server.config.http_port}"
        r = requests.get(f"{base}/metrics", timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert requests.get(f"{base}/metrics", headers=AUTH, timeout=10).status_code == 200
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200


# -- part 5: bounded memory --------------------------------------------------------------------


def test_frames_are_bounded_by_max_request_bytes(served):
    with Wire(served) as wire:
        over = json.dumps(["word"] * (MAX_REQUEST_BYTES // 7)).encode()  # over the limit, under twice it
        assert MAX_REQUEST_BYTES < len(over) < 2 * MAX_REQUEST_BYTES
        wire.send(over, b"1", str(MAX_REQUEST_BYTES // 7).encode())
        frames = wire.recv()
        assert frames is not None and error_of(frames)["reason"] == "too_large"
        # Far over the limit, libzmq refuses the frame (MAXMSGSIZE) and cuts the connection
        # instead of assembling it: no answer, and the server stays up.
        wire.send(b"[" + b'"x",' * 300_000 + b'"x"]', b"2", b"300001")
        assert wire.recv(500) is None
    with BertClient(ip="127.0.0.1", port=served.port, port_out=served.port_out, timeout=10000) as bc:
        assert bc.encode(["still serving"]).shape == (1, WIDTH)
    assert served.proc.poll() is None


def test_a_result_over_max_response_bytes_is_refused_before_it_is_computed(served):
    with BertClient(ip="127.0.0.1", port=served.port, port_out=served.port_out, timeout=10000) as bc:
        with pytest.raises(TypeError, match=r"bertserve error \[too_large\].*-max_response_bytes"):
            bc.encode(["a"] * (MAX_VECTORS + 1))
        assert bc.encode(["a"] * MAX_VECTORS).shape == (MAX_VECTORS, WIDTH)
    r = requests.post(
        served.url("/encode"), json={"texts": ["a"] * (MAX_VECTORS + 1)}, headers=AUTH, timeout=10
    )
    assert r.status_code == 413 and "-max_response_bytes" in r.json()["description"]


def test_none_pooling_results_are_admitted_by_bytes_too(tmp_path):
    # 25 positions x 8 floats x 4 bytes = 800 bytes per sentence with -max_seq_len 25.
    with fake_server(tmp_path, pooling_strategy="NONE", max_response_bytes=800 * 10) as server:
        with pytest.raises(Exception, match="max_response_bytes"):
            server.service.encode(["a"] * 11)
        assert server.service.encode(["a"] * 10).embeddings.shape == (10, 25, WIDTH)
    with fake_server(
        tmp_path / "dynamic", pooling_strategy="NONE", max_seq_len=None, max_response_bytes=320
    ) as server:
        # Dynamic length: known only after tokenizing ([CLS] a [SEP] = 3 positions x 32 bytes).
        assert server.service.encode(["a"] * 3).embeddings.shape == (3, 3, WIDTH)
        with pytest.raises(Exception, match="max_response_bytes"):
            server.service.encode(["a b c d"] * 3)


def test_held_answers_are_bounded_by_count_and_bytes_oldest_dropped(tmp_path):
    with fake_server(tmp_path) as server:
        server.zmq.max_held_answers = 3
        identity = new_identity()
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(f"tcp://127.0.0.1:{server.config.port}")
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        try:

            def dropped() -> float:
                return server.metrics.value("bertserve_answers_dropped_total", {"reason": "hold_full"})

            for req_id in range(1, 6):  # one at a time, so the hold sees them in req_id order
                push.send_multipart([identity, b'["hello"]', str(req_id).encode(), b"1"])
                wait_until(
                    lambda n=req_id: server.zmq.held_count() + dropped() == n, 10, f"answer {req_id} held"
                )
            assert dropped() == 2 and server.zmq.held_count() == 3
            sub.setsockopt(zmq.SUBSCRIBE, identity)
            sub.connect(f"tcp://127.0.0.1:{server.config.port_out}")
            got = []
            while len(got) < 3 and sub.poll(5000):
                got.append(int(sub.recv_multipart()[-1]))
            assert got == [3, 4, 5]
            assert server.zmq.held_count() == 0
            # Bytes: a bound below two answers keeps only the newest one.
            server.zmq.max_held_answers = 100
            server.zmq.max_held_bytes = 100
            other = new_identity()
            for req_id in range(1, 4):
                push.send_multipart([other, b'["hello"]', str(req_id).encode(), b"1"])
            wait_until(
                lambda: server.metrics.value("bertserve_answers_dropped_total", {"reason": "hold_full"}) == 4,
                10,
                "answers dropped by the byte bound",
            )
            assert server.zmq.held_count() == 1
        finally:
            push.close()
            sub.close()
            context.term()


def test_an_answer_published_after_the_frontend_stopped_is_counted(tmp_path):
    with fake_server(tmp_path) as server:
        server.zmq.stop()
        server.zmq.publish(b"late-client-identity", [b"late-client-identity", b"{}", b"", b"1"])
        assert server.metrics.value("bertserve_answers_dropped_total", {"reason": "shutdown"}) == 1


def test_a_huge_sentence_is_cut_by_characters_before_tokenizing(tmp_path):
    with fake_server(tmp_path, max_seq_len=10) as server:
        tokenizer = server.service.tokenizer
        seen: list[int] = []
        real = tokenizer._prepare

        def recording(text):
            seen.append(len(text))
            return real(text)

        tokenizer._prepare = recording
        text = "hello world " * 500_000  # 6 MB
        row = tokenizer.tokenize(text)
        assert max(seen) <= tokenizer.max_chars < 10_000
        assert row.input_ids == tokenizer.tokenize("hello world " * 10).input_ids
        pair = tokenizer.tokenize(text + " ||| " + "the fox " * 100_000)
        assert pair.type_ids.count(1) > 0  # the second sentence survived the cut


# -- part 7: every bad input gets an answer ----------------------------------------------------


def test_deep_nesting_and_huge_counts_get_error_replies(served):
    nested = b"[" * 30_000 + b"]" * 30_000  # within -max_request_bytes; json.loads recurses too deep
    with Wire(served) as wire:
        wire.send(nested, b"7", b"1")
        frames = wire.recv()
        assert frames is not None and frames[3] == b"7"
        assert error_of(frames)["reason"] == "invalid_input" and "nested" in error_of(frames)["message"]
        wire.send(b'["hello"]', b"8", b"9" * 5000)
        frames = wire.recv()
        assert frames is not None and frames[3] == b"8"
        assert error_of(frames)["reason"] == "invalid_input" and "msg_len" in error_of(frames)["message"]
    r = requests.post(served.url("/encode"), data=b'{"texts": ' + nested + b"}", headers=AUTH, timeout=10)
    assert r.status_code == 400 and "nested" in r.json()["description"]


def test_server_survives_its_own_log_of_this_module(served):
    assert served.proc.poll() is None
    assert "Traceback" not in served.log, served.log[-3000:]


def test_answers_for_a_subscriber_that_never_reads_are_dropped_and_counted(tmp_path, monkeypatch):
    from bertserve_server.frontends import zmq as zmq_frontend

    monkeypatch.setattr(zmq_frontend, "SNDHWM", 2)
    # NONE pooling at 64 positions: 100 sentences make a 200 KiB answer, so a few fill the
    # socket buffers and the subscriber's queue behind them.
    with fake_server(tmp_path, pooling_strategy="NONE", max_seq_len=64) as server:
        identity = new_identity()
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(f"tcp://127.0.0.1:{server.config.port}")
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 1)
        sub.setsockopt(zmq.RCVBUF, 4096)
        sub.setsockopt(zmq.SUBSCRIBE, identity)
        sub.connect(f"tcp://127.0.0.1:{server.config.port_out}")
        try:
            wait_until(lambda: server.zmq.subscriptions.matches(identity), 10, "the subscription")
            payload = json.dumps(["word " * 100] * 100).encode()
            for req_id in range(1, 201):
                push.send_multipart([identity, payload, str(req_id).encode(), b"100"])
            wait_until(
                lambda: (
                    server.metrics.value("bertserve_answers_dropped_total", {"reason": "subscriber_full"}) > 0
                ),
                30,
                "answers dropped for the subscriber that does not read",
            )
        finally:
            push.close()
            sub.close()
            context.term()
