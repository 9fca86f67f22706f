"""HF safetensors → Google checkpoint conversion and the run_classifier.py look-alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertserve_server.model.convert import ConversionError, google_config_from_hf

TINY_HF_CONFIG = {
    "model_type": "bert",
    "vocab_size": 12,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "hidden_act": "gelu",
    "max_position_embeddings": 16,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "position_embedding_type": "absolute",
}


def _write_hf_model(
    directory: Path, *, prefix: str = "", pooler: bool = True, drop: str | None = None
) -> Path:
    """A tiny HF-layout BERT (``[out, in]`` Linear weights), written with safetensors."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    h, i, v = 8, 16, 12
    shapes = {
        "embeddings.word_embeddings.weight": (v, h),
        "embeddings.position_embeddings.weight": (16, h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
        "embeddings.position_ids": (1, 16),
    }
    for n in range(2):
        p = f"encoder.layer.{n}."
        for name in ("query", "key", "value"):
            shapes[f"{p}attention.self.{name}.weight"] = (h, h)
            shapes[f"{p}attention.self.{name}.bias"] = (h,)
        shapes.update(
            {
                f"{p}attention.output.dense.weight": (h, h),
                f"{p}attention.output.dense.bias": (h,),
                f"{p}attention.output.LayerNorm.weight": (h,),
                f"{p}attention.output.LayerNorm.bias": (h,),
                f"{p}intermediate.dense.weight": (i, h),
                f"{p}intermediate.dense.bias": (i,),
                f"{p}output.dense.weight": (h, i),
                f"{p}output.dense.bias": (h,),
                f"{p}output.LayerNorm.weight": (h,),
                f"{p}output.LayerNorm.bias": (h,),
            }
        )
    if pooler:
        shapes["pooler.dense.weight"] = (h, h)
        shapes["pooler.dense.bias"] = (h,)
    tensors = {prefix + k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items() if k != drop}
    tensors[prefix + "cls.predictions.bias"] = np.zeros(v, np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d", "e", "f", "g"]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return directory


def test_hf_config_maps_to_google_fields() -> None:
    config = google_config_from_hf({**TINY_HF_CONFIG, "architectures": ["BertModel"], "use_cache": True})
    assert config.to_dict() == {
        "vocab_size": 12,
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 16,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"layer_norm_eps": 1e-5}, "layer_norm_eps"),
        ({"model_type": "roberta"}, "not BERT"),
        ({"hidden_act": "mish"}, "hidden_act"),
    ],
)
def test_models_google_bert_cannot_express_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        google_config_from_hf({**TINY_HF_CONFIG, **change})


@pytest.mark.tf
def test_converts_real_minilm_with_exact_google_names(minilm_hf_dir: Path, minilm_google_dir: Path) -> None:
    import tensorflow as tf
    from safetensors.numpy import load_file

    out = minilm_google_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "bert_config.json",
        "bert_model.ckpt.data-00000-of-00001",
        "bert_model.ckpt.index",
        "vocab.txt",
    ]
    assert (out / "vocab.txt").read_bytes() == (minilm_hf_dir / "vocab.txt").read_bytes()
    config = json.loads((out / "bert_config.json").read_text())
    assert (
        config["num_hidden_layers"] == 6 and config["hidden_size"] == 384 and config["hidden_act"] == "gelu"
    )
    reader = tf.train.load_checkpoint(str(out / "bert_model.ckpt"))
    names = reader.get_variable_to_shape_map()
    assert len(names) == 5 + 16 * 6 + 2
    assert names["bert/encoder/layer_5/intermediate/dense/kernel"] == [384, 1536]
    assert names["bert/embeddings/word_embeddings"] == [30522, 384]
    hf = load_file(str(minilm_hf_dir / "model.safetensors"))
    np.testing.assert_array_equal(
        reader.get_tensor("bert/encoder/layer_2/attention/self/key/kernel"),
        hf["encoder.layer.2.attention.self.key.weight"].T,
    )
    np.testing.assert_array_equal(
        reader.get_tensor("bert/encoder/layer_0/output/LayerNorm/gamma"),
        hf["encoder.layer.0.output.LayerNorm.weight"],
    )


@pytest.mark.tf
def test_bert_prefix_and_missing_pooler_convert(tmp_path: Path) -> None:
    import tensorflow as tf

    from bertserve_server.model.convert import convert_hf_to_google

    source = _write_hf_model(tmp_path / "hf", prefix="bert.", pooler=False)
    out = convert_hf_to_google(source / "model.safetensors", tmp_path / "google")
    names = tf.train.load_checkpoint(str(out / "bert_model.ckpt")).get_variable_to_shape_map()
    assert "bert/encoder/layer_1/output/dense/kernel" in names
    assert not any(n.startswith(("bert/pooler", "cls")) for n in names)


@pytest.mark.tf
def test_a_missing_encoder_tensor_is_refused(tmp_path: Path) -> None:
    from bertserve_server.model.convert import convert_hf_to_google

    source = _write_hf_model(tmp_path / "hf", drop="encoder.layer.1.attention.self.key.bias")
    with pytest.raises(ConversionError, match=r"bert/encoder/layer_1/attention/self/key/bias"):
        convert_hf_to_google(source, tmp_path / "google")


@pytest.mark.tf
def test_finetuned_lookalike_is_laid_out_like_run_classifier_output(tmp_path: Path) -> None:
    import tensorflow as tf

    from bertserve_server.model.convert import convert_hf_to_google, make_finetuned_lookalike

    pretrained = convert_hf_to_google(_write_hf_model(tmp_path / "hf"), tmp_path / "google")
    tuned = make_finetuned_lookalike(pretrained, tmp_path / "mrpc_output", step=343)
    assert (tuned / "checkpoint").read_text().splitlines() == [
        'model_checkpoint_path: "model.ckpt-343"',
        'all_model_checkpoint_paths: "model.ckpt-0"',
        'all_model_checkpoint_paths: "model.ckpt-343"',
    ]
    assert not (tuned / "bert_config.json").exists() and not (tuned / "vocab.txt").exists()
    base = tf.train.load_checkpoint(str(pretrained / "bert_model.ckpt"))
    for step in (0, 343):
        reader = tf.train.load_checkpoint(str(tuned / f"model.ckpt-{step}"))
        shapes = reader.get_variable_to_shape_map()
        encoder = [n for n in base.get_variable_to_shape_map() if n.startswith("bert/")]
        trainable = [*encoder, "output_weights", "output_bias"]
        assert set(shapes) == {*trainable, *(f"{n}/adam_{s}" for n in trainable for s in "mv"), "global_step"}
        assert shapes["output_weights"] == [2, 8] and shapes["output_bias"] == [2]
        assert reader.get_tensor("global_step") == step
        assert reader.get_variable_to_dtype_map()["global_step"] == tf.int64
        same = np.array_equal(
            reader.get_tensor("bert/embeddings/word_embeddings"),
            base.get_tensor("bert/embeddings/word_embeddings"),
        )
        assert same == (step == 0)


@pytest.mark.tf
def test_cli_converts_and_writes_the_finetuned_lookalike(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from bertserve_server.model.convert import main

    source = _write_hf_model(tmp_path / "hf")
    code = main(
        ["--from", str(source), "--out", str(tmp_path / "g"), "--finetuned-out", str(tmp_path / "ft")]
    )
    assert code == 0
    assert (tmp_path / "g" / "bert_model.ckpt.index").is_file()
    assert (tmp_path / "ft" / "model.ckpt-343.index").is_file()
    assert "-ckpt_name model.ckpt-343" in capsys.readouterr().out


def test_cli_reports_a_bad_source_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertserve_server.model.convert",
            "--from",
            str(tmp_path / "nope"),
            "--out",
            "x",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"convert-checkpoint: {tmp_path / 'nope'} does not exist"
