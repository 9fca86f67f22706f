"""The BERT model side of the server: config, checkpoint names, pooling choices, and (lazily) TensorFlow.

Why this file imports no TensorFlow: the CLI reads ``bert_config.json``, lists checkpoint
prefixes and validates ``-pooling_strategy``/``-pooling_layer`` in milliseconds, before paying
for a TensorFlow import, so configuration errors come back at once. TensorFlow lives only in
``modeling``, ``checkpoint``, ``pooling``, ``tf_encoder``, ``convert`` and ``synthetic``; import
those modules explicitly (``from bertserve_server.model.tf_encoder import TFEncoder``).
"""

from __future__ import annotations

import enum

from bertserve_api.contract import PoolingStrategy
from bertserve_server.model.checkpoint_names import (
    checkpoint_exists,
    describe_missing_checkpoint,
    list_checkpoint_prefixes,
)
from bertserve_server.model.config import BertConfig, ConfigError, resolve_pooling_layers


def parse_pooling_strategy(value: object) -> PoolingStrategy:
    """Accept a member, another enum with the same names, a name (any case) or the integer.

    The strategies themselves (names and SHOW_CONFIG integers) are defined once, in the flag
    contract shared with the operator.
    """
    if isinstance(value, PoolingStrategy):
        return value
    if isinstance(value, enum.Enum):
        value = value.name
    if isinstance(value, str):
        try:
            return PoolingStrategy[value.strip().upper()]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return PoolingStrategy(value)
        except ValueError:
            pass
    names = ", ".join(PoolingStrategy.__members__)
    raise ConfigError(f"unknown -pooling_strategy {value!r} (choose one of {names})")


__all__ = [
    "BertConfig",
    "ConfigError",
    "PoolingStrategy",
    "checkpoint_exists",
    "describe_missing_checkpoint",
    "list_checkpoint_prefixes",
    "parse_pooling_strategy",
    "resolve_pooling_layers",
]
