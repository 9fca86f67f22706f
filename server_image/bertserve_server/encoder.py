"""The narrow interface between the serving machinery and whatever computes embeddings.

Why it exists: frontends, the batcher and workers must be testable without TensorFlow, and the
TensorFlow model must be testable without sockets. Both sides meet here, in plain numpy arrays.
Tokenization happens *before* batching (so batches can be grouped by length); an encoder only
ever sees padded id matrices.

Shapes are documented as ``[batch, seq]`` etc., in the style of the reference BERT code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, Protocol

import numpy as np

Task = Literal["encode", "classify"]
"""What a device batch computes: pooled embeddings, or the classifier head's logits (``-classifier``)."""
ENCODE: Final = "encode"
CLASSIFY: Final = "classify"


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


def row_extents(input_mask: np.ndarray) -> np.ndarray:
    """Per row, how many leading positions its result depends on: ``[batch]`` int.

    Everything after a row's last masked-in position is neither attended to nor pooled, so the
    row gives the same result in a batch cut to that length. A row with no masked-in position at
    all attends to every position and keeps the full width.
    """
    seq = input_mask.shape[1]
    masked_in = input_mask != 0
    last = seq - np.argmax(masked_in[:, ::-1], axis=1)  # one past the last masked-in position
    extents: np.ndarray = np.where(masked_in.any(axis=1), last, seq).astype(np.int64)
    return extents


def length_groups(extents: np.ndarray, min_tokens: int) -> list[np.ndarray]:
    """Split a batch's rows into groups of similar length, longest first: a list of row indices.

    Why: attention costs ``rows x length^2`` at the padded length of the whole call, so short
    sentences padded to a long one's length waste work (the encoder already skips padding in its
    position-wise layers). A new group starts where a row is at most half as long as its
    group's first, provided the group already holds ``min_tokens`` tokens, which keeps every
    call big enough for the matmuls to run at full speed. Rows never interact, so grouping
    changes no result.
    """
    order = np.argsort(-extents, kind="stable")
    groups: list[np.ndarray] = []
    start, tokens = 0, 0
    head = int(extents[order[0]]) if len(order) else 0
    for position, row in enumerate(order):
        extent = int(extents[row])
        if tokens >= min_tokens and 2 * extent <= head:
            groups.append(order[start:position])
            start, tokens, head = position, 0, extent
        tokens += extent
    if len(order):
        groups.append(order[start:])
    return groups


class Encoder(Protocol):
    """Computes pooled embeddings (and, with ``-classifier``, class logits) for padded batches.

    Implementations: ``bertserve_server.model.tf_encoder.TFEncoder`` (real) and
    ``FakeEncoder`` in ``tests/helpers/fake_encoder.py`` (tests, no TensorFlow).
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

    @property
    def num_labels(self) -> int:
        """Labels of the classifier head (``-classifier``); 0 when there is none."""
        ...

    def classify(self, batch: Batch) -> np.ndarray:
        """The classifier head's logits ``[batch, num_labels]`` in float32 (same row independence)."""
        ...

    def warm_up(self) -> None:
        """Run representative shapes once so the first real request is not slow."""
        ...
