"""The narrow interface between the serving machinery and whatever computes embeddings.

Why it exists: frontends, the batcher and workers must be testable without TensorFlow, and the
TensorFlow model must be testable without sockets. Both sides meet here, in plain numpy arrays.
Tokenization happens *before* batching (so batches can be grouped by length); an encoder only
ever sees padded id matrices.

Shapes are documented as ``[batch, seq]`` etc., in the style of the reference BERT code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TokenizedInput:
    """One sentence (or sentence pair) after WordPiece, before padding.

    ``input_ids``/``type_ids``/``input_mask`` have equal length (``<= max_seq_len``);
    ``tokens`` are the WordPiece strings incl. ``[CLS]``/``[SEP]`` (what
    ``-show_tokens_to_client`` returns). ``input_mask`` is 0 at CLS/SEP under ``-mask_cls_sep``.
    """

    input_ids: tuple[int, ...]
    type_ids: tuple[int, ...]
    input_mask: tuple[int, ...]
    tokens: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Batch:
    """A padded device batch. All arrays are int32 ``[batch, seq]``; padding id/mask/type = 0."""

    input_ids: np.ndarray
    input_mask: np.ndarray
    type_ids: np.ndarray

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


def pad_batch(items: list[TokenizedInput], seq_len: int) -> Batch:
    """Right-pad ``items`` to ``seq_len`` (which must be >= the longest item)."""
    ids = np.zeros((len(items), seq_len), dtype=np.int32)
    mask = np.zeros((len(items), seq_len), dtype=np.int32)
    types = np.zeros((len(items), seq_len), dtype=np.int32)
    for row, item in enumerate(items):
        n = len(item)
        if n > seq_len:
            raise ValueError(f"item of length {n} does not fit seq_len {seq_len}")
        ids[row, :n] = item.input_ids
        mask[row, :n] = item.input_mask
        types[row, :n] = item.type_ids
    return Batch(ids, mask, types)


class Encoder(Protocol):
    """Computes pooled embeddings for padded batches.

    Implementations: ``bertserve_server.model.tf_encoder.TFEncoder`` (real) and
    ``bertserve_server.fake_encoder.FakeEncoder`` (tests, no TensorFlow).
    """

    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"float16"`` (``-fp16``): the dtype of arrays returned by ``encode``."""
        ...

    @property
    def hidden_size(self) -> int:
        """Width of one pooled vector (``H * len(pooling_layer)``, doubled for REDUCE_MEAN_MAX)."""
        ...

    @property
    def max_position_embeddings(self) -> int: ...

    def encode(self, batch: Batch) -> np.ndarray:
        """Return ``[batch, D]`` for pooled strategies or ``[batch, seq, D]`` for NONE.

        Must be deterministic for a given input row regardless of the other rows in the batch
        or the amount of padding (so merged batches give the same answer as single requests,
        within float tolerance).
        """
        ...

    def warm_up(self) -> None:
        """Run representative shapes once so the first real request is not slow."""
        ...
