"""A deterministic numpy stand-in for the BERT model, honouring every pooling shape.

Why it exists: protocol, batching and lifecycle tests need an ``Encoder`` that starts in
milliseconds, needs no TensorFlow, and still behaves like the real one where it matters to the
serving machinery: the output width and shape follow ``-pooling_strategy``/``-pooling_layer``,
``-fp16`` yields float16, padding and mask positions are respected, and a row's vector depends
only on that row (never on its neighbours in a merged batch or on the padding length), so a
test can compare a served answer with :meth:`FakeEncoder.encode` of the row alone. Knobs for
tests: a per-batch ``delay_s`` (to hold work in flight) and ``fail_if`` (to make a batch raise).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from bertserve_server.encoder import Batch
from bertserve_server.model import PoolingStrategy, parse_pooling_strategy


class FakeEncoder:
    """Token vector ``v[b, t, d]`` is a fixed trigonometric function of (id, position, type, layer, d)."""

    def __init__(
        self,
        hidden_size: int = 8,
        *,
        pooling_strategy: object = PoolingStrategy.REDUCE_MEAN,
        pooling_layer: Sequence[int] = (-2,),
        num_layers: int = 2,
        fp16: bool = False,
        max_position_embeddings: int = 512,
        delay_s: float = 0.0,
        fail_if: Callable[[Batch], bool] | None = None,
        num_labels: int = 0,
    ) -> None:
        self.strategy = parse_pooling_strategy(pooling_strategy)
        self._hidden = hidden_size
        self._layers = [i % num_layers for i in pooling_layer] or [num_layers - 1]
        self._num_layers = num_layers
        self._fp16 = fp16
        self._max_pos = max_position_embeddings
        self.delay_s = delay_s
        self.fail_if = fail_if
        self.batches: list[tuple[int, int]] = []  # (rows, seq) of every batch seen
        self.warmed_up = False
        self._lock = threading.Lock()
        self._num_labels = num_labels
        self._head = np.cos(np.arange(hidden_size)[:, None] * (np.arange(num_labels)[None, :] + 1.3))

    @property
    def num_labels(self) -> int:
        return self._num_labels

    def classify(self, batch: Batch) -> np.ndarray:
        """``[batch, num_labels]`` float32: a fixed matrix on ``tanh`` of the last layer's first token."""
        if not self._num_labels:
            raise RuntimeError("this fake encoder has no classifier head")
        self._before(batch)
        pooled = np.tanh(self._tokens(batch, self._num_layers - 1)[:, 0])  # [batch, hidden]
        logits: np.ndarray = (3.0 * pooled @ self._head).astype(np.float32)
        return logits

    def _before(self, batch: Batch) -> None:
        with self._lock:
            self.batches.append((batch.size, batch.seq_len))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_if is not None and self.fail_if(batch):
            raise RuntimeError("fake encoder failure (fail_if matched this batch)")
        if batch.seq_len > self._max_pos:
            raise ValueError(
                f"sequence length {batch.seq_len} exceeds max_position_embeddings {self._max_pos}"
            )

    @property
    def dtype(self) -> str:
        return "float16" if self._fp16 else "float32"

    @property
    def hidden_size(self) -> int:
        if self.strategy == PoolingStrategy.CLS_POOLED:
            return self._hidden
        width = self._hidden * len(self._layers)
        return 2 * width if self.strategy == PoolingStrategy.REDUCE_MEAN_MAX else width

    @property
    def max_position_embeddings(self) -> int:
        return self._max_pos

    def warm_up(self) -> None:
        self.warmed_up = True

    def _tokens(self, batch: Batch, layer: int) -> np.ndarray:
        """``[batch, seq, hidden]`` token vectors of one layer."""
        ids = batch.input_ids.astype(np.float64)[:, :, None]
        pos = np.arange(batch.seq_len, dtype=np.float64)[None, :, None]
        types = batch.type_ids.astype(np.float64)[:, :, None]
        d = np.arange(self._hidden, dtype=np.float64)[None, None, :]
        return np.sin(
            0.37 * ids * (d + 1) + 0.11 * pos * (d + 2) + 0.7 * types + 0.3 * (layer + 1) + 0.05 * d
        )

    def encode(self, batch: Batch) -> np.ndarray:
        """``[batch, D]`` or ``[batch, seq, D]`` (NONE), as ``self.dtype``."""
        self._before(batch)
        mask = batch.input_mask.astype(np.float64)[:, :, None]  # [batch, seq, 1]
        if self.strategy == PoolingStrategy.CLS_POOLED:
            pooled: np.ndarray = np.tanh(self._tokens(batch, self._num_layers - 1)[:, 0])  # [batch, hidden]
            return pooled.astype(self.dtype)
        out: np.ndarray
        x = np.concatenate([self._tokens(batch, layer) for layer in self._layers], axis=-1)  # [batch, seq, D]
        if self.strategy == PoolingStrategy.NONE:
            out = x * mask
        elif self.strategy == PoolingStrategy.FIRST_TOKEN:
            out = x[:, 0]
        elif self.strategy == PoolingStrategy.LAST_TOKEN:
            last = np.maximum(batch.input_mask.sum(axis=1) - 1, 0)
            out = x[np.arange(batch.size), last]
        else:
            mean = (x * mask).sum(axis=1) / (mask.sum(axis=1) + 1e-10)
            peak = (x - (1.0 - mask) * 1e30).max(axis=1)
            if self.strategy == PoolingStrategy.REDUCE_MEAN:
                out = mean
            elif self.strategy == PoolingStrategy.REDUCE_MAX:
                out = peak
            else:
                out = np.concatenate([mean, peak], axis=1)
        return out.astype(self.dtype)
