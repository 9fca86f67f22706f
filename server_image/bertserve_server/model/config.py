"""``bert_config.json``: the architecture of a Google BERT checkpoint, read without TensorFlow.

Why it exists: the CLI validates a model directory (``-max_seq_len`` against
``max_position_embeddings``, ``-pooling_layer`` against ``num_hidden_layers``) before TensorFlow is
imported, so the config must be readable with the standard library alone. The field names and
defaults are those of Google's ``modeling.BertConfig``; unknown keys (``directionality``,
``pooler_fc_size``… in some released configs) are kept in ``extra`` and otherwise ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: ``hidden_act`` values the TF model implements. ``gelu`` is the exact erf form used by Google
#: BERT; ``gelu_new``/``gelu_pytorch_tanh``/``gelu_fast`` are the tanh approximation some converted
#: models declare.
SUPPORTED_ACTIVATIONS = (
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "relu",
    "tanh",
    "swish",
    "silu",
    "linear",
)


class ConfigError(ValueError):
    """The config file is missing, unreadable or describes a model we cannot build."""


@dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder (Google ``bert_config.json`` field names)."""

    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 16
    initializer_range: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"hidden_act {self.hidden_act!r} is not supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
            )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertConfig:
        """Build from a parsed JSON object; keys we do not model go to ``extra``."""
        if not isinstance(data, dict):
            raise ConfigError(f"a BERT config must be a JSON object, got {type(data).__name__}")
        if "vocab_size" not in data:
            raise ConfigError("a BERT config needs at least vocab_size")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | Path) -> BertConfig:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read BERT config {path}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"BERT config {path} is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(data)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"BERT config {path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The Google ``bert_config.json`` object (extras included, so a round trip is lossless)."""
        data = asdict(self)
        extra = data.pop("extra")
        return {**data, **extra}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json_string(), encoding="utf-8")


def resolve_pooling_layers(pooling_layer: list[int] | tuple[int, ...], num_hidden_layers: int) -> list[int]:
    """Map ``-pooling_layer`` Python indices (``-1`` = last layer) to 0-based layer numbers.

    Raises ``ConfigError`` naming the valid range for an index outside ``[-L, L)``; the original
    server crashed with an ``IndexError`` inside graph building instead.
    """
    if not pooling_layer:
        raise ConfigError("-pooling_layer needs at least one layer index")
    resolved = []
    for index in pooling_layer:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ConfigError(f"-pooling_layer entries must be integers, got {index!r}")
        if not -num_hidden_layers <= index < num_hidden_layers:
            raise ConfigError(
                f"-pooling_layer {index} is out of range for a model with {num_hidden_layers} layers "
                f"(use -{num_hidden_layers}..{num_hidden_layers - 1}; -1 is the last layer)"
            )
        resolved.append(index % num_hidden_layers)
    return resolved
