"""``bert-serving-start`` and ``bert-serving-terminate``: flags in, one-line errors out, then serve.

Why it exists: the commonest 1.10.0 failure was an opaque start-up crash (``cannot unpack
non-iterable NoneType object``) minutes into graph building, for a wrong directory, checkpoint
name or sequence length (reference §7 items 2 and 6). Here the flags come from the shared
``bertserve_api.contract`` (the operator renders the same table), the 1.10.0 argument banner is
printed, and the model directory is checked *before TensorFlow is imported*, each problem as one
line that names the flag and the fix, exit code 2:

* ``-model_dir`` without ``bert_config.json`` (``-config_name``) or ``vocab.txt``;
* a ``-ckpt_name`` prefix that is not in the checkpoint directory (the ones that are, listed);
* ``-max_seq_len`` above the config's ``max_position_embeddings``;
* a ``-pooling_layer`` outside the model's layers; ``-classifier_labels`` without ``-classifier``,
  empty or repeated; ``-peer_service`` without a usable ``-peer_key_file``; and a few impossible
  numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from bertserve_api.contract import FLAGS, PoolingStrategy, ServerConfig, parse_argv
from bertserve_server.mesh.security import PeerKeyError, load_secret
from bertserve_server.model.checkpoint_names import (
    checkpoint_exists,
    describe_missing_checkpoint,
    prefetch_checkpoint,
)
from bertserve_server.model.config import BertConfig, ConfigError, resolve_pooling_layers

PROG = "bert-serving-start"
VOCAB_FILE = "vocab.txt"
EXIT_CONFIG_ERROR = 2


class ConfigurationError(Exception):
    """A flag value that cannot work; the message names the flag and the fix."""


def banner(config: ServerConfig, argv: Sequence[str]) -> str:
    """1.10.0's start-up print: the command line, then ``ARG = VALUE`` sorted by name."""
    values = {flag.dest: getattr(config, flag.dest) for flag in FLAGS}
    lines = []
    for key, value in sorted(values.items()):
        shown = list(value) if isinstance(value, tuple) else value
        lines.append(f"{key:>20} = {shown}")
    return "\n".join([f"usage: {' '.join([PROG, *argv])}", f"{'ARG':>20}   VALUE", "_" * 50, *lines, ""])


def _check_numbers(config: ServerConfig) -> None:
    positive = (
        "num_worker",
        "max_batch_size",
        "max_queue_size",
        "max_queued_tokens",
        "http_max_connect",
        "min_identity_len",
        "max_request_bytes",
        "max_response_bytes",
    )
    for dest in positive:
        if getattr(config, dest) < 1:
            raise ConfigurationError(f"-{dest} must be at least 1, got {getattr(config, dest)}")
    if config.priority_batch_size < 0:
        raise ConfigurationError(f"-priority_batch_size must be >= 0, got {config.priority_batch_size}")
    if not 0.0 < config.gpu_memory_fraction <= 1.0:
        raise ConfigurationError(f"-gpu_memory_fraction must be in (0, 1], got {config.gpu_memory_fraction}")
    for dest in ("max_wait_ms", "drain_timeout"):
        if getattr(config, dest) < 0:
            raise ConfigurationError(f"-{dest} must be >= 0, got {getattr(config, dest)}")
    if config.heartbeat_timeout < 0.1:
        raise ConfigurationError(
            f"-heartbeat_timeout must be at least 0.1 seconds, got {config.heartbeat_timeout}"
        )
    if config.log_format not in ("text", "json"):
        raise ConfigurationError(f"-log_format must be text or json, got {config.log_format!r}")
    ports = {"port": config.port, "port_out": config.port_out, "http_port": config.http_port}
    for name, port in ports.items():
        if port is not None and not 0 < port < 65536:
            raise ConfigurationError(f"-{name} must be a TCP port (1-65535), got {port}")
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port is None:
            continue
        if port in seen:
            raise ConfigurationError(f"-{name} and -{seen[port]} are both {port}; give each its own port")
        seen[port] = name
    if any(d < 0 for d in config.device_map):
        raise ConfigurationError("-device_map takes GPU ids (0, 1, …); use -cpu for the CPU")
    _check_classifier(config)


#: Most labels ``-classifier_labels`` takes (the CRD's limit too).
MAX_CLASSIFIER_LABELS = 64


def _check_classifier(config: ServerConfig) -> None:
    labels = config.classifier_labels
    if not labels:
        return
    if not config.classifier:
        raise ConfigurationError("-classifier_labels names the head's labels; it needs -classifier")
    if any(not label for label in labels):
        raise ConfigurationError(f"-classifier_labels has an empty label in {','.join(labels)!r}")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigurationError(f"-classifier_labels names {', '.join(duplicates)} more than once")
    if len(labels) > MAX_CLASSIFIER_LABELS:
        raise ConfigurationError(
            f"-classifier_labels names {len(labels)} labels; at most {MAX_CLASSIFIER_LABELS}"
        )


def _check_peer_key(config: ServerConfig) -> None:
    """With ``-peer_service``, the mesh secret must be there and long enough (one line otherwise)."""
    if config.peer_service:
        try:
            load_secret(config.peer_key_file)
        except PeerKeyError as exc:
            raise ConfigurationError(str(exc)) from None


def validate(config: ServerConfig) -> BertConfig:
    """Check everything that can be checked without TensorFlow; the model's config on success."""
    _check_numbers(config)
    _check_peer_key(config)
    model_dir = Path(config.model_dir)
    if not model_dir.is_dir():
        raise ConfigurationError(
            f"-model_dir {model_dir} is not a directory; point it at the pretrained BERT model "
            f"(with {config.config_name}, {VOCAB_FILE} and the checkpoint)"
        )
    config_path = model_dir / config.config_name
    if not config_path.is_file():
        raise ConfigurationError(
            f"-model_dir {model_dir} has no {config.config_name}; point -model_dir at the pretrained "
            f"model (the fine-tuned output goes to -tuned_model_dir) or set -config_name"
        )
    if not (model_dir / VOCAB_FILE).is_file():
        raise ConfigurationError(
            f"-model_dir {model_dir} has no {VOCAB_FILE}; point -model_dir at the pretrained model "
            "(the fine-tuned output goes to -tuned_model_dir)"
        )
    try:
        bert = BertConfig.from_json_file(config_path)
    except ConfigError as exc:
        raise ConfigurationError(f"-config_name: {exc}; fix the file or point -model_dir elsewhere") from None
    if config.tuned_model_dir is not None and not Path(config.tuned_model_dir).is_dir():
        raise ConfigurationError(
            f"-tuned_model_dir {config.tuned_model_dir} is not a directory; "
            "point it at the fine-tuning output"
        )
    ckpt_dir = Path(config.checkpoint_dir)
    if not checkpoint_exists(ckpt_dir / config.ckpt_name):
        hint = "set -ckpt_name to one of them"
        if config.ckpt_name.endswith(".index") or ".data-" in config.ckpt_name:
            hint = "-ckpt_name takes the prefix, without .index/.data-*"
        elif config.tuned_model_dir is None:
            hint += " (a fine-tuned model also needs -tuned_model_dir)"
        raise ConfigurationError(
            f"-ckpt_name: {describe_missing_checkpoint(ckpt_dir, config.ckpt_name)}; {hint}"
        )
    limit = bert.max_position_embeddings
    if config.max_seq_len is not None and config.max_seq_len > limit:
        raise ConfigurationError(
            f"-max_seq_len {config.max_seq_len} exceeds max_position_embeddings={limit} in {config_path}; "
            f"use -max_seq_len {limit} or less, or NONE"
        )
    if config.pooling_strategy != PoolingStrategy.CLS_POOLED:
        try:
            resolve_pooling_layers(list(config.pooling_layer), bert.num_hidden_layers)
        except ConfigError as exc:
            raise ConfigurationError(str(exc)) from None
    return bert


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``-log_format json``) for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: ServerConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname).1s:%(threadName)s:[%(name)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if config.verbose else logging.INFO)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if config.verbose else "2")


def skip_keras_import() -> None:
    """Keep TensorFlow from importing Keras in the server process, which never uses it.

    ``import tensorflow`` imports ``keras.src.optimizers`` eagerly (for SavedModel registries),
    about a tenth of TensorFlow's import time, i.e. of every start-up; it tolerates Keras being
    absent. Marking the module missing is what makes it absent here. Only ``bert-serving-start``
    does this: tests and tools that import the model package keep Keras importable.
    """
    if "keras" not in sys.modules:
        sys.modules["keras"] = None  # type: ignore[assignment]


def main(argv: Sequence[str] | None = None) -> int:
    """``bert-serving-start``: parse, print the banner, validate, serve until SIGTERM."""
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_argv(args, prog=PROG)
    print(banner(config, args), flush=True)
    try:
        validate(config)
    except ConfigurationError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    setup_logging(config)
    # The weights' read from disk overlaps TensorFlow's import instead of following it.
    prefix = Path(config.checkpoint_dir) / config.ckpt_name
    threading.Thread(target=prefetch_checkpoint, args=(prefix,), name="prefetch", daemon=True).start()
    skip_keras_import()
    from bertserve_server.app import serve

    return serve(config)


def build_terminate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-serving-terminate",
        description="Send TERMINATION to a server (honoured only if it runs with -enable_termination).",
    )
    parser.add_argument("-ip", type=str, default="localhost", help="server address")
    parser.add_argument("-port", "-port_in", "-port_data", type=int, required=True, help="the server's -port")
    parser.add_argument("-timeout", type=int, default=5000, help="milliseconds to try delivering the command")
    return parser


def terminate(argv: Sequence[str] | None = None) -> int:
    """``bert-serving-terminate``: the 1.10.0 frames ``[b'0', b'TERMINATION', b'0', b'0']``."""
    import zmq

    args = build_terminate_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    context = zmq.Context()
    try:
        sock = context.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, args.timeout)
        sock.connect(f"tcp://{args.ip}:{args.port}")
        sock.send_multipart([b"0", b"TERMINATION", b"0", b"0"])
        sock.close()
    finally:
        context.term()
    print(
        f"sent TERMINATION to tcp://{args.ip}:{args.port} "
        "(the server honours it only when started with -enable_termination)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
