"""The server process from the outside: ready only after warm-up, SIGTERM drains and exits in time.

The fake-model tests run ``tests/helpers/fake_serve.py`` — the production ``serve()`` (flags,
validation, signal handling, drain) with a numpy model whose batches sleep, so work is reliably in
flight when SIGTERM arrives. The TensorFlow test runs the real ``bert-serving-start`` console
script on a tiny fine-tuned checkpoint. Every wait is bounded; processes are killed by pid.
"""

from __future__ import annotations

import http.client
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from server_harness import wait_until
from server_process import ServerProcess, server_flags

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_sigterm_finishes_in_flight_work_refuses_new_work_and_exits(fake_process):
    server = fake_process(0.4, max_batch_size="4", drain_timeout="20")
    server.wait_ready(60)
    texts = [f"sentence number {i}" for i in range(16)]  # 4 batches x 0.4 s, plus one HTTP request
    http_answer: list[requests.Response] = []

    def post() -> None:
        http_answer.append(
            requests.post(server.url("/encode"), json={"id": 9, "texts": ["over http"]}, timeout=30)
        )

    with server.client() as bc, server.client() as late:
        bc.encode(texts, blocking=False)
        http = threading.Thread(target=post)
        http.start()
        wait_until(
            lambda: json.loads(server.get("/status/server").text)["queue_depth"] == 17, what="in flight"
        )
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: server.get("/readyz").status_code == 503, what="readiness dropped")
        r = requests.post(server.url("/encode"), json={"id": 1, "texts": ["new"]}, timeout=5)
        assert r.status_code == 503 and r.json()["type"] == "ShuttingDown"
        with pytest.raises(TypeError, match="shutting_down"):
            late.encode(["new work"])
        results = bc.fetch_all(concat=True)
        assert results.shape == (16, 8)
        http.join(30)
        assert http_answer[0].status_code == 200 and http_answer[0].json()["id"] == 9
    assert server.proc.wait(20) == 0
    assert time.monotonic() - sent < 20
    assert "draining" in server.log and "server stopped" in server.log


def test_a_draining_server_closes_kept_alive_http_connections(fake_process):
    """After SIGTERM each kept-alive connection gets one answer with ``Connection: close``, then EOF.

    Behind a Service, a client's kept-alive connection stays on the pod it first reached; a
    draining pod that kept the connection open would answer every later request 503 until it
    exits. Closing it makes the client's next request (its retry) open a new connection, which
    the Service sends to a pod that is not draining.
    """
    server = fake_process(0.4, max_batch_size="4", drain_timeout="20")
    server.wait_ready(60)

    def post(conn: http.client.HTTPConnection, number: int) -> http.client.HTTPResponse:
        conn.request(
            "POST",
            "/encode",
            body=json.dumps({"id": number, "texts": [f"text {number}"]}),
            headers={"Content-Type": "application/json"},
        )
        return conn.getresponse()

    in_flight = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    idle = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    astray = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    for conn in (in_flight, idle, astray):  # all kept alive before the drain
        r = post(conn, 1)
        assert r.status == 200 and r.getheader("Connection", "").lower() != "close"
        r.read()
    with server.client() as bc:
        bc.encode([f"busy {i}" for i in range(8)], blocking=False)  # 2 batches x 0.4 s ahead of ours
        answer: list[tuple[int, str, bytes]] = []

        def slow() -> None:
            r = post(in_flight, 2)
            answer.append((r.status, r.getheader("Connection", ""), r.read()))

        waiter = threading.Thread(target=slow)
        waiter.start()
        wait_until(
            lambda: json.loads(server.get("/status/server").text)["queue_depth"] == 9, what="in flight"
        )
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: server.get("/readyz").status_code == 503, what="readiness dropped")

        def until_closed(conn: http.client.HTTPConnection, request: bytes) -> tuple[bytes, bytes]:
            """Send raw bytes on a kept-alive connection; read until the server closes it."""
            assert conn.sock is not None
            conn.sock.sendall(request)
            conn.sock.settimeout(10)
            received = b""
            while chunk := conn.sock.recv(65536):  # b"" once the server closed; times out if not
                received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            return head, body

        # A new request on a connection kept alive from before: one 503, then the server closes.
        head, body = until_closed(
            idle,
            b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 29\r\n\r\n"
            + b'{"id": 3, "texts": ["three"]}',
        )
        assert head.startswith(b"HTTP/1.1 503") and json.loads(body)["type"] == "ShuttingDown"
        assert b"connection: close" in head.lower()
        # The same for an answer the router gives (no such route), not a handler.
        head, _ = until_closed(astray, b"GET /no-such-route HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404") and b"connection: close" in head.lower(), head
        waiter.join(30)
        status, connection, body = answer[0]
        assert status == 200 and json.loads(body)["id"] == 2  # in-flight work is still answered...
        assert connection.lower() == "close"  # ...and that connection closed after it
        bc.fetch_all()
    for conn in (in_flight, idle, astray):
        conn.close()
    assert server.proc.wait(20) == 0


def test_drain_timeout_bounds_the_shutdown(fake_process):
    server = fake_process(1.0, max_batch_size="1", drain_timeout="1.5")
    server.wait_ready(60)
    with server.client() as bc:
        bc.encode([f"s{i}" for i in range(20)], blocking=False)  # 20 s of work
        wait_until(
            lambda: json.loads(server.get("/status/server").text)["queue_depth"] == 20, what="in flight"
        )
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
    assert time.monotonic() - sent < 6.0
    assert "drain timeout" in server.log


def test_sigterm_when_idle_exits_promptly(fake_process):
    server = fake_process(0.0)
    server.wait_ready(60)
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0 and time.monotonic() - sent < 5


def test_a_model_call_outliving_the_drain_does_not_hold_up_or_break_the_exit(fake_process):
    """A batch still running when the drain budget is spent is abandoned, and the process exits 0.

    Its answer can no longer be delivered (the frontends are closed), so waiting for it only
    delays the exit. Nor may the interpreter shut down beside it: a real model call returning
    into a finalizing interpreter aborts the process (SIGABRT, "terminate called ..."), the
    fault this stands in for with a batch that sleeps in the fake model.
    """
    server = fake_process(30.0, drain_timeout="0")
    server.wait_ready(60)
    with server.client() as bc:
        bc.encode(["a long batch"], blocking=False)
        wait_until(lambda: _in_flight(server), what="the batch to be accepted")
        time.sleep(0.5)  # the worker takes it within -max_wait_ms (2 ms) and sleeps 30 s in it
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0, server.log
    assert time.monotonic() - sent < 15
    log = server.log
    assert "still in a model call" in log, log
    assert "server stopped" in log


def _in_flight(server) -> bool:
    response = server.get("/status/server")
    return response is not None and json.loads(response.text)["queue_depth"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_model_loads_aborts_start_up_and_exits_cleanly(fake_process, monkeypatch, sig):
    """A pod deleted while its model still loads must go at once, not after loading and warm-up."""
    load_s = 120.0
    monkeypatch.setenv("FAKE_SERVE_LOAD_S", str(load_s))
    server = fake_process(0.0)
    wait_until(lambda: "fake model: loading" in server.log, timeout=60, what="the model load to begin")
    assert server.get("/readyz").status_code == 503  # probes answer: not ready while loading
    sent = time.monotonic()
    server.proc.send_signal(sig)
    assert server.proc.wait(load_s / 4) == 0, server.log
    assert time.monotonic() - sent < load_s / 4
    log = server.log
    assert f"start-up aborted: {sig.name} during start-up" in log, log
    assert "all set, ready to serve request!" not in log
    assert server.get("/healthz") is None  # the HTTP listener is closed too


def test_a_sigterm_as_start_up_turns_ready_drains_like_any_other(fake_process, monkeypatch):
    """A signal in start-up's last steps (after ready) must not abort them half done.

    Start-up is interrupted by raising from the signal handler while the model loads; once the
    server is live the same raise landed wherever start-up was, e.g. between starting the
    large-call build and recording it, so the build was never waited for (see the next test).
    """
    monkeypatch.setenv("FAKE_SERVE_SIGTERM_AT_READY", "1")
    monkeypatch.setenv("FAKE_SERVE_LARGE_CALLS_S", "0.5")
    server = fake_process(0.0)
    assert server.proc.wait(30) == 0, server.log
    log = server.log
    assert "all set, ready to serve request!" in log
    assert "start-up aborted" not in log, log
    assert "fake large calls: building" in log, log
    stopped = log.index("server stopped")
    assert max(log.find("fake large calls: built"), log.find("fake large calls: cancelled")) < stopped, log


def test_a_sigterm_during_the_large_call_build_stops_it_before_the_process_exits(fake_process, monkeypatch):
    """The large-call function is built in a thread after ready; TensorFlow must not be torn down
    under it (a process that exited mid-build died with SIGABRT, "terminate called ...").

    The build takes far longer than the drain budget here, so the server must cancel it and wait
    for it to stop, not exit beside it nor wait out the whole build.
    """
    build_s = 60.0
    monkeypatch.setenv("FAKE_SERVE_LARGE_CALLS_S", str(build_s))
    server = fake_process(0.0, drain_timeout="0")
    server.wait_ready(60)
    wait_until(lambda: "fake large calls: building" in server.log, timeout=30, what="the build to begin")
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.log
    assert time.monotonic() - sent < build_s / 4
    log = server.log
    assert "fake large calls: built" not in log
    assert log.index("fake large calls: cancelled") < log.index("server stopped"), log


@pytest.mark.tf
def test_real_bert_serving_start_serves_a_fine_tuned_checkpoint(tmp_path, tiny_model_dir, tiny_finetuned_dir):
    """The seed's command line, end to end: ready after warm-up, right vectors, clean SIGTERM."""
    from bertserve_server.encoder import pad_batch
    from bertserve_server.model.tf_encoder import TFEncoder
    from bertserve_server.tokenization import BertTokenizer

    flags, ports = server_flags(
        tiny_model_dir,
        "show_tokens_to_client",
        tuned_model_dir=str(tiny_finetuned_dir),
        ckpt_name="model.ckpt-343",
    )
    script = Path(sys.executable).with_name("bert-serving-start")
    server = ServerProcess([str(script), *flags], tmp_path / "server.log", **ports)
    try:
        seen = server.wait_ready(180)
        # "Not ready yet" while the model loads (polled every 50 ms, loading takes longer), never
        # anything else; a server whose HTTP came up only once ready would show [200] alone.
        assert seen[-1] == 200 and seen[:-1] and set(seen[:-1]) == {503}, seen
        assert server.get("/healthz").status_code == 200
        log = server.log
        # HTTP (probes) listens before the model loads, so a kubelet sees 503, not a refused port.
        assert log.index("HTTP: listening on") < log.index("model loaded and warmed up")
        assert f"checkpoint (override by the fine-tuned model): {tiny_finetuned_dir}/model.ckpt-343" in log
        assert log.index("warm-up done") < log.index("all set, ready to serve request!")
        texts = ["hello world", "the dog is not a cat ||| good night", "un ##want"]
        with server.client() as bc:
            vecs, tokens = bc.encode(texts, show_tokens=True)
        tokenizer = BertTokenizer(tiny_model_dir / "vocab.txt", max_seq_len=25, max_position_embeddings=64)
        rows = tokenizer.tokenize_batch(texts)
        assert tokens == [list(r.tokens) for r in rows]
        direct = TFEncoder(
            tiny_model_dir, tuned_model_dir=str(tiny_finetuned_dir), ckpt_name="model.ckpt-343"
        )
        from bertserve_server.encoder import pad_batch

        expected = direct.encode(pad_batch(rows, max(len(r) for r in rows)))
        np.testing.assert_allclose(vecs, expected, rtol=1e-5, atol=1e-5)
        pretrained = TFEncoder(tiny_model_dir).encode(pad_batch(rows, max(len(r) for r in rows)))
        assert not np.allclose(vecs, pretrained, atol=1e-3)  # the fine-tuned step, not the base weights
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
