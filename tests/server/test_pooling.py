"""Every pooling strategy and layer choice of the TF encoder against a plain-numpy BERT, on a tiny model.

The tiny checkpoint is random (``tiny_model_dir``); the numpy reference reads the same checkpoint
with its own renaming and its own maths (``numpy_bert.py``), so a wrong layer index, mask,
transpose or pooling formula shows up as a numeric difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from numpy_bert import NumpyBert, reference_pool

from bertserve_api.contract import PoolingStrategy

if TYPE_CHECKING:
    from bertserve_server.model.tf_encoder import TFEncoder

pytestmark = pytest.mark.tf

# Every canonical strategy (aliases CLS_TOKEN/SEP_TOKEN are not iterated), from the flag contract.
STRATEGIES = [strategy.name for strategy in PoolingStrategy]
LAYER_CHOICES = [[-1], [-2], [0, 1], [1, 0, -1]]
ATOL = 1e-4


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four rows of length 9: padded single, pair with type ids, a -mask_cls_sep row, a full row."""
    ids = np.array(
        [
            [2, 5, 10, 7, 3, 0, 0, 0, 0],
            [2, 8, 9, 3, 12, 13, 14, 3, 0],
            [2, 30, 31, 32, 3, 0, 0, 0, 0],
            [2, 40, 41, 42, 43, 44, 45, 46, 3],
        ],
        np.int32,
    )
    mask = (ids > 0).astype(np.int32)
    mask[2, [0, 4]] = 0  # -mask_cls_sep: CLS and SEP masked (also for attention)
    types = np.zeros_like(ids)
    types[1, 4:8] = 1
    return ids, mask, types


@pytest.fixture(scope="module")
def reference(
    tiny_model_dir: Path, batch: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[list, np.ndarray]:
    return NumpyBert.from_google_dir(tiny_model_dir).forward(*batch)


def _encoder(model_dir: Path, strategy: str, layers: list[int] | None = None, **kwargs: Any) -> TFEncoder:
    from bertserve_server.model.tf_encoder import TFEncoder

    return TFEncoder(model_dir, pooling_strategy=strategy, pooling_layer=layers or [-2], **kwargs)


@pytest.mark.parametrize("layers", LAYER_CHOICES, ids=str)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_matches_numpy_reference(
    tiny_model_dir: Path,
    batch: tuple[np.ndarray, np.ndarray, np.ndarray],
    reference: tuple[list, np.ndarray],
    strategy: str,
    layers: list[int],
) -> None:
    encoder = _encoder(tiny_model_dir, strategy, layers)
    got = encoder.encode_arrays(*batch)
    all_layers, pooled = reference
    want = reference_pool(strategy, all_layers, [i % 2 for i in layers], batch[1], pooled)
    assert got.dtype == np.float32
    assert got.shape == want.shape
    assert got.shape[-1] == encoder.hidden_size
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("alias", "canonical"), [("CLS_TOKEN", "FIRST_TOKEN"), ("SEP_TOKEN", "LAST_TOKEN")])
def test_aliases_pool_like_their_canonical_strategy(
    tiny_model_dir: Path, batch: tuple[np.ndarray, np.ndarray, np.ndarray], alias: str, canonical: str
) -> None:
    np.testing.assert_array_equal(
        _encoder(tiny_model_dir, alias).encode_arrays(*batch),
        _encoder(tiny_model_dir, canonical).encode_arrays(*batch),
    )


def test_none_returns_every_position_and_zeroes_masked_ones(
    tiny_model_dir: Path, batch: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    out = _encoder(tiny_model_dir, "NONE", [-1, 0]).encode_arrays(*batch)
    assert out.shape == (4, 9, 64)
    mask = batch[1]
    assert np.all(out[mask == 0] == 0.0)
    assert np.all(np.abs(out[mask == 1]).sum(-1) > 0)


def test_last_token_of_an_all_masked_row_does_not_fail_the_batch(tiny_model_dir: Path) -> None:
    ids = np.array([[2, 3, 0], [2, 5, 3]], np.int32)
    mask = np.array([[0, 0, 0], [1, 1, 1]], np.int32)  # [CLS] [SEP] of "" under -mask_cls_sep
    out = _encoder(tiny_model_dir, "LAST_TOKEN").encode_arrays(ids, mask, np.zeros_like(ids))
    assert out.shape == (2, 32) and np.all(np.isfinite(out))


def test_rows_do_not_depend_on_batch_mates_or_padding(tiny_model_dir: Path) -> None:
    encoder = _encoder(tiny_model_dir, "REDUCE_MEAN_MAX", [-1, 0])
    row = np.array([[2, 5, 6, 7, 3]], np.int32)
    alone = encoder.encode_arrays(row, np.ones_like(row), np.zeros_like(row))
    padded_ids = np.zeros((3, 20), np.int32)
    padded_ids[0, :9] = [2, 11, 12, 13, 14, 15, 16, 17, 3]
    padded_ids[1, :5] = row[0]
    padded_ids[2, :3] = [2, 9, 3]
    merged = encoder.encode_arrays(padded_ids, (padded_ids > 0).astype(np.int32), np.zeros_like(padded_ids))
    np.testing.assert_allclose(merged[1], alone[0], atol=1e-5, rtol=0)


def test_kept_positions_are_masked_in_ones_position_0_and_whole_all_masked_rows() -> None:
    import tensorflow as tf

    from bertserve_server.model.modeling import kept_positions

    mask = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], np.int32)
    kept = kept_positions(tf.constant(mask)).numpy().tolist()
    # row 0: its two tokens; row 1: position 0 (masked [CLS], read by FIRST_TOKEN) and its tokens;
    # row 2: all masked, so it attends to every position and keeps them all.
    assert kept == [0, 1, 4, 5, 6, 8, 9, 10, 11]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_skipping_padding_matches_the_reference_and_the_padded_computation(
    tiny_model_dir: Path, strategy: str
) -> None:
    """Ragged rows, a -mask_cls_sep row and an all-masked row: skipping changes no number."""
    rng = np.random.default_rng(11)
    ids = np.zeros((5, 16), np.int32)
    for row, length in enumerate((16, 3, 9, 5, 4)):
        ids[row, :length] = rng.integers(5, 60, length)
        ids[row, 0], ids[row, length - 1] = 2, 3
    mask = (ids > 0).astype(np.int32)
    mask[2, [0, 8]] = 0  # -mask_cls_sep
    mask[4] = 0  # [CLS] [SEP] of "" under -mask_cls_sep, plus padding: attends to everything
    types = np.zeros_like(ids)
    types[3, 2:5] = 1
    layers, pooled = NumpyBert.from_google_dir(tiny_model_dir).forward(ids, mask, types)
    skipping = _encoder(tiny_model_dir, strategy, [-1, 0])
    padded = _encoder(tiny_model_dir, strategy, [-1, 0], skip_padding=False)
    assert skipping.spec.skip_padding and not padded.spec.skip_padding
    got = skipping.encode_arrays(ids, mask, types)
    want = reference_pool(strategy, layers, [1, 0], mask, pooled)
    # The all-masked row is compared with the padded computation only: its scores are all
    # s - 10000, where float32 (here) and float64 (the reference) differ by design.
    np.testing.assert_allclose(got[:4], want[:4], atol=ATOL, rtol=0)
    np.testing.assert_allclose(got, padded.encode_arrays(ids, mask, types), atol=1e-6, rtol=0)


@pytest.mark.parametrize("strategy", ["NONE", "REDUCE_MEAN_MAX", "LAST_TOKEN"])
def test_rows_of_very_different_lengths_run_in_groups_and_come_back_in_order(
    tiny_model_dir: Path, strategy: str
) -> None:
    rng = np.random.default_rng(8)
    lengths = [3, 20, 4, 18, 2, 5, 19, 3]
    ids = np.zeros((len(lengths), 24), np.int32)  # every row padded beyond the longest, too
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(4, 80, length)
    mask = (ids > 0).astype(np.int32)
    types = np.zeros_like(ids)
    encoder = _encoder(tiny_model_dir, strategy, [-1, 0])
    encoder.min_tokens_per_group = 30  # groups: the three long rows, then the short ones
    grouped = encoder.encode_arrays(ids, mask, types)
    want_shape = (8, 24, 64) if strategy == "NONE" else (8, encoder.hidden_size)
    assert grouped.shape == want_shape
    for row, length in enumerate(lengths):
        alone = encoder.encode_arrays(
            ids[row : row + 1, :length], mask[row : row + 1, :length], types[:1, :length]
        )
        np.testing.assert_allclose(
            grouped[row, :length] if strategy == "NONE" else grouped[row], alone[0], atol=1e-5
        )
    if strategy == "NONE":
        assert not grouped[:, 20:].any()  # cut-off positions come back as zeros


def test_fp16_on_cpu_returns_float16_close_to_float32(
    tiny_model_dir: Path, batch: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    from bertserve_server.model.tf_encoder import cpu_has_bfloat16

    half = _encoder(tiny_model_dir, "REDUCE_MEAN", fp16=True)
    full = _encoder(tiny_model_dir, "REDUCE_MEAN")
    out = half.encode_arrays(*batch)
    assert half.dtype == "float16" and out.dtype == np.float16
    assert half.compute_dtype == ("bfloat16" if cpu_has_bfloat16() else "float32")
    assert full.compute_dtype == "float32"
    np.testing.assert_allclose(out.astype(np.float32), full.encode_arrays(*batch), atol=1e-2, rtol=1e-2)


def test_xla_matches_graph_mode_for_odd_shapes(tiny_model_dir: Path) -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(4, 80, (5, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[2, 6:] = 0
    types = np.zeros_like(ids)
    for strategy in ("REDUCE_MEAN", "NONE"):
        plain = _encoder(tiny_model_dir, strategy, [-1]).encode_arrays(ids, mask, types)
        xla = _encoder(tiny_model_dir, strategy, [-1], xla=True).encode_arrays(ids, mask, types)
        assert xla.shape == plain.shape  # bucket padding is cut off again
        np.testing.assert_allclose(xla, plain, atol=1e-5, rtol=0)


def test_device_variables_match_embedded_constants(
    tiny_model_dir: Path, batch: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    """The GPU layout (weights as variables) computes the same as the CPU layout."""
    consts = _encoder(tiny_model_dir, "REDUCE_MAX", [-1, 0], weights_as_constants=True)
    variables = _encoder(tiny_model_dir, "REDUCE_MAX", [-1, 0], weights_as_constants=False)
    np.testing.assert_allclose(
        variables.encode_arrays(*batch), consts.encode_arrays(*batch), atol=1e-5, rtol=0
    )


def test_unfused_layer_norm_matches_fused(
    tiny_model_dir: Path, batch: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    """The GPU LayerNorm (plain ops) and the CPU one (fused batch-norm form) agree."""
    import tensorflow as tf

    from bertserve_server.model.checkpoint import load_encoder_weights
    from bertserve_server.model.config import BertConfig
    from bertserve_server.model.modeling import EncoderSpec, encode, prepare_weights

    config = BertConfig.from_json_file(tiny_model_dir / "bert_config.json")
    weights = load_encoder_weights(config, tiny_model_dir).weights
    outputs = []
    for fused in (True, False):
        spec = EncoderSpec(config=config, num_layers=2, fused_layer_norm=fused)
        params = {k: tf.constant(v) for k, v in prepare_weights(spec, weights).items()}
        layers, _ = encode(spec, params, *(tf.constant(a) for a in batch))
        outputs.append(layers[-1].numpy())
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5, rtol=0)


def test_no_position_embeddings_drops_the_position_table(
    tiny_model_dir: Path, batch: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    out = _encoder(tiny_model_dir, "REDUCE_MEAN", [-1], no_position_embeddings=True).encode_arrays(*batch)
    layers, pooled = NumpyBert.from_google_dir(tiny_model_dir).forward(*batch, use_position_embeddings=False)
    np.testing.assert_allclose(out, reference_pool("REDUCE_MEAN", layers, [1], batch[1], pooled), atol=ATOL)
    with_positions = _encoder(tiny_model_dir, "REDUCE_MEAN", [-1]).encode_arrays(*batch)
    assert np.abs(out - with_positions).max() > 1e-3


def test_only_layers_up_to_the_deepest_pooling_layer_are_built(tiny_model_dir: Path) -> None:
    assert _encoder(tiny_model_dir, "REDUCE_MEAN", [0]).spec.num_layers == 1
    assert _encoder(tiny_model_dir, "REDUCE_MEAN", [0, -1]).spec.num_layers == 2
    pooled = _encoder(tiny_model_dir, "CLS_POOLED", [0])
    assert pooled.spec.num_layers == 2 and pooled.hidden_size == 32


def test_empty_batch_and_overlong_sequences(tiny_model_dir: Path) -> None:
    encoder = _encoder(tiny_model_dir, "NONE", [-1])
    empty = np.zeros((0, 7), np.int32)
    assert encoder.encode_arrays(empty, empty, empty).shape == (0, 7, 32)
    too_long = np.ones((1, 65), np.int32)
    with pytest.raises(ValueError, match="max_position_embeddings 64"):
        encoder.encode_arrays(too_long, too_long, too_long * 0)


def test_encode_accepts_padded_batches_and_warms_up(tiny_model_dir: Path) -> None:
    from bertserve_server.encoder import TokenizedInput, pad_batch

    encoder = _encoder(tiny_model_dir, "REDUCE_MEAN")
    encoder.warm_up()
    items = [
        TokenizedInput((2, 5, 3), (0, 0, 0), (1, 1, 1), ("[CLS]", "the", "[SEP]")),
        TokenizedInput((2, 5, 6, 3), (0, 0, 0, 0), (1, 1, 1, 1), ("[CLS]", "the", "a", "[SEP]")),
    ]
    batch = pad_batch(items, 6)
    out = encoder.encode(batch)
    assert out.shape == (2, encoder.hidden_size) and out.dtype == np.float32
    assert encoder.max_position_embeddings == 64


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_gpu_code_path_matches_cpu_results(
    tiny_model_dir: Path, batch: tuple[np.ndarray, np.ndarray, np.ndarray], fp16: bool
) -> None:
    """device="/GPU:0" builds the GPU layout: device variables, plain LayerNorm, float16 matmuls under
    -fp16. Without a GPU, TensorFlow's soft placement runs that same graph on CPU kernels."""
    gpu = _encoder(tiny_model_dir, "REDUCE_MEAN_MAX", [-1, 0], device="/GPU:0", fp16=fp16)
    assert not gpu.spec.fused_layer_norm
    assert gpu.dtype == ("float16" if fp16 else "float32")
    assert gpu.compute_dtype == ("float16" if fp16 else "float32")
    cpu = _encoder(tiny_model_dir, "REDUCE_MEAN_MAX", [-1, 0])
    out = gpu.encode_arrays(*batch)
    assert out.dtype == (np.float16 if fp16 else np.float32)
    tolerance = 2e-2 if fp16 else 1e-5
    np.testing.assert_allclose(
        out.astype(np.float32), cpu.encode_arrays(*batch), atol=tolerance, rtol=tolerance
    )


@pytest.mark.gpu
@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_real_gpu_matches_cpu(
    tiny_model_dir: Path, batch: tuple[np.ndarray, np.ndarray, np.ndarray], fp16: bool, xla: bool
) -> None:
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU")
    gpu = _encoder(tiny_model_dir, "NONE", [-1, 0], device="/GPU:0", fp16=fp16, xla=xla)
    out = gpu.encode_arrays(*batch)
    tolerance = 2e-2 if fp16 else 1e-4
    cpu = _encoder(tiny_model_dir, "NONE", [-1, 0]).encode_arrays(*batch)
    np.testing.assert_allclose(out.astype(np.float32), cpu, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
def test_large_batches_are_split_without_changing_results(tiny_model_dir: Path, xla: bool) -> None:
    rng = np.random.default_rng(5)
    ids = rng.integers(4, 80, (10, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[3, 7:] = 0
    types = np.zeros_like(ids)
    encoder = _encoder(tiny_model_dir, "NONE", [-1], xla=xla)
    whole = encoder.encode_arrays(ids, mask, types)
    encoder.max_tokens_per_call = 36  # 3 rows of 12 tokens
    assert encoder.rows_per_call(12) == (2 if xla else 3)
    encoder.max_attention_elements = 4 * 12 * 12 * 2  # 4 heads: 2 rows
    assert encoder.rows_per_call(12) == 2
    split = encoder.encode_arrays(ids, mask, types)
    assert split.shape == whole.shape == (10, 12, 32)
    np.testing.assert_allclose(split, whole, atol=1e-5, rtol=0)  # XLA shapes may round differently
