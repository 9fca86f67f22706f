"""HTTP answers carry each vector's values exactly, each number in the shortest form that does.

The model computes float32 (float16 under ``-fp16``). An answer written through Python floats
spells each value as the float64 it widens to (``0.1257302165031433`` for the float32
``0.12573022``): twice the digits, the same value. Parsed and cast back to the vector's dtype,
the shortest form gives back the very same bits; these tests hold the server to both.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
import requests
from server_harness import expected_vectors, fake_server, http_url

import bertserve_server.frontends.http as http_frontend

TEXTS = ["hello world", "good day", "a b c d e f g", "the quick brown fox"]


def number_texts(value: Any) -> list[str]:
    """Every number of a JSON value parsed with ``parse_float=str``, in document order."""
    if isinstance(value, list):
        return [text for item in value for text in number_texts(item)]
    if isinstance(value, str):
        return [value]
    if isinstance(value, int):
        return [str(value)]
    raise AssertionError(f"unexpected JSON value in a vector: {value!r}")


def significant_digits(number: str) -> int:
    """Digits from the first non-zero one to the last non-zero one: ``-0.00120`` has 2."""
    mantissa = re.split("[eE]", number.lstrip("-"))[0].replace(".", "")
    return len(mantissa.strip("0")) or 1


def assert_exact_and_shortest(numbers: list[str], expected: np.ndarray) -> None:
    """Each number is its vector value exactly (in the vector's dtype), with no digit to spare."""
    flat = expected.ravel()
    assert len(numbers) == flat.size
    parsed = np.array([float(n) for n in numbers]).astype(expected.dtype)
    assert np.array_equal(parsed.view(np.uint8), flat.view(np.uint8)), "a value changed on the way"
    kind = np.float32 if expected.dtype == np.float16 else expected.dtype.type
    for number, value in zip(numbers, flat, strict=True):
        shortest = str(kind(value))  # numpy prints a float32 scalar in its shortest round-trip form
        assert significant_digits(number) <= significant_digits(shortest), (number, shortest)


@pytest.mark.parametrize("fp16", [False, True], ids=["float32", "fp16"])
def test_encode_answer_numbers_are_the_vectors_values_in_shortest_form(tmp_path, fp16):
    with fake_server(tmp_path, http_port=0, fp16=fp16) as server:
        r = requests.post(http_url(server, "/encode"), json={"id": 7, "texts": TEXTS}, timeout=10)
        assert r.status_code == 200
        body = json.loads(r.text, parse_float=str)
        assert body["id"] == 7 and body["status"] == 200
        expected = expected_vectors(server, TEXTS)
        assert expected.dtype == (np.float16 if fp16 else np.float32)
        assert_exact_and_shortest(number_texts(body["result"]), expected)


def test_per_token_answers_keep_their_shape_and_values(tmp_path):
    with fake_server(tmp_path, http_port=0, pooling_strategy="NONE", max_seq_len=6) as server:
        r = requests.post(http_url(server, "/encode"), json={"id": 1, "texts": TEXTS[:2]}, timeout=10)
        assert r.status_code == 200
        result = json.loads(r.text, parse_float=str)["result"]
        assert [len(result), len(result[0]), len(result[0][0])] == [2, 6, 8]
        expected = np.stack(
            [np.pad(v, ((0, 6 - len(v)), (0, 0))) for v in expected_vectors(server, TEXTS[:2])]
        )
        assert_exact_and_shortest(number_texts(result), expected)


def test_a_large_answer_is_streamed_in_pieces_with_every_value_exact(tmp_path, monkeypatch):
    """Above ``OFFLOAD_BYTES`` the answer is written off the event loop, in ~``CHUNK_BYTES`` pieces."""
    monkeypatch.setattr(http_frontend, "CHUNK_BYTES", 2048)  # many pieces, each cut between rows
    texts = [f"w{i % 97} x{i % 13} y{i % 7}" for i in range(4500)]  # 4500 x 8 x 8 bytes > OFFLOAD_BYTES
    with fake_server(tmp_path, http_port=0, max_batch_size=256) as server:
        r = requests.post(http_url(server, "/encode"), json={"id": "big", "texts": texts}, timeout=60)
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == len(r.content)
        body = json.loads(r.text, parse_float=str)
        assert body["id"] == "big" and body["status"] == 200 and len(body["result"]) == len(texts)
        assert_exact_and_shortest(number_texts(body["result"]), expected_vectors(server, texts))


def test_openai_float_embeddings_are_the_vectors_values_in_shortest_form(tmp_path):
    with fake_server(tmp_path, http_port=0) as server:
        r = requests.post(http_url(server, "/v1/embeddings"), json={"input": TEXTS, "model": "m"}, timeout=10)
        assert r.status_code == 200
        body = json.loads(r.text, parse_float=str)
        assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
        numbers = [n for d in body["data"] for n in number_texts(d["embedding"])]
        assert_exact_and_shortest(numbers, expected_vectors(server, TEXTS))
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
