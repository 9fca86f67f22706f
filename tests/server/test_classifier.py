"""The classifier head of a run_classifier.py checkpoint (``-classifier``): loading, maths, tokenization.

The numbers are checked against the independent numpy BERT (``numpy_bert``), which reads the
Hugging Face safetensors by their own names, on the real all-MiniLM-L6-v2 weights with a
generated head: probabilities within 1e-4 for single sentences and sentence pairs, including a
pair cut by the longest-first truncation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from numpy_bert import NumpyBert, reference_classifier
from ports import free_ports
from readyz import wait_readyz

from bertserve_server.classifier import LabelError, ranked, resolve_labels, softmax
from bertserve_server.encoder import pad_batch
from bertserve_server.tokenization import BertTokenizer

MAX_ABS_ERROR = 1e-4
NUM_LABELS = 3
#: Single sentences, "a ||| b" pairs and explicit (a, b) pairs; the last pair is long enough to be
#: cut by the longest-first truncation at ``MAX_SEQ_LEN``.
EXAMPLES: list[str | tuple[str, str]] = [
    "The quick brown fox jumps over the lazy dog.",
    "Amrozi accused his brother of deliberately distorting his evidence. ||| "
    "Referring to him as only the witness, Amrozi accused his brother of deliberately distorting his evidence.",
    ("Yucaipa owned Dominick's before selling the chain to Safeway in 1998.",
     "Yucaipa bought Dominick's in 1995 and sold it to Safeway in 1998."),
    "short",
    ("naïve café, 東京 and Zürich!!!", "A cafe in Zurich."),
    ("A considerably longer first sentence that keeps going, with commas, clauses and enough words "
     "to be cut by the pair truncation before the second one loses anything at all.", "Short second."),
]  # fmt: skip
MAX_SEQ_LEN = 40


# --- pure parts (no TensorFlow) -------------------------------------------------------------------


def test_softmax_is_float32_and_stable_for_large_logits() -> None:
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]]))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert probs[0, 0] == pytest.approx(1.0) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs[1], 1.0 / 3.0, rtol=1e-6)


def test_ranked_sorts_by_score_and_names_labels() -> None:
    logits = np.array([[0.5, 2.0, -1.0]], np.float32)
    (row,) = ranked(logits, ["neg", "pos", "neutral"])
    assert [r["label"] for r in row] == ["pos", "neg", "neutral"]
    assert sum(r["score"] for r in row) == pytest.approx(1.0)
    (raw,) = ranked(logits, ["neg", "pos", "neutral"], raw_scores=True)
    assert [r["score"] for r in raw] == [2.0, 0.5, -1.0]


def test_labels_default_to_indices_and_must_match_the_head() -> None:
    assert resolve_labels([], 2) == ["0", "1"]
    assert resolve_labels(["no", "yes"], 2) == ["no", "yes"]
    with pytest.raises(LabelError, match=r"names 3 label\(s\) \(a,b,c\).*has 2"):
        resolve_labels(["a", "b", "c"], 2)


# --- run_classifier.py's convert_single_example, written independently ----------------------------


def reference_convert_single_example(
    text_a: str, text_b: str | None, tokenize: object, max_seq_length: int
) -> tuple[list[str], list[int], list[int]]:
    """tokens, segment_ids, input_mask of run_classifier.py (without the padding to max_seq_length)."""
    tokens_a = list(tokenize(text_a))  # type: ignore[operator]
    tokens_b = list(tokenize(text_b)) if text_b else None  # type: ignore[operator]
    if tokens_b:
        while len(tokens_a) + len(tokens_b) > max_seq_length - 3:  # _truncate_seq_pair
            if len(tokens_a) > len(tokens_b):
                tokens_a.pop()
            else:
                tokens_b.pop()
    elif len(tokens_a) > max_seq_length - 2:
        tokens_a = tokens_a[0 : (max_seq_length - 2)]
    tokens = ["[CLS]", *tokens_a, "[SEP]"]
    segment_ids = [0] * len(tokens)
    if tokens_b:
        tokens += [*tokens_b, "[SEP]"]
        segment_ids += [1] * (len(tokens_b) + 1)
    return tokens, segment_ids, [1] * len(tokens)


@pytest.mark.parametrize("max_seq_len", [4, 5, 9, 40])
@pytest.mark.parametrize("mask_cls_sep", [False, True])
def test_examples_are_tokenized_like_convert_single_example(
    minilm_hf_dir: Path, max_seq_len: int, mask_cls_sep: bool
) -> None:
    tok = BertTokenizer(minilm_hf_dir / "vocab.txt", max_seq_len=max_seq_len, mask_cls_sep=mask_cls_sep)

    def wordpiece(text: str) -> list[str]:
        return tok.wordpiece([text])[0][0]

    items = tok.tokenize_examples(EXAMPLES)
    for example, item in zip(EXAMPLES, items, strict=True):
        a, b = example if isinstance(example, tuple) else (*example.split(" ||| "), None)[:2]
        tokens, segments, mask = reference_convert_single_example(a, b, wordpiece, max_seq_len)
        assert list(item.tokens) == tokens, example
        assert list(item.type_ids) == segments, example
        assert list(item.input_mask) == mask, f"{example}: the head sees every token, -mask_cls_sep or not"


def test_non_pair_examples_are_refused(minilm_hf_dir: Path) -> None:
    tok = BertTokenizer(minilm_hf_dir / "vocab.txt")
    with pytest.raises(TypeError, match="example 1 must be a string or a pair"):
        tok.tokenize_examples(["fine", ("a", "b", "c")])  # type: ignore[list-item]


# --- loading and computing (TensorFlow) -----------------------------------------------------------


def _with_head(
    model_dir: Path, out: Path, weights: np.ndarray, bias: np.ndarray, ckpt: str = "model.ckpt-343"
) -> Path:
    """A tuned dir: ``model_dir``'s weights plus a classifier head (and an Adam slot, as trained)."""
    from bertserve_server.model.checkpoint import read_checkpoint, write_checkpoint

    tensors = read_checkpoint(model_dir / "bert_model.ckpt")
    tensors.update(
        {
            "output_weights": weights,
            "output_bias": bias,
            "output_weights/adam_m": np.zeros_like(weights),
            "global_step": np.asarray(343, np.int64),
        }
    )
    write_checkpoint(out / ckpt, tensors)
    return out


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray]:
    """A generated head large enough that probabilities spread well away from uniform."""
    rng = np.random.default_rng(16)
    return (
        rng.normal(0.0, 2.0, (NUM_LABELS, 384)).astype(np.float32),
        rng.normal(0.0, 0.5, (NUM_LABELS,)).astype(np.float32),
    )


@pytest.fixture(scope="module")
def minilm_tuned_dir(
    minilm_google_dir: Path, head: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _with_head(minilm_google_dir, tmp_path_factory.mktemp("mrpc_output"), *head)


@pytest.mark.tf
def test_probabilities_match_numpy_reference_for_singles_and_pairs(
    minilm_google_dir: Path, minilm_hf_dir: Path, minilm_tuned_dir: Path, head: tuple[np.ndarray, np.ndarray]
) -> None:
    from bertserve_server.model.tf_encoder import TFEncoder

    tok = BertTokenizer(minilm_google_dir / "vocab.txt", max_seq_len=MAX_SEQ_LEN)
    items = tok.tokenize_examples(EXAMPLES)
    assert sum(1 for i in items if max(i.type_ids) == 1) == 4, "four of the examples are pairs"
    assert len(items[-1]) == MAX_SEQ_LEN, "the last pair is truncated"
    batch = pad_batch(items, max(len(i) for i in items))

    encoder = TFEncoder(
        minilm_google_dir, tuned_model_dir=str(minilm_tuned_dir), ckpt_name="model.ckpt-343", classifier=True
    )
    assert encoder.num_labels == NUM_LABELS
    logits = encoder.classify(batch)
    assert logits.shape == (len(EXAMPLES), NUM_LABELS) and logits.dtype == np.float32

    _, pooled = NumpyBert.from_hf_dir(minilm_hf_dir).forward(
        batch.input_ids, batch.input_mask, batch.type_ids
    )
    want_logits, want_probs = reference_classifier(pooled, *head)
    assert want_probs.max() - want_probs.min() > 0.5, "the generated head should give decisive probabilities"
    assert float(np.abs(softmax(logits) - want_probs).max()) <= MAX_ABS_ERROR
    assert float(np.abs(logits - want_logits).max()) <= 10 * MAX_ABS_ERROR
    # Each row alone gives the same answer as in the padded batch (the batcher merges requests).
    for row, item in enumerate(items[:3]):
        alone = encoder.classify(pad_batch([item], len(item)))
        assert float(np.abs(softmax(alone) - want_probs[row]).max()) <= MAX_ABS_ERROR


@pytest.mark.tf
def test_classifier_leaves_encoding_unchanged(tiny_model_dir: Path, tiny_finetuned_dir: Path) -> None:
    from bertserve_server.model.tf_encoder import TFEncoder

    tok = BertTokenizer(tiny_model_dir / "vocab.txt", max_seq_len=20, max_position_embeddings=64)
    items = tok.tokenize_batch(["hello world", "the dog is good ||| it is a dog", "i run"])
    batch = pad_batch(items, max(len(i) for i in items))
    common = {"tuned_model_dir": str(tiny_finetuned_dir), "ckpt_name": "model.ckpt-343"}
    plain = TFEncoder(tiny_model_dir, **common)
    with_head = TFEncoder(tiny_model_dir, classifier=True, **common)
    assert plain.num_labels == 0 and with_head.num_labels == 2
    assert with_head.spec.num_layers == 1, "encoding still stops at the deepest pooling layer"
    np.testing.assert_allclose(with_head.encode(batch), plain.encode(batch), atol=1e-6)
    with pytest.raises(RuntimeError, match="no classifier head"):
        plain.classify(batch)


@pytest.mark.tf
def test_missing_head_is_one_line_naming_the_variables(tiny_model_dir: Path) -> None:
    from bertserve_server.model.checkpoint import CheckpointError
    from bertserve_server.model.tf_encoder import TFEncoder

    with pytest.raises(CheckpointError) as caught:
        TFEncoder(tiny_model_dir, classifier=True)
    message = str(caught.value)
    assert "\n" not in message
    assert "output_weights, output_bias" in message and "-classifier" in message


@pytest.mark.tf
@pytest.mark.parametrize(
    ("weights_shape", "bias_shape"),
    [((2, 33), (2,)), ((2, 32), (3,)), ((32,), (32,))],
    ids=["wrong-hidden", "bias-mismatch", "1-d-weights"],
)
def test_mismatched_head_is_one_line_naming_both_shapes(
    tiny_model_dir: Path, tmp_path: Path, weights_shape: tuple[int, ...], bias_shape: tuple[int, ...]
) -> None:
    from bertserve_server.model.checkpoint import CheckpointError
    from bertserve_server.model.tf_encoder import TFEncoder

    tuned = _with_head(
        tiny_model_dir, tmp_path, np.zeros(weights_shape, np.float32), np.zeros(bias_shape, np.float32)
    )
    with pytest.raises(CheckpointError) as caught:
        TFEncoder(tiny_model_dir, tuned_model_dir=str(tuned), ckpt_name="model.ckpt-343", classifier=True)
    message = str(caught.value)
    assert "\n" not in message
    assert f"output_weights is {list(weights_shape)}" in message
    assert f"output_bias is {list(bias_shape)}" in message
    assert "hidden_size 32" in message


@pytest.mark.tf
def test_finetuned_lookalike_head_loads_by_its_original_names(
    tiny_model_dir: Path, tiny_finetuned_dir: Path
) -> None:
    from bertserve_server.model.checkpoint import load_encoder_weights
    from bertserve_server.model.config import BertConfig

    config = BertConfig.from_json_file(tiny_model_dir / "bert_config.json")
    loaded = load_encoder_weights(
        config, tiny_model_dir, "model.ckpt-343", str(tiny_finetuned_dir), with_classifier=True
    )
    assert loaded.num_labels == 2
    assert loaded.weights["classifier/weights"].shape == (2, 32)
    assert "classifier head" not in loaded.ignored, "a loaded head is not reported as ignored"
    without = load_encoder_weights(config, tiny_model_dir, "model.ckpt-343", str(tiny_finetuned_dir))
    assert without.ignored["classifier head"] == 2 and without.num_labels == 0


# --- the real server process ----------------------------------------------------------------------


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bertserve_server.cli", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _wait_ready(proc: subprocess.Popen[bytes], http_port: int, log: Path, timeout: float = 180.0) -> None:
    wait_readyz(proc, http_port, log, timeout)


@pytest.mark.tf
def test_bert_serving_start_answers_predict_like_the_numpy_reference(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The MRPC-shaped case end to end, on the tiny model (start-up in seconds): sentence pairs
    over HTTP, probabilities within 1e-4 of the numpy reference; labels in the status."""
    rng = np.random.default_rng(343)
    weights, bias = rng.normal(0.0, 2.0, (2, 32)).astype(np.float32), np.array([0.3, -0.3], np.float32)
    tuned = _with_head(tiny_model_dir, tmp_path / "mrpc_output", weights, bias)
    port, port_out, http_port = free_ports(3)
    labels = ["not_paraphrase", "paraphrase"]
    log = tmp_path / "server.log"
    proc = _start(
        [
            f"-model_dir={tiny_model_dir}",
            f"-tuned_model_dir={tuned}",
            "-ckpt_name=model.ckpt-343",
            "-bind_host=127.0.0.1",
            "-cpu",
            f"-port={port}",
            f"-port_out={port_out}",
            f"-http_port={http_port}",
            "-max_seq_len=12",
            "-classifier",
            f"-classifier_labels={','.join(labels)}",
        ],
        log,
    )
    pairs = [
        ("the dog is good", "it is a good dog"),
        ("hello world", "good night"),
        ("the cat is not a dog, it is a cat!", "a dog"),  # cut by the pair truncation at 12
        ("i run", "you run"),
    ]
    try:
        _wait_ready(proc, http_port, log)
        r = requests.post(
            f"http://127.0.0.1:{http_port}/predict", json={"inputs": [list(p) for p in pairs]}, timeout=60
        )
        assert r.status_code == 200, r.text
        got = np.array(
            [[{a["label"]: a["score"] for a in row}[label] for label in labels] for row in r.json()]
        )
        one = requests.post(
            f"http://127.0.0.1:{http_port}/predict", json={"inputs": "i run ||| you run"}, timeout=60
        )
        assert one.json() == r.json()[3], "a pair written a ||| b is the same input"

        tok = BertTokenizer(tiny_model_dir / "vocab.txt", max_seq_len=12, max_position_embeddings=64)
        items = tok.tokenize_examples(pairs)
        assert len(items[2]) == 12
        batch = pad_batch(items, 12)
        reference = NumpyBert.from_google_dir(tiny_model_dir, str(tuned / "model.ckpt-343"))
        _, pooled = reference.forward(batch.input_ids, batch.input_mask, batch.type_ids)
        _, want = reference_classifier(pooled, weights, bias)
        assert want.max() - want.min() > 0.5, "the generated head should give decisive probabilities"
        assert float(np.abs(got - want).max()) <= MAX_ABS_ERROR
        assert "classifier head: 2 labels" in log.read_text()
        status = requests.get(f"http://127.0.0.1:{http_port}/status/server", timeout=10).json()
        assert status["classifier_labels"] == labels
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.tf
def test_bert_serving_start_without_a_head_stops_with_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    port, port_out = free_ports(2)
    log = tmp_path / "server.log"
    proc = _start(
        [
            f"-model_dir={tiny_model_dir}",
            "-cpu",
            "-bind_host=127.0.0.1",
            f"-port={port}",
            f"-port_out={port_out}",
            "-classifier",
        ],
        log,
    )
    assert proc.wait(120) == 1
    errors = [line for line in log.read_text().splitlines() if "start-up failed" in line]
    assert len(errors) == 1, log.read_text()
    assert "lacks output_weights, output_bias" in errors[0]


@pytest.mark.tf
@pytest.mark.parametrize(
    ("flags", "tolerance"), [({"xla": True}, 1e-5), ({"fp16": True}, 0.05)], ids=["xla", "fp16"]
)
def test_xla_and_fp16_classify_like_float32(
    tiny_model_dir: Path, tiny_finetuned_dir: Path, flags: dict[str, bool], tolerance: float
) -> None:
    """Shape buckets (-xla) are cut off again; under -fp16 the logits stay float32 and close."""
    from bertserve_server.model.tf_encoder import TFEncoder

    tok = BertTokenizer(tiny_model_dir / "vocab.txt", max_seq_len=20, max_position_embeddings=64)
    items = tok.tokenize_examples(["hello world", ("the dog is good", "it is a dog"), "i run ||| you run"])
    batch = pad_batch(items, max(len(i) for i in items))
    common = {"tuned_model_dir": str(tiny_finetuned_dir), "ckpt_name": "model.ckpt-343", "classifier": True}
    want = softmax(TFEncoder(tiny_model_dir, **common).classify(batch))
    got = TFEncoder(tiny_model_dir, **common, **flags).classify(batch)
    assert got.shape == (3, 2) and got.dtype == np.float32
    assert float(np.abs(softmax(got) - want).max()) <= tolerance
