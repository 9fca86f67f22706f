"""The documented model-copy Job, run as written against a loopback HTTP server.

Why it exists: the Job once left the fine-tuned checkpoint at ``mrpc_output/mrpc_output/`` and the
seed BertServer crash-looped. Here the Job's own shell command (from the YAML, not a copy) runs with
its URLs pointed at 127.0.0.1 and its volume at a temporary directory, for the archive shapes users
actually upload, and the result must pass the server's own start-up checks for the seed
BertServer's rendered paths.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from model_site import Site, make_tar, make_zip

from bertserve_api import manifests
from bertserve_api.manifests import Owner, RenderOptions
from bertserve_api.spec import parse_spec

ROOT = pathlib.Path(__file__).resolve().parents[2]
JOB_FILE = ROOT / "docs" / "examples" / "model-copy-job.yaml"
SEED = ROOT / "crds" / "examples" / "mrpc-gpu-pvc.yaml"

CONFIG = {
    "vocab_size": 8,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
}
PRETRAINED = {
    "bert_config.json": json.dumps(CONFIG).encode(),
    "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n.\n",
    "bert_model.ckpt.index": b"i",
    "bert_model.ckpt.data-00000-of-00001": b"d",
}
TUNED = {
    "checkpoint": b'model_checkpoint_path: "model.ckpt-343"\n',
    "model.ckpt-343.index": b"i",
    "model.ckpt-343.data-00000-of-00001": b"d",
    "eval_results.txt": b"eval_accuracy = 0.84\n",
}


def _job() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = list(yaml.safe_load_all(JOB_FILE.read_text()))
    (job,) = [d for d in docs if d["kind"] == "Job"]
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    return job, claim


def _run_job_command(site: Site, pretrained: str, tuned: str, models: pathlib.Path) -> None:
    """Run the Job's container command with its URLs and its /models mount redirected."""
    job, _ = _job()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    command = [*container["command"], *container["args"]]
    assert command[:2] == ["/bin/sh", "-c"]
    script = command[2].replace(mount["mountPath"], str(models))
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) == {"PRETRAINED_URL", "TUNED_URL"}
    env.update(PRETRAINED_URL=site.url(pretrained), TUNED_URL=site.url(tuned))
    bin_dir = pathlib.Path(sys.executable).parent
    full_env = {**os.environ, **env, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        ["/bin/sh", "-c", script], env=full_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def _seed_passes_the_servers_start_up_checks(models: pathlib.Path) -> None:
    """The seed BertServer's rendered -model_dir/-tuned_model_dir, mapped onto ``models``."""
    from bertserve_server.cli import validate

    seed = yaml.safe_load(SEED.read_text())
    config = manifests.server_config(Owner("mrpc", "ml"), parse_spec(seed["spec"]), RenderOptions("img"))

    def local(path: str | None) -> str | None:
        return None if path is None else path.replace(manifests.MODEL_MOUNT, str(models), 1)

    key = models.parent / manifests.PEER_KEY_FILE  # the mesh key the pod mounts from its Secret
    key.write_bytes(os.urandom(manifests.PEER_KEY_MIN_BYTES))
    config = dataclasses.replace(
        config,
        model_dir=local(config.model_dir),
        tuned_model_dir=local(config.tuned_model_dir),
        peer_key_file=str(key),
    )
    validate(config)  # raises ConfigurationError naming the flag, as the crash-looping pod would


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    s.routes["/uncased_L-12_H-768_A-12.zip"] = make_zip(PRETRAINED, top="uncased_L-12_H-768_A-12")
    s.routes["/mrpc_output.tar.gz"] = make_tar(TUNED, top="mrpc_output")  # tar czf … mrpc_output/
    s.routes["/output.tgz"] = make_tar(TUNED, top="output")  # the dir had another name
    s.routes["/bare.tar.gz"] = make_tar(TUNED, top="")  # tar czf … -C mrpc_output .
    s.routes["/v2.zip"] = make_zip({**PRETRAINED, "NOTICE": b"v2"}, top="uncased_L-12_H-768_A-12")
    yield s
    s.close()


@pytest.mark.parametrize("tuned", ["/mrpc_output.tar.gz", "/output.tgz", "/bare.tar.gz"])
def test_documented_job_lays_out_what_the_seed_bertserver_expects(site, tmp_path, tuned):
    models = tmp_path / "models"
    _run_job_command(site, "/uncased_L-12_H-768_A-12.zip", tuned, models)
    assert {p.name for p in models.iterdir()} == {"uncased_L-12_H-768_A-12", "mrpc_output"}
    assert (models / "mrpc_output" / "model.ckpt-343.index").is_file()
    _seed_passes_the_servers_start_up_checks(models)


def test_changing_the_pretrained_url_keeps_the_fine_tuned_folder(site, tmp_path):
    models = tmp_path / "models"
    _run_job_command(site, "/uncased_L-12_H-768_A-12.zip", "/mrpc_output.tar.gz", models)
    _run_job_command(site, "/v2.zip", "/mrpc_output.tar.gz", models)
    assert (models / "uncased_L-12_H-768_A-12" / "NOTICE").read_bytes() == b"v2"
    assert (models / "mrpc_output" / "model.ckpt-343.index").is_file()
    _seed_passes_the_servers_start_up_checks(models)


def test_claim_names_a_storage_class_and_is_the_one_the_seed_mounts():
    job, claim = _job()
    assert claim["spec"]["storageClassName"]
    seed = yaml.safe_load(SEED.read_text())
    claim_name = seed["spec"]["model"]["source"]["pvc"]["claimName"]
    assert claim["metadata"]["name"] == claim_name
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": claim_name}} in volumes
    # The Job writes as the server's user, so the server can read what it wrote.
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == manifests.RUN_AS_USER
