"""Time to ready, phase by phase: the real ``bert-serving-start`` logs and exports its start-up phases.

Operators (and ``benchmarks/bench_ready.py``) read where a replica's start-up went from one log
line and the gauge ``bertserve_startup_seconds{phase}``; these tests hold the server to both,
through the real process on a tiny checkpoint.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess, server_flags

PHASES = ("import", "load", "trace", "warmup")
LINE = re.compile(r"startup phases: (?P<body>[^\n]*) \(process start to ready\)")


def _server_command() -> list[str]:
    """The ``bert-serving-start`` console script, or the same entry point by module where not installed."""
    script = Path(sys.executable).with_name("bert-serving-start")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bertserve_server.cli"]


def _logged_phases(log: str) -> dict[str, float]:
    match = LINE.search(log)
    assert match, f"no 'startup phases:' line in the log:\n{log[-3000:]}"
    phases = {}
    for part in match.group("body").split(", "):
        name, value = part.split(" ")
        assert value.endswith("s"), part
        phases[name] = float(value[:-1])
    return phases


def _metric_phases(text: str) -> dict[str, float]:
    for family in text_string_to_metric_families(text):
        if family.name == "bertserve_startup_seconds":
            return {sample.labels["phase"]: sample.value for sample in family.samples}
    raise AssertionError("bertserve_startup_seconds is not in /metrics")


def test_process_age_counts_from_process_start() -> None:
    """The clock the phases use starts with the process, not with the module's import."""
    code = (
        "import time; time.sleep(0.6); from bertserve_server.startup import process_age; print(process_age())"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    wall = time.monotonic() - started
    age = float(out.stdout)
    assert 0.6 <= age <= wall + 0.02, (age, wall)  # /proc's start time has 10 ms ticks


@pytest.mark.tf
def test_bert_serving_start_logs_and_exports_its_startup_phases(tmp_path: Path, tiny_model_dir: Path) -> None:
    flags, ports = server_flags(tiny_model_dir)
    started = time.monotonic()
    server = ServerProcess([*_server_command(), *flags], tmp_path / "server.log", **ports)
    try:
        server.wait_ready(180)
        waited = time.monotonic() - started
        logged = _logged_phases(server.log)
        response = server.get("/metrics")
        assert response is not None and response.status_code == 200
        exported = _metric_phases(response.text)
    finally:
        server.stop()
    assert set(logged) == {*PHASES, "total"} == set(exported), (logged, exported)
    for phase, seconds in exported.items():
        assert logged[phase] == pytest.approx(seconds, abs=0.006), phase  # the line rounds to 10 ms
        assert seconds >= 0.0, (phase, seconds)
    assert exported["import"] > 0.1  # TensorFlow's import alone takes longer than this
    assert sum(exported[p] for p in PHASES) <= exported["total"]
    # Measured from the process's own start: never longer than the test saw from outside.
    assert exported["total"] <= waited + 0.02, (exported["total"], waited)
    log = server.log
    assert log.index("startup phases:") < log.index("all set, ready to serve request!")


@pytest.mark.tf
def test_warm_up_leaves_the_first_request_nothing_extra_to_pay(tiny_model_dir: Path) -> None:
    """Readiness means the first request is as cheap as later ones, padded or not.

    CPU seconds, not wall time: other tenants of the machine slow the wall clock, not the work.
    A cold encoder's first call pays for optimising and instantiating the graph, many times a
    warm call's cost; after ``warm_up`` a first request of a new shape, with padding, must not.
    """
    import numpy as np

    from bertserve_server.model.tf_encoder import TFEncoder

    ids = np.array([[2, 8, 9, 7, 3, 0, 0], [2, 10, 3, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9, 3]], np.int32)
    mask = (ids != 0).astype(np.int32)

    def cpu_seconds_of_first_call(encoder: TFEncoder) -> float:
        started = time.process_time()
        encoder.encode_arrays(ids, mask, np.zeros_like(ids))
        return time.process_time() - started

    cold = cpu_seconds_of_first_call(TFEncoder(tiny_model_dir))
    warmed = TFEncoder(tiny_model_dir)
    warmed.warm_up()
    warm = cpu_seconds_of_first_call(warmed)
    assert warm < cold / 4, f"first request after warm-up took {warm:.3f} CPU s, a cold first call {cold:.3f}"


def test_prefetch_asks_for_every_file_of_the_checkpoint_and_only_those(tmp_path: Path) -> None:
    from bertserve_server.model.checkpoint_names import prefetch_checkpoint

    prefix = tmp_path / "model.ckpt-[343]"  # glob metacharacters in a prefix match literally
    names = [
        "model.ckpt-[343].index",
        "model.ckpt-[343].data-00000-of-00002",
        "model.ckpt-[343].data-00001-of-00002",
    ]
    for name in [*names, "model.ckpt-3.index", "model.ckpt-3.data-00000-of-00001"]:
        (tmp_path / name).write_bytes(b"x" * 4096)
    assert sorted(p.name for p in prefetch_checkpoint(prefix)) == sorted(names)
    assert prefetch_checkpoint(tmp_path / "absent") == []


@pytest.mark.tf
def test_graph_passes_that_change_nothing_here_are_off_once_the_runtime_is_configured() -> None:
    """The layout and memory passes cost much of the first call with the weights embedded (see
    ``skip_idle_graph_passes``); the second has no public switch, so a TensorFlow upgrade that
    moves it must fail here rather than quietly bring the cost back."""
    from tensorflow.core.protobuf import rewriter_config_pb2
    from tensorflow.python.eager import context

    from bertserve_server.model.tf_encoder import configure_runtime

    configure_runtime()
    rewrite = context.context().config.graph_options.rewrite_options
    assert rewrite.layout_optimizer == rewriter_config_pb2.RewriterConfig.OFF
    assert rewrite.memory_optimization == rewriter_config_pb2.RewriterConfig.NO_MEM_OPT


@pytest.mark.tf
def test_the_large_call_function_is_built_after_ready_and_a_stop_during_it_is_clean(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Readiness does not wait for the second size class; the status says when it is there.

    The server becomes ready with the small-call function (``warm_up``) and builds the large-call
    one in the background (``TFEncoder.prepare_large_calls``), so time to ready stays what it
    was. ``large_calls_ready`` in ``/status/server`` turns true once it is built; a SIGTERM
    right after ready (the build may still be running) still drains and exits 0.
    """
    import signal

    flags, ports = server_flags(tiny_model_dir, max_seq_len="40")
    server = ServerProcess([*_server_command(), *flags], tmp_path / "server.log", **ports)
    try:
        server.wait_ready(180)
        deadline = time.monotonic() + 60
        while True:
            status = server.get("/status/server")
            assert status is not None and status.status_code == 200
            if status.json()["large_calls_ready"]:
                break
            assert time.monotonic() < deadline, "large_calls_ready still false after 60 s"
            time.sleep(0.1)
        log = server.log
        assert log.index("all set, ready to serve request!") < log.index("large-call function ready")
        with server.client() as client:
            # 4 x 40 tokens: more rows than SMALL_CALL_ROWS, so the large-call function answers.
            vectors = client.encode([" ".join(["word"] * 38)] * 4)
        assert vectors.shape[0] == 4
    finally:
        server.stop()

    flags, ports = server_flags(tiny_model_dir)
    again = ServerProcess([*_server_command(), *flags], tmp_path / "again.log", **ports)
    try:
        again.wait_ready(180)
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(60) == 0, again.log[-3000:]
        assert "server stopped" in again.log
    finally:
        again.stop()


@pytest.mark.tf
def test_a_sigterm_while_the_large_call_function_builds_drains_and_exits_0(
    tmp_path: Path, minilm_google_dir: Path
) -> None:
    """A rollout may stop a pod the moment it is ready, while its background build still runs.

    MiniLM's large-call build takes over a second, longer than a ``-drain_timeout=0`` shutdown,
    so the SIGTERM sent on the first ``/readyz`` 200 lands inside it. TensorFlow must not be torn
    down under a running build: that could end the process with SIGABRT ("terminate called …")
    instead of a drained exit 0.
    """
    import signal

    flags, ports = server_flags(minilm_google_dir, max_seq_len="128", drain_timeout="0")
    server = ServerProcess([*_server_command(), *flags], tmp_path / "server.log", **ports)
    try:
        server.wait_ready(240)
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(120)
        log = server.log
        assert code == 0, log[-3000:]
        assert "terminate called" not in log
        # The signal came after ready: a drain, not an aborted start-up.
        assert "start-up aborted" not in log, log[-3000:]
        # The build ended (built or cancelled) before the process went; with -drain_timeout=0
        # it used to be left running while the interpreter shut down.
        ended = max(log.find("large-call function ready"), log.find("large-call function's build cancelled"))
        assert 0 <= ended < log.index("server stopped"), log[-3000:]
    finally:
        server.stop()
