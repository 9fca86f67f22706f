"""Tiny random BERT models in Google's layout, for tests, the demo, image smoke tests and benchmarks.

Why it exists: tests must not depend on downloading a 400 MB checkpoint, yet they should load
exactly the kind of directory users have (``bert_config.json``, ``vocab.txt``,
``bert_model.ckpt.*`` with Google variable names, optionally ``cls/*`` pre-training heads). The
weights are seeded random numbers, large enough that attention is not uniform, so a wrong
mask, transpose or layer index changes the output visibly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bertserve_server.model.checkpoint_names import encoder_weights
from bertserve_server.model.config import BertConfig
from bertserve_server.model.convert import GOOGLE_CKPT, GOOGLE_CONFIG, VOCAB, make_finetuned_lookalike

#: A small uncased vocabulary: specials, some words, punctuation, single letters and their
#: ``##`` continuations (so most lowercase ASCII words tokenize into pieces, not ``[UNK]``),
#: digits and a few CJK characters.
DEFAULT_VOCAB: tuple[str, ...] = (
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "a", "is", "hello", "world", "dog", "cat", "hair", "##y", "##s", "##ing", "##ed",
    "un", "##want", "runn", "run", "good", "bad", "day", "night", "i", "you", "it", "not", "no",
    ",", ".", "!", "?", "'", "-", "|", "(", ")",
    *"abcdefghijklmnopqrstuvwxyz",
    *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"),
    *"0123456789",
    "中", "文", "日", "本",
)  # fmt: skip


def write_vocab(path: str | Path, tokens: Sequence[str]) -> Path:
    """One token per line, id = line number (Google's ``load_vocab`` format)."""
    Path(path).write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    return Path(path)


def random_encoder_tensors(
    config: BertConfig, *, seed: int = 0, weight_std: float = 0.2, with_pooler: bool = True
) -> dict[str, np.ndarray]:
    """Random float32 tensors for every encoder weight of ``config``, keyed by Google name.

    Kernels and embeddings are ``N(0, weight_std)``; LayerNorm gammas ``1 + N(0, 0.1)``; biases and
    betas ``N(0, 0.1)``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for w in encoder_weights(config, with_pooler=with_pooler):
        if w.google.endswith("gamma"):
            value = 1.0 + 0.1 * rng.standard_normal(w.shape)
        elif w.google.endswith(("bias", "beta")):
            value = 0.1 * rng.standard_normal(w.shape)
        else:
            value = weight_std * rng.standard_normal(w.shape)
        out[w.google] = value.astype(np.float32)
    return out


def write_random_bert(
    directory: str | Path,
    *,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    intermediate: int = 64,
    vocab: Sequence[str] | str | Path | None = None,
    seed: int = 0,
    max_position_embeddings: int = 64,
    type_vocab_size: int = 2,
    hidden_act: str = "gelu",
    weight_std: float = 0.2,
    with_pooler: bool = True,
    with_pretraining_heads: bool = False,
    extra_variables: Mapping[str, np.ndarray] | None = None,
    ckpt_name: str = GOOGLE_CKPT,
) -> Path:
    """Write a random Google-layout BERT into ``directory`` and return it.

    ``vocab`` is a token list, or the path of an existing ``vocab.txt`` to copy (e.g. a real 30 522
    token vocabulary for a BERT-base-shaped benchmark model); default ``DEFAULT_VOCAB``.
    ``with_pretraining_heads`` adds ``cls/predictions/*`` and ``cls/seq_relationship/*`` as in
    Google's released checkpoints; ``extra_variables`` are written as given (for tests of the
    unused-variable report).
    """
    from bertserve_server.model.checkpoint import write_checkpoint

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if vocab is None:
        tokens: list[str] = list(DEFAULT_VOCAB)
    elif isinstance(vocab, str | Path):
        tokens = Path(vocab).read_text(encoding="utf-8").splitlines()
    else:
        tokens = list(vocab)
    write_vocab(out / VOCAB, tokens)
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act=hidden_act,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=type_vocab_size,
    )
    config.write(out / GOOGLE_CONFIG)
    tensors = random_encoder_tensors(config, seed=seed, weight_std=weight_std, with_pooler=with_pooler)
    if with_pretraining_heads:
        rng = np.random.default_rng(seed + 1)
        head_shapes: dict[str, tuple[int, ...]] = {
            "cls/predictions/transform/dense/kernel": (hidden, hidden),
            "cls/predictions/transform/dense/bias": (hidden,),
            "cls/predictions/transform/LayerNorm/gamma": (hidden,),
            "cls/predictions/transform/LayerNorm/beta": (hidden,),
            "cls/predictions/output_bias": (len(tokens),),
            "cls/seq_relationship/output_weights": (2, hidden),
            "cls/seq_relationship/output_bias": (2,),
        }
        tensors.update(
            {name: rng.standard_normal(shape).astype(np.float32) for name, shape in head_shapes.items()}
        )
    tensors.update(extra_variables or {})
    write_checkpoint(out / ckpt_name, tensors)
    return out


def write_random_finetuned(
    pretrained_dir: str | Path, out_dir: str | Path, *, step: int = 343, seed: int = 1, perturb: float = 0.05
) -> Path:
    """A ``run_classifier.py``-shaped directory (``model.ckpt-0``, ``model.ckpt-<step>``) for ``pretrained_dir``."""
    return make_finetuned_lookalike(pretrained_dir, out_dir, step=step, seed=seed, perturb=perturb)
