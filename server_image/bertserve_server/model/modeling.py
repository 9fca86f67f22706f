"""The BERT encoder in TensorFlow 2, numerically equal to Google's ``modeling.py`` in inference.

Why it is written by hand instead of using a Keras model: serving needs exactly the reference
maths (erf GELU unless ``hidden_act`` says otherwise, attention mask adder −10000, LayerNorm
epsilon 1e-12, position embeddings sliced to the sequence length, token-type embeddings) and
nothing else: no dropout, no training graph, no layers above the deepest one pooling reads. The
computation is a plain function of a dict of weight tensors, so the same code runs with weights
held as device variables (GPU) or embedded as graph constants (CPU, where oneDNN can then cache
its packed copies of the kernels), inside one ``tf.function`` that also does the pooling.

Layout choices made for speed, all exact re-arrangements of the reference maths: the query, key
and value projections are one ``[H, 3H]`` matmul; every dense layer works on ``[batch*seq, width]``
matrices so TensorFlow's remapper fuses bias-add, GELU and the residual add into the matmul; the
attention scores are written ``(q @ k^T) * scale + mask`` (the reference order), which oneDNN runs
as one fused batch matmul; and on CPU LayerNorm takes a form oneDNN runs as one kernel.

One saving that is not a re-arrangement but gives the same numbers: positions that cannot change
any result (padding; see ``kept_positions``) are left out of every position-wise matmul and
LayerNorm (``EncoderSpec.skip_padding``). Sentences vary in length and a batch is padded to its
longest, so on real traffic this is often more than half of the work. Likewise, when only the
pooler reads the top layer (the classifier head), that layer is computed for ``[CLS]`` alone
(``EncoderSpec.top_layer_first_token_only``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from bertserve_server.model.config import BertConfig

#: Added to attention scores of masked ("to") positions, as in Google's BERT.
ATTENTION_MASK_ADDER = -10000.0
#: LayerNorm epsilon of ``tf.contrib.layers.layer_norm``, which Google's BERT uses.
LAYER_NORM_EPSILON = 1e-12


def gelu_erf(x: tf.Tensor) -> tf.Tensor:
    """Exact GELU, ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (Google BERT's ``gelu``)."""
    return tf.nn.gelu(x, approximate=False)


def gelu_tanh(x: tf.Tensor) -> tf.Tensor:
    """The tanh approximation of GELU (``gelu_new`` in Hugging Face configs)."""
    return tf.nn.gelu(x, approximate=True)


ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "gelu": gelu_erf,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "relu": tf.nn.relu,
    "tanh": tf.tanh,
    "swish": tf.nn.silu,
    "silu": tf.nn.silu,
    "linear": tf.identity,
}


@dataclass(frozen=True)
class EncoderSpec:
    """What to build: how many layers, and which optional parts.

    ``num_layers`` is the number of transformer layers computed (the deepest pooling layer + 1);
    layers above it are never built. ``with_pooler`` adds Google's ``tanh(dense(first token))``
    pooled output of the *last* layer (``CLS_POOLED``), which then requires all layers.
    ``num_labels`` > 0 adds ``run_classifier.py``'s head on the pooled output (see
    ``classifier_logits``), which then requires the pooler.
    """

    config: BertConfig
    num_layers: int
    use_position_embeddings: bool = True
    with_pooler: bool = False
    #: CPU-friendly fused LayerNorm (see ``layer_norm``); off for GPUs.
    fused_layer_norm: bool = False
    #: Compute the token-wise parts only on the positions that can change a result (see
    #: ``kept_positions``); off under XLA, which needs static shapes.
    skip_padding: bool = False
    #: Labels of the classifier head (0: no head).
    num_labels: int = 0
    #: Compute the top layer for the first token (``[CLS]``) only: its keys and values still come
    #: from every position, but its query, attention output and feed-forward run on one row per
    #: sentence. Exact when nothing but the pooler reads the top layer (the classifier head).
    top_layer_first_token_only: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.num_layers <= self.config.num_hidden_layers:
            raise ValueError(
                f"num_layers must be in 1..{self.config.num_hidden_layers}, got {self.num_layers}"
            )
        if self.with_pooler and self.num_layers != self.config.num_hidden_layers:
            raise ValueError("the pooler reads the last layer: build all layers when with_pooler is set")
        if self.num_labels and not self.with_pooler:
            raise ValueError("the classifier head reads the pooled output: set with_pooler with num_labels")
        if self.top_layer_first_token_only and not self.with_pooler:
            raise ValueError("top_layer_first_token_only computes [CLS] for the pooler: set with_pooler")


def prepare_weights(spec: EncoderSpec, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn checkpoint-layout weights (keys of ``checkpoint_names``) into the layout ``encode`` uses.

    Per layer, ``query``/``key``/``value`` kernels ``[H, H]`` and biases ``[H]`` become one
    ``qkv/kernel [H, 3H]`` and ``qkv/bias [3H]``. Everything is float32 and C-contiguous.
    Weights of layers above ``num_layers`` are dropped.
    """
    out: dict[str, np.ndarray] = {}

    def take(key: str) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(weights[key], dtype=np.float32))

    out["embeddings/word"] = take("embeddings/word")
    out["embeddings/token_type"] = take("embeddings/token_type")
    if spec.use_position_embeddings:
        out["embeddings/position"] = take("embeddings/position")
    out["embeddings/ln/gamma"] = take("embeddings/ln/gamma")
    out["embeddings/ln/beta"] = take("embeddings/ln/beta")
    for layer in range(spec.num_layers):
        p = f"layer_{layer}/"
        out[p + "qkv/kernel"] = np.ascontiguousarray(
            np.concatenate(
                [take(p + "query/kernel"), take(p + "key/kernel"), take(p + "value/kernel")], axis=1
            )
        )
        out[p + "qkv/bias"] = np.concatenate(
            [take(p + "query/bias"), take(p + "key/bias"), take(p + "value/bias")]
        )
        for name in (
            "attention_output/kernel",
            "attention_output/bias",
            "attention_ln/gamma",
            "attention_ln/beta",
            "intermediate/kernel",
            "intermediate/bias",
            "output/kernel",
            "output/bias",
            "output_ln/gamma",
            "output_ln/beta",
        ):
            out[p + name] = take(p + name)
    if spec.with_pooler:
        out["pooler/kernel"] = take("pooler/kernel")
        out["pooler/bias"] = take("pooler/bias")
    if spec.num_labels:
        # output_weights is [L, H] (run_classifier.py multiplies with transpose_b); keep [H, L].
        out["classifier/kernel"] = np.ascontiguousarray(take("classifier/weights").T)
        out["classifier/bias"] = take("classifier/bias")
    return out


def layer_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, *, fused: bool = False) -> tf.Tensor:
    """LayerNorm over the last axis with epsilon 1e-12; statistics in float32. ``x``: ``[rows, H]``.

    ``fused=True`` (CPU) expresses the normalisation as a training-mode ``FusedBatchNormV3`` over
    ``[1, rows, H, 1]`` NCHW (one "channel" per row: the same biased mean/variance, accumulated
    in float32 also for bfloat16 input), the form oneDNN turns into a single LayerNorm kernel,
    about 5x faster than the unfused ops. It is not used on GPU, where cuDNN clamps batch-norm
    epsilon to 1e-5; there the plain ops run in float32.
    """
    dtype = x.dtype
    if fused:
        rows, hidden = tf.shape(x)[0], x.shape[-1]
        y = tf.reshape(x, [1, rows, hidden, 1])  # [1, rows, H, 1], rows as NCHW channels
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            y,
            tf.ones([rows]),
            tf.zeros([rows]),
            epsilon=LAYER_NORM_EPSILON,
            data_format="NCHW",
            is_training=True,
        )
        return tf.reshape(y, [rows, hidden]) * tf.cast(gamma, dtype) + tf.cast(beta, dtype)  # [rows, H]
    if dtype != tf.float32:
        x = tf.cast(x, tf.float32)
        gamma = tf.cast(gamma, tf.float32)
        beta = tf.cast(beta, tf.float32)
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)  # [rows, 1]
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=-1, keepdims=True)  # [rows, 1]
    y = (x - mean) * tf.math.rsqrt(variance + LAYER_NORM_EPSILON) * gamma + beta  # [rows, H]
    return tf.cast(y, dtype) if dtype != tf.float32 else y


def dense(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """``x @ kernel + bias`` on a ``[rows, in]`` matrix (shape kept 2-D so MatMul+BiasAdd fuse)."""
    return tf.nn.bias_add(tf.matmul(x, kernel), bias)


def kept_positions(input_mask: tf.Tensor) -> tf.Tensor:
    """Flat indices (into ``[batch*seq]``) of the positions whose hidden states can matter.

    A position with mask 0 is never attended to: its score gets -10000 and its softmax weight
    underflows to exactly 0 in float32, so what it holds changes no other position. Pooling
    never reads it either (mean and max mask it out, ``NONE`` zeroes it, ``LAST_TOKEN`` reads a
    masked-in one), except ``FIRST_TOKEN``/``CLS_POOLED`` at position 0. So only masked-in
    positions and position 0 are computed; padding is skipped by every matmul and LayerNorm,
    which is where nearly all the work is. A row whose mask is all zeros (possible only with
    ``-mask_cls_sep`` on an empty input) attends to every position, so it keeps them all.
    """
    mask = tf.not_equal(input_mask, 0)  # [batch, seq]
    seq = tf.shape(input_mask)[1]
    first = tf.equal(tf.range(seq), 0)[tf.newaxis, :]  # [1, seq]
    empty_row = tf.logical_not(tf.reduce_any(mask, axis=1, keepdims=True))  # [batch, 1]
    keep = mask | first | empty_row  # [batch, seq]
    return tf.cast(tf.where(tf.reshape(keep, [-1]))[:, 0], tf.int32)  # [tokens]


class PaddingSkipper:
    """Moves row-wise tensors between all ``[batch*seq]`` positions and the kept ones.

    Every matmul, GELU and LayerNorm of BERT works on each position alone; only attention mixes
    positions. So the encoder runs the position-wise parts on ``[tokens, width]`` (the
    ``kept_positions``) and goes back to ``[batch*seq, width]`` only around attention. On a
    batch of sentences padded to the longest one, that skips most of the work spent on padding.
    On a batch with nothing to skip both moves are the identity (a ``tf.cond`` on a scalar), so
    full-length batches pay no copies.
    """

    def __init__(self, input_mask: tf.Tensor) -> None:
        shape = tf.shape(input_mask)
        rows = shape[0] * shape[1]
        self.kept = kept_positions(input_mask)  # [tokens]
        tokens = tf.shape(self.kept)[0]
        self.nothing_skipped = tf.equal(tokens, rows)
        # For each of the batch*seq positions, its row among the kept ones; skipped positions
        # point one past the end, at a row of zeros (a gather is much faster than a scatter).
        self.slot = tf.tensor_scatter_nd_update(
            tf.fill([rows], tokens), self.kept[:, tf.newaxis], tf.range(tokens)
        )  # [batch*seq]

    def compact(self, t: tf.Tensor) -> tf.Tensor:
        """``[batch*seq, ...]`` -> the kept rows ``[tokens, ...]``."""
        return tf.cond(self.nothing_skipped, lambda: t, lambda: tf.gather(t, self.kept))

    def expand(self, t: tf.Tensor) -> tf.Tensor:
        """The kept rows ``[tokens, width]`` -> ``[batch*seq, width]``, zeros at skipped positions."""
        return tf.cond(
            self.nothing_skipped, lambda: t, lambda: tf.gather(tf.pad(t, [[0, 1], [0, 0]]), self.slot)
        )


def encode(
    spec: EncoderSpec,
    params: Mapping[str, tf.Tensor],
    input_ids: tf.Tensor,
    input_mask: tf.Tensor,
    type_ids: tf.Tensor,
    *,
    compute_dtype: tf.DType = tf.float32,
) -> tuple[list[tf.Tensor], tf.Tensor | None]:
    """Run the encoder.

    Args:
      params: ``prepare_weights`` layout, as tensors (variables or constants) of ``compute_dtype``
        except LayerNorm parameters and embeddings, which may stay float32.
      input_ids, input_mask, type_ids: int32 ``[batch, seq]``.

    Returns:
      ``(layers, pooled)``: ``layers[i]`` is the output of transformer layer ``i`` as
      ``[batch, seq, hidden]`` in ``compute_dtype`` for ``i < spec.num_layers``; ``pooled`` is
      ``[batch, hidden]`` when ``spec.with_pooler`` else None.
    """
    config = spec.config
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_size = config.head_size
    activation = ACTIVATIONS[config.hidden_act]
    fused = spec.fused_layer_norm

    shape = tf.shape(input_ids)
    batch, seq = shape[0], shape[1]
    rows = batch * seq
    skipper = PaddingSkipper(input_mask) if spec.skip_padding else None
    compact = skipper.compact if skipper else tf.identity
    expand = skipper.expand if skipper else tf.identity

    # Embeddings: word + token type (+ position), then LayerNorm; rows [tokens, hidden].
    flat_ids = compact(tf.reshape(input_ids, [rows]))
    x = tf.gather(params["embeddings/word"], flat_ids)
    x += tf.gather(params["embeddings/token_type"], compact(tf.reshape(type_ids, [rows])))
    if spec.use_position_embeddings:
        positions = compact(tf.tile(tf.range(seq), [batch]))  # position of each row in its sequence
        x += tf.gather(params["embeddings/position"], positions)
    x = layer_norm(x, params["embeddings/ln/gamma"], params["embeddings/ln/beta"], fused=fused)
    x = tf.cast(x, compute_dtype)

    # Attention mask adder over "to" positions: [batch, 1, 1, seq].
    mask_adder = (1.0 - tf.cast(input_mask, tf.float32)) * ATTENTION_MASK_ADDER
    mask_adder = mask_adder[:, tf.newaxis, tf.newaxis, :]
    score_scale = 1.0 / math.sqrt(float(head_size))

    layers: list[tf.Tensor] = []
    for layer in range(spec.num_layers):
        p = f"layer_{layer}/"
        if spec.top_layer_first_token_only and layer == spec.num_layers - 1:
            first = tf.reshape(expand(x), [batch, seq, hidden])[:, 0]  # [batch, hidden]
            kv = expand(dense(x, params[p + "qkv/kernel"][:, hidden:], params[p + "qkv/bias"][hidden:]))
            kv = tf.transpose(tf.reshape(kv, [batch, seq, 2, heads, head_size]), [2, 0, 3, 1, 4])
            key, value = kv[0], kv[1]  # [batch, heads, seq, head_size] each
            query = dense(first, params[p + "qkv/kernel"][:, :hidden], params[p + "qkv/bias"][:hidden])
            query = tf.reshape(query, [batch, heads, 1, head_size])
            scores = tf.matmul(query, key, transpose_b=True)  # [batch, heads, 1, seq]
            scores = tf.cast(scores, tf.float32) * score_scale + mask_adder
            probs = tf.cast(tf.nn.softmax(scores, axis=-1), compute_dtype)  # [batch, heads, 1, seq]
            context = tf.reshape(tf.matmul(probs, value), [batch, hidden])  # [batch, hidden]
            layers.append(
                _feed_forward(p, params, context, first, activation=activation, fused=fused)[:, tf.newaxis]
            )
            break  # [batch, 1, hidden]: the top layer at [CLS] only
        qkv = dense(x, params[p + "qkv/kernel"], params[p + "qkv/bias"])  # [tokens, 3*hidden]
        qkv = tf.reshape(expand(qkv), [batch, seq, 3, heads, head_size])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, batch, heads, seq, head_size]
        query, key, value = qkv[0], qkv[1], qkv[2]  # [batch, heads, seq, head_size] each
        scores = tf.matmul(query, key, transpose_b=True)  # [batch, heads, seq, seq]
        scores = tf.cast(scores, tf.float32) * score_scale + mask_adder
        probs = tf.cast(tf.nn.softmax(scores, axis=-1), compute_dtype)  # [batch, heads, seq, seq]
        context = tf.matmul(probs, value)  # [batch, heads, seq, head_size]
        context = tf.transpose(context, [0, 2, 1, 3])  # [batch, seq, heads, head_size]
        context = compact(tf.reshape(context, [rows, hidden]))  # [tokens, hidden]
        x = _feed_forward(p, params, context, x, activation=activation, fused=fused)  # [tokens, hidden]
        layers.append(tf.reshape(expand(x), [batch, seq, hidden]))  # [batch, seq, hidden]

    pooled = None
    if spec.with_pooler:
        first = layers[-1][:, 0]  # [batch, hidden]
        pooled = tf.tanh(dense(first, params["pooler/kernel"], params["pooler/bias"]))  # [batch, hidden]
    return layers, pooled


def _feed_forward(
    p: str,
    params: Mapping[str, tf.Tensor],
    context: tf.Tensor,
    residual: tf.Tensor,
    *,
    activation: Callable[[tf.Tensor], tf.Tensor],
    fused: bool,
) -> tf.Tensor:
    """The rest of layer ``p`` after attention, row by row: output projection, LayerNorm, FFN, LayerNorm."""
    attention = dense(context, params[p + "attention_output/kernel"], params[p + "attention_output/bias"])
    attention = layer_norm(
        attention + residual, params[p + "attention_ln/gamma"], params[p + "attention_ln/beta"], fused=fused
    )
    intermediate = activation(
        dense(attention, params[p + "intermediate/kernel"], params[p + "intermediate/bias"])
    )  # [rows, intermediate]
    output = dense(intermediate, params[p + "output/kernel"], params[p + "output/bias"])
    return layer_norm(
        output + attention, params[p + "output_ln/gamma"], params[p + "output_ln/beta"], fused=fused
    )


def classifier_logits(pooled: tf.Tensor, params: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """``run_classifier.py``'s ``create_model`` at inference: ``pooled · output_weightsᵀ + output_bias``.

    Dropout is off (``is_training=False``). Computed in float32 whatever the encoder's compute
    dtype: ``[batch, hidden] x [hidden, num_labels]`` costs nothing next to the encoder, and the
    logits feed a softmax. ``pooled``: ``[batch, hidden]``; returns ``[batch, num_labels]``.
    """
    return dense(tf.cast(pooled, tf.float32), params["classifier/kernel"], params["classifier/bias"])


#: Parameters kept in float32 under ``-fp16``: gathers and LayerNorm are cheap and precision-sensitive;
#: the classifier head is tiny and feeds a softmax.
FLOAT32_PARAMS = ("embeddings/", "_ln/", "/ln/", "classifier/")


def param_dtype(key: str, compute_dtype: tf.DType) -> tf.DType:
    """Storage dtype of a prepared weight under a compute dtype."""
    if compute_dtype == tf.float32 or any(marker in key for marker in FLOAT32_PARAMS):
        return tf.float32
    return compute_dtype
