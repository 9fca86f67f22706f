"""Start real ``BertServer`` instances in-process for protocol tests, fast and on 127.0.0.1 only.

The model is the numpy ``FakeEncoder`` (no TensorFlow); the tokenizer is the project's WordPiece
tokenizer over the tiny synthetic vocabulary. Ports are picked free by the OS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polling
import zmq
from fake_encoder import FakeEncoder
from ports import free_ports

from bertserve_api.contract import PoolingStrategy, ServerConfig
from bertserve_server.app import BertServer, default_tokenizer
from bertserve_server.encoder import pad_batch
from bertserve_server.model.config import BertConfig
from bertserve_server.model.synthetic import DEFAULT_VOCAB, write_vocab
from bertserve_server.service import Tokenizer

MAX_POSITIONS = 64
CLIENT_TIMEOUT_MS = 15000


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` every 10 ms; fail the test after ``timeout`` seconds (``polling.wait_for``)."""
    polling.wait_for(condition, timeout, what, interval=0.01)


def write_model_dir(
    directory: Path, *, max_position_embeddings: int = MAX_POSITIONS, layers: int = 2
) -> Path:
    """``bert_config.json`` and ``vocab.txt`` (no checkpoint: the fake encoder needs none)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_vocab(directory / "vocab.txt", DEFAULT_VOCAB)
    BertConfig(
        vocab_size=len(DEFAULT_VOCAB),
        hidden_size=8,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=max_position_embeddings,
    ).write(directory / "bert_config.json")
    return directory


def make_tokenizer(config: ServerConfig, max_position_embeddings: int = MAX_POSITIONS) -> Tokenizer:
    """The server's own tokenizer (``app.default_tokenizer``) over the tiny synthetic vocabulary."""
    return default_tokenizer(config, max_position_embeddings)


def make_config(model_dir: Path, **flags: Any) -> ServerConfig:
    port, port_out, http_port = free_ports(3)
    base: dict[str, Any] = {
        "model_dir": str(model_dir),
        "bind_host": "127.0.0.1",
        "port": port,
        "port_out": port_out,
        "cpu": True,
        "drain_timeout": 5.0,
        # The frame-level protocol tests use short readable identities (b"cfg-client"); the
        # -min_identity_len default (16) is exercised by tests that leave this out or set it.
        "min_identity_len": 1,
    }
    base.update(flags)
    if isinstance(base.get("pooling_strategy"), str):
        base["pooling_strategy"] = PoolingStrategy.from_string(base["pooling_strategy"])
    if base.get("http_port") == 0:
        base["http_port"] = http_port
    return ServerConfig(**base)


def fake_encoder_for(config: ServerConfig, **kw: Any) -> FakeEncoder:
    return FakeEncoder(
        pooling_strategy=config.pooling_strategy.name,
        pooling_layer=config.pooling_layer,
        fp16=config.fp16,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=(len(config.classifier_labels) or 2) if config.classifier else 0,
        **kw,
    )


def encode_rows_alone(
    tokenizer: Tokenizer, encoder: Any, texts: list[str], is_tokenized: bool = False
) -> np.ndarray:
    """The expected vectors: each text tokenized and encoded on its own, without batching.

    A served answer must equal this whatever batch the server formed (padding, grouping and
    the order of rows must not change a row's vector).
    """
    rows = tokenizer.tokenize_batch(texts, is_tokenized)
    return np.stack([encoder.encode(pad_batch([row], len(row)))[0] for row in rows])


def http_url(server: BertServer, path: str) -> str:
    """``path`` on an in-process server's HTTP port (``http_port=0`` given to :func:`fake_server`)."""
    return f"http://127.0.0.1:{server.config.http_port}{path}"


def expected_vectors(server: BertServer, texts: list[str], is_tokenized: bool = False) -> np.ndarray:
    """:func:`encode_rows_alone` with an in-process server's own tokenizer and encoder."""
    return encode_rows_alone(server.service.tokenizer, server.encoders[0], texts, is_tokenized)


@contextlib.contextmanager
def fake_server(
    tmp_path: Path, *, encoder: FakeEncoder | None = None, start: bool = True, **flags: Any
) -> Iterator[BertServer]:
    """A started server on free 127.0.0.1 ports, shut down (drained) on exit."""
    model_dir = write_model_dir(tmp_path / "model")
    config = make_config(model_dir, **flags)
    enc = encoder or fake_encoder_for(config)
    server = BertServer(
        config,
        encoder_factory=lambda device: enc,
        tokenizer=make_tokenizer(config),
        gpu_ids=[],
    )
    if start:
        server.start()
    try:
        yield server
    finally:
        server.shutdown(drain_timeout=2.0)


def client_for(server: BertServer, **kw: Any) -> Any:
    from bert_serving.client import BertClient

    kw.setdefault("timeout", CLIENT_TIMEOUT_MS)
    return BertClient(ip="127.0.0.1", port=server.config.port, port_out=server.config.port_out, **kw)


class RawClient:
    """A bare PUSH/SUB pair speaking the 1.10.0 frames, for sending what the real client never would."""

    def __init__(self, server: BertServer, identity: bytes = b"raw-client") -> None:
        self.identity = identity
        self.context = zmq.Context()
        self.push = self.context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(f"tcp://127.0.0.1:{server.config.port}")
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, identity)
        self.sub.connect(f"tcp://127.0.0.1:{server.config.port_out}")

    def send(self, *frames: bytes) -> None:
        self.push.send_multipart(list(frames))

    def recv(self, timeout_ms: int = 5000) -> list[bytes] | None:
        if self.sub.poll(timeout_ms):
            return list(self.sub.recv_multipart())
        return None

    def close(self) -> None:
        self.push.close()
        self.sub.close()
        self.context.term()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
