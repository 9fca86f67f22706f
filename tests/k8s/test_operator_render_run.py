"""Render-and-run: what the operator puts in the Deployment is what the real server runs.

The operator reconciles a BertServer on the local control plane; the test reads the container's
command and arguments back from the API server, maps the pod's ``/models`` mount onto a local
directory holding a tiny random BERT (pretrained dir + a run_classifier.py-shaped fine-tuned
dir, laid out as on a model PVC), starts exactly that command on 127.0.0.1 and encodes with the
unmodified ``bert-serving-client`` 1.10.0. Only the addresses change: free ports and loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bert_serving.client import BertClient
from bertserver_manifests import bertserver_yaml
from operator_harness import OperatorProcess, apply_yaml, chart_operator, get_json
from peer_keys import write_peer_key
from ports import free_ports
from readyz import wait_readyz

from bertserve_api import manifests
from bertserve_api.contract import parse_argv

pytestmark = [
    pytest.mark.k8s,
    pytest.mark.tf,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

RELEASE = "bsrun"
OPERATOR_NS = "bertserve-render"
HIDDEN = 32


@pytest.fixture(scope="module")
def operator(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with chart_operator(cluster, tmp_path_factory.mktemp("operator-render"), RELEASE, OPERATOR_NS) as op:
        yield op


def localize(args: list[str], models: Path, ports: dict[str, int], peer_key: str) -> list[str]:
    """The pod's arguments with /models mapped to ``models`` and addresses made free and local.

    In the cluster ``-peer_service`` is the headless Service that resolves to every replica; the
    single local replica's equivalent is ``localhost``. The mesh secret the pod mounts from its
    Secret is ``peer_key`` here (added if the rendered arguments do not name one yet).
    """
    out = []
    for arg in args:
        flag, sep, value = arg.partition("=")
        if flag == "-peer_service":
            out.append("-peer_service=localhost")
            if not any(a.startswith("-peer_key_file=") for a in args):
                out.append(f"-peer_key_file={peer_key}")
        elif flag == "-peer_key_file":
            out.append(f"-peer_key_file={peer_key}")
        elif sep and value.startswith(manifests.MODEL_MOUNT):
            out.append(f"{flag}={models}{value[len(manifests.MODEL_MOUNT) :]}")
        elif sep and flag.lstrip("-") in ports:
            out.append(f"{flag}={ports[flag.lstrip('-')]}")
        else:
            out.append(arg)
    for name, port in ports.items():  # flags left at their defaults are not rendered
        if not any(a.startswith(f"-{name}=") for a in out):
            out.append(f"-{name}={port}")
    return [*out, "-bind_host=127.0.0.1"]


def test_the_rendered_command_runs_the_real_server(
    cluster: Any, operator: OperatorProcess, tmp_path: Path
) -> None:
    from bertserve_server.model.synthetic import write_random_bert, write_random_finetuned

    models = tmp_path / "models"
    base = write_random_bert(models / "bert" / "uncased_tiny", hidden=HIDDEN, max_position_embeddings=64)
    write_random_finetuned(base, models / "bert" / "mrpc_output", step=343)

    ns = "render"
    cluster.create_namespace(ns)
    spec = {
        "model": {
            "source": {"hostPath": {"path": "/srv/models"}},
            "pretrainedPath": "bert/uncased_tiny",
            "tunedModelDir": "bert/mrpc_output",
            "ckptName": "model.ckpt-343",
        },
        "serving": {"maxSeqLen": 32, "poolingLayer": [-1], "maxBatchSize": 64},
        "resources": {"gpus": 0},
    }
    apply_yaml(cluster, bertserver_yaml("tiny", spec), ns)
    cluster.kubectl("wait", "--for=condition=Ready", "bertserver/tiny", "-n", ns, "--timeout=120s")

    dep = get_json(cluster, "deployment", "tiny", "-n", ns)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model"]
    # The pod sees <source>/<subPath> at <mountPath>; the local tree has the same layout.
    assert (mount["mountPath"], mount.get("subPath")) == ("/models/bert", "bert")
    assert mount["readOnly"] is True

    peers = get_json(cluster, "service", "tiny-peers", "-n", ns)
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True
    assert f"-peer_service=tiny-peers.{ns}.svc.cluster.local" in container["args"]

    ports = dict(zip(("port", "port_out", "http_port", "peer_port"), free_ports(4), strict=True))
    argv = localize(container["args"], models, ports, write_peer_key(tmp_path / "peer-key"))
    config = parse_argv(argv)
    assert (config.model_dir, config.tuned_model_dir, config.ckpt_name, config.cpu) == (
        f"{models}/bert/uncased_tiny",
        f"{models}/bert/mrpc_output",
        "model.ckpt-343",
        True,
    )
    command = [str(Path(sys.executable).with_name(container["command"][0])), *argv]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    home = tmp_path / "home"
    home.mkdir()
    env = {**env, "HOME": str(home), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:  # a checkout run from its sources: the server runs from them too
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_readyz(proc, ports["http_port"], log_path, 300, what="the rendered server")
        texts = ["hello world", "the dog is not a cat ||| good night"]
        with BertClient(ip="127.0.0.1", port=ports["port"], port_out=ports["port_out"], timeout=60000) as bc:
            vectors = bc.encode(texts)
        assert vectors.shape == (2, HIDDEN)
        assert np.all(np.isfinite(vectors)) and not np.allclose(vectors[0], vectors[1])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    cluster.kubectl("delete", "bertserver", "tiny", "-n", ns, "--wait=true", "--timeout=60s")
