"""Random and mutated frames and bodies against a real server: every addressable request is answered.

Seeded and bounded (a fixed number of messages, a deadline for the answers): a failure replays.
ZeroMQ: messages with 1-6 frames, random or mutated payloads, ``req_id`` and ``msg_len`` (huge
digit strings, signs, non-ASCII), deep nesting. Every message with exactly four frames, our
identity and a ``req_id`` of 1-64 ASCII digits must get an answer carrying that ``req_id``;
the rest are dropped by design. HTTP: random and mutated bodies on every route must get a JSON
answer with a 2xx/4xx/5xx status. Afterwards the unmodified 1.10.0 client gets correct vectors.
"""

from __future__ import annotations

import json
import random
import time
import uuid

import numpy as np
import pytest
import requests
import zmq
from bert_serving.client import BertClient
from server_harness import encode_rows_alone, fake_encoder_for, make_tokenizer, write_model_dir

from bertserve_api.contract import ServerConfig

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

SEED = 1210
MESSAGES = 400
HTTP_BODIES = 150
ANSWER_DEADLINE_S = 30.0

GOOD_PAYLOADS = [
    b'["hello world"]',
    b'["the quick brown fox", "jumps over ||| the lazy dog"]',
    b'[["hello", "world"], ["fox"]]',
    b"SHOW_CONFIG",
    b"SHOW_STATUS",
]
NASTY = [
    b"[" * 5000 + b"]" * 5000,
    b'{"a": ' * 3000 + b"1" + b"}" * 3000,
    b"9" * 5000,
    b"-1",
    b"\xff\xfe\x00",
    b"",
    b"null",
    b'["\\ud800"]',
    b"[1e999999]",
    b'["a", NaN]',
    b"TERMINATION",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            del out[pos % len(out)]
        elif op == 1:
            out[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and out:
            out[pos % len(out)] = rng.randrange(256)
        else:
            out[pos:pos] = rng.choice(NASTY)[: rng.randint(1, 64)]
    return bytes(out)


def random_field(rng: random.Random, good: bytes) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return good
    if choice == 1:
        return b"9" * rng.randint(1, 6000)
    if choice == 2:
        return rng.randbytes(rng.randint(0, 12))
    if choice == 3:
        return b"-" + good
    if choice == 4:
        return str(rng.randint(0, 10**6)).encode()
    return mutate(rng, good)


def payload(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(GOOD_PAYLOADS)
    if kind == 1:
        return mutate(rng, rng.choice(GOOD_PAYLOADS))
    if kind == 2:
        return rng.choice(NASTY)
    return rng.randbytes(rng.randint(0, 200))


def addressable(frames: list[bytes], identity: bytes) -> bool:
    req_id = frames[2] if len(frames) == 4 else b""
    return frames[0] == identity and req_id.isdigit() and req_id.isascii() and 1 <= len(req_id) <= 64


def fake_model_vectors(model_dir, texts: list[str]) -> np.ndarray:
    """What the served numpy model must answer, computed here row by row."""
    config = ServerConfig(model_dir=str(model_dir))
    return encode_rows_alone(make_tokenizer(config), fake_encoder_for(config), texts)


def test_fuzzed_frames_and_bodies_are_answered_and_the_server_keeps_serving(fake_process, tmp_path):
    server = fake_process(0.0)
    server.wait_ready(60)
    rng = random.Random(SEED)
    identity = str(uuid.uuid4()).encode()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"tcp://127.0.0.1:{server.port}")
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, identity)
    sub.connect(f"tcp://127.0.0.1:{server.port_out}")
    try:
        push.send_multipart([identity, b"SHOW_CONFIG", b"0", b"0"])
        assert sub.poll(10000), "no answer to SHOW_CONFIG"
        sub.recv_multipart()
        expected: set[bytes] = set()
        for n in range(1, MESSAGES + 1):
            frames = [identity, payload(rng), str(n).encode(), str(rng.randint(0, 3)).encode()]
            if rng.random() < 0.5:
                frames[3] = random_field(rng, frames[3])
            if rng.random() < 0.2:
                frames[2] = random_field(rng, frames[2])
            if rng.random() < 0.1:
                frames = frames[: rng.randint(1, 3)] if rng.random() < 0.5 else [*frames, b"extra", b"x"]
            if rng.random() < 0.05:
                frames[0] = rng.randbytes(rng.randint(0, 40))
            if len(frames) > 1 and frames[1] == b"TERMINATION":
                continue  # refused by default and unanswered by design (1.10.0 sends no reply either)
            if addressable(frames, identity):
                expected.add(frames[2])
            push.send_multipart(frames)
        answered: set[bytes] = set()
        deadline = time.monotonic() + ANSWER_DEADLINE_S
        while not expected <= answered and time.monotonic() < deadline:
            if sub.poll(200):
                answered.add(sub.recv_multipart()[-1])
        missing = sorted(expected - answered, key=lambda r: (len(r), r))
        assert not missing, f"{len(missing)} addressable requests got no answer, e.g. req_id {missing[:5]}"
        assert len(expected) > MESSAGES // 2
    finally:
        push.close()
        sub.close()
        context.term()

    routes = [
        ("POST", "/encode"),
        ("POST", "/v1/embeddings"),
        ("POST", "/predict"),
        ("GET", "/status/server"),
    ]
    bodies = [
        json.dumps({"id": 1, "texts": ["hello world"]}).encode(),
        json.dumps({"input": ["hi"]}).encode(),
    ]
    session = requests.Session()
    for _ in range(HTTP_BODIES):
        method, path = rng.choice(routes)
        body = mutate(rng, rng.choice(bodies)) if rng.random() < 0.7 else payload(rng)
        r = session.request(
            method, server.url(path), data=body, headers={"Content-Type": "application/json"}, timeout=30
        )
        assert 200 <= r.status_code < 600 and r.status_code not in (300, 301, 302)
        r.json()  # always a JSON body, never a traceback page

    assert server.proc.poll() is None
    assert "Traceback" not in server.log, server.log[-4000:]
    texts = ["hello world", "the quick brown fox"]
    with BertClient(ip="127.0.0.1", port=server.port, port_out=server.port_out, timeout=10000) as bc:
        vectors = bc.encode(texts)
    np.testing.assert_allclose(
        vectors, fake_model_vectors(write_model_dir(tmp_path / "ref"), texts), rtol=1e-6
    )
