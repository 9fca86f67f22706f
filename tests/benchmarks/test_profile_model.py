"""``benchmarks/profile_model.py`` reads kernel times out of a profiler trace correctly.

The trace is built here with the same protobuf TensorFlow's profiler writes: kernels are
``<node>:<op type>`` events on the ``tf_*`` compute threads; executor spans (``ExecutorState::Process``),
region markers and other threads must not be counted, or the op table would double-count time.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

pytestmark = pytest.mark.tf

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_profile_model() -> types.ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("profile_model", BENCHMARKS / "profile_model.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_only_kernels_on_compute_threads_are_summed_per_op_type(tmp_path: Path) -> None:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    names = ["dense:_MklNativeFusedMatMul", "ln:_MklLayerNorm", "ExecutorState::Process", "r:StartRegion"]
    for index, name in enumerate(names, start=1):
        plane.event_metadata[index].id = index
        plane.event_metadata[index].name = name
    compute = [plane.lines.add(name="tf_Compute/1"), plane.lines.add(name="tf_Compute/2")]
    python = plane.lines.add(name="python")
    for line in compute:
        line.events.add(metadata_id=1, duration_ps=3_000)  # two matmuls, one per thread
        line.events.add(metadata_id=3, duration_ps=50_000)  # the span around them
        line.events.add(metadata_id=4, duration_ps=0)
    compute[0].events.add(metadata_id=2, duration_ps=700)
    python.events.add(metadata_id=1, duration_ps=10**9)  # not a compute thread
    trace = tmp_path / "host.xplane.pb"
    trace.write_bytes(space.SerializeToString())

    times, counts = load_profile_model().op_type_times(trace)

    assert dict(times) == {"_MklNativeFusedMatMul": 6_000, "_MklLayerNorm": 700}
    assert dict(counts) == {"_MklNativeFusedMatMul": 2, "_MklLayerNorm": 1}
