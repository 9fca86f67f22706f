"""The real TensorFlow encoder behind the real wire: served vectors equal ``TFEncoder``'s own output.

The batcher merges rows of different clients and pads them to the longest row of a batch; these
tests prove that what a client receives equals encoding its rows alone, for the pooled strategies
and for NONE (token vectors), with the unmodified 1.10.0 client and over HTTP.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from ports import free_ports
from server_harness import client_for

from bertserve_api.contract import PoolingStrategy, ServerConfig
from bertserve_server.app import BertServer
from bertserve_server.encoder import pad_batch

pytestmark = [pytest.mark.tf, pytest.mark.filterwarnings("ignore::UserWarning")]

TEXTS = [
    "hello world",
    "the dog is not a cat, it is a good dog!",
    "un ##want",
    "i run ||| you run",
    "中文 日本",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
]


def start_server(model_dir: Path, **flags) -> BertServer:
    port, port_out, http_port = free_ports(3)
    config = ServerConfig(
        model_dir=str(model_dir),
        bind_host="127.0.0.1",
        port=port,
        port_out=port_out,
        http_port=http_port,
        cpu=True,
        **flags,
    )
    server = BertServer(config)
    server.start()
    return server


def direct_rows(server: BertServer, texts: list[str]) -> list[np.ndarray]:
    """Each row encoded alone, padded only to its own length."""
    rows = server.service.tokenizer.tokenize_batch(texts)
    return [server.encoders[0].encode(pad_batch([r], len(r)))[0] for r in rows]


@pytest.fixture(scope="module")
def tuned_server(tiny_model_dir, tiny_finetuned_dir):
    server = start_server(
        tiny_model_dir, tuned_model_dir=str(tiny_finetuned_dir), ckpt_name="model.ckpt-343", max_batch_size=4
    )
    yield server
    server.shutdown(drain_timeout=5)


def test_served_vectors_equal_the_encoder_on_each_row_alone(tuned_server):
    with client_for(tuned_server) as bc:
        vecs = bc.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 32) and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs, np.stack(direct_rows(tuned_server, TEXTS)), rtol=1e-5, atol=1e-5)


def test_requests_of_several_clients_merged_into_batches_stay_exact(tuned_server):
    errors: list[BaseException] = []

    def run(k: int) -> None:
        texts = [TEXTS[(k + i) % len(TEXTS)] + f" {k}" * (k % 3) for i in range(1 + k % 5)]
        try:
            with client_for(tuned_server) as bc:
                got = bc.encode(texts)
            np.testing.assert_allclose(got, np.stack(direct_rows(tuned_server, texts)), rtol=1e-5, atol=1e-5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors


def test_http_and_openai_answers_match_zmq(tuned_server):
    port = tuned_server.config.http_port
    with client_for(tuned_server) as bc:
        zmq_vecs = bc.encode(TEXTS[:3])
    body = requests.post(
        f"http://127.0.0.1:{port}/encode", json={"id": 5, "texts": TEXTS[:3]}, timeout=60
    ).json()
    np.testing.assert_allclose(np.array(body["result"]), zmq_vecs, rtol=1e-6)
    body = requests.post(
        f"http://127.0.0.1:{port}/v1/embeddings", json={"input": TEXTS[:3]}, timeout=60
    ).json()
    np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]), zmq_vecs, rtol=1e-6)


def test_none_pooling_with_dynamic_length(tiny_model_dir):
    server = start_server(tiny_model_dir, pooling_strategy=PoolingStrategy.NONE, max_seq_len=None)
    try:
        with client_for(server) as bc:
            vecs = bc.encode(TEXTS)
        rows = server.service.tokenizer.tokenize_batch(TEXTS)
        longest = max(len(r) for r in rows)
        assert vecs.shape == (len(TEXTS), longest, 32)
        for i, (row, alone) in enumerate(zip(rows, direct_rows(server, TEXTS), strict=True)):
            np.testing.assert_allclose(vecs[i, : len(row)], alone, rtol=1e-5, atol=1e-5)
            assert not vecs[i, len(row) :].any()
    finally:
        server.shutdown(drain_timeout=5)


def test_layer_concatenation_mean_max_and_fp16(tiny_model_dir):
    server = start_server(
        tiny_model_dir, pooling_strategy=PoolingStrategy.REDUCE_MEAN_MAX, pooling_layer=(-1, -2), fp16=True
    )
    try:
        with client_for(server) as bc:
            assert bc.server_config["fp16"] is True
            vecs = bc.encode(TEXTS[:2])
        assert vecs.dtype == np.float16 and vecs.shape == (2, 2 * 2 * 32)
        expected = np.stack(direct_rows(server, TEXTS[:2])).astype(np.float32)
        np.testing.assert_allclose(vecs.astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    finally:
        server.shutdown(drain_timeout=5)
