"""The BERT model side of the server: config, checkpoint names, pooling choices, and (lazily) TensorFlow.

Why this file imports no TensorFlow: the CLI reads ``bert_config.json``, lists checkpoint
prefixes and validates ``-pooling_strategy``/``-pooling_layer`` in milliseconds, before paying
for a TensorFlow import, so configuration errors come back at once. TensorFlow lives only in
``modeling``, ``checkpoint``, ``pooling``, ``tf_encoder``, ``convert`` and ``synthetic``; import
those modules explicitly (``from bertserve_server.model.tf_encoder import TFEncoder``).
"""

from __future__ import annotations

import enum

from bertserve_server.model.checkpoint_names import (
    checkpoint_exists,
    describe_missing_checkpoint,
    list_checkpoint_prefixes,
)
from bertserve_server.model.config import BertConfig, ConfigError, resolve_pooling_layers


class PoolingStrategy(enum.IntEnum):
    """``-pooling_strategy`` values; the integers are what ``SHOW_CONFIG`` reports (reference §1)."""

    NONE = 0
    REDUCE_MAX = 1
    REDUCE_MEAN = 2
    REDUCE_MEAN_MAX = 3
    FIRST_TOKEN = 4
    LAST_TOKEN = 5
    CLS_TOKEN = 4  # alias of FIRST_TOKEN, as in 1.10.0
    SEP_TOKEN = 5  # alias of LAST_TOKEN
    CLS_POOLED = 6

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, value: object) -> PoolingStrategy:
        """Accept a member, another enum with the same names, a name (any case) or the integer."""
        if isinstance(value, cls):
            return value
        if isinstance(value, enum.Enum):
            value = value.name
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(cls.__members__)
        raise ConfigError(f"unknown -pooling_strategy {value!r} (choose one of {names})")


__all__ = [
    "BertConfig",
    "ConfigError",
    "PoolingStrategy",
    "checkpoint_exists",
    "describe_missing_checkpoint",
    "list_checkpoint_prefixes",
    "resolve_pooling_layers",
]
