"""The OpenVINO side of the benchmarks, run inside its own virtual environment (``peer_process``).

Reads the plain exported ONNX graph (``onnx_models.exported_onnx``, the same HF weights; not ONNX
Runtime's optimized one, whose contrib operators are ONNX Runtime's own) with OpenVINO's ONNX
frontend and compiles it for the CPU plugin with ``INFERENCE_PRECISION_HINT: f32`` (no bf16
matmuls on AMX/AVX512-BF16 machines, so the numbers are fp32 like everyone's),
``INFERENCE_NUM_THREADS`` = the CPUs the benchmark gives it and one stream (the ``LATENCY`` hint:
one request at a time, as the benchmark calls it). Shapes stay dynamic, as a server would run it.

Commands: those of ``model_peer``; ``load`` also takes ``"onnx": "<exported model.onnx>"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from model_peer import Arrays, serve_model

CORE = ov.Core()


def load(request: dict[str, Any]) -> tuple[Any, int, dict[str, Any]]:
    config = json.loads((Path(request["dir"]) / "config.json").read_text())
    settings = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": int(request["threads"]),
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    compiled = CORE.compile_model(CORE.read_model(request["onnx"]), "CPU", settings)
    actual = {}
    for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS"):
        value = compiled.get_property(key)  # what the plugin took, not what was asked
        actual[key] = value.to_string() if isinstance(value, ov.Type) else str(value)
    return compiled.create_infer_request(), int(config["vocab_size"]), {"settings": actual}


def forward(infer: Any, arrays: Arrays, request: dict[str, Any]) -> np.ndarray:
    ids, mask, types = arrays
    result = infer.infer({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    return next(iter(result.values()))


if __name__ == "__main__":
    serve_model(versions={"openvino": ov.__version__}, load=load, forward=forward)
