"""The unmodified PyPI ``bert-serving-client==1.10.0`` against our server (fake model, real wire)."""

from __future__ import annotations

import sys
import threading
import warnings

import numpy as np
import pytest
from bert_serving.client import BertClient, ConcurrentBertClient
from server_harness import client_for, expected_vectors, fake_server, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def server(tmp_path):
    with fake_server(tmp_path, max_batch_size=8, show_tokens_to_client=True) as s:
        yield s


def test_encode_strings(server):
    texts = ["hello world", "the cat is not a dog", "good night"]
    with client_for(server) as bc:
        vecs = bc.encode(texts)
    assert vecs.shape == (3, 8) and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs, expected_vectors(server, texts), rtol=1e-6)


def test_encode_sentence_pairs(server):
    texts = ["hello world ||| good day", "the dog ||| the cat"]
    with client_for(server) as bc:
        vecs, tokens = bc.encode(texts, show_tokens=True)
    np.testing.assert_allclose(vecs, expected_vectors(server, texts), rtol=1e-6)
    assert tokens[0] == ["[CLS]", "hello", "world", "[SEP]", "good", "day", "[SEP]"]


def test_encode_pre_tokenized(server):
    texts = [["hello", "world"], ["the", "dog", "|||", "a", "cat"]]
    with client_for(server) as bc:
        vecs, tokens = bc.encode(texts, is_tokenized=True, show_tokens=True)
    np.testing.assert_allclose(vecs, expected_vectors(server, texts, is_tokenized=True), rtol=1e-6)
    assert tokens[1] == ["[CLS]", "the", "dog", "[SEP]", "a", "cat", "[SEP]"]


def test_server_config_and_status_properties(server):
    with client_for(server) as bc:
        config = bc.server_config
        bc.encode(["hello"])
        status = bc.server_status
    assert config["server_version"] == "1.10.0" and config["show_tokens_to_client"] is True
    assert config["max_batch_size"] == 8
    assert status["statistic"]["num_data_request"] >= 1


def test_blocking_false_then_fetch_all_returns_every_request_in_order(server):
    batches = [[f"sentence {i} {j}" for j in range(1 + i % 5)] for i in range(12)]
    with client_for(server) as bc:
        for texts in batches:
            assert bc.encode(texts, blocking=False) is None
        results = bc.fetch_all(sort=True)
    assert len(results) == len(batches)
    for texts, got in zip(batches, results, strict=True):
        np.testing.assert_allclose(got, expected_vectors(server, texts), rtol=1e-6)


def test_fetch_all_concat(server):
    with client_for(server) as bc:
        bc.encode(["a b"], blocking=False)
        bc.encode(["c d", "e f"], blocking=False)
        got = bc.fetch_all(concat=True)
    np.testing.assert_allclose(got, expected_vectors(server, ["a b", "c d", "e f"]), rtol=1e-6)


def test_encode_async_yields_every_batch(server):
    batches = [[f"text {i}", f"more {i}"] for i in range(10)]
    with client_for(server) as bc:
        results = list(bc.encode_async(iter(batches), max_num_batch=10))
    assert sorted(r.id for r in results) == list(range(2, 12))  # id 1 was SHOW_CONFIG
    for r in results:
        np.testing.assert_allclose(r.embedding, expected_vectors(server, batches[r.id - 2]), rtol=1e-6)


def test_concurrent_bert_client_from_threads(server):
    bc = ConcurrentBertClient(
        max_concurrency=4,
        ip="127.0.0.1",
        port=server.config.port,
        port_out=server.config.port_out,
        timeout=15000,
    )
    errors: list[BaseException] = []

    def call(k: int) -> None:
        try:
            texts = [f"thread {k} line {i}" for i in range(1 + k % 3)]
            np.testing.assert_allclose(bc.encode(texts), expected_vectors(server, texts), rtol=1e-6)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        bc.close()
    assert not errors


def test_request_larger_than_max_batch_size_keeps_row_order(server):
    texts = [f"{'word ' * (i % 7 + 1)}number {i}" for i in range(50)]  # max_batch_size is 8
    with client_for(server) as bc:
        vecs = bc.encode(texts)
    np.testing.assert_allclose(vecs, expected_vectors(server, texts), rtol=1e-6)
    assert max(server.encoders[0].batches)[0] <= 8


def test_several_clients_at_once_get_their_own_answers(server):
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            with client_for(server) as bc:
                for i in range(5):
                    texts = [f"client {k} request {i} row {j}" for j in range(1 + (k + i) % 4)]
                    got = bc.encode(texts)
                    np.testing.assert_allclose(got, expected_vectors(server, texts), rtol=1e-6)
                    results[k * 10 + i] = got
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 30


def test_output_fmt_list(server):
    with client_for(server, output_fmt="list") as bc:
        got = bc.encode(["hello world"])
    assert isinstance(got, list) and isinstance(got[0], list) and len(got[0]) == 8


def test_the_first_reply_of_a_fresh_client_is_never_lost(server):
    """Each constructor sends SHOW_CONFIG right after connecting: the slow-joiner case, 40 times."""
    for _ in range(40):
        with client_for(server, timeout=5000) as bc:
            assert bc.encode(["hi"]).shape == (1, 8)


def _waiting_in(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is inside the 1.10.0 client's ``function`` right now (its own stack)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function and "bert_serving" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def test_a_client_constructed_before_the_server_binds_waits_and_then_works(tmp_path):
    with fake_server(tmp_path, start=False) as server:
        box: dict[str, object] = {}

        def connect() -> None:
            with BertClient(
                ip="127.0.0.1", port=server.config.port, port_out=server.config.port_out, timeout=15000
            ) as bc:
                box["vec"] = bc.encode(["hello"])

        thread = threading.Thread(target=connect)
        thread.start()
        # The client sent SHOW_CONFIG and waits for its answer while nothing listens yet.
        wait_until(lambda: _waiting_in(thread, "_recv"), timeout=15, what="the client waiting for an answer")
        assert "vec" not in box
        server.start()
        thread.join(20)
        assert box["vec"].shape == (1, 8)  # type: ignore[union-attr]


def test_dynamic_max_seq_len_reports_null_and_client_warns(tmp_path):
    with fake_server(tmp_path, max_seq_len=None) as server, client_for(server) as bc:
        assert bc.length_limit is None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bc.encode(["hello world"])
        assert any("max_seq_len" in str(w.message) for w in caught)
