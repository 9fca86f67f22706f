"""Reading (and writing) Google TF1 BERT checkpoints by their original variable names.

Why it exists: a fine-tuned ``run_classifier.py`` output directory holds the encoder weights
next to Adam slots, a classifier head and ``global_step``; a converted or foreign checkpoint may
hold different names altogether. The original server intersected names silently and served
random weights for whatever did not match (reference §2.2). Here the encoder's weights are looked
up through the explicit table in ``checkpoint_names``: a missing or mis-shaped weight is an error
naming the variable and the checkpoint, known extras are ignored, and anything else unused is
listed in the log.

Paths follow 1.10.0: config and vocab come from ``model_dir``; the weights come from
``(tuned_model_dir or model_dir)/ckpt_name``, announced with the same log line.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from bertserve_server.model.checkpoint_names import (
    CLASSIFIER_WEIGHTS,
    POSITION_EMBEDDINGS,
    ResolvedWeight,
    checkpoint_exists,
    classifier_weights,
    describe_missing_checkpoint,
    encoder_weights,
    ignored_reason,
)
from bertserve_server.model.config import BertConfig

logger = logging.getLogger(__name__)

#: How many names an error or log line spells out before summarising the rest as "… and N more".
MAX_NAMES_SHOWN = 20


class CheckpointError(ValueError):
    """The checkpoint is missing, or does not hold the weights the config describes."""


@dataclass(frozen=True)
class LoadedWeights:
    """Encoder weights read from a checkpoint, keyed by ``checkpoint_names`` keys (float32 arrays)."""

    path: str
    weights: dict[str, np.ndarray]
    #: Checkpoint variables the encoder ignores on purpose, by reason ("optimizer slot": 398, …).
    ignored: dict[str, int] = field(default_factory=dict)
    #: Checkpoint variables neither used nor known extras (sorted names).
    unused: list[str] = field(default_factory=list)
    #: Labels of the classifier head in ``weights`` (``classifier/weights``, ``classifier/bias``);
    #: 0 when it was not asked for.
    num_labels: int = 0


def checkpoint_path(
    model_dir: str | os.PathLike[str], ckpt_name: str, tuned_model_dir: str | None = None
) -> str:
    """``(tuned_model_dir or model_dir)/ckpt_name``, exactly as 1.10.0 composes it."""
    return os.path.join(tuned_model_dir or os.fspath(model_dir), ckpt_name)


def _summarise(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    more = len(names) - MAX_NAMES_SHOWN
    return f"{shown} … and {more} more" if more > 0 else shown


def load_encoder_weights(
    config: BertConfig,
    model_dir: str | os.PathLike[str],
    ckpt_name: str = "bert_model.ckpt",
    tuned_model_dir: str | None = None,
    *,
    num_layers: int | None = None,
    use_position_embeddings: bool = True,
    with_pooler: bool = False,
    with_classifier: bool = False,
    log: logging.Logger | None = None,
) -> LoadedWeights:
    """Read the encoder weights for ``config`` from ``(tuned_model_dir or model_dir)/ckpt_name``.

    Every layer of ``config`` must be present with the right shape (a checkpoint that does not
    match its config is refused even when only lower layers are computed); only layers below
    ``num_layers`` are returned. The pooler is required only ``with_pooler`` (``CLS_POOLED``).
    With ``use_position_embeddings=False`` a checkpoint copy of the position table is ignored.
    ``with_classifier`` (``-classifier``) also reads ``run_classifier.py``'s head,
    ``output_weights [L, H]`` and ``output_bias [L]``, and the pooler it sits on.

    Raises ``CheckpointError`` for a missing checkpoint (listing the prefixes that exist), missing
    weights (all of them, by Google name) and shape mismatches, each in one line.
    """
    log = log or logger
    path = checkpoint_path(model_dir, ckpt_name, tuned_model_dir)
    if tuned_model_dir:
        log.info("checkpoint (override by the fine-tuned model): %s", path)
    else:
        log.info("checkpoint: %s", path)
    if not checkpoint_exists(path):
        raise CheckpointError(
            describe_missing_checkpoint(os.path.dirname(path) or ".", os.path.basename(path))
        )
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    available: Mapping[str, list[int]] = reader.get_variable_to_shape_map()

    required = encoder_weights(config, use_position_embeddings=use_position_embeddings, with_pooler=False)
    optional_pooler = encoder_weights(config, num_layers=0, use_position_embeddings=False, with_pooler=True)
    optional_pooler = [w for w in optional_pooler if w.google.startswith("bert/pooler/")]
    if with_pooler or with_classifier:
        required += optional_pooler
    head: list[ResolvedWeight] = []
    if with_classifier:
        head = _classifier_head(config, path, available)
        required += head

    missing = [w.google for w in required if w.google not in available]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {len(missing)} encoder weight(s) that {config.num_hidden_layers}-layer "
            f"config needs: {_summarise(missing)} (variables must carry Google BERT names such as "
            f"bert/encoder/layer_0/attention/self/query/kernel; convert Hugging Face weights with "
            f"`bertserve convert-checkpoint`)"
        )
    wanted = required + [w for w in optional_pooler if w not in required and w.google in available]
    mismatched = [
        f"{w.google} is {list(available[w.google])} in the checkpoint, the config expects {list(w.shape)}"
        for w in wanted
        if tuple(available[w.google]) != w.shape
    ]
    if mismatched:
        raise CheckpointError(
            f"checkpoint {path} does not match the model config: {'; '.join(mismatched[:MAX_NAMES_SHOWN])}"
        )

    keep_layers = config.num_hidden_layers if num_layers is None else num_layers
    weights: dict[str, np.ndarray] = {}
    for w in required:
        if w.key.startswith("layer_") and int(w.key.split("/", 1)[0][len("layer_") :]) >= keep_layers:
            continue
        weights[w.key] = np.asarray(reader.get_tensor(w.google), dtype=np.float32)

    used = {w.google for w in wanted}
    ignored: Counter[str] = Counter()
    unused: list[str] = []
    for name in sorted(available):
        if name in used:
            continue
        reason = ignored_reason(name)
        if reason is None and name == POSITION_EMBEDDINGS and not use_position_embeddings:
            reason = "-no_position_embeddings"
        if reason is None:
            unused.append(name)
        else:
            ignored[reason] += 1
    if ignored:
        log.info(
            "ignored checkpoint variables: %s",
            ", ".join(f"{count} {reason}" for reason, count in sorted(ignored.items())),
        )
    if unused:
        log.warning("%d checkpoint variable(s) unused by the encoder: %s", len(unused), _summarise(unused))
    log.info("loaded %d encoder weights from %s", len(used), path)
    num_labels = head[0].shape[0] if head else 0
    if head:
        log.info("classifier head: %d labels (output_weights %s)", num_labels, list(head[0].shape))
    return LoadedWeights(
        path=path, weights=weights, ignored=dict(ignored), unused=unused, num_labels=num_labels
    )


def _classifier_head(
    config: BertConfig, path: str, available: Mapping[str, list[int]]
) -> list[ResolvedWeight]:
    """The head's rows with ``L`` taken from the checkpoint, after checking both variables agree.

    One-line ``CheckpointError`` naming the variables when the head is missing or its shapes do
    not fit ``hidden_size`` (or each other).
    """
    names = [row.google for row in CLASSIFIER_WEIGHTS]
    missing = [name for name in names if name not in available]
    if missing:
        raise CheckpointError(
            f"-classifier: checkpoint {path} has no classifier head (lacks {', '.join(missing)}); "
            f"serve the run_classifier.py output that holds {' and '.join(names)}, or drop -classifier"
        )
    weights_shape = list(available["output_weights"])
    bias_shape = list(available["output_bias"])
    hidden = config.hidden_size
    if (
        len(weights_shape) != 2
        or weights_shape[1] != hidden
        or weights_shape[0] < 1
        or bias_shape != weights_shape[:1]
    ):
        raise CheckpointError(
            f"-classifier: checkpoint {path} holds a classifier head that does not fit the model: "
            f"output_weights is {weights_shape} and output_bias is {bias_shape}, expected "
            f"[num_labels, {hidden}] and [num_labels] (hidden_size {hidden})"
        )
    return classifier_weights(config, weights_shape[0])


def write_checkpoint(prefix: str | os.PathLike[str], tensors: Mapping[str, np.ndarray]) -> str:
    """Write a TF1-style name-based checkpoint (``<prefix>.index`` + ``<prefix>.data-00000-of-00001``).

    The variable names are exactly the keys (e.g. ``bert/embeddings/word_embeddings``), as
    ``tf.compat.v1.train.Saver`` wrote them; ``tf.train.load_checkpoint`` and 1.10.0 read them.
    """
    prefix = os.fspath(prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    with tf.device("/CPU:0"):
        tf.raw_ops.SaveV2(
            prefix=prefix,
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=[tf.convert_to_tensor(np.asarray(tensors[n])) for n in names],
        )
    return prefix


def read_checkpoint(prefix: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All variables of a checkpoint as numpy arrays (for conversion and tests; loads everything)."""
    reader = tf.train.load_checkpoint(os.fspath(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def write_checkpoint_state(directory: str | os.PathLike[str], prefixes: list[str]) -> None:
    """Write the ``checkpoint`` state file TF1 ``Saver`` leaves beside its checkpoints (latest last)."""
    lines = [f'model_checkpoint_path: "{prefixes[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{p}"' for p in prefixes]
    Path(directory, "checkpoint").write_text("\n".join(lines) + "\n", encoding="utf-8")
