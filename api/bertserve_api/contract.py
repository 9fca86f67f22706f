"""The encoder server's command line, defined once.

Why it exists: the operator renders container arguments and the server parses them. If each
side had its own idea of the flags, a renamed flag or a changed default would only show up as a
crash-looping pod. Here every ``bert-serving-start`` flag (the bert-as-service 1.10.0 set plus
our few additions) is declared in one table, with its spelling, type, default and help; both
sides derive their behaviour from it:

* the server builds its ``argparse`` parser with :func:`build_arg_parser` and turns the result
  into a :class:`ServerConfig` with :func:`parse_argv`;
* the operator turns a :class:`ServerConfig` into ``args`` with :func:`to_argv`.

``parse_argv(to_argv(c)) == c`` holds for every config (tested flag by flag).

Standard library only: this module ships in both images.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

SERVER_VERSION = "1.10.0"
"""Reported as ``server_version`` in SHOW_CONFIG: the 1.10.0 client refuses any other string."""

MAX_SEQ_LEN_NONE = "NONE"

API_KEY_ENV = "BERTSERVE_API_KEY"
"""Environment variable holding the optional HTTP API key (never a flag: args are visible to all)."""


class PoolingStrategy(enum.Enum):
    """Pooling strategies with bert-as-service's integer values (sent as ints in SHOW_CONFIG).

    ``CLS_TOKEN`` and ``SEP_TOKEN`` are aliases of ``FIRST_TOKEN`` and ``LAST_TOKEN``, as in 1.10.0.
    """

    NONE = 0
    REDUCE_MAX = 1
    REDUCE_MEAN = 2
    REDUCE_MEAN_MAX = 3
    FIRST_TOKEN = 4
    LAST_TOKEN = 5
    CLS_POOLED = 6
    CLS_TOKEN = 4
    SEP_TOKEN = 5

    @classmethod
    def from_string(cls, text: str) -> PoolingStrategy:
        """Parse a strategy name case-insensitively; the error lists the valid names."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            valid = ", ".join(cls.__members__)
            raise ValueError(f"unknown pooling strategy {text!r}; valid: {valid}") from None

    def __str__(self) -> str:
        return self.name


FlagKind = Literal[
    "str", "opt_str", "int", "opt_int", "float", "bool", "int_list", "str_list", "seq_len", "pooling"
]


@dataclass(frozen=True)
class Flag:
    """One command-line flag.

    ``dest`` is the :class:`ServerConfig` attribute (and the key in SHOW_CONFIG), ``name`` the
    flag spelling without its single dash. ``inverted`` flags store ``False`` when given
    (``-cased_tokenization`` → ``do_lower_case=False``), as in 1.10.0.
    """

    name: str
    dest: str
    kind: FlagKind
    help: str
    aliases: tuple[str, ...] = ()
    inverted: bool = False
    required: bool = False
    classic: bool = True  # present in bert-as-service 1.10.0


def _flags() -> tuple[Flag, ...]:
    f = Flag
    return (
        f(
            "model_dir",
            "model_dir",
            "str",
            "directory of the pretrained BERT model (config, vocab.txt, "
            "and the checkpoint unless -tuned_model_dir is given)",
            required=True,
        ),
        f(
            "tuned_model_dir",
            "tuned_model_dir",
            "opt_str",
            "directory of a fine-tuned model (e.g. run_classifier.py output); the checkpoint is read "
            "from here instead of -model_dir",
        ),
        f(
            "ckpt_name",
            "ckpt_name",
            "str",
            "checkpoint prefix inside the checkpoint directory, e.g. model.ckpt-343 (not a file name)",
        ),
        f("config_name", "config_name", "str", "BERT config JSON file inside -model_dir"),
        f(
            "graph_tmp_dir",
            "graph_tmp_dir",
            "opt_str",
            "accepted for compatibility; no graph file is written",
        ),
        f(
            "max_seq_len",
            "max_seq_len",
            "seq_len",
            "maximum tokens per sequence incl. [CLS]/[SEP]; "
            "NONE picks the length per batch (up to max_position_embeddings)",
        ),
        f(
            "cased_tokenization",
            "do_lower_case",
            "bool",
            "keep case and accents (for cased models)",
            inverted=True,
        ),
        f(
            "pooling_layer",
            "pooling_layer",
            "int_list",
            "encoder layer(s) to pool: -1 is the last; several are concatenated",
        ),
        f(
            "pooling_strategy",
            "pooling_strategy",
            "pooling",
            "NONE, REDUCE_MEAN, REDUCE_MAX, "
            "REDUCE_MEAN_MAX, FIRST_TOKEN/CLS_TOKEN, LAST_TOKEN/SEP_TOKEN, CLS_POOLED",
        ),
        f("mask_cls_sep", "mask_cls_sep", "bool", "mask [CLS] and [SEP] (attention and pooling)"),
        f(
            "no_special_token",
            "no_special_token",
            "bool",
            "add no [CLS]/[SEP] to pre-tokenized single-sentence input",
        ),
        f("show_tokens_to_client", "show_tokens_to_client", "bool", "send WordPiece tokens with each answer"),
        f(
            "no_position_embeddings",
            "no_position_embeddings",
            "bool",
            "run the model without position embeddings",
        ),
        f("num_worker", "num_worker", "int", "number of model workers (one per device)"),
        f("max_batch_size", "max_batch_size", "int", "maximum sentences per device batch"),
        f(
            "priority_batch_size",
            "priority_batch_size",
            "int",
            "requests with at most this many sentences are served first",
        ),
        f("port", "port", "int", "ZeroMQ port receiving requests (PULL)", aliases=("port_in", "port_data")),
        f("port_out", "port_out", "int", "ZeroMQ port publishing results (PUB)", aliases=("port_result",)),
        f(
            "http_port",
            "http_port",
            "opt_int",
            "HTTP port (/encode, /v1/embeddings, /healthz, /readyz, /metrics); off when unset",
        ),
        f("http_max_connect", "http_max_connect", "int", "maximum concurrent HTTP encode requests"),
        f("cors", "cors", "str", "allowed CORS origins for the HTTP API"),
        f("fp16", "fp16", "bool", "mixed precision; answers are float16"),
        f("xla", "xla", "bool", "compile the model with XLA (jit_compile)"),
        f("cpu", "cpu", "bool", "run on CPU even if GPUs are present"),
        f(
            "gpu_memory_fraction",
            "gpu_memory_fraction",
            "float",
            "hard cap on each GPU's memory: fraction x card memory x workers on that GPU "
            "(card memory read with nvidia-smi); 1.0, or no nvidia-smi, = no cap, memory grows on demand",
        ),
        f("device_map", "device_map", "int_list", "GPU ids for the workers (round-robin); empty = all"),
        f(
            "prefetch_size",
            "prefetch_size",
            "int",
            "accepted for compatibility; no effect: requests are tokenized as they arrive and a batch "
            "is formed when a worker is free, so nothing waits tokenized per worker",
        ),
        f(
            "fixed_embed_length",
            "fixed_embed_length",
            "bool",
            "with -max_seq_len NONE and NONE pooling, pad token embeddings to max_position_embeddings",
        ),
        f("verbose", "verbose", "bool", "debug logging"),
        # --- additions (not in 1.10.0) ---
        f("bind_host", "bind_host", "str", "address the ZeroMQ and HTTP ports bind to", classic=False),
        f(
            "max_queue_size",
            "max_queue_size",
            "int",
            "sentences that may wait for a device before new requests are refused as busy (bounded queue)",
            classic=False,
        ),
        f(
            "max_queued_tokens",
            "max_queued_tokens",
            "int",
            "WordPiece tokens (incl. [CLS]/[SEP]) that may wait for a device across all requests; a "
            "request that would exceed it is refused as busy (one larger than the whole bound as "
            "too_large)",
            classic=False,
        ),
        f(
            "max_wait_ms",
            "max_wait_ms",
            "float",
            "how long a partial batch waits for more requests before it runs",
            classic=False,
        ),
        f(
            "drain_timeout",
            "drain_timeout",
            "float",
            "seconds to finish in-flight work after SIGTERM before exiting",
            classic=False,
        ),
        f(
            "enable_termination",
            "enable_termination",
            "bool",
            "honour the TERMINATION command from the network (off: refused and logged)",
            classic=False,
        ),
        f(
            "peer_service",
            "peer_service",
            "opt_str",
            "DNS name (headless Service) listing every replica, "
            "used to route answers across replicas; unset = single server",
            classic=False,
        ),
        f(
            "peer_port",
            "peer_port",
            "int",
            "port replicas use to forward answers to each other",
            classic=False,
        ),
        f(
            "peer_key_file",
            "peer_key_file",
            "opt_str",
            "file holding the mesh's shared secret (at least 32 random bytes); required with "
            "-peer_service: replicas without the same secret cannot join the mesh",
            classic=False,
        ),
        f(
            "no_size_classes",
            "no_size_classes",
            "bool",
            "on CPU, one compiled function for every call size instead of a second one for calls of "
            "more than 80 token rows (built after ready; saves its memory, about 6x the dense weights, "
            "at up to 25 % of speed)",
            classic=False,
        ),
        f("log_format", "log_format", "str", "text or json", classic=False),
        f(
            "min_identity_len",
            "min_identity_len",
            "int",
            "shortest subscription accepted on -port_out, in bytes (1.10.0 clients subscribe to a "
            "36-byte UUID); shorter ones, the empty topic included, are refused",
            classic=False,
        ),
        f(
            "max_request_bytes",
            "max_request_bytes",
            "int",
            "largest request accepted, in bytes: ZeroMQ frames (MAXMSGSIZE) and HTTP bodies",
            classic=False,
        ),
        f(
            "max_response_bytes",
            "max_response_bytes",
            "int",
            "largest result one request may produce, in bytes (sentences x output width x dtype); "
            "larger requests are refused as too_large before anything is allocated",
            classic=False,
        ),
        f(
            "heartbeat_timeout",
            "heartbeat_timeout",
            "float",
            "seconds without traffic after which a ZeroMQ connection (client or peer) is dropped "
            "and its subscription forgotten",
            classic=False,
        ),
        f(
            "protect_metrics",
            "protect_metrics",
            "bool",
            "require the HTTP API key (env BERTSERVE_API_KEY) on /metrics too",
            classic=False,
        ),
        f(
            "classifier",
            "classifier",
            "bool",
            "also load the checkpoint's run_classifier.py head (output_weights, output_bias) and "
            "serve class probabilities at HTTP POST /predict",
            classic=False,
        ),
        f(
            "classifier_labels",
            "classifier_labels",
            "str_list",
            "comma-separated names of the head's labels, in output order (default 0,1,...,n-1); "
            "as many as the head has",
            classic=False,
        ),
    )


FLAGS: tuple[Flag, ...] = _flags()
FLAGS_BY_DEST: dict[str, Flag] = {flag.dest: flag for flag in FLAGS}


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``bert-serving-start`` accepts, with 1.10.0's defaults.

    Field names are the argparse ``dest`` names, which are also the SHOW_CONFIG keys.
    ``max_seq_len=None`` means NONE (dynamic length).
    """

    model_dir: str
    tuned_model_dir: str | None = None
    ckpt_name: str = "bert_model.ckpt"
    config_name: str = "bert_config.json"
    graph_tmp_dir: str | None = None
    max_seq_len: int | None = 25
    do_lower_case: bool = True
    pooling_layer: tuple[int, ...] = (-2,)
    pooling_strategy: PoolingStrategy = PoolingStrategy.REDUCE_MEAN
    mask_cls_sep: bool = False
    no_special_token: bool = False
    show_tokens_to_client: bool = False
    no_position_embeddings: bool = False
    num_worker: int = 1
    max_batch_size: int = 256
    priority_batch_size: int = 16
    port: int = 5555
    port_out: int = 5556
    http_port: int | None = None
    http_max_connect: int = 10
    cors: str = "*"
    fp16: bool = False
    xla: bool = False
    no_size_classes: bool = False
    cpu: bool = False
    gpu_memory_fraction: float = 0.5
    device_map: tuple[int, ...] = ()
    prefetch_size: int = 10
    fixed_embed_length: bool = False
    verbose: bool = False
    bind_host: str = "0.0.0.0"
    max_queue_size: int = 10000
    max_queued_tokens: int = 1_000_000
    max_wait_ms: float = 2.0
    drain_timeout: float = 25.0
    enable_termination: bool = False
    peer_service: str | None = None
    peer_port: int = 5557
    peer_key_file: str | None = None
    log_format: str = "text"
    min_identity_len: int = 16
    max_request_bytes: int = 64 * 1024 * 1024
    max_response_bytes: int = 256 * 1024 * 1024
    heartbeat_timeout: float = 30.0
    protect_metrics: bool = False
    classifier: bool = False
    classifier_labels: tuple[str, ...] = ()
    _extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def checkpoint_dir(self) -> str:
        """Where the weights come from: the tuned dir when given, else the pretrained dir."""
        return self.tuned_model_dir or self.model_dir

    def with_changes(self, **changes: Any) -> ServerConfig:
        """A copy with some fields replaced (dataclasses.replace, typed for callers)."""
        return replace(self, **changes)

    def show_config(self) -> dict[str, Any]:
        """The argument part of the SHOW_CONFIG JSON: every dest, pooling_strategy as int."""
        out: dict[str, Any] = {}
        for flag in FLAGS:
            value = getattr(self, flag.dest)
            if isinstance(value, PoolingStrategy):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[flag.dest] = value
        return out


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(ServerConfig) if f.name != "_extra"}


DEFAULTS: dict[str, Any] = _defaults()
"""Default value per dest (``model_dir`` has none: it is required)."""


def _check_max_seq_len(text: str) -> int | None:
    if text.strip().upper() == MAX_SEQ_LEN_NONE:
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer or NONE") from None
    if value <= 3:
        raise argparse.ArgumentTypeError(
            f"{value} must be >3 (account for maximum three special symbols in BERT model) or NONE"
        )
    return value


def _integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    return value


def _str_list(text: str) -> tuple[str, ...]:
    """``a,b,c`` → ``("a", "b", "c")`` (each stripped); an empty string is the empty list."""
    return tuple(part.strip() for part in text.split(",")) if text.strip() else ()


def _pooling(text: str) -> PoolingStrategy:
    try:
        return PoolingStrategy.from_string(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_arg_parser(prog: str = "bert-serving-start") -> argparse.ArgumentParser:
    """The ``bert-serving-start`` parser: single-dash flags, 1.10.0 spelling and defaults."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Start a BERT sentence-encoding server (bert-as-service 1.10.0 compatible).",
    )
    for flag in FLAGS:
        names = [f"-{flag.name}", *(f"-{a}" for a in flag.aliases)]
        default = DEFAULTS.get(flag.dest)
        common: dict[str, Any] = {"dest": flag.dest, "help": flag.help}
        if flag.kind == "bool":
            action = "store_false" if flag.inverted else "store_true"
            parser.add_argument(*names, action=action, **common)
        elif flag.kind == "int_list":
            parser.add_argument(*names, type=_integer, nargs="*", default=list(default or ()), **common)
        elif flag.kind == "str_list":
            parser.add_argument(*names, type=_str_list, default=default, **common)
        elif flag.kind == "seq_len":
            parser.add_argument(*names, type=_check_max_seq_len, default=default, **common)
        elif flag.kind == "pooling":
            parser.add_argument(*names, type=_pooling, default=default, **common)
        elif flag.kind in ("int", "opt_int"):
            parser.add_argument(*names, type=_integer, default=default, **common)
        elif flag.kind == "float":
            parser.add_argument(*names, type=float, default=default, **common)
        else:
            parser.add_argument(*names, type=str, default=default, required=flag.required, **common)
    parser.add_argument("-version", "--version", action="version", version=f"%(prog)s {SERVER_VERSION}")
    return parser


def parse_argv(argv: Sequence[str], prog: str = "bert-serving-start") -> ServerConfig:
    """Parse ``bert-serving-start`` arguments into a :class:`ServerConfig` (argparse errors exit 2)."""
    ns = build_arg_parser(prog).parse_args(list(argv))
    values = vars(ns)
    for key in ("pooling_layer", "device_map"):
        values[key] = tuple(values[key])
    return ServerConfig(**values)


def _render(value: Any) -> str:
    if isinstance(value, PoolingStrategy):
        return value.name
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_argv(config: ServerConfig, *, only_changed: bool = True) -> list[str]:
    """Render ``config`` as ``bert-serving-start`` arguments.

    With ``only_changed`` (the default) flags equal to their default are left out, so a pod's
    arguments show exactly what the user asked for; ``-model_dir`` is always present.
    """
    argv: list[str] = []
    for flag in FLAGS:
        value = getattr(config, flag.dest)
        if only_changed and not flag.required and value == DEFAULTS.get(flag.dest):
            continue
        if flag.kind == "bool":
            # store_true flags are given to set True; inverted (store_false) ones to set False.
            if value != flag.inverted:
                argv.append(f"-{flag.name}")
            continue
        if flag.kind == "int_list":
            argv.append(f"-{flag.name}")
            argv.extend(str(v) for v in value)
            continue
        if flag.kind == "str_list":
            argv.append(f"-{flag.name}={','.join(value)}")
            continue
        if value is None:
            if flag.kind == "seq_len":
                argv.append(f"-{flag.name}={MAX_SEQ_LEN_NONE}")
            # other optional flags: absence means None
            continue
        argv.append(f"-{flag.name}={_render(value)}")
    return argv
