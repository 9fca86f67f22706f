"""Checkpoint loading by Google variable names: tuned-dir override, ignored extras, clear errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertserve_server.model.checkpoint_names import (
    describe_missing_checkpoint,
    encoder_weights,
    hf_to_google,
    ignored_reason,
    list_checkpoint_prefixes,
)
from bertserve_server.model.config import BertConfig

# --- no TensorFlow needed -------------------------------------------------------------------------


def test_model_package_and_names_import_without_tensorflow() -> None:
    code = (
        "import sys\n"
        "import bertserve_server.model, bertserve_server.model.checkpoint_names, bertserve_server.model.config\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bert/encoder/layer_0/attention/self/query/kernel/adam_m", "optimizer slot"),
        ("output_weights/adam_v", "optimizer slot"),
        ("global_step", "training step counter"),
        ("output_weights", "classifier head"),
        ("output_bias", "classifier head"),
        ("cls/predictions/transform/dense/kernel", "pre-training head"),
        ("bert/encoder/layer_0/attention/self/query/kernel", None),
        ("my_head/output_weights", None),
        ("global_step_2", None),
    ],
)
def test_ignored_variables_are_classified(name: str, reason: str | None) -> None:
    assert ignored_reason(name) == reason


def test_checkpoint_prefixes_are_listed_in_natural_order(tmp_path: Path) -> None:
    for name in ("model.ckpt-1000", "model.ckpt-343", "model.ckpt-0", "bert_model.ckpt"):
        (tmp_path / f"{name}.index").write_bytes(b"")
        (tmp_path / f"{name}.data-00000-of-00001").write_bytes(b"")
    (tmp_path / "checkpoint").write_text("")
    assert list_checkpoint_prefixes(tmp_path) == [
        "bert_model.ckpt",
        "model.ckpt-0",
        "model.ckpt-343",
        "model.ckpt-1000",
    ]
    assert list_checkpoint_prefixes(tmp_path / "absent") == []
    message = describe_missing_checkpoint(tmp_path, "model.ckpt-9")
    assert "model.ckpt-9" in message
    assert "available: bert_model.ckpt, model.ckpt-0, model.ckpt-343, model.ckpt-1000" in message


def test_name_table_covers_every_layer_with_google_shapes() -> None:
    config = BertConfig(
        vocab_size=100, hidden_size=8, num_hidden_layers=3, num_attention_heads=2, intermediate_size=16
    )
    rows = {w.google: w.shape for w in encoder_weights(config)}
    assert len(rows) == 5 + 16 * 3 + 2
    assert rows["bert/embeddings/word_embeddings"] == (100, 8)
    assert rows["bert/embeddings/position_embeddings"] == (512, 8)
    assert rows["bert/encoder/layer_2/intermediate/dense/kernel"] == (8, 16)
    assert rows["bert/encoder/layer_2/output/dense/kernel"] == (16, 8)
    assert rows["bert/pooler/dense/bias"] == (8,)
    without = {w.google for w in encoder_weights(config, use_position_embeddings=False, with_pooler=False)}
    assert "bert/embeddings/position_embeddings" not in without
    assert not any(n.startswith("bert/pooler") for n in without)


@pytest.mark.parametrize(
    ("hf", "google", "transposed"),
    [
        ("embeddings.word_embeddings.weight", "bert/embeddings/word_embeddings", False),
        ("bert.embeddings.LayerNorm.gamma", "bert/embeddings/LayerNorm/gamma", False),
        (
            "encoder.layer.11.attention.self.value.weight",
            "bert/encoder/layer_11/attention/self/value/kernel",
            True,
        ),
        ("bert.encoder.layer.3.output.LayerNorm.bias", "bert/encoder/layer_3/output/LayerNorm/beta", False),
        ("encoder.layer.0.intermediate.dense.weight", "bert/encoder/layer_0/intermediate/dense/kernel", True),
        ("pooler.dense.weight", "bert/pooler/dense/kernel", True),
        ("embeddings.position_ids", None, None),
        ("cls.predictions.bias", None, None),
    ],
)
def test_hf_names_map_to_google_names(hf: str, google: str | None, transposed: bool | None) -> None:
    assert hf_to_google(hf) == (None if google is None else (google, transposed))


# --- TensorFlow -----------------------------------------------------------------------------------


def _reader_tensor(prefix: Path, name: str) -> np.ndarray:
    import tensorflow as tf

    return tf.train.load_checkpoint(str(prefix)).get_tensor(name)


@pytest.mark.tf
def test_pretrained_checkpoint_loads_and_logs_its_path(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bertserve_server.model.checkpoint import load_encoder_weights

    config = BertConfig.from_json_file(tiny_model_dir / "bert_config.json")
    with caplog.at_level(logging.INFO, logger="bertserve_server.model.checkpoint"):
        loaded = load_encoder_weights(config, tiny_model_dir)
    assert f"checkpoint: {tiny_model_dir}/bert_model.ckpt" in caplog.messages
    assert loaded.unused == []
    assert len(loaded.weights) == 5 + 16 * 2  # pooler only with_pooler
    np.testing.assert_array_equal(
        loaded.weights["layer_1/query/kernel"],
        _reader_tensor(
            tiny_model_dir / "bert_model.ckpt", "bert/encoder/layer_1/attention/self/query/kernel"
        ),
    )


@pytest.mark.tf
def test_tuned_model_dir_overrides_checkpoint_with_1_10_log_line(
    tiny_model_dir: Path, tiny_finetuned_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bertserve_server.model.checkpoint import load_encoder_weights

    config = BertConfig.from_json_file(tiny_model_dir / "bert_config.json")
    with caplog.at_level(logging.INFO, logger="bertserve_server.model.checkpoint"):
        loaded = load_encoder_weights(config, tiny_model_dir, "model.ckpt-343", str(tiny_finetuned_dir))
    path = f"{tiny_finetuned_dir}/model.ckpt-343"
    assert f"checkpoint (override by the fine-tuned model): {path}" in caplog.messages
    assert loaded.path == path
    name = "bert/embeddings/word_embeddings"
    tuned = _reader_tensor(tiny_finetuned_dir / "model.ckpt-343", name)
    pretrained = _reader_tensor(tiny_model_dir / "bert_model.ckpt", name)
    np.testing.assert_array_equal(loaded.weights["embeddings/word"], tuned)
    assert not np.allclose(tuned, pretrained), "the look-alike should perturb the weights"


@pytest.mark.tf
def test_finetuned_extras_are_ignored_and_nothing_reported_unused(
    tiny_model_dir: Path, tiny_finetuned_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bertserve_server.model.checkpoint import load_encoder_weights

    config = BertConfig.from_json_file(tiny_model_dir / "bert_config.json")
    with caplog.at_level(logging.INFO):
        loaded = load_encoder_weights(config, tiny_model_dir, "model.ckpt-343", str(tiny_finetuned_dir))
    trainable = len(encoder_weights(config)) + 2  # encoder incl. pooler + classifier head
    assert loaded.ignored == {
        "optimizer slot": 2 * trainable,
        "classifier head": 2,
        "training step counter": 1,
    }
    assert loaded.unused == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.tf
def test_missing_encoder_weight_is_an_error_naming_variable_and_checkpoint(tmp_path: Path) -> None:
    from bertserve_server.model.checkpoint import CheckpointError, load_encoder_weights, write_checkpoint
    from bertserve_server.model.synthetic import random_encoder_tensors, write_random_bert

    model = write_random_bert(tmp_path / "model")
    config = BertConfig.from_json_file(model / "bert_config.json")
    tensors = random_encoder_tensors(config)
    del tensors["bert/encoder/layer_1/output/dense/kernel"]
    del tensors["bert/embeddings/LayerNorm/gamma"]
    write_checkpoint(model / "broken.ckpt", tensors)
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(config, model, "broken.ckpt")
    message = str(err.value)
    assert f"{model}/broken.ckpt" in message
    assert "lacks 2 encoder weight(s)" in message
    assert "bert/encoder/layer_1/output/dense/kernel" in message
    assert "bert/embeddings/LayerNorm/gamma" in message


@pytest.mark.tf
def test_foreign_names_are_refused_not_silently_random(tmp_path: Path) -> None:
    from bertserve_server.model.checkpoint import CheckpointError, load_encoder_weights, write_checkpoint
    from bertserve_server.model.synthetic import random_encoder_tensors, write_random_bert

    model = write_random_bert(tmp_path / "model")
    config = BertConfig.from_json_file(model / "bert_config.json")
    renamed = {k.replace("bert/", "model/bert/"): v for k, v in random_encoder_tensors(config).items()}
    write_checkpoint(model / "keras.ckpt", renamed)
    with pytest.raises(CheckpointError, match="convert-checkpoint"):
        load_encoder_weights(config, model, "keras.ckpt")


@pytest.mark.tf
def test_shape_mismatch_is_an_error(tmp_path: Path) -> None:
    from bertserve_server.model.checkpoint import CheckpointError, load_encoder_weights, write_checkpoint
    from bertserve_server.model.synthetic import random_encoder_tensors, write_random_bert

    model = write_random_bert(tmp_path / "model")
    config = BertConfig.from_json_file(model / "bert_config.json")
    tensors = random_encoder_tensors(config)
    tensors["bert/encoder/layer_0/intermediate/dense/kernel"] = np.zeros((32, 48), np.float32)
    write_checkpoint(model / "bert_model.ckpt", tensors)
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(config, model)
    assert "bert/encoder/layer_0/intermediate/dense/kernel is [32, 48] in the checkpoint" in str(err.value)
    assert "expects [32, 64]" in str(err.value)


@pytest.mark.tf
def test_unused_variables_are_listed_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from bertserve_server.model.checkpoint import load_encoder_weights
    from bertserve_server.model.synthetic import write_random_bert

    extra = {
        "ner/crf/transitions": np.zeros((5, 5), np.float32),
        "ner/dense/kernel": np.zeros((32, 5), np.float32),
    }
    model = write_random_bert(tmp_path / "model", with_pretraining_heads=True, extra_variables=extra)
    config = BertConfig.from_json_file(model / "bert_config.json")
    with caplog.at_level(logging.INFO, logger="bertserve_server.model.checkpoint"):
        loaded = load_encoder_weights(config, model)
    assert loaded.unused == ["ner/crf/transitions", "ner/dense/kernel"]
    assert loaded.ignored == {"pre-training head": 7}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "2 checkpoint variable(s) unused by the encoder: ner/crf/transitions, ner/dense/kernel"
    ]


@pytest.mark.tf
def test_missing_checkpoint_lists_available_prefixes(tiny_model_dir: Path, tiny_finetuned_dir: Path) -> None:
    from bertserve_server.model.checkpoint import CheckpointError, load_encoder_weights

    config = BertConfig.from_json_file(tiny_model_dir / "bert_config.json")
    with pytest.raises(CheckpointError, match=r"available: model\.ckpt-0, model\.ckpt-343"):
        # 1.10.0's classic mistake: -tuned_model_dir without -ckpt_name keeps bert_model.ckpt
        load_encoder_weights(config, tiny_model_dir, "bert_model.ckpt", str(tiny_finetuned_dir))


@pytest.mark.tf
def test_pooler_is_required_only_for_cls_pooled(tmp_path: Path) -> None:
    from bertserve_server.model.checkpoint import CheckpointError, load_encoder_weights
    from bertserve_server.model.synthetic import write_random_bert

    model = write_random_bert(tmp_path / "model", with_pooler=False)
    config = BertConfig.from_json_file(model / "bert_config.json")
    assert "pooler/kernel" not in load_encoder_weights(config, model).weights
    with pytest.raises(CheckpointError, match="bert/pooler/dense/kernel"):
        load_encoder_weights(config, model, with_pooler=True)


@pytest.mark.tf
def test_no_position_embeddings_ignores_the_position_table(tiny_model_dir: Path) -> None:
    from bertserve_server.model.checkpoint import load_encoder_weights

    config = BertConfig.from_json_file(tiny_model_dir / "bert_config.json")
    loaded = load_encoder_weights(config, tiny_model_dir, use_position_embeddings=False)
    assert "embeddings/position" not in loaded.weights
    assert loaded.ignored == {"-no_position_embeddings": 1}
    assert loaded.unused == []


@pytest.mark.tf
def test_only_layers_up_to_the_deepest_pooling_layer_are_kept(tiny_model_dir: Path) -> None:
    from bertserve_server.model.checkpoint import load_encoder_weights

    config = BertConfig.from_json_file(tiny_model_dir / "bert_config.json")
    keys = load_encoder_weights(config, tiny_model_dir, num_layers=1).weights
    assert "layer_0/query/kernel" in keys
    assert not any(k.startswith("layer_1/") for k in keys)


@pytest.mark.tf
def test_encoder_serves_the_tuned_checkpoint(tiny_model_dir: Path, tiny_finetuned_dir: Path) -> None:
    from bertserve_server.model.tf_encoder import TFEncoder

    ids = np.array([[2, 5, 6, 7, 3]], np.int32)
    mask = np.ones_like(ids)
    types = np.zeros_like(ids)

    def run(**kwargs: str) -> np.ndarray:
        return TFEncoder(tiny_model_dir, **kwargs).encode_arrays(ids, mask, types)

    pretrained = run()
    step0 = run(tuned_model_dir=str(tiny_finetuned_dir), ckpt_name="model.ckpt-0")
    step343 = run(tuned_model_dir=str(tiny_finetuned_dir), ckpt_name="model.ckpt-343")
    np.testing.assert_allclose(step0, pretrained, atol=1e-6)
    assert np.abs(step343 - pretrained).max() > 1e-3
