"""Turning per-token layer outputs into the vectors clients receive (``-pooling_strategy``).

Why it exists as its own module: these few lines decide what "an embedding" means for every
client, and 1.10.0's semantics must be kept exactly (reference §5.6): masked mean with a +1e-10
denominator, masked max with masked positions pushed down by 1e30, ``NONE`` zeroing masked
positions, ``LAST_TOKEN`` at ``sum(mask) - 1``, ``CLS_POOLED`` from the pooler regardless of
``-pooling_layer``. It runs inside the same compiled function as the encoder, so only the pooled
result leaves the device.
"""

from __future__ import annotations

import tensorflow as tf

from bertserve_server.model import PoolingStrategy

MAX_MASK_OFFSET = 1e30
MEAN_DENOMINATOR_JITTER = 1e-10


def masked_reduce_mean(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """``sum(x * m) / (sum(m) + 1e-10)`` over positions. ``x`` ``[batch, seq, D]``, ``mask`` float ``[batch, seq]``."""
    summed = tf.reduce_sum(x * mask[:, :, tf.newaxis], axis=1)  # [batch, D]
    count = tf.reduce_sum(mask, axis=1, keepdims=True)  # [batch, 1]
    return summed / (count + MEAN_DENOMINATOR_JITTER)


def masked_reduce_max(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Max over positions after subtracting 1e30 at masked ones. Returns ``[batch, D]``."""
    return tf.reduce_max(x - (1.0 - mask[:, :, tf.newaxis]) * MAX_MASK_OFFSET, axis=1)


def last_token(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """``x[b, sum(mask[b]) - 1]``: the ``[SEP]`` of a single sentence. Returns ``[batch, D]``.

    An all-zero mask row (only possible with ``-mask_cls_sep`` on an empty input) reads position
    0 instead of failing the whole batch, as 1.10.0's ``gather_nd`` at index −1 did on CPU.
    """
    index = tf.maximum(tf.cast(tf.reduce_sum(mask, axis=1), tf.int32) - 1, 0)  # [batch]
    return tf.gather(x, index, axis=1, batch_dims=1)


def pool(
    strategy: PoolingStrategy,
    layers: list[tf.Tensor],
    pooling_layers: list[int],
    input_mask: tf.Tensor,
    pooled_output: tf.Tensor | None = None,
) -> tf.Tensor:
    """Apply ``strategy`` to the selected layers.

    Args:
      layers: encoder outputs, ``layers[i]`` is transformer layer ``i``, ``[batch, seq, H]``.
      pooling_layers: 0-based layer numbers (``config.resolve_pooling_layers``); several are
        concatenated on the last axis, giving ``D = H * len(pooling_layers)``.
      input_mask: int ``[batch, seq]`` (0 at padding, and at CLS/SEP under ``-mask_cls_sep``).
      pooled_output: ``[batch, H]`` pooler output, required for ``CLS_POOLED``.

    Returns:
      float32 ``[batch, D]`` (``[batch, 2D]`` for REDUCE_MEAN_MAX, ``[batch, H]`` for CLS_POOLED)
      or ``[batch, seq, D]`` for NONE.
    """
    if strategy == PoolingStrategy.CLS_POOLED:
        if pooled_output is None:
            raise ValueError("CLS_POOLED needs the pooler output")
        return tf.cast(pooled_output, tf.float32)
    selected = [tf.cast(layers[i], tf.float32) for i in pooling_layers]
    x = selected[0] if len(selected) == 1 else tf.concat(selected, axis=-1)  # [batch, seq, D]
    mask = tf.cast(input_mask, tf.float32)  # [batch, seq]
    if strategy == PoolingStrategy.REDUCE_MEAN:
        return masked_reduce_mean(x, mask)
    if strategy == PoolingStrategy.REDUCE_MAX:
        return masked_reduce_max(x, mask)
    if strategy == PoolingStrategy.REDUCE_MEAN_MAX:
        return tf.concat([masked_reduce_mean(x, mask), masked_reduce_max(x, mask)], axis=1)
    if strategy == PoolingStrategy.FIRST_TOKEN:
        return x[:, 0]
    if strategy == PoolingStrategy.LAST_TOKEN:
        return last_token(x, mask)
    if strategy == PoolingStrategy.NONE:
        return x * mask[:, :, tf.newaxis]
    raise ValueError(f"unsupported pooling strategy {strategy!r}")


def output_width(strategy: PoolingStrategy, hidden_size: int, num_pooling_layers: int) -> int:
    """``D`` of the pooled vectors (last axis of ``pool``'s result)."""
    if strategy == PoolingStrategy.CLS_POOLED:
        return hidden_size
    width = hidden_size * num_pooling_layers
    return 2 * width if strategy == PoolingStrategy.REDUCE_MEAN_MAX else width
