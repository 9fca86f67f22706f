"""The HTTP API: bert-as-service /encode, OpenAI embeddings, probes, metrics, overload, CORS."""

from __future__ import annotations

import base64
import threading

import numpy as np
import pytest
import requests
from server_harness import client_for, expected_vectors, fake_server, http_url, wait_until


@pytest.fixture
def server(tmp_path):
    with fake_server(tmp_path, http_port=0) as s:
        yield s


def test_encode_returns_id_result_status(server):
    texts = ["hello world", "good day"]
    r = requests.post(
        http_url(server, "/encode"), json={"id": 123, "texts": texts, "is_tokenized": False}, timeout=10
    )
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == 123 and body["status"] == 200
    np.testing.assert_allclose(np.array(body["result"]), expected_vectors(server, texts), rtol=1e-6)


def test_encode_pre_tokenized(server):
    r = requests.post(
        http_url(server, "/encode"), json={"id": 1, "texts": [["hello", "world"]], "is_tokenized": True}
    )
    assert r.status_code == 200 and np.array(r.json()["result"]).shape == (1, 8)


def test_encode_accepts_a_form_post(server):
    r = requests.post(
        http_url(server, "/encode"), data={"id": "f", "texts": ["hello world", "a b"]}, timeout=10
    )
    assert r.status_code == 200 and r.json()["id"] == "f" and len(r.json()["result"]) == 2


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"id": 1, "texts": []}, "non-empty"),
        ({"id": 1, "texts": ["a", ""]}, "element 1"),
        ({"id": 1, "texts": "hello"}, "JSON array"),
        ({"id": 1}, 'missing "texts"'),
        ({"id": 1, "texts": ["a"], "is_tokenized": True}, "is_tokenized is true"),
    ],
)
def test_bad_encode_is_400_with_description_type_status(server, body, fragment):
    r = requests.post(http_url(server, "/encode"), json=body, timeout=10)
    assert r.status_code == 400
    err = r.json()
    assert set(err) == {"description", "type", "status"} and err["status"] == 400
    assert err["type"] == "InvalidInput" and fragment in err["description"]


def test_malformed_json_body_is_400(server):
    r = requests.post(
        http_url(server, "/encode"), data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "not valid UTF-8 JSON" in r.json()["description"]


def test_status_server_is_the_show_status_document(server):
    requests.post(http_url(server, "/encode"), json={"id": 1, "texts": ["a"]}, timeout=10)
    body = requests.get(http_url(server, "/status/server"), timeout=10).json()
    assert body["status"] == 200 and body["server_version"] == "1.10.0"
    assert body["statistic"]["num_data_request"] >= 1 and body["pooling_strategy"] == 2


def test_status_client(server):
    body = requests.get(http_url(server, "/status/client"), timeout=10).json()
    assert body["status"] == 200 and body["client_version"] == "1.10.0" and body["max_concurrency"] == 10


def test_openai_embeddings_float(server):
    r = requests.post(
        http_url(server, "/v1/embeddings"),
        json={"input": ["hello world", "good day"], "model": "m"},
        timeout=10,
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "m"
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    got = np.array([d["embedding"] for d in body["data"]])
    np.testing.assert_allclose(got, expected_vectors(server, ["hello world", "good day"]), rtol=1e-6)
    assert body["usage"] == {"prompt_tokens": 8, "total_tokens": 8}  # [CLS] w w [SEP] twice


def test_openai_embeddings_base64_and_single_string(server):
    r = requests.post(
        http_url(server, "/v1/embeddings"),
        json={"input": "hello world", "encoding_format": "base64"},
        timeout=10,
    )
    assert r.status_code == 200
    data = r.json()["data"]
    assert len(data) == 1
    vector = np.frombuffer(base64.b64decode(data[0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, expected_vectors(server, ["hello world"])[0], rtol=1e-6)
    assert r.json()["model"] == "model"  # defaults to the model directory's name


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "m"}, "invalid_input"),
        ({"input": [], "model": "m"}, "invalid_input"),
        ({"input": [1, 2, 3], "model": "m"}, "invalid_input"),
        ({"input": "x", "encoding_format": "int8"}, "invalid_input"),
        ({"input": "x", "dimensions": 3}, "invalid_input"),
    ],
)
def test_openai_errors_use_the_openai_shape(server, body, code):
    r = requests.post(http_url(server, "/v1/embeddings"), json=body, timeout=10)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == code and err["message"]


def test_healthz_and_metrics(server):
    assert requests.get(http_url(server, "/healthz"), timeout=10).json() == {"status": "alive"}
    requests.post(http_url(server, "/encode"), json={"id": 1, "texts": ["a", "b"]}, timeout=10)
    requests.post(http_url(server, "/encode"), json={"id": 1, "texts": []}, timeout=10)
    text = requests.get(http_url(server, "/metrics"), timeout=10).text
    assert 'bertserve_requests_total{frontend="http",kind="encode",outcome="ok"} 1.0' in text
    assert 'bertserve_requests_total{frontend="http",kind="encode",outcome="invalid_input"} 1.0' in text
    for name in (
        "bertserve_tokenize_seconds_bucket",
        "bertserve_queue_seconds_bucket",
        "bertserve_inference_seconds_bucket",
        "bertserve_batch_size_bucket",
        "bertserve_queue_depth_sentences",
    ):
        assert name in text


def test_readyz_is_503_until_warm_and_during_drain(tmp_path):
    with fake_server(tmp_path, http_port=0, start=False) as server:
        gate = threading.Event()
        encoder = server._encoder_factory("/CPU:0")
        encoder.warm_up = lambda: gate.wait(10)  # hold the warm-up
        starter = threading.Thread(target=server.start)
        starter.start()
        wait_until(lambda: server.http is not None and server.http._started.is_set(), what="HTTP bound")
        r = requests.get(http_url(server, "/readyz"), timeout=10)
        assert r.status_code == 503 and r.json()["reason"] == "loading"
        assert requests.get(http_url(server, "/healthz"), timeout=10).status_code == 200
        r = requests.post(http_url(server, "/encode"), json={"id": 1, "texts": ["a"]}, timeout=10)
        assert r.status_code == 503 and r.headers["Retry-After"] and r.json()["type"] == "NotReady"
        gate.set()
        starter.join(10)
        assert requests.get(http_url(server, "/readyz"), timeout=10).status_code == 200
        server.batcher.close()
        server.service.set_not_ready()
        r = requests.get(http_url(server, "/readyz"), timeout=10)
        assert r.status_code == 503 and r.json()["reason"] == "draining"
        r = requests.post(http_url(server, "/encode"), json={"id": 1, "texts": ["a"]}, timeout=10)
        assert r.status_code == 503 and r.json()["type"] == "ShuttingDown"


def test_full_queue_is_429_with_retry_after(tmp_path):
    with fake_server(tmp_path, http_port=0, max_queue_size=4) as server:
        server.encoders[0].delay_s = 0.5
        slow = threading.Thread(
            target=requests.post,
            args=(http_url(server, "/encode"),),
            kwargs={"json": {"id": 1, "texts": ["a"] * 4}},
        )
        slow.start()
        wait_until(lambda: server.batcher.depth == 4)
        r = requests.post(http_url(server, "/encode"), json={"id": 2, "texts": ["b"]}, timeout=10)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1" and r.json()["type"] == "Busy"
        r = requests.post(http_url(server, "/v1/embeddings"), json={"input": "b"}, timeout=10)
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        slow.join(10)


def test_http_max_connect_bounds_concurrent_encodes(tmp_path):
    with fake_server(tmp_path, http_port=0, http_max_connect=1) as server:
        server.encoders[0].delay_s = 0.5
        slow = threading.Thread(
            target=requests.post,
            args=(http_url(server, "/encode"),),
            kwargs={"json": {"id": 1, "texts": ["a"]}},
        )
        slow.start()
        wait_until(lambda: server.batcher.depth == 1)
        r = requests.post(http_url(server, "/encode"), json={"id": 2, "texts": ["b"]}, timeout=10)
        assert r.status_code == 429 and "http_max_connect=1" in r.json()["description"]
        slow.join(10)
        server.encoders[0].delay_s = 0.0
        assert (
            requests.post(http_url(server, "/encode"), json={"id": 3, "texts": ["c"]}, timeout=10).status_code
            == 200
        )


def test_cors_star_and_preflight(server):
    r = requests.post(
        http_url(server, "/encode"),
        json={"id": 1, "texts": ["a"]},
        headers={"Origin": "https://x.example"},
        timeout=10,
    )
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    r = requests.options(
        http_url(server, "/encode"),
        headers={"Origin": "https://x.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert r.status_code == 204 and "POST" in r.headers["Access-Control-Allow-Methods"]


def test_cors_allow_list(tmp_path):
    with fake_server(tmp_path, http_port=0, cors="https://a.example,https://b.example") as server:
        ok = requests.get(http_url(server, "/healthz"), headers={"Origin": "https://b.example"}, timeout=10)
        assert ok.headers["Access-Control-Allow-Origin"] == "https://b.example"
        other = requests.get(
            http_url(server, "/healthz"), headers={"Origin": "https://evil.example"}, timeout=10
        )
        assert "Access-Control-Allow-Origin" not in other.headers


def test_http_and_zmq_requests_share_the_model(server):
    """Both frontends feed one batcher: answers agree and both are counted."""
    r = requests.post(http_url(server, "/encode"), json={"id": 1, "texts": ["hello world"]}, timeout=10)
    with client_for(server) as bc:
        np.testing.assert_allclose(bc.encode(["hello world"])[0], np.array(r.json()["result"][0]), rtol=1e-6)
    assert server.metrics.value("bertserve_sentences_total", {"frontend": "http"}) == 1
    assert server.metrics.value("bertserve_sentences_total", {"frontend": "zmq"}) == 1


def test_oversized_body_is_413(tmp_path):
    with fake_server(tmp_path, http_port=0, max_request_bytes=2048) as server:
        r = requests.post(
            http_url(server, "/encode"), json={"id": 1, "texts": ["word " * 100] * 10}, timeout=10
        )
        assert r.status_code == 413 and r.json()["type"] == "RequestTooLarge"
        assert (
            requests.post(
                http_url(server, "/encode"), json={"id": 2, "texts": ["ok"]}, timeout=10
            ).status_code
            == 200
        )
