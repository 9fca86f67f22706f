"""An independent plain-numpy BERT that reads Hugging Face safetensors directly, for numerics tests.

Why it exists: the TF model, the converter and the checkpoint loader are all project code; a test
that compared them with each other could share a mistake (a transposed kernel, a wrong name in
the table). This reference shares nothing with them: it reads the HF tensors by HF names, keeps
HF's ``[out, in]`` Linear layout, follows the textbook BERT maths in float64, and pools with its
own code written from the reference description (§5.6 of the bert-as-service notes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def _erf(x: np.ndarray) -> np.ndarray:
    vectorised = np.vectorize(math.erf, otypes=[np.float64])
    return vectorised(x)


class NumpyBert:
    """BERT forward pass over an HF ``BertModel`` checkpoint, float64 throughout."""

    def __init__(self, config: dict, tensors: dict[str, np.ndarray]) -> None:
        self.config = config
        self.w = {k.removeprefix("bert."): np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
        self.hidden = self.config["hidden_size"]
        self.heads = self.config["num_attention_heads"]
        self.layers = self.config["num_hidden_layers"]
        self.eps = self.config.get("layer_norm_eps", 1e-12)

    @classmethod
    def from_hf_dir(cls, model_dir: str | Path) -> NumpyBert:
        """``config.json`` + ``model.safetensors`` of a Hugging Face ``BertModel``."""
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        return cls(config, load_file(str(model_dir / "model.safetensors")))

    @classmethod
    def from_google_dir(
        cls, model_dir: str | Path, ckpt: str = "bert_model.ckpt", *, config_dir: str | Path | None = None
    ) -> NumpyBert:
        """A Google checkpoint, renamed to HF names here (independently of the project's table).

        ``config_dir``: where ``bert_config.json`` is when ``model_dir`` is a fine-tuning output
        directory (``run_classifier.py`` writes checkpoints only).
        """
        import tensorflow as tf

        model_dir = Path(model_dir)
        config = json.loads((Path(config_dir or model_dir) / "bert_config.json").read_text())
        reader = tf.train.load_checkpoint(str(model_dir / ckpt))
        tensors = {}
        for name in reader.get_variable_to_shape_map():
            if not name.startswith("bert/"):
                continue
            value = reader.get_tensor(name)
            hf = name.removeprefix("bert/").replace("/", ".").replace("layer_", "layer.")
            hf = hf.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            if hf.endswith("_embeddings"):
                hf += ".weight"
            if hf.endswith(".kernel"):
                hf, value = hf[: -len(".kernel")] + ".weight", value.T
            tensors[hf] = value
        return cls(config, tensors)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        # HF Linear: y = x W^T + b with W stored [out, in].
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def forward(
        self,
        input_ids: np.ndarray,
        input_mask: np.ndarray,
        type_ids: np.ndarray,
        *,
        use_position_embeddings: bool = True,
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """All layer outputs ``[batch, seq, hidden]`` and the pooler output ``[batch, hidden]``."""
        b, s = input_ids.shape
        d = self.hidden // self.heads
        x = (
            self.w["embeddings.word_embeddings.weight"][input_ids]
            + self.w["embeddings.token_type_embeddings.weight"][type_ids]
        )
        if use_position_embeddings:
            x = x + self.w["embeddings.position_embeddings.weight"][np.arange(s)][None]
        x = self._norm(x, "embeddings.LayerNorm")
        adder = (1.0 - input_mask.astype(np.float64))[:, None, None, :] * -10000.0
        outs = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def split(t: np.ndarray) -> np.ndarray:
                return t.reshape(b, s, self.heads, d).transpose(0, 2, 1, 3)

            q = split(self._linear(x, p + "attention.self.query"))
            k = split(self._linear(x, p + "attention.self.key"))
            v = split(self._linear(x, p + "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + adder
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, self.hidden)
            attn = self._norm(
                self._linear(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm"
            )
            inter = self._linear(attn, p + "intermediate.dense")
            inter = 0.5 * inter * (1.0 + _erf(inter / math.sqrt(2.0)))
            x = self._norm(self._linear(inter, p + "output.dense") + attn, p + "output.LayerNorm")
            outs.append(x)
        pooled = np.tanh(self._linear(x[:, 0], "pooler.dense"))
        return outs, pooled


def reference_pool(
    strategy: str, layers: list[np.ndarray], pooling_layer: list[int], mask: np.ndarray, pooled: np.ndarray
) -> np.ndarray:
    """bert-as-service 1.10.0 pooling, written from its description."""
    if strategy == "CLS_POOLED":
        return pooled
    x = np.concatenate([layers[i] for i in pooling_layer], axis=-1)
    m = mask.astype(np.float64)
    mean = (x * m[:, :, None]).sum(1) / (m.sum(1, keepdims=True) + 1e-10)
    mx = (x - (1.0 - m[:, :, None]) * 1e30).max(1)
    if strategy == "REDUCE_MEAN":
        return mean
    if strategy == "REDUCE_MAX":
        return mx
    if strategy == "REDUCE_MEAN_MAX":
        return np.concatenate([mean, mx], axis=1)
    if strategy in ("FIRST_TOKEN", "CLS_TOKEN"):
        return x[:, 0]
    if strategy in ("LAST_TOKEN", "SEP_TOKEN"):
        last = m.sum(1).astype(int) - 1
        return x[np.arange(x.shape[0]), last]
    if strategy == "NONE":
        return x * m[:, :, None]
    raise ValueError(strategy)


def reference_classifier(
    pooled: np.ndarray, output_weights: np.ndarray, output_bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``run_classifier.py``'s ``create_model`` at inference, in float64: logits and softmax probabilities.

    ``logits = pooled · output_weightsᵀ + output_bias`` (``output_weights`` is ``[num_labels, hidden]``,
    multiplied with ``transpose_b=True`` there); dropout is off outside training.
    """
    logits = pooled @ np.asarray(output_weights, np.float64).T + np.asarray(output_bias, np.float64)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return logits, shifted / shifted.sum(-1, keepdims=True)
