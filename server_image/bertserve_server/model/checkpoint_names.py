"""Which checkpoint variable is which weight: the name table, as data, without TensorFlow.

Why it exists: the original server restored variables by whatever names happened to match and
silently kept random weights for the rest (reference §2.2). Here every weight the encoder needs is
listed once, with its Google TF1 name (``bert/encoder/layer_3/attention/self/query/kernel``), the
key our model uses (``layer_3/query/kernel``), its symbolic shape and its Hugging Face name (for
``convert.py``). Checkpoint loading, conversion and the synthetic test checkpoints all read this
table, so there is one place to look when a name does not match.

Also here, because the CLI needs them before TensorFlow is imported: the classification of
variables a fine-tuned checkpoint carries but the encoder ignores, and the listing of checkpoint
prefixes in a directory (for "available: model.ckpt-0, model.ckpt-343" error messages).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bertserve_server.model.config import BertConfig

#: Symbolic dimensions used in ``WeightName.shape``.
#: V vocab_size, T type_vocab_size, P max_position_embeddings, H hidden_size, I intermediate_size,
#: L number of labels of a classifier head (from the checkpoint, not the config).
DIMENSIONS = ("V", "T", "P", "H", "I", "L")


@dataclass(frozen=True)
class WeightName:
    """One encoder weight. ``{layer}`` in the names stands for the 0-based layer number."""

    google: str
    key: str
    shape: tuple[str, ...]
    hf: str
    #: Hugging Face ``nn.Linear`` stores ``[out, in]``; Google kernels are ``[in, out]``.
    hf_transposed: bool = False


EMBEDDING_WEIGHTS: tuple[WeightName, ...] = (
    WeightName(
        "bert/embeddings/word_embeddings", "embeddings/word", ("V", "H"), "embeddings.word_embeddings.weight"
    ),
    WeightName(
        "bert/embeddings/token_type_embeddings",
        "embeddings/token_type",
        ("T", "H"),
        "embeddings.token_type_embeddings.weight",
    ),
    WeightName(
        "bert/embeddings/position_embeddings",
        "embeddings/position",
        ("P", "H"),
        "embeddings.position_embeddings.weight",
    ),
    WeightName(
        "bert/embeddings/LayerNorm/gamma", "embeddings/ln/gamma", ("H",), "embeddings.LayerNorm.weight"
    ),
    WeightName("bert/embeddings/LayerNorm/beta", "embeddings/ln/beta", ("H",), "embeddings.LayerNorm.bias"),
)

_G = "bert/encoder/layer_{layer}/"
_K = "layer_{layer}/"
_HF = "encoder.layer.{layer}."
LAYER_WEIGHTS: tuple[WeightName, ...] = (
    WeightName(_G + "attention/self/query/kernel", _K + "query/kernel", ("H", "H"),
               _HF + "attention.self.query.weight", True),
    WeightName(_G + "attention/self/query/bias", _K + "query/bias", ("H",), _HF + "attention.self.query.bias"),
    WeightName(_G + "attention/self/key/kernel", _K + "key/kernel", ("H", "H"),
               _HF + "attention.self.key.weight", True),
    WeightName(_G + "attention/self/key/bias", _K + "key/bias", ("H",), _HF + "attention.self.key.bias"),
    WeightName(_G + "attention/self/value/kernel", _K + "value/kernel", ("H", "H"),
               _HF + "attention.self.value.weight", True),
    WeightName(_G + "attention/self/value/bias", _K + "value/bias", ("H",), _HF + "attention.self.value.bias"),
    WeightName(_G + "attention/output/dense/kernel", _K + "attention_output/kernel", ("H", "H"),
               _HF + "attention.output.dense.weight", True),
    WeightName(_G + "attention/output/dense/bias", _K + "attention_output/bias", ("H",),
               _HF + "attention.output.dense.bias"),
    WeightName(_G + "attention/output/LayerNorm/gamma", _K + "attention_ln/gamma", ("H",),
               _HF + "attention.output.LayerNorm.weight"),
    WeightName(_G + "attention/output/LayerNorm/beta", _K + "attention_ln/beta", ("H",),
               _HF + "attention.output.LayerNorm.bias"),
    WeightName(_G + "intermediate/dense/kernel", _K + "intermediate/kernel", ("H", "I"),
               _HF + "intermediate.dense.weight", True),
    WeightName(_G + "intermediate/dense/bias", _K + "intermediate/bias", ("I",), _HF + "intermediate.dense.bias"),
    WeightName(_G + "output/dense/kernel", _K + "output/kernel", ("I", "H"), _HF + "output.dense.weight", True),
    WeightName(_G + "output/dense/bias", _K + "output/bias", ("H",), _HF + "output.dense.bias"),
    WeightName(_G + "output/LayerNorm/gamma", _K + "output_ln/gamma", ("H",), _HF + "output.LayerNorm.weight"),
    WeightName(_G + "output/LayerNorm/beta", _K + "output_ln/beta", ("H",), _HF + "output.LayerNorm.bias"),
)  # fmt: skip

POOLER_WEIGHTS: tuple[WeightName, ...] = (
    WeightName("bert/pooler/dense/kernel", "pooler/kernel", ("H", "H"), "pooler.dense.weight", True),
    WeightName("bert/pooler/dense/bias", "pooler/bias", ("H",), "pooler.dense.bias"),
)

POSITION_EMBEDDINGS = "bert/embeddings/position_embeddings"

#: The classifier head ``run_classifier.py``'s ``create_model`` puts on the pooled output, by its
#: original (unscoped) names: ``logits = pooled · output_weightsᵀ + output_bias``. ``L`` is the
#: number of labels, known only from the checkpoint (``len(processor.get_labels())``).
CLASSIFIER_WEIGHTS: tuple[WeightName, ...] = (
    WeightName("output_weights", "classifier/weights", ("L", "H"), "classifier.weight"),
    WeightName("output_bias", "classifier/bias", ("L",), "classifier.bias"),
)

#: Variables a checkpoint may carry that the encoder deliberately does not use, with the reason.
#: Patterns are matched against the whole name, first match wins.
IGNORED_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r".*/adam_[mv]"), "optimizer slot"),
    (re.compile(r"global_step"), "training step counter"),
    (re.compile(r"output_(weights|bias)"), "classifier head"),
    (re.compile(r"cls/.*"), "pre-training head"),
)


@dataclass(frozen=True)
class ResolvedWeight:
    """A table row with ``{layer}`` filled in and the shape made concrete for a config."""

    google: str
    key: str
    shape: tuple[int, ...]
    hf: str
    hf_transposed: bool


def _dims(config: BertConfig, num_labels: int = 0) -> dict[str, int]:
    return {
        "V": config.vocab_size,
        "T": config.type_vocab_size,
        "P": config.max_position_embeddings,
        "H": config.hidden_size,
        "I": config.intermediate_size,
        "L": num_labels,
    }


def _resolve(row: WeightName, dims: dict[str, int], layer: int | None = None) -> ResolvedWeight:
    fill = {} if layer is None else {"layer": layer}
    return ResolvedWeight(
        google=row.google.format(**fill),
        key=row.key.format(**fill),
        shape=tuple(dims[d] for d in row.shape),
        hf=row.hf.format(**fill),
        hf_transposed=row.hf_transposed,
    )


def encoder_weights(
    config: BertConfig,
    *,
    num_layers: int | None = None,
    use_position_embeddings: bool = True,
    with_pooler: bool = True,
) -> list[ResolvedWeight]:
    """Every weight an encoder of ``config`` reads, in a stable order.

    ``num_layers`` limits the layers (0..num_layers-1), for models built only up to the deepest
    pooling layer; ``use_position_embeddings=False`` is ``-no_position_embeddings``.
    """
    dims = _dims(config)
    layers = config.num_hidden_layers if num_layers is None else num_layers
    rows = [
        _resolve(row, dims)
        for row in EMBEDDING_WEIGHTS
        if use_position_embeddings or row.google != POSITION_EMBEDDINGS
    ]
    for layer in range(layers):
        rows.extend(_resolve(row, dims, layer) for row in LAYER_WEIGHTS)
    if with_pooler:
        rows.extend(_resolve(row, dims) for row in POOLER_WEIGHTS)
    return rows


def classifier_weights(config: BertConfig, num_labels: int) -> list[ResolvedWeight]:
    """The two head weights for ``num_labels`` labels on ``config``'s hidden size."""
    dims = _dims(config, num_labels)
    return [_resolve(row, dims) for row in CLASSIFIER_WEIGHTS]


def ignored_reason(name: str) -> str | None:
    """Why the encoder ignores checkpoint variable ``name``, or None if it is not a known extra."""
    for pattern, reason in IGNORED_PATTERNS:
        if pattern.fullmatch(name):
            return reason
    return None


_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_HF_PREFIXES = ("bert.", "model.")


def hf_to_google(hf_name: str) -> tuple[str, bool] | None:
    """Google variable name (and whether to transpose) for a Hugging Face BERT tensor name.

    Accepts the ``bert.`` prefix of ``BertFor*`` models and the old ``LayerNorm.gamma/beta``
    spelling. Returns None for names outside the encoder (heads, ``position_ids`` buffers).
    """
    name = hf_name
    for prefix in _HF_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    match = _HF_LAYER.fullmatch(name)
    if match:
        layer = int(match.group(1))
        for row in LAYER_WEIGHTS:
            if row.hf.format(layer=layer) == name:
                return row.google.format(layer=layer), row.hf_transposed
        return None
    for row in (*EMBEDDING_WEIGHTS, *POOLER_WEIGHTS):
        if row.hf == name:
            return row.google, row.hf_transposed
    return None


_INDEX_SUFFIX = ".index"


def _natural_key(prefix: str) -> tuple[object, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", prefix))


def list_checkpoint_prefixes(directory: str | Path) -> list[str]:
    """Checkpoint prefixes in ``directory`` (one per ``*.index`` file), in natural order.

    ``model.ckpt-343.index`` gives ``model.ckpt-343``; ``-ckpt_name`` takes exactly these values.
    A missing or unreadable directory gives an empty list.
    """
    try:
        names = [p.name for p in Path(directory).iterdir() if p.is_file()]
    except OSError:
        return []
    prefixes = [n[: -len(_INDEX_SUFFIX)] for n in names if n.endswith(_INDEX_SUFFIX)]
    return sorted(prefixes, key=_natural_key)


def checkpoint_exists(prefix_path: str | Path) -> bool:
    """Whether ``<prefix_path>.index`` exists (the file TensorFlow opens first)."""
    return Path(f"{prefix_path}{_INDEX_SUFFIX}").is_file()


def describe_missing_checkpoint(directory: str | Path, ckpt_name: str) -> str:
    """One-line explanation for a checkpoint prefix that is not in ``directory``."""
    available = list_checkpoint_prefixes(directory)
    where = Path(directory) / ckpt_name
    if available:
        return f"checkpoint {where} not found (no {where}.index); available: {', '.join(available)}"
    return f"checkpoint {where} not found: {directory} holds no checkpoint (*.index files)"


def prefetch_checkpoint(prefix_path: str | Path) -> list[Path]:
    """Ask the kernel to start reading the checkpoint's files into the page cache; the files asked for.

    Why: on a fresh node or after a rollout the weights are not in the page cache yet, and the
    server would read them only after TensorFlow's import (seconds of CPU that leave the disk
    idle). Called before that import, the read overlaps it. ``posix_fadvise(WILLNEED)`` only
    schedules read-ahead and returns; a file that cannot be opened is left for the real load to
    report. No-op where the call does not exist.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:  # pragma: no cover - non-POSIX
        return []
    prefix = Path(prefix_path)
    paths = [
        *sorted(prefix.parent.glob(f"{glob.escape(prefix.name)}.data-*")),
        Path(f"{prefix}{_INDEX_SUFFIX}"),
    ]
    asked = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            asked.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return asked
