"""The ZeroMQ wire, frame by frame (reference §3), driven by a bare PUSH/SUB pair."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import zmq
from server_harness import RawClient, expected_vectors, fake_server, wait_until

from bertserve_server.frontends.zmq import LocalResultRouter, SubscriptionRegistry

# §3.6: keys of the 1.10.0 SHOW_CONFIG document besides the CLI dests.
RUNTIME_KEYS = {
    "client",
    "num_process",
    "ventilator -> worker",
    "worker -> sink",
    "ventilator <-> sink",
    "server_current_time",
    "device_map",
    "num_concurrent_socket",
}
STATIC_KEYS = {
    "tensorflow_version",
    "python_version",
    "server_version",
    "pyzmq_version",
    "zmq_version",
    "server_start_time",
}
CLASSIC_DESTS = {
    "model_dir", "tuned_model_dir", "ckpt_name", "config_name", "graph_tmp_dir", "max_seq_len",
    "do_lower_case", "pooling_layer", "pooling_strategy", "mask_cls_sep", "no_special_token",
    "show_tokens_to_client", "no_position_embeddings", "num_worker", "max_batch_size",
    "priority_batch_size", "port", "port_out", "http_port", "http_max_connect", "cors", "fp16", "xla",
    "cpu", "gpu_memory_fraction", "device_map", "prefetch_size", "fixed_embed_length", "verbose",
}  # fmt: skip
STATISTIC_KEYS = {
    "num_data_request",
    "num_total_seq",
    "num_sys_request",
    "num_total_request",
    "num_total_client",
    "num_active_client",
} | {
    f"{p}_{name}"
    for p in ("avg", "min", "max", "num_min", "num_max")
    for name in ("request_per_client", "size_per_request", "last_two_interval", "request_per_second")
}


def test_show_config_is_a_three_frame_answer_with_every_1_10_0_key(tmp_path):
    with fake_server(tmp_path) as server, RawClient(server, b"cfg-client") as raw:
        raw.send(b"cfg-client", b"SHOW_CONFIG", b"1", b"0")
        frames = raw.recv()
        assert frames is not None and len(frames) == 3
        assert frames[0] == b"cfg-client" and frames[2] == b"1"
        doc = json.loads(frames[1])
        assert set(doc) >= RUNTIME_KEYS | STATIC_KEYS | CLASSIC_DESTS
        assert doc["server_version"] == "1.10.0"
        assert doc["pooling_strategy"] == 2 and isinstance(doc["pooling_strategy"], int)
        assert isinstance(doc["tensorflow_version"], list)
        assert all(isinstance(part, str) for part in doc["tensorflow_version"])
        assert doc["max_seq_len"] == 25 and doc["show_tokens_to_client"] is False
        assert doc["client"] == "cfg-client"
        assert "statistic" not in doc


def test_show_status_adds_the_statistic_object(tmp_path):
    with fake_server(tmp_path) as server, RawClient(server, b"st") as raw:
        raw.send(b"st", json.dumps(["hello world", "a b c"]).encode(), b"1", b"2")
        assert raw.recv() is not None
        raw.send(b"st", b"SHOW_STATUS", b"2", b"0")
        frames = raw.recv()
        assert frames is not None and len(frames) == 3 and frames[2] == b"2"
        stat = json.loads(frames[1])["statistic"]
        assert set(stat) >= STATISTIC_KEYS
        assert stat["num_data_request"] == 1 and stat["num_total_seq"] == 2 and stat["num_sys_request"] == 1


def test_encode_answer_is_four_frames_with_raw_c_order_bytes(tmp_path):
    with fake_server(tmp_path) as server, RawClient(server, b"enc") as raw:
        texts = ["hello world", "the dog is good"]
        raw.send(b"enc", json.dumps(texts).encode(), b"7", b"2")
        frames = raw.recv()
        assert frames is not None and len(frames) == 4
        identity, header, data, req_id = frames
        assert identity == b"enc" and req_id == b"7"
        info = json.loads(header)
        assert info == {"dtype": "float32", "shape": [2, 8], "tokens": ""}
        assert len(data) == 2 * 8 * 4
        got = np.frombuffer(data, dtype="<f4").reshape(2, 8)
        np.testing.assert_allclose(got, expected_vectors(server, texts), rtol=1e-6)


def test_tokens_travel_in_the_header_with_show_tokens_to_client(tmp_path):
    with fake_server(tmp_path, show_tokens_to_client=True) as server, RawClient(server, b"tok") as raw:
        raw.send(b"tok", json.dumps(["hello world", "a ||| b c"]).encode(), b"1", b"2")
        frames = raw.recv()
        assert frames is not None
        assert json.loads(frames[1])["tokens"] == [
            ["[CLS]", "hello", "world", "[SEP]"],
            ["[CLS]", "a", "[SEP]", "b", "c", "[SEP]"],
        ]


def test_fp16_answers_are_float16(tmp_path):
    with fake_server(tmp_path, fp16=True) as server, RawClient(server, b"half") as raw:
        raw.send(b"half", b'["hello world"]', b"1", b"1")
        frames = raw.recv()
        assert frames is not None
        info = json.loads(frames[1])
        assert info["dtype"] == "float16" and info["shape"] == [1, 8] and len(frames[2]) == 16


def test_none_pooling_with_fixed_length_answers_batch_by_max_seq_len(tmp_path):
    with fake_server(tmp_path, pooling_strategy="NONE") as server, RawClient(server, b"none") as raw:
        raw.send(b"none", b'["hello world"]', b"1", b"1")
        frames = raw.recv()
        assert frames is not None and json.loads(frames[1])["shape"] == [1, 25, 8]


def test_an_answer_waits_for_a_late_subscription_instead_of_being_lost(tmp_path):
    with fake_server(tmp_path) as server:
        context = zmq.Context()
        try:
            push = context.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(f"tcp://127.0.0.1:{server.config.port}")
            push.send_multipart([b"late", b'["hello world"]', b"1", b"1"])
            # The answer is ready long before anyone listens; the XPUB socket holds it.
            wait_until(lambda: server.zmq.held_count() > 0, 5, "the answer to be held")
            assert server.zmq.held_count() == 1
            sub = context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"late")
            sub.connect(f"tcp://127.0.0.1:{server.config.port_out}")
            assert sub.poll(5000), "the held answer was never delivered"
            frames = sub.recv_multipart()
            assert frames[0] == b"late" and frames[3] == b"1"
            assert server.zmq.held_count() == 0
            push.close()
            sub.close()
        finally:
            context.term()


def test_an_answer_nobody_subscribes_to_is_dropped_after_the_bounded_wait(tmp_path):
    with fake_server(tmp_path) as server:
        server.zmq.subscription_wait_s = 0.2
        context = zmq.Context()
        try:
            push = context.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(f"tcp://127.0.0.1:{server.config.port}")
            push.send_multipart([b"nobody", b'["hello world"]', b"1", b"1"])
            wait_until(
                lambda: (
                    server.metrics.value("bertserve_answers_dropped_total", {"reason": "no_subscriber"}) >= 1
                ),
                5,
                "the unsubscribed answer to be dropped",
            )
            assert server.zmq.held_count() == 0
        finally:
            push.close()
            context.term()
        with RawClient(server, b"next") as raw:
            raw.send(b"next", b'["still serving"]', b"1", b"1")
            assert raw.recv() is not None


def test_termination_from_the_network_is_refused_by_default(tmp_path, caplog):
    with fake_server(tmp_path) as server, RawClient(server, b"t") as raw:
        raw.send(b"0", b"TERMINATION", b"0", b"0")
        raw.send(b"t", b"SHOW_CONFIG", b"1", b"0")
        assert raw.recv() is not None  # served after the TERMINATION was processed
        assert not server.shutdown_requested
        assert (
            server.metrics.value(
                "bertserve_requests_total", {"frontend": "zmq", "kind": "termination", "outcome": "refused"}
            )
            == 1
        )
        assert "refused TERMINATION" in caplog.text


def test_termination_is_honoured_with_enable_termination(tmp_path):
    with fake_server(tmp_path, enable_termination=True) as server, RawClient(server, b"t") as raw:
        raw.send(b"0", b"TERMINATION", b"0", b"0")
        wait_until(lambda: server.shutdown_requested, 5, "the shutdown request")


def test_clients_sharing_an_identity_all_receive_the_answer(tmp_path):
    """1.10.0's documented broadcast: several SUBs on one identity get every answer."""
    with (
        fake_server(tmp_path) as server,
        RawClient(server, b"shared") as one,
        RawClient(server, b"shared") as two,
    ):
        # XPUB reports a topic once, so the second b"shared" is invisible; each SUB then subscribes
        # a probe topic of its own. A pipe's subscriptions are applied in order, so once the server
        # has seen both probes, both b"shared" subscriptions are in place.
        one.sub.setsockopt(zmq.SUBSCRIBE, b"probe-one")
        two.sub.setsockopt(zmq.SUBSCRIBE, b"probe-two")
        wait_until(
            lambda: {b"probe-one", b"probe-two"} <= set(server.zmq.subscriptions.topics()),
            timeout=5,
            what="both probe subscriptions",
        )
        one.send(b"shared", b'["hello"]', b"1", b"1")
        assert one.recv() is not None
        assert two.recv() is not None


def test_subscription_registry_matches_exact_identities_counted_per_connection():
    registry = SubscriptionRegistry()
    changes: list[tuple[bytes, bool]] = []
    registry.add_listener(lambda topic, on: changes.append((topic, on)))
    registry.add(b"abc")
    assert registry.matches(b"abc") and not registry.matches(b"abcdef") and not registry.matches(b"ab")
    registry.add(b"")
    assert not registry.matches(b"anything")
    registry.add(b"abc")  # a second connection with the same identity
    registry.remove(b"abc")
    assert registry.matches(b"abc")
    registry.remove(b"")
    registry.remove(b"abc")
    assert not registry.matches(b"abc")
    assert changes == [(b"abc", True), (b"", True), (b"", False), (b"abc", False)]


def test_every_answer_leaves_through_the_result_router(tmp_path):
    """The scale-out seam: a router sees (identity, frames) for config and encode answers alike."""
    seen: list[tuple[bytes, int]] = []
    lock = threading.Lock()

    class RecordingRouter(LocalResultRouter):
        def deliver(self, identity, frames):
            with lock:
                seen.append((identity, len(frames)))
            super().deliver(identity, frames)

    from server_harness import fake_encoder_for, make_config, make_tokenizer, write_model_dir

    from bertserve_server.app import BertServer

    config = make_config(write_model_dir(tmp_path / "m"))
    server = BertServer(
        config,
        encoder_factory=lambda d: fake_encoder_for(config),
        tokenizer=make_tokenizer(config),
        gpu_ids=[],
        router_factory=RecordingRouter,
    )
    server.start()
    try:
        with RawClient(server, b"routed") as raw:
            raw.send(b"routed", b"SHOW_CONFIG", b"1", b"0")
            raw.send(b"routed", b'["hello"]', b"2", b"1")
            assert raw.recv() is not None and raw.recv() is not None
        assert (b"routed", 3) in seen and (b"routed", 4) in seen
    finally:
        server.shutdown(drain_timeout=1.0)


@pytest.mark.parametrize("identity", [b"id#with#hash", b"id@with@at", b"\xff\xfe-not-ascii", b"a" * 300])
def test_unusual_identities_are_served(tmp_path, identity):
    with fake_server(tmp_path) as server, RawClient(server, identity) as raw:
        raw.send(identity, b'["hello world"]', b"1", b"1")
        frames = raw.recv()
        assert frames is not None and frames[0] == identity and json.loads(frames[1])["shape"] == [1, 8]
        raw.send(identity, b"SHOW_CONFIG", b"2", b"0")
        frames = raw.recv()
        assert frames is not None and json.loads(frames[1])["server_version"] == "1.10.0"
