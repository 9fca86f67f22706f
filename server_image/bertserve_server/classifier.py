"""What ``/predict`` answers: class probabilities (or logits) named by label, best first.

Why it exists: the model returns bare logits ``[n, num_labels]``; turning them into what a
client reads (softmax in float32, the label names of ``-classifier_labels``, sorted by score) is
plain numpy that both the service and its tests share, away from TensorFlow and sockets.
Labels default to ``"0".."n-1"``, the names ``run_classifier.py``'s processors give (MRPC: 0 =
not a paraphrase, 1 = paraphrase).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class LabelError(ValueError):
    """``-classifier_labels`` does not fit the checkpoint's head."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (max subtracted first, so large logits do not overflow)."""
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    result: np.ndarray = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return result


def resolve_labels(labels: Sequence[str], num_labels: int) -> list[str]:
    """The label names for a head of ``num_labels``: ``labels``, or ``"0".."n-1"`` when empty."""
    if not labels:
        return [str(i) for i in range(num_labels)]
    if len(labels) != num_labels:
        raise LabelError(
            f"-classifier_labels names {len(labels)} label(s) ({','.join(labels)}) but the checkpoint's "
            f"head (output_weights, output_bias) has {num_labels}; give exactly {num_labels}"
        )
    return list(labels)


def ranked(
    logits: np.ndarray, labels: Sequence[str], *, raw_scores: bool = False
) -> list[list[dict[str, Any]]]:
    """Per row, ``[{"label", "score"}, ...]`` sorted by score, highest first.

    ``score`` is the softmax probability, or with ``raw_scores`` the logit itself. Ties keep the
    label order.
    """
    scores = np.asarray(logits, dtype=np.float32) if raw_scores else softmax(logits)
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")
        out.append([{"label": labels[i], "score": float(row[i])} for i in order])
    return out
