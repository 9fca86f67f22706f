"""The fine-tuned directory, served by the real process to the real client, against numpy.

``bert-serving-start -model_dir=<pretrained> -tuned_model_dir=<run_classifier output>
-ckpt_name=model.ckpt-343`` must encode with the encoder weights of ``model.ckpt-343``, with
``bert_config.json`` and ``vocab.txt`` of the pretrained directory. The reference here is the
independent numpy BERT (``numpy_bert.py``) reading that checkpoint itself, so a tuned directory
wired wrongly (the pretrained weights served, the wrong step, ``model.ckpt-0``) fails, which the
comparisons against the server's own encoder cannot catch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy_bert import NumpyBert, reference_pool
from replicas import Replica

from bertserve_server.tokenization import BertTokenizer
from conftest import TINY_FINETUNED_STEP

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

MAX_ABS_ERROR = 1e-4
TEXTS = ["hello world", "the dog is not a cat, it is a good dog!", "i run ||| you run", "un ##want"]
CKPT = f"model.ckpt-{TINY_FINETUNED_STEP}"


@pytest.fixture(scope="module")
def tuned_process(
    tiny_model_dir: Path, tiny_finetuned_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    replica = Replica(
        "tuned",
        tiny_model_dir,
        tmp_path_factory.mktemp("tuned-logs"),
        peer_spec=None,
        peer_port=None,
        flags=[f"-tuned_model_dir={tiny_finetuned_dir}", f"-ckpt_name={CKPT}"],
    )
    try:
        replica.wait_ready(timeout=120)
        yield replica
    finally:
        replica.stop()


def _reference(model: NumpyBert, vocab: Path) -> np.ndarray:
    """REDUCE_MEAN of layer -2 (the defaults), each text alone, max_seq_len 25 (the default)."""
    tokenizer = BertTokenizer(vocab, max_seq_len=25)
    rows = []
    for item in tokenizer.tokenize_batch(TEXTS):
        ids = np.asarray([item.input_ids])
        mask = np.ones_like(ids)
        types = np.asarray([item.type_ids])
        layers, pooled = model.forward(ids, mask, types)
        rows.append(reference_pool("REDUCE_MEAN", layers, [len(layers) - 2], mask, pooled)[0])
    return np.stack(rows)


def test_served_tuned_vectors_equal_numpy_on_the_tuned_checkpoint(
    tuned_process: Replica, tiny_model_dir: Path, tiny_finetuned_dir: Path
) -> None:
    from bert_serving.client import BertClient

    with BertClient(
        ip="127.0.0.1", port=tuned_process.port, port_out=tuned_process.port_out, timeout=60000
    ) as bc:
        served = bc.encode(TEXTS)

    tuned = _reference(
        NumpyBert.from_google_dir(tiny_finetuned_dir, CKPT, config_dir=tiny_model_dir),
        tiny_model_dir / "vocab.txt",
    )
    pretrained = _reference(NumpyBert.from_google_dir(tiny_model_dir), tiny_model_dir / "vocab.txt")
    assert served.shape == tuned.shape
    error = float(np.abs(served - tuned).max())
    assert error <= MAX_ABS_ERROR, f"served vs numpy on {CKPT}: max abs error {error:.2e}"
    # The comparison discriminates: the pretrained weights give clearly different vectors.
    assert float(np.abs(served - pretrained).max()) > 100 * MAX_ABS_ERROR
