"""The peer side shared by every model peer (``model_peer``) and the ONNX export cache key (``onnx_models``).

``serve_model`` runs here in this interpreter with a stand-in forward pass (the real ones live in
the peers' own environments); its inputs must be ``bench_model.make_inputs``' exactly.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

import onnx_models
from bench_model import make_inputs
from model_peer import serve_model


def run_peer(requests: list[dict], forward_calls: list | None = None) -> list[dict]:
    def load(request: dict) -> tuple[object, int, dict]:
        return "model", 30522, {"attn": "test"}

    def forward(model: object, arrays: tuple, request: dict) -> np.ndarray:
        if forward_calls is not None:
            forward_calls.append(arrays)
        ids, mask, _ = arrays
        return (ids * mask).astype(np.float32)[:, :2]

    out = io.StringIO()
    serve_model(
        versions={"fake": "1"},
        load=load,
        forward=forward,
        extra={"ping": lambda r: {"pong": r["n"]}},
        lines=[json.dumps(r) + "\n" for r in requests],
        out=out,
    )
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_model_peer_answers_versions_load_run_encode_and_extra_commands(tmp_path: Path) -> None:
    calls: list = []
    shape = {"name": "m", "batch": 3, "seq": 25, "seed": 1}
    replies = run_peer(
        [
            {"cmd": "versions"},
            {"cmd": "load", "name": "m", "dir": "x", "threads": 2},
            {"cmd": "run", **shape, "repeats": 4},
            {"cmd": "encode", **shape, "lengths": "natural", "out": str(tmp_path / "v.npy")},
            {"cmd": "ping", "n": 7},
            {"cmd": "run", **shape, "name": "other", "repeats": 1},
            {"cmd": "frobnicate"},
        ],
        calls,
    )
    assert replies[0] == {"fake": "1"}
    assert replies[1] == {"ok": True, "attn": "test"}
    assert len(replies[2]["seconds"]) == 4 and all(s >= 0 for s in replies[2]["seconds"])
    assert replies[3] == {"ok": True} and replies[4] == {"pong": 7}
    assert replies[5]["error"].startswith("KeyError") and "frobnicate" in replies[6]["error"]
    ids, mask, _ = make_inputs(3, 25, 1, 30522, "natural")
    assert calls[-1][0].dtype == np.int64  # int64 for every framework, converted before timing
    np.testing.assert_array_equal(calls[-1][0], ids)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), (ids * mask)[:, :2].astype(np.float32))


def test_export_key_follows_weights_config_and_exporter_pins(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    first = onnx_models.weights_key(tmp_path)
    assert onnx_models.weights_key(tmp_path) == first
    assert onnx_models.weights_key(tmp_path, ("torch==0",)) != first
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    assert onnx_models.weights_key(tmp_path) != first
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        onnx_models.weights_key(tmp_path)


def test_a_cached_export_is_reused_without_starting_the_torch_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BERTSERVE_CACHE", str(tmp_path / "cache"))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"w")
    cached = tmp_path / "cache" / "bench-onnx" / onnx_models.weights_key(hf) / "model.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"onnx")
    monkeypatch.setattr(onnx_models, "PeerProcess", None)  # starting a peer would fail loudly
    assert onnx_models.exported_onnx(hf) == cached
