"""Fixtures for tests that need a real Kubernetes control plane (marker ``k8s``).

The binaries are built (or found in the cache) once per run, right after collection, so that a
cold build is not charged to the first test's timeout; the cluster itself is one per session in
a fresh temp state dir, because a reused etcd would bring back objects from earlier runs.
A build or start failure fails the tests loudly: these tests must never be skipped silently.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import localcluster

_BIN_DIR_KEY = pytest.StashKey[Path]()
_BUILD_ERROR_KEY = pytest.StashKey[str]()
_KEPT_LOGS_KEY = pytest.StashKey[Path]()


lc = localcluster()  # hack/cluster/localcluster.py, loaded by path (it is a script)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane once if any selected test needs it.

    Runs outside every test's timeout: a cold build takes many minutes on 2 cores, a warm one
    seconds. The outcome is stashed for the ``cluster`` fixture, which fails with it.
    """
    if session.config.option.collectonly:
        return
    if not any(item.get_closest_marker("k8s") for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("k8s: building/locating control-plane binaries (hack/cluster/build.sh)")
    try:
        session.config.stash[_BIN_DIR_KEY] = lc.build_binaries(quiet=True)
    except lc.ClusterError as exc:
        session.config.stash[_BUILD_ERROR_KEY] = str(exc)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Point at the kept logs after a failed run (fixture teardown output would be swallowed)."""
    kept = config.stash.get(_KEPT_LOGS_KEY, None)
    if kept is not None:
        terminalreporter.write_sep("-", "k8s cluster logs kept")
        terminalreporter.write_line(f"control-plane state and logs kept in {kept}")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running LocalCluster (2 GPU nodes with nvidia.com/gpu: 4, 1 CPU node) for the session."""
    config = request.config
    error = config.stash.get(_BUILD_ERROR_KEY, None)
    if error is not None:
        pytest.fail(f"cannot build the local control plane:\n{error}", pytrace=False)
    bin_dir = config.stash.get(_BIN_DIR_KEY, None)
    if bin_dir is None:  # e.g. the fixture was requested by a test without the k8s marker
        try:
            bin_dir = lc.build_binaries(quiet=True)
        except lc.ClusterError as exc:
            pytest.fail(f"cannot build the local control plane:\n{exc}", pytrace=False)

    state_dir = tmp_path_factory.mktemp("k8s-cluster")
    cluster = lc.LocalCluster(state_dir, bin_dir, die_with_parent=True)
    try:
        cluster.up()
    except lc.ClusterError as exc:
        config.stash[_KEPT_LOGS_KEY] = state_dir
        pytest.fail(f"local control plane did not come up (logs: {cluster.log_dir}):\n{exc}", pytrace=False)
    failed_before = request.session.testsfailed
    yield cluster
    failed = request.session.testsfailed > failed_before
    cluster.down(purge=False)
    if failed:
        config.stash[_KEPT_LOGS_KEY] = state_dir
    else:
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def kubectl(cluster: Any) -> Callable[..., Any]:
    """``kubectl(*args, check=True, input=None)`` against the session cluster (CompletedProcess)."""
    run: Callable[..., Any] = cluster.kubectl
    return run
