"""The pure parts of ``bench_model``: percentiles, rounds, best peer and ratios, peer choice, the report.

No TensorFlow and no peer runs here: rows are built from made-up call timings, so every number the
report prints can be checked against the timings it came from.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bench_model
from bench_model import (
    Row,
    calls_per_round,
    make_inputs,
    markdown_table,
    parse_peers,
    percentile,
    ratio_cell,
    rounds_for,
)


def test_percentile_is_nearest_rank_over_all_calls() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_big_shapes_get_fewer_rounds_but_never_fewer_than_two() -> None:
    assert rounds_for(0.01, 5) == 5
    assert rounds_for(2.0, 5) == 3
    assert rounds_for(20.0, 5) == 2
    assert rounds_for(20.0, 1) == 1  # an explicit --rounds 1 is obeyed
    assert rounds_for(2.0, 2) == 2


def test_latency_batches_get_enough_calls_for_percentiles_and_throughput_shapes_one() -> None:
    assert calls_per_round(32, 0.001) == 1
    assert calls_per_round(1, 0.001) == bench_model.MAX_CALLS
    assert calls_per_round(4, 10.0) == bench_model.MIN_CALLS
    middle = calls_per_round(1, 0.05)
    assert bench_model.MIN_CALLS <= middle <= bench_model.MAX_CALLS
    assert middle == int(bench_model.LATENCY_SECONDS_PER_ROUND / 0.05)


def row(**calls: list[float]) -> Row:
    r = Row("minilm", 128, 32, flops=32e9)
    r.calls = {key.replace("_", ":"): value for key, value in calls.items()}
    return r


def test_best_peer_is_the_fastest_measured_one_and_the_ratio_names_it() -> None:
    r = row(ours=[0.2, 0.1], torch=[0.4], ort=[0.16, 0.5], natural_ort=[0.1], natural_openvino=[0.05])
    assert r.rate("ours") == pytest.approx(320.0)
    assert r.best_peer(["torch", "ort", "openvino"]) == ("ort", pytest.approx(200.0))
    assert r.best_peer(["torch", "ort", "openvino"], "natural:") == ("openvino", pytest.approx(640.0))
    assert r.best_peer(["openvino"]) is None
    assert ratio_cell(r.rate("ours"), r.best_peer(["torch", "ort"])) == "1.60x (ONNX Runtime)"
    assert ratio_cell(100.0, ("openvino", 125.0)) == "**0.80x** (OpenVINO)"  # behind: bold
    assert ratio_cell(100.0, None) == "–"


def test_share_of_peak_uses_the_best_call() -> None:
    r = row(ours=[2.0, 1.0])
    assert r.share_of_peak("ours", 64.0) == pytest.approx(0.5)  # 32 GFLOP in 1 s of a 64 GFLOP/s peak
    assert math.isnan(r.share_of_peak("torch", 64.0))


def test_markdown_table_refuses_ragged_rows() -> None:
    assert markdown_table(["a", "b"], "lr", [["1", "2"]]) == ["| a | b |", "| --- | ---: |", "| 1 | 2 |"]
    with pytest.raises(ValueError, match="one entry per column"):
        markdown_table(["a", "b"], "lr", [["1"]])


def test_peers_are_chosen_by_name_in_table_order() -> None:
    assert parse_peers("openvino,torch") == ["torch", "openvino"]
    assert parse_peers("") == []
    with pytest.raises(argparse.ArgumentTypeError, match="tvm"):
        parse_peers("ort,tvm")


def test_report_shows_every_peer_side_by_side_with_latency_and_the_cross_check(tmp_path: Path) -> None:
    peers = ["torch", "ort", "openvino"]
    latency = Row("minilm", 25, 1, flops=1e9)
    latency.calls = {
        "ours": [0.004, 0.002, 0.003],
        "torch": [0.01] * 3,
        "ort": [0.003] * 3,
        "openvino": [0.001] * 3,
    }
    big = Row("minilm", 25, 256, flops=256e9, natural_tokens=(50, 100))
    big.calls = {
        "ours": [1.0],
        "ours-2": [0.8],
        "torch": [2.0],
        "ort": [1.25],
        "openvino": [1.6],
        "natural:ours": [0.5],
        "natural:torch": [1.0],
        "natural:ort": [1.0],
        "natural:openvino": [2.0],
    }
    out = tmp_path / "model.md"
    bench_model.write_report(
        out,
        info={
            "cpu": "Test CPU",
            "cpus": "2",
            "simd": "avx2",
            "memory": "1 GiB",
            "platform": "p",
            "python": "3",
        },
        peak=(512.0, "[1x1] @ [1x1]"),
        rows=[latency, big],
        peers=peers,
        diffs={"minilm": {"torch": 1e-7, "ort": 2e-6, "openvino": 9e-7}},
        tokenization={25: 1000.0},
        versions={"ours": "TensorFlow 0", "torch": "2", "onnxruntime": "1.32.0", "openvino": "2026.4.1"},
        peer_notes=["minilm: fusions"],
        loads=("8.0 7.0 6.0", "9.0 8.0 7.0"),
        fp16_compute="float32",
    )
    text = out.read_text()
    assert (
        "| model | seq | batch | ours (-1) | ours (-2) | torch | ONNX Runtime | OpenVINO | ours/best peer |"
        in text
    )
    # 256 sentences in 1 s vs ONNX Runtime's 1.25 s: 1.25x; 500 GFLOP/s of 512 is 50 %
    assert "| minilm | 25 | 256 | 256.0 | 320.0 | 128.0 | 204.8 | 160.0 | 1.25x (ONNX Runtime) |" in text
    assert re.search(r"\| minilm \| 25 \| 256 \| 256 \| 50% \| 25% \| 40% \| 31% \|", text)
    # latency: p50 of ours 3 ms, OpenVINO 1 ms -> ours behind, bold, named
    assert (
        "| minilm | 25 | 1 | 3 | 3.00 / 4.00 | – | 10.00 / 10.00 | 3.00 / 3.00 | 1.00 / 1.00 | **0.33x** (OpenVINO) |"
        in text
    )
    assert "| minilm | 25 | 256 | 50 / 100 (50%) | 512.0 | 256.0 | 256.0 | 128.0 | 2.00x (torch) |" in text
    assert "- minilm: torch 1.0e-07, ONNX Runtime 2.0e-06, OpenVINO 9.0e-07" in text
    assert "load average at start / end: 8.0 7.0 6.0 / 9.0 8.0 7.0" in text
    assert "- minilm: fusions" in text


class _Encoder:
    """Stand-in for our encoder: pooled vector = mean of the ids (scaled to about 0.5), per row."""

    def encode_arrays(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        return np.repeat((ids * mask).mean(1, keepdims=True) / 30522, 4, axis=1).astype(np.float32)


class _Peer:
    """Stand-in for a peer process answering ``encode`` with ours plus ``offset``."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def request(self, **fields: object) -> dict:
        arrays = make_inputs(fields["batch"], fields["seq"], fields["seed"], 30522, fields["lengths"])
        np.save(str(fields["out"]), _Encoder().encode_arrays(*arrays) + self.offset)
        return {"ok": True}


def test_cross_check_reports_each_peers_difference_and_stops_past_the_fp32_tolerance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_model, "CACHE", tmp_path)
    diffs = bench_model.cross_check("m", _Encoder(), {"torch": _Peer(0.0), "ort": _Peer(3e-5)}, 30522)
    assert diffs["torch"] == 0.0 and diffs["ort"] == pytest.approx(3e-5, rel=0.1)
    with pytest.raises(SystemExit, match=r"m: OpenVINO pooled vectors differ from ours by 1\.\d+e-03"):
        bench_model.cross_check("m", _Encoder(), {"openvino": _Peer(1e-3)}, 30522)
    with pytest.raises(SystemExit, match="OpenVINO"):  # NaN is no agreement either
        bench_model.cross_check("m", _Encoder(), {"openvino": _Peer(float("nan"))}, 30522)


def test_help_works_and_the_modules_peers_import_stay_free_of_tensorflow_and_the_project() -> None:
    """Peers import ``bench_model`` in environments without TensorFlow or our packages; ``--help`` is instant."""
    benchmarks = Path(bench_model.__file__).parent
    probe = (
        "import sys; sys.argv = ['bench_model.py', '--help']; import bench_model, model_peer, onnx_models; "
        "loaded = [m for m in ('tensorflow', 'bertserve_server', 'torch') if m in sys.modules]; "
        "assert not loaded, loaded; bench_model.main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=benchmarks, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "--peers" in done.stdout and "--quick" in done.stdout
