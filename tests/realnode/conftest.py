"""Fixtures for tests on the real node (marker ``realnode``): one control plane with kwok's fake
GPU nodes *and* a real kubelet + containerd node, shared by the whole session.

Builds (control plane, node binaries, the server and operator images) run once right after
collection, outside every test's timeout; the node and the images import then take about a
minute, charged to the first test that needs them. A build, preflight or start failure fails the
tests with the reason: these tests are never skipped silently.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from operator_harness import CHART, localcluster
from realnode_helpers import ON_REAL_NODE, OPERATOR_NS, TEXTS, get_json

lc = localcluster()
rn = lc.realnode()

_BUILT_KEY = pytest.StashKey[dict[str, Any]]()
_ERROR_KEY = pytest.StashKey[str]()
_KEPT_KEY = pytest.StashKey[Path]()


def _selected(session: pytest.Session, marker: str) -> list[pytest.Item]:
    return [item for item in session.items if item.get_closest_marker(marker)]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane, the node binaries and the images once, if a real-node test runs."""
    if session.config.option.collectonly:
        return
    items = _selected(session, "realnode")
    if not any("real_cluster" in getattr(item, "fixturenames", ()) for item in items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    built: dict[str, Any] = {}
    try:
        why = rn.refusal()
        if why:
            raise lc.ClusterError(why)
        if reporter is not None:
            reporter.write_line("realnode: building/locating control-plane and node binaries, images")
        built["bin_dir"] = lc.build_binaries(quiet=True)
        built["node_bin_dir"] = lc.build_node_binaries(quiet=True)
        import oci_images

        # The CPU server image serves every workload here (its Python also runs the small HTTP
        # servers): the node has no GPU, every BertServer here has `gpus: 0`, which is what the
        # operator gives that image, and it imports in a fraction of the GPU image's time. The
        # operator image is built when the operator fixture needs it.
        built["images"] = {"server": oci_images.build_images(["server-cpu"])["server-cpu"]}
    except (lc.ClusterError, RuntimeError) as exc:
        session.config.stash[_ERROR_KEY] = str(exc)
        return
    session.config.stash[_BUILT_KEY] = built


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    kept = config.stash.get(_KEPT_KEY, None)
    if kept is not None:
        terminalreporter.write_sep("-", "real-node cluster logs kept")
        terminalreporter.write_line(f"control-plane and node state and logs kept in {kept}")


@pytest.fixture(scope="session")
def built(request: pytest.FixtureRequest) -> dict[str, Any]:
    error = request.config.stash.get(_ERROR_KEY, None)
    if error is not None:
        pytest.fail(f"cannot prepare the real node:\n{error}", pytrace=False)
    found = request.config.stash.get(_BUILT_KEY, None)
    if found is None:
        pytest.fail("real-node builds did not run (pytest_collection_finish)", pytrace=False)
    return found


@pytest.fixture(scope="session")
def real_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, built: dict[str, Any]
) -> Iterator[Any]:
    """A LocalCluster with the real node Ready and the project's images imported into it.

    ``images["server"]`` is the CPU server image (``localhost/bertserve-server:<version>-cpu``).
    """
    state_dir = tmp_path_factory.mktemp("realnode-cluster")
    cluster = lc.LocalCluster(
        state_dir,
        built["bin_dir"],
        die_with_parent=True,
        real_node=True,
        node_bin_dir=built["node_bin_dir"],
    )
    try:
        cluster.up()
        cluster.images = {
            name: cluster.node.import_archive(Path(summary["archive"]), f"localhost/bertserve-{name}")
            for name, summary in built["images"].items()
        }
    except (lc.ClusterError, rn.RealNodeError) as exc:
        request.config.stash[_KEPT_KEY] = state_dir
        cluster.down(purge=False)
        pytest.fail(f"real-node cluster did not come up (state: {state_dir}):\n{exc}", pytrace=False)
    failed_before = request.session.testsfailed
    yield cluster
    failed = request.session.testsfailed > failed_before
    cluster.down(purge=False)
    if failed:
        request.config.stash[_KEPT_KEY] = state_dir
    else:
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def operator(real_cluster: Any) -> dict[str, Any]:
    """The chart installed with the operator image from the node's containerd, on the real node."""
    import oci_images

    summary = oci_images.build_images(["operator"])["operator"]  # cached: seconds
    real_cluster.images["operator"] = real_cluster.node.import_archive(
        Path(summary["archive"]), "localhost/bertserve-operator"
    )
    server_image = real_cluster.images["server"]
    repo, _, tag = real_cluster.images["operator"].rpartition(":")
    real_cluster.helm(
        "install",
        "bs",
        str(CHART),
        "-n",
        OPERATOR_NS,
        "--create-namespace",
        "--set",
        f"image.repository={repo}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        f"serverCpuImage={server_image}",
        "--set-json",
        f"nodeSelector={json.dumps(ON_REAL_NODE['nodeSelector'])}",
        "--set-json",
        f"tolerations={json.dumps(ON_REAL_NODE['tolerations'])}",
        "--wait",
        "--timeout",
        "300s",
        timeout=330,
    )
    (pod,) = get_json(real_cluster, "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/instance=bs")["items"]
    return {"pod": pod, "server_image": server_image}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT in Google's layout, readable by the server's non-root user."""
    from bertserve_server.model.synthetic import write_random_bert

    root = tmp_path_factory.mktemp("node-models")
    write_random_bert(root / "tiny", layers=2, hidden=32, heads=4, intermediate=64, seed=3)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


@pytest.fixture(scope="session")
def reference(model_dir: Path) -> np.ndarray:
    """The numpy reference BERT's REDUCE_MEAN of layer -2, each sentence alone (max_seq_len 25)."""
    # The independent numpy BERT sits beside the server tests (not on the helpers path).
    sys.path.insert(0, str(Path(__file__).parents[1] / "server"))
    from numpy_bert import NumpyBert, reference_pool

    from bertserve_server.encoder import pad_batch
    from bertserve_server.tokenization import BertTokenizer

    bert = NumpyBert.from_google_dir(model_dir / "tiny")
    tokenizer = BertTokenizer(model_dir / "tiny" / "vocab.txt", max_seq_len=25)
    rows = []
    for text in TEXTS:
        (item,) = tokenizer.tokenize_batch([text])
        batch = pad_batch([item], len(item))
        layers, pooled = bert.forward(batch.input_ids, batch.input_mask, batch.type_ids)
        rows.append(reference_pool("REDUCE_MEAN", layers, [-2], batch.input_mask, pooled)[0])
    return np.stack(rows)
