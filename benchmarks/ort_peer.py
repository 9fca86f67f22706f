"""The ONNX Runtime side of the benchmarks, run inside its own virtual environment (``peer_process``).

Runs the graph ``onnx_models.exported_onnx`` exported from the same HF weights, after
``onnxruntime.transformers``' BERT optimizer (``model_type="bert"``, its default fp32 fusions:
EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu, ...): what the ONNX Runtime
documentation tells a performance-minded user to do with a BERT model on CPU. The optimized
graph is cached next to the exported one, per ONNX Runtime version. ``opt_level=0`` runs the
optimizer's Python fusions without its ONNX Runtime pre-pass, which in 1.32 imports PyTorch; the
session applies all of ONNX Runtime's own graph optimizations when it loads the graph anyway, and
the fusion counts are the same either way (MiniLM: EmbedLayerNormalization 1, Attention 6,
BiasGelu 6, SkipLayerNormalization 12). fp32 throughout; intra-op
threads = the CPUs the benchmark gives it, one inter-op thread, sequential execution.

Commands: those of ``model_peer``; ``load`` also takes ``"onnx": "<exported model.onnx>"`` and
answers the fused operator counts, so a report shows the fusions really happened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.transformers import optimizer

from model_peer import Arrays, serve_model


def optimized(exported: Path, config: dict[str, Any]) -> tuple[Path, dict[str, int]]:
    """The ORT-optimized graph (cached beside ``exported``) and its fused operator counts."""
    out = exported.with_name(f"model.ort-{ort.__version__}.onnx")
    stats_file = out.with_suffix(".fusions.json")
    if not out.is_file():
        model = optimizer.optimize_model(
            str(exported),
            model_type="bert",
            num_heads=int(config["num_attention_heads"]),
            hidden_size=int(config["hidden_size"]),
            opt_level=0,  # its Python fusions only: the session applies ORT's own graph optimizations on load
            use_gpu=False,
        )
        stats = {op: int(n) for op, n in model.get_fused_operator_statistics().items() if n}
        partial = out.with_suffix(f".{os.getpid()}.partial")
        model.save_model_to_file(str(partial))
        stats_file.write_text(json.dumps(stats))
        partial.rename(out)
    return out, json.loads(stats_file.read_text())


def load(request: dict[str, Any]) -> tuple[Any, int, dict[str, Any]]:
    config = json.loads((Path(request["dir"]) / "config.json").read_text())
    path, fusions = optimized(Path(request["onnx"]), config)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(request["threads"])
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, int(config["vocab_size"]), {"fusions": fusions, "threads": options.intra_op_num_threads}


def forward(session: Any, arrays: Arrays, request: dict[str, Any]) -> np.ndarray:
    ids, mask, types = arrays
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return session.run(["pooled"], feeds)[0]


if __name__ == "__main__":
    serve_model(
        versions={"onnxruntime": ort.__version__, "onnx": onnx.__version__}, load=load, forward=forward
    )
