"""``POST /predict`` (``-classifier``): request shapes, ranking, raw scores, errors, and the shared queue.

The model is the numpy ``FakeEncoder`` with a fixed head, so each test can compare an answer with
the head applied to the example alone (tokenized as ``run_classifier.py`` does). The real head's
numbers are checked against the numpy reference in ``test_classifier.py``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from server_harness import fake_server, http_url, wait_until

from bertserve_api.contract import API_KEY_ENV
from bertserve_server.batcher import Batcher
from bertserve_server.classifier import LabelError
from bertserve_server.encoder import CLASSIFY, ENCODE, pad_batch
from bertserve_server.tokenization import BertTokenizer


def alone(server, example) -> np.ndarray:
    """The head's logits for one example, run alone and padded to nothing."""
    (row,) = server.service.tokenizer.tokenize_examples([example])
    return server.encoders[0].classify(pad_batch([row], len(row)))[0]


def probabilities(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max())
    return e / e.sum()


def post(server, body, path="/predict"):
    return requests.post(http_url(server, path), json=body, timeout=10)


@pytest.fixture
def server(tmp_path):
    with fake_server(tmp_path, http_port=0, classifier=True, classifier_labels=("no", "yes", "maybe")) as s:
        yield s


def check(server, answer: list[dict], example) -> None:
    want = probabilities(alone(server, example))
    labels = ["no", "yes", "maybe"]
    assert [a["label"] for a in answer] == [labels[i] for i in np.argsort(-want, kind="stable")]
    got = {a["label"]: a["score"] for a in answer}
    np.testing.assert_allclose([got[label] for label in labels], want, atol=1e-6)
    assert [a["score"] for a in answer] == sorted((a["score"] for a in answer), reverse=True)


def test_a_string_gets_one_ranked_list(server):
    r = post(server, {"inputs": "hello world"})
    assert r.status_code == 200
    check(server, r.json(), "hello world")


def test_a_pair_is_one_input_with_segment_ids_0_and_1(server):
    r = post(server, {"inputs": ["the dog is good", "it is a good dog"]})
    assert r.status_code == 200
    check(server, r.json(), ("the dog is good", "it is a good dog"))
    # The same pair written "a ||| b" is the same input.
    assert post(server, {"inputs": "the dog is good ||| it is a good dog"}).json() == r.json()
    (row,) = server.service.tokenizer.tokenize_examples([("the dog is good", "it is a good dog")])
    assert 0 in row.type_ids and row.type_ids[-1] == 1


def test_a_batch_gets_one_list_per_input_in_order(server):
    inputs = ["hello world", ["i run", "you run"], "good day ||| bad night", ["a"], "the cat"]
    r = post(server, {"inputs": inputs})
    assert r.status_code == 200
    body = r.json()
    assert len(body) == len(inputs)
    examples = ["hello world", ("i run", "you run"), "good day ||| bad night", "a", "the cat"]
    for answer, example in zip(body, examples, strict=True):
        check(server, answer, example)
    # Two sentences (not a pair) in one request: each as a one-element array.
    two = post(server, {"inputs": [["hello world"], ["the cat"]]}).json()
    assert two == [body[0], body[4]]


def test_raw_scores_are_the_logits(server):
    r = post(server, {"inputs": ["hello world"] * 3, "raw_scores": True})
    assert r.status_code == 200
    logits = alone(server, "hello world")
    for answer in r.json():
        got = {a["label"]: a["score"] for a in answer}
        np.testing.assert_allclose([got["no"], got["yes"], got["maybe"]], logits, rtol=1e-6)
        assert [a["score"] for a in answer] == sorted(logits.tolist(), reverse=True)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, 'missing "inputs"'),
        ({"inputs": []}, "non-empty"),
        ({"inputs": ""}, "inputs must be a non-empty string"),
        ({"inputs": 3}, "inputs must be a string, a pair"),
        ({"inputs": ["a", ["b", "c", "d"]]}, "inputs[1] must be a string or a pair"),
        ({"inputs": [["a", " "]]}, "inputs[0][1] must be a non-empty string"),
        ({"inputs": "a", "raw_scores": "yes"}, "raw_scores must be true or false"),
    ],
)
def test_bad_predict_is_400_naming_the_value(server, body, fragment):
    r = post(server, body)
    assert r.status_code == 400
    err = r.json()
    assert set(err) == {"description", "type", "status"} and err["type"] == "InvalidInput"
    assert fragment in err["description"]


def test_without_classifier_predict_is_404_saying_how_to_enable_it(tmp_path):
    with fake_server(tmp_path, http_port=0) as server:
        r = post(server, {"inputs": "hello"})
        assert r.status_code == 404 and r.json()["type"] == "NoClassifier"
        assert "-classifier" in r.json()["description"]
        assert post(server, {"id": 1, "texts": ["hello"]}, "/encode").status_code == 200


def test_predict_shares_the_queue_and_metrics_with_encode(tmp_path):
    with fake_server(tmp_path, http_port=0, classifier=True, max_queue_size=4) as server:
        server.encoders[0].delay_s = 0.5
        slow = threading.Thread(target=post, args=(server, {"id": 1, "texts": ["a"] * 4}, "/encode"))
        slow.start()
        wait_until(lambda: server.batcher.depth == 4)
        r = post(server, {"inputs": "b"})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1" and r.json()["type"] == "Busy"
        slow.join(10)
        server.encoders[0].delay_s = 0.0
        assert post(server, {"inputs": "b"}).status_code == 200
        text = requests.get(http_url(server, "/metrics"), timeout=10).text
        assert 'bertserve_requests_total{frontend="http",kind="predict",outcome="ok"} 1.0' in text
        assert 'bertserve_requests_total{frontend="http",kind="predict",outcome="busy"} 1.0' in text


def test_concurrent_encodes_and_predicts_are_batched_apart_and_stay_exact(tmp_path):
    with fake_server(tmp_path, http_port=0, classifier=True, max_wait_ms=20.0) as server:
        texts = ["hello world", "the dog is not a cat", "i run ||| you run", "good day"]

        def one(k: int) -> None:
            text = texts[k % len(texts)]
            if k % 2:
                r = post(server, {"inputs": [[text], ["a b c"]]})  # two sentences, not a pair
                got = np.array(
                    [[a["score"] for a in sorted(row, key=lambda a: a["label"])] for row in r.json()]
                )
                want = np.stack([probabilities(alone(server, e)) for e in (text, "a b c")])
                np.testing.assert_allclose(got, want, atol=1e-6)
            else:
                r = post(server, {"id": k, "texts": [text, "a b c"]}, "/encode")
                rows = server.service.tokenizer.tokenize_batch([text, "a b c"])
                want = np.stack([server.encoders[0].encode(pad_batch([x], len(x)))[0] for x in rows])
                np.testing.assert_allclose(np.array(r.json()["result"]), want, rtol=1e-6)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(24)))
        assert server.status is not None
        assert server.status.document("t", with_statistic=False)["classifier_labels"] == ["0", "1"]


def test_label_count_that_does_not_match_the_head_stops_start_up(tmp_path):
    with fake_server(tmp_path, classifier=True, classifier_labels=("a", "b"), start=False) as server:
        server._encoder_factory("/CPU:0")._num_labels = 3
        with pytest.raises(LabelError, match=r"names 2 label\(s\) \(a,b\) but the checkpoint's head"):
            server.start()


def test_batcher_never_mixes_encode_and_classify_rows():
    tok = BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"])})
    batcher = Batcher(width=4, max_batch_size=8, max_wait_ms=0.0)
    batcher.set_output(4, "float32", num_labels=2)
    for task in (ENCODE, CLASSIFY, ENCODE, CLASSIFY):
        items = tok.tokenize_batch(["a b", "a"])
        batcher.enqueue(batcher.reserve(len(items)), items, task=task)
    seen = []
    while (device_batch := batcher.next_batch(timeout=0.0)) is not None:
        seen.append((device_batch.task, device_batch.size))
        assert {p.task for p, _ in device_batch.parts} == {device_batch.task}
    assert sorted(seen) == [(CLASSIFY, 4), (ENCODE, 4)]


def test_predict_needs_the_api_key_like_encode(tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "predict-key-" + "p" * 32)
    with fake_server(tmp_path, http_port=0, classifier=True) as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = requests.post(
                http_url(server, "/predict"), json={"inputs": "hello"}, headers=headers, timeout=10
            )
            assert r.status_code == 401 and r.json()["type"] == "Unauthorized"
        auth = {"Authorization": "Bearer predict-key-" + "p" * 32}
        r = requests.post(http_url(server, "/predict"), json={"inputs": "hello"}, headers=auth, timeout=10)
        assert r.status_code == 200 and len(r.json()) == 2


def test_predict_answers_are_bounded_by_max_response_bytes(tmp_path):
    with fake_server(tmp_path, http_port=0, classifier=True, max_response_bytes=3 * 2 * 4) as server:
        assert post(server, {"inputs": ["a", "b", "c"]}).status_code == 200
        r = post(server, {"inputs": ["a", "b", "c", "d"]})
        assert r.status_code == 413 and "-max_response_bytes=24" in r.json()["description"]
