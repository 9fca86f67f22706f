"""Convert Hugging Face / safetensors BERT weights into Google's TF1 checkpoint layout.

Why it exists: the server loads checkpoints exactly as Google's ``run_classifier.py`` writes them
(``bert_config.json``, ``vocab.txt``, ``bert_model.ckpt.{index,data-00000-of-00001}`` with names
like ``bert/encoder/layer_0/attention/self/query/kernel``), but today most BERT weights are
published as Hugging Face safetensors. This converter (``bertserve convert-checkpoint``) bridges
the two through the same name table the loader uses, so tests, the demo and the benchmarks can
start from real published weights. ``make_finetuned_lookalike`` then produces a directory laid
out like ``run_classifier.py`` output (``model.ckpt-0``, ``model.ckpt-343``, Adam slots, a
classifier head, ``global_step``) to exercise ``-tuned_model_dir``/``-ckpt_name`` end to end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertserve_server.model.checkpoint_names import encoder_weights, hf_to_google
from bertserve_server.model.config import SUPPORTED_ACTIVATIONS, BertConfig

logger = logging.getLogger(__name__)

GOOGLE_CONFIG = "bert_config.json"
GOOGLE_CKPT = "bert_model.ckpt"
VOCAB = "vocab.txt"

#: ``config.json`` keys that carry over to ``bert_config.json`` unchanged.
_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
)


class ConversionError(ValueError):
    """The source is not a BERT model this converter can express in Google's layout."""


def google_config_from_hf(hf_config: dict[str, Any]) -> BertConfig:
    """Map a Hugging Face ``config.json`` to Google's ``bert_config.json`` fields.

    Refuses what Google's BERT cannot express (relative position embeddings, a LayerNorm epsilon
    other than 1e-12, an unsupported activation) instead of producing a silently different model.
    """
    model_type = hf_config.get("model_type", "bert")
    if model_type != "bert":
        raise ConversionError(f"model_type {model_type!r} is not BERT")
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ConversionError(
            f"position_embedding_type {position_type!r} is not Google BERT's absolute table"
        )
    eps = float(hf_config.get("layer_norm_eps", 1e-12))
    if not np.isclose(eps, 1e-12, rtol=0, atol=1e-15):
        raise ConversionError(f"layer_norm_eps {eps} differs from Google BERT's 1e-12")
    act = hf_config.get("hidden_act", "gelu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise ConversionError(f"hidden_act {act!r} is not supported")
    return BertConfig.from_dict({k: hf_config[k] for k in _CONFIG_KEYS if k in hf_config})


def _locate(source: Path) -> tuple[Path, Path]:
    """(safetensors file, directory with config.json/vocab.txt) for a directory or a file."""
    if source.is_dir():
        weights = source / "model.safetensors"
        if not weights.is_file():
            found = sorted(source.glob("*.safetensors"))
            if len(found) != 1:
                raise ConversionError(f"{source} holds no single *.safetensors file (found {len(found)})")
            weights = found[0]
        return weights, source
    if source.is_file():
        return source, source.parent
    raise ConversionError(f"{source} does not exist")


def hf_to_google_tensors(hf_tensors: dict[str, np.ndarray], config: BertConfig) -> dict[str, np.ndarray]:
    """Rename (and transpose Linear weights of) an HF BERT state dict into Google variables.

    Checks the result against the name table: every encoder weight must be present with its
    Google shape; the pooler is optional (some sentence-embedding models drop it).
    """
    out: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    for name, value in hf_tensors.items():
        mapped = hf_to_google(name)
        if mapped is None:
            skipped.append(name)
            continue
        google, transpose = mapped
        array = np.asarray(value, dtype=np.float32)
        out[google] = np.ascontiguousarray(array.T if transpose else array)
    if skipped:
        logger.info("not converted (outside the encoder): %s", ", ".join(sorted(skipped)))
    expected = encoder_weights(config, with_pooler=any(k.startswith("bert/pooler/") for k in out))
    missing = [w.google for w in expected if w.google not in out]
    if missing:
        raise ConversionError(f"source lacks {len(missing)} encoder weight(s): {', '.join(missing[:10])}")
    wrong = [
        f"{w.google} {list(out[w.google].shape)} != {list(w.shape)}"
        for w in expected
        if out[w.google].shape != w.shape
    ]
    if wrong:
        raise ConversionError(f"shapes do not match config.json: {'; '.join(wrong[:10])}")
    extra = sorted(set(out) - {w.google for w in expected})
    if extra:
        raise ConversionError(f"layers beyond num_hidden_layers in the source: {', '.join(extra[:10])}")
    return out


def convert_hf_to_google(
    source: str | Path,
    out_dir: str | Path,
    *,
    ckpt_name: str = GOOGLE_CKPT,
    vocab: str | Path | None = None,
) -> Path:
    """Write ``bert_config.json``, ``vocab.txt`` and ``<ckpt_name>.*`` for an HF BERT into ``out_dir``.

    ``source`` is a directory (``config.json``, ``vocab.txt``, ``model.safetensors``) or a
    ``.safetensors`` file with those files beside it; ``vocab`` overrides the vocabulary file.
    """
    weights_file, meta_dir = _locate(Path(source))
    config_file = meta_dir / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{config_file} not found (the Hugging Face config is needed for the shapes)")
    vocab_file = Path(vocab) if vocab else meta_dir / VOCAB
    if not vocab_file.is_file():
        raise ConversionError(f"{vocab_file} not found (pass --vocab)")
    config = google_config_from_hf(json.loads(config_file.read_text(encoding="utf-8")))

    from safetensors.numpy import load_file

    from bertserve_server.model.checkpoint import write_checkpoint  # TensorFlow: only once the input is sound

    tensors = hf_to_google_tensors(load_file(str(weights_file)), config)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.write(out / GOOGLE_CONFIG)
    if vocab_file.resolve() != (out / VOCAB).resolve():
        shutil.copyfile(vocab_file, out / VOCAB)
    write_checkpoint(out / ckpt_name, tensors)
    logger.info("wrote %s (%d variables) from %s", out / ckpt_name, len(tensors), weights_file)
    return out


def make_finetuned_lookalike(
    pretrained_dir: str | Path,
    out_dir: str | Path,
    *,
    step: int = 343,
    ckpt_name: str = GOOGLE_CKPT,
    num_labels: int = 2,
    perturb: float = 0.05,
    seed: int = 0,
) -> Path:
    """Write a directory shaped like ``run_classifier.py`` output for the model in ``pretrained_dir``.

    ``model.ckpt-0`` holds the pretrained encoder weights; ``model.ckpt-<step>`` holds them
    perturbed (each weight plus ``perturb * std(weight)`` Gaussian noise, so a test can tell which
    checkpoint was served). Both carry ``<var>/adam_m``/``<var>/adam_v`` slots for every trainable
    variable, the classifier head ``output_weights [num_labels, H]``/``output_bias [num_labels]``,
    and ``global_step``; a ``checkpoint`` state file names them. ``pretrained_dir`` keeps the
    config and vocab, as with the real ``-model_dir``/``-tuned_model_dir`` split.
    """
    from bertserve_server.model.checkpoint import read_checkpoint, write_checkpoint, write_checkpoint_state

    config = BertConfig.from_json_file(Path(pretrained_dir) / GOOGLE_CONFIG)
    source = read_checkpoint(Path(pretrained_dir) / ckpt_name)
    encoder = {w.google for w in encoder_weights(config)}
    base = {k: np.asarray(v, dtype=np.float32) for k, v in source.items() if k in encoder}
    rng = np.random.default_rng(seed)
    head = {
        "output_weights": rng.normal(0.0, 0.02, (num_labels, config.hidden_size)).astype(np.float32),
        "output_bias": np.zeros((num_labels,), np.float32),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefixes = []
    for at_step in (0, step):
        if at_step == 0:
            trainable = {**base, **head}
        else:
            trainable = {
                k: (v + perturb * (float(v.std()) or 1.0) * rng.standard_normal(v.shape)).astype(np.float32)
                for k, v in {**base, **head}.items()
            }
        tensors: dict[str, np.ndarray] = dict(trainable)
        for name, value in trainable.items():
            scale = 0.0 if at_step == 0 else 1e-3
            tensors[f"{name}/adam_m"] = (scale * rng.standard_normal(value.shape)).astype(np.float32)
            tensors[f"{name}/adam_v"] = (scale * scale * rng.random(value.shape)).astype(np.float32)
        tensors["global_step"] = np.asarray(at_step, dtype=np.int64)
        prefix = f"model.ckpt-{at_step}"
        write_checkpoint(out / prefix, tensors)
        prefixes.append(prefix)
    write_checkpoint_state(out, prefixes)
    (out / "eval_results.txt").write_text(f"eval_accuracy = 0.5\nglobal_step = {step}\n", encoding="utf-8")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertserve convert-checkpoint",
        description="Convert Hugging Face BERT safetensors into a Google BERT checkpoint directory.",
    )
    parser.add_argument(
        "--from", dest="source", required=True, help="HF model directory or .safetensors file"
    )
    parser.add_argument(
        "--out", required=True, help="directory to write bert_config.json, vocab.txt, bert_model.ckpt.*"
    )
    parser.add_argument("--vocab", help="vocab.txt to use instead of the one beside the source")
    parser.add_argument(
        "--finetuned-out",
        help="also write a run_classifier.py-shaped directory (model.ckpt-0, model.ckpt-<step>) here",
    )
    parser.add_argument(
        "--step", type=int, default=343, help="step of the fine-tuned look-alike (default 343)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a CLI: keep TensorFlow's start-up chatter out
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = convert_hf_to_google(args.source, args.out, vocab=args.vocab)
        print(f"wrote {out}")
        if args.finetuned_out:
            tuned = make_finetuned_lookalike(out, args.finetuned_out, step=args.step)
            print(
                f"wrote {tuned} (serve with -model_dir {out} -tuned_model_dir {tuned} -ckpt_name model.ckpt-{args.step})"
            )
    except (ConversionError, OSError, ValueError) as exc:
        print(f"convert-checkpoint: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
