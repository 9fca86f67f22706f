"""Real weights: all-MiniLM-L6-v2, converted by the project converter, against an independent numpy BERT.

The numpy reference reads the Hugging Face safetensors directly (HF names, ``[out, in]``
layout, float64), so converter, name table, checkpoint loader, TF model and pooling are all
checked at once against the issue's bound: max abs error ≤ 1e-4 for every pooling strategy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy_bert import NumpyBert, reference_pool

from bertserve_api.contract import PoolingStrategy
from bertserve_server.encoder import pad_batch
from bertserve_server.tokenization import BertTokenizer

pytestmark = pytest.mark.tf

MAX_ABS_ERROR = 1e-4
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "BERT checkpoints fine-tuned with run_classifier.py are served as sentence encoders.",
    "Is this Jacksonville? ||| No, it is not.",
    "naïve café, 東京 and Zürich!!!",
    "short",
    "A considerably longer sentence that keeps going, with commas, clauses and enough words to be the "
    "longest row of the batch so that every other row is padded.",
]
# Every canonical strategy (aliases CLS_TOKEN/SEP_TOKEN are not iterated), from the flag contract.
STRATEGIES = [strategy.name for strategy in PoolingStrategy]


@pytest.fixture(scope="module")
def reference_model(minilm_hf_dir: Path) -> NumpyBert:
    return NumpyBert.from_hf_dir(minilm_hf_dir)


@pytest.fixture(scope="module")
def batch(minilm_google_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _batch(minilm_google_dir)


@pytest.fixture(scope="module")
def reference(
    reference_model: NumpyBert, batch: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[list, np.ndarray]:
    return reference_model.forward(*batch)


def _batch(model_dir: Path, *, mask_cls_sep: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tokenizer = BertTokenizer(model_dir / "vocab.txt", max_seq_len=None, mask_cls_sep=mask_cls_sep)
    items = tokenizer.tokenize_batch(SENTENCES)
    batch = pad_batch(items, max(len(i) for i in items))
    return batch.input_ids, batch.input_mask, batch.type_ids


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_on_several_layers_matches_numpy(
    minilm_google_dir: Path,
    batch: tuple[np.ndarray, np.ndarray, np.ndarray],
    reference: tuple[list, np.ndarray],
    strategy: str,
) -> None:
    from bertserve_server.model.tf_encoder import TFEncoder

    ids, mask, types = batch
    assert types.max() == 1, "the batch should hold a sentence pair"
    layers, pooled = reference
    for pooling_layer in ([-2], [0, 3, -1]):
        encoder = TFEncoder(minilm_google_dir, pooling_strategy=strategy, pooling_layer=pooling_layer)
        got = encoder.encode_arrays(ids, mask, types)
        want = reference_pool(strategy, layers, [i % 6 for i in pooling_layer], mask, pooled)
        assert got.shape == want.shape
        error = float(np.abs(got - want).max())
        assert error <= MAX_ABS_ERROR, f"{strategy} {pooling_layer}: max abs error {error:.2e}"


def test_mask_cls_sep_masks_attention_and_pooling_like_the_reference(
    minilm_google_dir: Path, reference_model: NumpyBert
) -> None:
    from bertserve_server.model.tf_encoder import TFEncoder

    ids, mask, types = _batch(minilm_google_dir, mask_cls_sep=True)
    assert mask[:, 0].max() == 0
    layers, pooled = reference_model.forward(ids, mask, types)
    got = TFEncoder(minilm_google_dir, pooling_strategy="REDUCE_MEAN").encode_arrays(ids, mask, types)
    want = reference_pool("REDUCE_MEAN", layers, [4], mask, pooled)
    assert float(np.abs(got - want).max()) <= MAX_ABS_ERROR


def test_finetuned_lookalike_step_0_serves_the_pretrained_embeddings(
    minilm_google_dir: Path,
    batch: tuple[np.ndarray, np.ndarray, np.ndarray],
    reference: tuple[list, np.ndarray],
    tmp_path: Path,
) -> None:
    from bertserve_server.model.convert import make_finetuned_lookalike
    from bertserve_server.model.tf_encoder import TFEncoder

    tuned = make_finetuned_lookalike(minilm_google_dir, tmp_path / "mrpc_output")
    ids, mask, types = batch
    layers, pooled = reference
    want = reference_pool("REDUCE_MEAN", layers, [4], mask, pooled)
    step0 = TFEncoder(minilm_google_dir, tuned_model_dir=str(tuned), ckpt_name="model.ckpt-0")
    step343 = TFEncoder(minilm_google_dir, tuned_model_dir=str(tuned), ckpt_name="model.ckpt-343")
    assert float(np.abs(step0.encode_arrays(ids, mask, types) - want).max()) <= MAX_ABS_ERROR
    assert float(np.abs(step343.encode_arrays(ids, mask, types) - want).max()) > 1e-3
