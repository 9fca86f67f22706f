"""Reference §3.8, case by case: bad input is answered (or dropped), logged, counted — never fatal.

After every case a *different* client sends a good request and must be served, proving neither
the I/O loop, the batcher nor a worker died.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from server_harness import RawClient, client_for, fake_encoder_for, fake_server, wait_until

from bertserve_api.contract import ServerConfig
from bertserve_server.encoder import TokenizedInput, pad_batch
from bertserve_server.errors import ZMQ_ERROR_DTYPE_PREFIX

ERROR_REPLIES = {
    "empty list": (b"[]", b"0", "non-empty array"),
    "empty string": (b'["hello", ""]', b"2", "element 1 must be a non-empty string"),
    "whitespace-only string": (b'["   "]', b"1", "element 0 must be a non-empty string"),
    "non-string element": (b'["hello", 3]', b"2", "element 1 must be a string, got int"),
    "null element": (b"[null]", b"1", "element 0 must be a string, got null"),
    "nested object": (b'[{"a": 1}]', b"1", "element 0 must be a string, got object"),
    "mixed strings and token lists": (b'["a", ["b"]]', b"2", "element 1 is an array"),
    "empty token list": (b'[["a"], []]', b"2", "element 1 must be a non-empty array of tokens"),
    "empty token": (b'[["a", ""]]', b"1", "token 1 of element 0"),
    "malformed JSON": (b'["hello", ', b"1", "not valid JSON"),
    "JSON object instead of array": (b'{"texts": ["a"]}', b"1", "must be a JSON array"),
    "JSON string instead of array": (b'"hello"', b"1", "must be a JSON array"),
    "non-UTF-8 bytes": (b'["caf\xe9"]', b"1", "not valid UTF-8"),
    "non-digit msg_len": (b'["hello"]', b"one", "msg_len must be ASCII digits"),
    "negative msg_len": (b'["hello"]', b"-1", "msg_len must be ASCII digits"),
    "msg_len larger than the list": (b'["hello"]', b"3", "msg_len says 3 sentences but the payload holds 1"),
    "msg_len smaller than the list": (b'["a", "b", "c"]', b"1", "msg_len says 1"),
}


def assert_still_serving(server) -> None:
    with RawClient(server, b"good-client") as good:
        good.send(b"good-client", b'["hello world"]', b"1", b"1")
        frames = good.recv()
        assert frames is not None and json.loads(frames[1])["shape"] == [1, 8]


def outcome_count(server, kind: str, outcome: str) -> float:
    return server.metrics.value(
        "bertserve_requests_total", {"frontend": "zmq", "kind": kind, "outcome": outcome}
    )


@pytest.mark.parametrize("case", sorted(ERROR_REPLIES))
def test_bad_request_gets_an_error_reply_and_the_server_keeps_serving(tmp_path, caplog, case):
    payload, msg_len, message = ERROR_REPLIES[case]
    with fake_server(tmp_path) as server:
        with RawClient(server, b"bad-client") as raw:
            raw.send(b"bad-client", payload, b"41", msg_len)
            frames = raw.recv()
        assert frames is not None, "no error reply"
        assert len(frames) == 4 and frames[0] == b"bad-client" and frames[3] == b"41"
        header = json.loads(frames[1])
        assert header["error"]["reason"] == "invalid_input" and header["error"]["status"] == 400
        assert message in header["error"]["message"]
        assert header["dtype"].startswith(ZMQ_ERROR_DTYPE_PREFIX) and header["shape"] == [0]
        assert frames[2] == b""
        assert message in caplog.text
        assert outcome_count(server, "encode", "invalid_input") == 1
        assert_still_serving(server)


UNANSWERABLE = {
    "one frame": [b"lonely"],
    "three frames": [b"id", b'["hello"]', b"1"],
    "five frames": [b"id", b'["hello"]', b"1", b"1", b"extra"],
    "non-digit req_id": [b"id", b'["hello"]', b"abc", b"1"],
    "empty req_id": [b"id", b'["hello"]', b"", b"1"],
}


@pytest.mark.parametrize("case", sorted(UNANSWERABLE))
def test_unaddressable_request_is_dropped_logged_and_counted(tmp_path, caplog, case):
    with fake_server(tmp_path) as server:
        with RawClient(server, b"id") as raw:
            raw.send(*UNANSWERABLE[case])
            assert raw.recv(timeout_ms=300) is None  # a reply could not carry an int req_id
        assert outcome_count(server, "malformed", "malformed") == 1
        assert "dropped a request" in caplog.text
        assert_still_serving(server)


def test_real_client_sees_the_server_error_as_an_exception_and_keeps_working(tmp_path):
    with fake_server(tmp_path, max_queue_size=20) as server, client_for(server) as bc:
        with pytest.raises(TypeError, match=r"bertserve error \[too_large\].*max_queue_size"):
            bc.encode(["hello"] * 21)
        assert bc.pending_request == set()
        assert bc.encode(["hello"]).shape == (1, 8)


def test_overload_is_a_clear_busy_error_over_zmq(tmp_path):
    """A slow model and a tiny queue: the second request is refused at once with Busy."""
    with fake_server(tmp_path, max_queue_size=4) as server:
        server.encoders[0].delay_s = 0.5
        with RawClient(server, b"first") as first, RawClient(server, b"second") as second:
            first.send(b"first", json.dumps(["a"] * 4).encode(), b"1", b"4")
            wait_until(lambda: server.batcher.depth == 4)
            second.send(b"second", b'["b"]', b"1", b"1")
            busy = second.recv()
            assert busy is not None
            error = json.loads(busy[1])["error"]
            assert error["reason"] == "busy" and error["status"] == 429 and error["retry_after"] > 0
            assert first.recv() is not None  # the accepted request still completes
        assert outcome_count(server, "encode", "busy") == 1
        server.encoders[0].delay_s = 0.0
        assert_still_serving(server)


def test_huge_payload_is_refused_before_parsing(tmp_path):
    with fake_server(tmp_path) as server:
        server.zmq.max_payload_bytes = 1000
        with RawClient(server, b"huge") as raw:
            payload = json.dumps(["word " * 50] * 10).encode()
            raw.send(b"huge", payload, b"1", b"10")
            frames = raw.recv()
        assert frames is not None and json.loads(frames[1])["error"]["reason"] == "too_large"
        assert_still_serving(server)


def test_request_with_more_sentences_than_the_queue_is_too_large(tmp_path):
    with fake_server(tmp_path, max_queue_size=100) as server:
        with RawClient(server, b"many") as raw:
            raw.send(b"many", json.dumps(["x"] * 101).encode(), b"1", b"101")
            frames = raw.recv()
        assert frames is not None
        error = json.loads(frames[1])["error"]
        assert error["reason"] == "too_large" and error["status"] == 413
        assert_still_serving(server)


def test_a_model_error_answers_the_request_and_the_worker_survives(tmp_path):
    with fake_server(tmp_path) as server:
        server.encoders[0].fail_if = lambda batch: batch.size == 3
        with RawClient(server, b"boom") as raw:
            raw.send(b"boom", b'["a", "b", "c"]', b"1", b"3")
            frames = raw.recv()
        assert frames is not None
        assert json.loads(frames[1])["error"]["reason"] == "encode_failed"
        assert outcome_count(server, "encode", "encode_failed") == 1
        assert_still_serving(server)


def test_long_input_is_truncated_not_rejected(tmp_path):
    with fake_server(tmp_path, max_seq_len=10) as server, RawClient(server, b"long") as raw:
        raw.send(b"long", json.dumps(["word " * 5000]).encode(), b"1", b"1")
        frames = raw.recv()
        assert frames is not None and json.loads(frames[1])["shape"] == [1, 8]
        assert max(seq for _, seq in server.encoders[0].batches) <= 10


def test_fake_encoder_is_row_independent():
    """The premise of every comparison above: a row's vector ignores its batch neighbours."""
    encoder = fake_encoder_for(ServerConfig(model_dir="/m"))
    a = TokenizedInput((2, 9, 3), (0, 0, 0), (1, 1, 1), ("[CLS]", "x", "[SEP]"))
    b = TokenizedInput((2, 9, 9, 9, 9, 3), (0,) * 6, (1,) * 6, ("[CLS]", "x", "x", "x", "x", "[SEP]"))
    together = encoder.encode(pad_batch([a, b], 10))
    np.testing.assert_allclose(together[0], encoder.encode(pad_batch([a], 3))[0], rtol=1e-6)
